//! Same marginals three ways: an OU process started from a Gaussian, its probability-flow ODE
//! and its reverse-time SDE all reproduce the exact marginals (`docs/MATH.md` §2).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::{
    Gaussian, GaussianMarginals, LinearGaussianSde, OrnsteinUhlenbeck, ProbabilityFlow,
    ReverseTimeSde, VarianceExploding, VariancePreserving,
};
use sde_solvers::{OdeMethod, SdeMethod, TimeGrid};
use sde_tests::{ks_critical_001, ks_statistic, mean_var};

const N: usize = 40_000;

/// Mean and variance of a sample against an exact Gaussian: within 4.5 standard errors of
/// the sample mean (√(v/N)) and sample variance (v √(2/N)), plus `bias` for the
/// discretisation error of the solver (a 4.5σ band fails by chance with probability < 1e-5).
fn assert_moments(xs: &[f64], exact: Gaussian, bias: f64, what: &str) {
    let (m, v) = mean_var(xs);
    let n = xs.len() as f64;
    let tol_m = 4.5 * (exact.var() / n).sqrt() + bias;
    let tol_v = 4.5 * exact.var() * (2.0 / n).sqrt() + bias;
    assert!(
        (m - exact.mean()).abs() < tol_m,
        "{what}: mean {m} vs exact {} (tol {tol_m})",
        exact.mean()
    );
    assert!(
        (v - exact.var()).abs() < tol_v,
        "{what}: var {v} vs exact {} (tol {tol_v})",
        exact.var()
    );
}

fn setup() -> (OrnsteinUhlenbeck, GaussianMarginals<OrnsteinUhlenbeck>) {
    let ou = OrnsteinUhlenbeck::new(1.2, 0.9).unwrap();
    (ou, GaussianMarginals::new(ou, 2.0, 0.3).unwrap())
}

#[test]
fn ou_forward_sde_matches_exact_marginals() {
    let (ou, marg) = setup();
    let mut rng = StdRng::seed_from_u64(1);
    let x0 = marg.at(0.0).unwrap().sample(&mut rng, N);
    // 400 steps on [0, 1]: EM's weak error is O(h) ≈ 3e-3 in mean and variance.
    let grid = TimeGrid::uniform(0.0, 1.0, 400).unwrap();
    let sol = SdeMethod::EulerMaruyama
        .solve(&ou, x0, &grid, &mut rng, true)
        .unwrap();
    for (k, t) in [(200, 0.5), (400, 1.0)] {
        assert_eq!(sol.times()[k], t);
        let exact = marg.at(t).unwrap();
        assert_moments(&sol.states()[k], exact, 5e-3, "forward SDE");
        let d = ks_statistic(&sol.states()[k], |x| exact.cdf(x));
        // α = 0.001 critical value; the EM bias shifts the CDF by O(h), far below it.
        assert!(d < ks_critical_001(N), "KS statistic {d} at t = {t}");
    }
}

#[test]
fn ou_probability_flow_matches_exact_marginals() {
    let (ou, marg) = setup();
    let flow = ProbabilityFlow::new(ou, marg);
    let mut rng = StdRng::seed_from_u64(2);
    let x0 = marg.at(0.0).unwrap().sample(&mut rng, N);
    // RK4 with 50 steps: the deterministic error is ~1e-8, so only sampling error remains.
    let grid = TimeGrid::uniform(0.0, 1.0, 50).unwrap();
    let sol = OdeMethod::Rk4.solve(&flow, x0, &grid, true).unwrap();
    for (k, t) in [(25, 0.5), (50, 1.0)] {
        let exact = marg.at(t).unwrap();
        assert_moments(&sol.states()[k], exact, 1e-6, "probability flow");
        let d = ks_statistic(&sol.states()[k], |x| exact.cdf(x));
        assert!(d < ks_critical_001(N), "KS statistic {d} at t = {t}");
    }
}

#[test]
fn ou_reverse_time_sde_matches_exact_marginals() {
    let (ou, marg) = setup();
    let reverse = ReverseTimeSde::new(ou, marg);
    let mut rng = StdRng::seed_from_u64(3);
    let x1 = marg.at(1.0).unwrap().sample(&mut rng, N);
    let grid = TimeGrid::uniform(1.0, 0.0, 400).unwrap();
    let sol = SdeMethod::EulerMaruyama
        .solve(&reverse, x1, &grid, &mut rng, true)
        .unwrap();
    for (k, t) in [(200, 0.5), (400, 0.0)] {
        assert!((sol.times()[k] - t).abs() < 1e-12);
        let exact = marg.at(t).unwrap();
        // The reverse drift is stiffer near t = 0 (v0 = 0.3): allow 1e-2 of bias (~3h/v0).
        assert_moments(&sol.states()[k], exact, 1e-2, "reverse-time SDE");
        let d = ks_statistic(&sol.states()[k], |x| exact.cdf(x));
        assert!(d < ks_critical_001(N), "KS statistic {d} at t = {t}");
    }
}

#[test]
fn tensor_states_give_the_same_marginals() {
    let (ou, marg) = setup();
    let mut rng = StdRng::seed_from_u64(4);
    let x0 = marg.at(0.0).unwrap().sample(&mut rng, N);
    let xs = Tensor::from_vec(x0, (N, 1), &Device::Cpu).unwrap();
    let grid = TimeGrid::uniform(0.0, 1.0, 400).unwrap();
    let out = SdeMethod::EulerMaruyama
        .solve(
            &ou,
            xs.to_dtype(DType::F32).unwrap(),
            &grid,
            &mut rng,
            false,
        )
        .unwrap()
        .into_last();
    let v: Vec<f64> = out
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_moments(&v, marg.at(1.0).unwrap(), 5e-3, "tensor f32 SDE");
    let reverse = ReverseTimeSde::new(ou, marg);
    let back = SdeMethod::EulerMaruyama
        .solve(
            &reverse,
            out,
            &TimeGrid::uniform(1.0, 0.0, 400).unwrap(),
            &mut rng,
            false,
        )
        .unwrap()
        .into_last();
    let v: Vec<f64> = back
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_moments(&v, marg.at(0.0).unwrap(), 1.5e-2, "tensor f32 reverse SDE");
}

#[test]
fn vp_and_ve_match_their_closed_forms() {
    let mut rng = StdRng::seed_from_u64(6);
    let vp = VariancePreserving::new(0.1, 10.0).unwrap();
    let ve = VarianceExploding::new(0.05, 5.0).unwrap();
    let grid = TimeGrid::uniform(0.0, 1.0, 1000).unwrap();
    let x0 = vec![1.5; N];
    let (m, v) = vp.mean_variance(1.5, 0.0, 1.0);
    let out = SdeMethod::EulerMaruyama
        .solve(&vp, x0.clone(), &grid, &mut rng, false)
        .unwrap()
        .into_last();
    // β up to 10 makes EM's O(βh) bias about 1e-2.
    assert_moments(&out, Gaussian::new(m, v).unwrap(), 1e-2, "VP");
    let (m, v) = ve.mean_variance(1.5, 0.0, 1.0);
    let out = SdeMethod::StochasticHeun
        .solve(&ve, x0, &grid, &mut rng, false)
        .unwrap()
        .into_last();
    // VE has no drift: only the quadrature of g² over each step errs, O(h) relative.
    assert_moments(&out, Gaussian::new(m, v).unwrap(), 0.05, "VE");
}
