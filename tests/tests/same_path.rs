//! `f64` states and `Tensor` (F64) states follow the same path for the same noise.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::{
    GaussianMarginals, GeometricBrownianMotion, OrnsteinUhlenbeck, ReverseTimeSde, Vector,
};
use sde_solvers::{OdeMethod, SdeMethod, TimeGrid};

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn compare<P>(sde: &P, method: SdeMethod, x0: Vec<f64>, grid: &TimeGrid)
where
    P: sde_core::Drift<Vec<f64>>
        + sde_core::Diffusion<Vec<f64>>
        + sde_core::Drift<Tensor>
        + sde_core::Diffusion<Tensor>,
{
    let mut rng = StdRng::seed_from_u64(9);
    let n = x0.len();
    let mut xv = x0.clone();
    let mut xt = Tensor::from_vec(x0, (n, 1), &Device::Cpu).unwrap();
    for (t, h) in grid.steps() {
        let eps = xv.standard_normal_like(&mut rng).unwrap();
        let eps_t = Tensor::from_vec(eps.clone(), (n, 1), &Device::Cpu).unwrap();
        xv = method.step(sde, &xv, t, h, &eps).unwrap();
        xt = method.step(sde, &xt, t, h, &eps_t).unwrap();
    }
    // The same f64 operations in a different order (candle's kernels vs iterator code):
    // agreement to a few ulps of the O(1) values.
    for (a, b) in xv.iter().zip(to_vec(&xt)) {
        assert!((a - b).abs() < 1e-12, "{method:?}: {a} vs {b}");
    }
}

#[test]
fn vec_and_tensor_agree_for_same_noise() {
    let grid = TimeGrid::uniform(0.0, 1.0, 50).unwrap();
    let x0: Vec<f64> = (0..64).map(|i| 0.5 + i as f64 / 32.0).collect();
    let ou = OrnsteinUhlenbeck::new(1.0, 0.7).unwrap();
    let gbm = GeometricBrownianMotion::new(0.3, 0.6).unwrap();
    for method in [SdeMethod::EulerMaruyama, SdeMethod::StochasticHeun] {
        compare(&ou, method, x0.clone(), &grid);
        compare(&gbm, method, x0.clone(), &grid);
        let marg = GaussianMarginals::new(ou, 1.0, 0.5).unwrap();
        let rev = ReverseTimeSde::new(ou, marg);
        compare(
            &rev,
            method,
            x0.clone(),
            &TimeGrid::uniform(1.0, 0.0, 50).unwrap(),
        );
    }
}

#[test]
fn scalar_and_tensor_ode_agree() {
    let ou = OrnsteinUhlenbeck::new(1.0, 0.7).unwrap();
    let marg = GaussianMarginals::new(ou, 1.0, 0.5).unwrap();
    let flow = sde_core::ProbabilityFlow::new(ou, marg);
    let grid = TimeGrid::uniform(0.0, 1.0, 30).unwrap();
    let x0: Vec<f64> = vec![-1.0, 0.0, 2.5];
    let xt = Tensor::from_vec(x0.clone(), (3, 1), &Device::Cpu).unwrap();
    for m in [
        OdeMethod::Euler,
        OdeMethod::Heun,
        OdeMethod::Midpoint,
        OdeMethod::Rk4,
    ] {
        let a = m
            .solve(&flow, x0.clone(), &grid, false)
            .unwrap()
            .into_last();
        let b = to_vec(
            &m.solve(&flow, xt.clone(), &grid, false)
                .unwrap()
                .into_last(),
        );
        for (&xs, &s) in x0.iter().zip(&a) {
            // Scalar f64 states through the same solver.
            let c = *m.solve(&flow, xs, &grid, false).unwrap().last();
            assert!((c - s).abs() < 1e-12);
        }
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-12, "{m:?}: {a} vs {b}");
        }
    }
}

#[test]
fn small_array_states_follow_each_entry() {
    // A `[f64; 3]` state is three independent copies of the 1-D law: each entry follows the
    // scalar path driven by its own draw.
    let gbm = GeometricBrownianMotion::new(0.3, 0.6).unwrap();
    let grid = TimeGrid::uniform(0.0, 1.0, 20).unwrap();
    let mut x = [0.5f64, 1.0, 2.0];
    let mut scalars = x;
    let mut rng = StdRng::seed_from_u64(4);
    for (t, h) in grid.steps() {
        let eps = x.standard_normal_like(&mut rng).unwrap();
        x = SdeMethod::StochasticHeun
            .step(&gbm, &x, t, h, &eps)
            .unwrap();
        for (s, e) in scalars.iter_mut().zip(eps) {
            *s = SdeMethod::StochasticHeun.step(&gbm, s, t, h, &e).unwrap();
        }
    }
    assert_eq!(x, scalars);
}
