//! Measured convergence orders of the solvers on problems with known solutions.

use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::{FnField, GeometricBrownianMotion, Result as CoreResult};
use sde_solvers::{OdeMethod, SdeMethod, TimeGrid};
use sde_tests::fitted_order;

/// dx/dt = x cos t, x(0) = 1: x(t) = exp(sin t). Smooth and time-dependent, so every stage's
/// time node matters.
fn field() -> FnField<impl Fn(&f64, f64) -> CoreResult<f64>> {
    FnField(|x: &f64, t: f64| Ok(x * t.cos()))
}

fn ode_order(method: OdeMethod, steps: &[usize], reverse: bool) -> f64 {
    let f = field();
    let (t0, t1): (f64, f64) = if reverse { (1.0, 0.0) } else { (0.0, 1.0) };
    let x0 = t0.sin().exp();
    let exact = t1.sin().exp();
    let hs: Vec<f64> = steps.iter().map(|&n| 1.0 / n as f64).collect();
    let errs: Vec<f64> = steps
        .iter()
        .map(|&n| {
            let grid = TimeGrid::uniform(t0, t1, n).unwrap();
            let x = *method.solve(&f, x0, &grid, false).unwrap().last();
            (x - exact).abs()
        })
        .collect();
    fitted_order(&hs, &errs)
}

#[test]
fn ode_orders_forward_and_reverse() {
    // Step counts chosen so the error stays well above rounding (RK4 at 80 steps: ~1e-9)
    // and in the asymptotic regime; ±0.2 is the band the issue asks for.
    for (method, expected, steps) in [
        (OdeMethod::Euler, 1.0, &[20usize, 40, 80, 160, 320][..]),
        (OdeMethod::Heun, 2.0, &[20, 40, 80, 160, 320][..]),
        (OdeMethod::Midpoint, 2.0, &[20, 40, 80, 160, 320][..]),
        (OdeMethod::Rk4, 4.0, &[5, 10, 20, 40, 80][..]),
    ] {
        for reverse in [false, true] {
            let p = ode_order(method, steps, reverse);
            assert!(
                (p - expected).abs() < 0.2,
                "{method:?} reverse={reverse}: measured order {p}, expected {expected}"
            );
        }
    }
}

#[test]
fn ode_user_grid_matches_uniform() {
    let f = field();
    let uniform = TimeGrid::uniform(0.0, 1.0, 10).unwrap();
    let given = TimeGrid::from_points(uniform.points().to_vec()).unwrap();
    let a = *OdeMethod::Rk4
        .solve(&f, 1.0, &uniform, false)
        .unwrap()
        .last();
    let b = OdeMethod::Rk4.solve(&f, 1.0, &given, true).unwrap();
    assert_eq!(a, *b.last());
    assert_eq!(b.states().len(), 11);
    assert_eq!(b.times(), uniform.points());
    // A non-uniform grid converges too: error well below the coarse uniform one's 1e-5.
    let pts: Vec<f64> = (0..=40).map(|k| (k as f64 / 40.0).powi(2)).collect();
    let sol = OdeMethod::Rk4
        .solve(&f, 1.0, &TimeGrid::from_points(pts).unwrap(), false)
        .unwrap();
    assert!((sol.last() - 1f64.sin().exp()).abs() < 1e-6);
}

/// Euler–Maruyama on geometric Brownian motion against the exact path from the same
/// Brownian increments: strong order ½ (multiplicative noise).
#[test]
fn euler_maruyama_strong_order_half_on_gbm() {
    let gbm = GeometricBrownianMotion::new(0.5, 0.8).unwrap();
    let (x0, t_end) = (1.0, 1.0);
    let fine = 1024usize;
    let levels = [16usize, 32, 64, 128, 256];
    let n_paths = 2000;
    let mut rng = StdRng::seed_from_u64(11);
    let mut errs = vec![0.0; levels.len()];
    let h_fine = t_end / fine as f64;
    for _ in 0..n_paths {
        let dws: Vec<f64> = (0..fine)
            .map(|_| {
                h_fine.sqrt()
                    * rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, &mut rng)
            })
            .collect();
        let exact = gbm.exact(x0, t_end, dws.iter().sum());
        for (e, &n) in errs.iter_mut().zip(&levels) {
            let h = t_end / n as f64;
            let per = fine / n;
            let mut x = x0;
            for k in 0..n {
                let dw: f64 = dws[k * per..(k + 1) * per].iter().sum();
                let eps = dw / h.sqrt();
                x = SdeMethod::EulerMaruyama
                    .step(&gbm, &x, k as f64 * h, h, &eps)
                    .unwrap();
            }
            *e += (x - exact).abs() / n_paths as f64;
        }
    }
    let hs: Vec<f64> = levels.iter().map(|&n| 1.0 / n as f64).collect();
    let p = fitted_order(&hs, &errs);
    // ±0.2 as the issue asks; with 2,000 paths the Monte-Carlo error of each mean absolute
    // error is about 3%, which moves the fitted slope by far less than 0.1.
    assert!((p - 0.5).abs() < 0.2, "strong order {p}, errors {errs:?}");
}

/// Weak order 1: the error of E[x_T] for GBM. EM's mean is x0 (1 + μh)^n, so the bias
/// (0.28 at h = 1/4 down to 0.04 at h = 1/32) is far above the Monte-Carlo error of the
/// 400,000-path mean (standard error ≈ 0.003).
#[test]
fn euler_maruyama_weak_order_one_on_gbm_mean() {
    let gbm = GeometricBrownianMotion::new(1.0, 0.5).unwrap();
    let levels = [4usize, 8, 16, 32];
    let mut rng = StdRng::seed_from_u64(5);
    let exact = gbm.mean(1.0, 1.0);
    let errs: Vec<f64> = levels
        .iter()
        .map(|&n| {
            let grid = TimeGrid::uniform(0.0, 1.0, n).unwrap();
            let xs = vec![1.0f64; 400_000];
            let out = SdeMethod::EulerMaruyama
                .solve(&gbm, xs, &grid, &mut rng, false)
                .unwrap()
                .into_last();
            (out.iter().sum::<f64>() / out.len() as f64 - exact).abs()
        })
        .collect();
    let hs: Vec<f64> = levels.iter().map(|&n| 1.0 / n as f64).collect();
    let p = fitted_order(&hs, &errs);
    assert!((p - 1.0).abs() < 0.2, "weak order {p}, errors {errs:?}");
}

/// Stochastic Heun on additive noise (where Itô = Stratonovich) has strong order 1.
#[test]
fn stochastic_heun_strong_order_one_additive_noise() {
    // dx = (−x + sin t) dt + 0.5 dW has no simple closed path; compare with a fine EM-Heun
    // reference built from the same increments (2,048 steps).
    let sde = sde_core::Sde {
        drift: FnField(|x: &f64, t: f64| Ok(-x + t.sin() + 0.5 * x.sin())),
        diffusion: sde_core::BrownianMotion::new(0.5).unwrap(),
    };
    let fine = 2048usize;
    let levels = [16usize, 32, 64, 128];
    let mut rng = StdRng::seed_from_u64(3);
    let mut errs = vec![0.0; levels.len()];
    let n_paths = 500;
    let run = |n: usize, dws: &[f64]| {
        let h = 1.0 / n as f64;
        let per = dws.len() / n;
        let mut x = 0.3;
        for k in 0..n {
            let dw: f64 = dws[k * per..(k + 1) * per].iter().sum();
            x = SdeMethod::StochasticHeun
                .step(&sde, &x, k as f64 * h, h, &(dw / h.sqrt()))
                .unwrap();
        }
        x
    };
    for _ in 0..n_paths {
        let hf = 1.0 / fine as f64;
        let dws: Vec<f64> = (0..fine)
            .map(|_| {
                hf.sqrt()
                    * rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, &mut rng)
            })
            .collect();
        let reference = run(fine, &dws);
        for (e, &n) in errs.iter_mut().zip(&levels) {
            *e += (run(n, &dws) - reference).abs() / n_paths as f64;
        }
    }
    let hs: Vec<f64> = levels.iter().map(|&n| 1.0 / n as f64).collect();
    let p = fitted_order(&hs, &errs);
    // Order 1 ± 0.2; the reference's own error (h = 1/2048) is 16× below the finest level's.
    assert!(
        (p - 1.0).abs() < 0.2,
        "stochastic Heun strong order {p}, errors {errs:?}"
    );
}
