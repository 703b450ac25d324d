//! Bad input returns an error naming the parameter and the value; nothing panics.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::{
    BrownianMotion, Gaussian, GaussianMarginals, GeometricBrownianMotion, OrnsteinUhlenbeck,
    VarianceExploding, VariancePreserving,
};
use sde_solvers::{OdeMethod, SdeMethod, TimeGrid};

fn msg<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn grids() {
    assert_eq!(
        msg(TimeGrid::uniform(0.0, 1.0, 0)),
        "invalid n_steps: 0 (must be at least 1)"
    );
    assert_eq!(
        msg(TimeGrid::uniform(0.5, 0.5, 10)),
        "invalid t1: 0.5 (must differ from t0)"
    );
    assert!(msg(TimeGrid::uniform(f64::NAN, 1.0, 10)).contains("t0: NaN"));
    assert!(msg(TimeGrid::uniform(0.0, f64::INFINITY, 10)).contains("t1: inf"));
    assert!(msg(TimeGrid::from_points(vec![0.0])).contains("grid length: 1"));
    assert!(msg(TimeGrid::from_points(vec![0.0, 0.5, 0.4])).contains("grid point: 0.4"));
    assert!(msg(TimeGrid::from_points(vec![0.0, f64::NAN])).contains("grid point: NaN"));
}

#[test]
fn process_parameters() {
    assert_eq!(
        msg(OrnsteinUhlenbeck::new(1.0, -0.5)),
        "invalid sigma: -0.5 (must be finite and non-negative)"
    );
    assert!(msg(OrnsteinUhlenbeck::new(f64::NAN, 1.0)).contains("theta: NaN"));
    assert!(msg(BrownianMotion::new(-1.0)).contains("sigma: -1"));
    assert!(msg(GeometricBrownianMotion::new(f64::INFINITY, 1.0)).contains("mu: inf"));
    assert!(msg(VariancePreserving::new(1.0, 0.5)).contains("beta_max: 0.5"));
    assert!(msg(VarianceExploding::new(0.0, 1.0)).contains("sigma_min: 0"));
    assert!(msg(Gaussian::new(0.0, -1.0)).contains("var: -1"));
    let ou = OrnsteinUhlenbeck::new(1.0, 1.0).unwrap();
    assert!(msg(GaussianMarginals::new(ou, 0.0, 0.0)).contains("v0: 0"));
}

#[test]
fn non_finite_states() {
    let ou = OrnsteinUhlenbeck::new(1.0, 1.0).unwrap();
    let grid = TimeGrid::uniform(0.0, 1.0, 10).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let e = msg(SdeMethod::EulerMaruyama.solve(&ou, vec![0.0, f64::NAN], &grid, &mut rng, false));
    assert_eq!(e, "non-finite state at t = 0");
    let t = Tensor::new(&[[1.0f64], [f64::INFINITY]], &Device::Cpu).unwrap();
    assert!(msg(OdeMethod::Rk4.solve(
        &sde_core::FnField(|x: &Tensor, _| Ok(x.clone())),
        t,
        &grid,
        false
    ))
    .contains("non-finite"));
    // An explosive ODE overflows to ∞: reported at the end time, with a hint.
    let blow = sde_core::FnField(|x: &f64, _t: f64| Ok(x * x));
    let e = msg(OdeMethod::Euler.solve(&blow, 1e3, &grid, false));
    assert!(e.starts_with("non-finite state at t = 1"), "{e}");
    let mut xs = vec![f64::NAN; 4];
    assert!(
        sde_solvers::pointwise::euler_maruyama_in_place(&ou, &mut xs, &grid, &mut rng).is_err()
    );
}

#[test]
fn mismatched_shapes() {
    let ou = OrnsteinUhlenbeck::new(1.0, 1.0).unwrap();
    let e = msg(SdeMethod::EulerMaruyama.step(&ou, &vec![0.0; 3], 0.0, 0.1, &vec![0.0; 2]));
    assert!(e.contains("shape mismatch"), "{e}");
    let x = Tensor::zeros((4, 1), candle_core::DType::F64, &Device::Cpu).unwrap();
    let eps = Tensor::zeros((3, 1), candle_core::DType::F64, &Device::Cpu).unwrap();
    let e = msg(SdeMethod::EulerMaruyama.step(&ou, &x, 0.0, 0.1, &eps));
    assert!(e.contains("shape mismatch"), "{e}");
}
