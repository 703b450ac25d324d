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
    assert_eq!(e, "non-finite state at t = 0, first at entry 1");
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

/// Sizes and spans that cannot be held in memory or in f64 are refused with an error naming
/// the parameter, never a "capacity overflow" panic or an aborted allocation.
#[test]
fn impossible_sizes_and_spans_are_errors_not_panics() {
    use sde_core::fokker_planck::FokkerPlanck1d;
    let msg = |e: String, needle: &str| assert!(e.contains(needle), "{e}");
    for n in [usize::MAX, 1 << 40] {
        msg(
            TimeGrid::uniform(0.0, 1.0, n).unwrap_err().to_string(),
            "n_steps",
        );
    }
    for n in [usize::MAX, 1 << 36] {
        msg(
            FokkerPlanck1d::new(0.0, 1.0, n).unwrap_err().to_string(),
            "n_cells",
        );
    }
    // Steps finer than f64 can resolve near t0 would repeat points: refused, not returned.
    msg(
        TimeGrid::uniform(1.0, 1.0 + 1e-13, 1000)
            .unwrap_err()
            .to_string(),
        "neighbouring grid points coincide",
    );
    // Spans that overflow f64 name the span, not the step size.
    msg(
        TimeGrid::uniform(-f64::MAX, f64::MAX, 4)
            .unwrap_err()
            .to_string(),
        "t1 - t0",
    );
    msg(
        FokkerPlanck1d::new(-f64::MAX, f64::MAX, 10)
            .unwrap_err()
            .to_string(),
        "x_max - x_min",
    );
    // The CNF likelihood's step count goes through the same grid.
    let config =
        sde_variational::MlpConfig::new(vec![2, 4, 1], sde_variational::Activation::Identity);
    let n = sde_variational::Mlp::n_params_of(&config.widths);
    let params = Tensor::zeros(n, candle_core::DType::F64, &Device::Cpu).unwrap();
    let mlp = sde_variational::Mlp::from_flat(&config, params).unwrap();
    let ode = sde_variational::NeuralOde::new(mlp).unwrap();
    let y = Tensor::zeros((3, 1), candle_core::DType::F64, &Device::Cpu).unwrap();
    msg(
        ode.log_likelihood(&y, OdeMethod::Rk4, usize::MAX)
            .unwrap_err()
            .to_string(),
        "n_steps",
    );
}

/// A NaN in the data names the entry it sits in.
#[test]
fn a_nan_in_the_state_is_located() {
    let ou = OrnsteinUhlenbeck::new(1.0, 0.5).unwrap();
    let grid = TimeGrid::uniform(0.0, 1.0, 10).unwrap();
    let x0 = vec![0.0, 1.0, f64::NAN, 2.0];
    let e =
        msg(SdeMethod::EulerMaruyama.solve(&ou, x0, &grid, &mut StdRng::seed_from_u64(1), false));
    assert!(e.contains("entry 2"), "{e}");
    let x0 = Tensor::from_vec(vec![0.0, 1.0, 2.0, f64::NAN, 4.0], (5, 1), &Device::Cpu).unwrap();
    let e =
        msg(SdeMethod::EulerMaruyama.solve(&ou, x0, &grid, &mut StdRng::seed_from_u64(1), false));
    assert!(e.contains("entry 3"), "{e}");
}
