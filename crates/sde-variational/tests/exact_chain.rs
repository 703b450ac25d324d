//! The bound chain of `sde_variational::exact` against closed forms: a linear-Gaussian
//! generative SDE with the VP variational process, where every quantity of docs/MATH.md §4 is
//! Gaussian algebra.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use sde_core::quadrature::gauss_legendre;
use sde_variational::elbo::GenerativeSde;
use sde_variational::exact::{bound_chain, bound_chain_with_errors, model_marginals, ChainConfig};
use sde_variational::vdm::VpSchedule;
use sde_variational::{DiffusionAt, Time};

const LAMBDA: (f64, f64) = (-4.0, 4.0);
const LN_2PI: f64 = 1.837_877_066_409_345_3;

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// `(a_t, b_t, σ²(t), ȧ, ḃ)` of the VP schedule (docs/MATH.md §6).
fn vp(t: f64) -> (f64, f64, f64, f64, f64) {
    let lambda = (1.0 - t) * LAMBDA.0 + t * LAMBDA.1;
    let slope = LAMBDA.1 - LAMBDA.0;
    let (a2, b2) = (sigmoid(lambda), sigmoid(-lambda));
    let (a, b) = (a2.sqrt(), b2.sqrt());
    let s2 = slope * b2;
    (a, b, s2, 0.5 * a * s2, -0.5 * a2 * s2 / b)
}

/// The model's marginal variance `v_t = 1 + 3t` (so `p_0 = N(0, 1)`, `p_1 = N(0, 4)`).
fn v(t: f64) -> f64 {
    1.0 + 3.0 * t
}

/// `θ(t)` of the drift `f = −θ x` that, with diffusion `σ²(t)`, keeps `p_t = N(0, v_t)`:
/// `v' = −2θ v + σ²`.
fn theta(t: f64) -> f64 {
    (vp(t).2 - 3.0) / (2.0 * v(t))
}

/// `dx = −θ(t) x dt + σ(t) dW` with the VP schedule's `σ²`.
struct LinearModel {
    schedule: VpSchedule,
}

impl GenerativeSde for LinearModel {
    fn drift_and_diffusion(
        &self,
        x: &Tensor,
        t: &Tensor,
    ) -> sde_variational::Result<(Tensor, DiffusionAt)> {
        let ts: Vec<f64> = t.flatten_all()?.to_vec1()?;
        let th: Vec<f64> = ts.iter().map(|&t| -theta(t)).collect();
        let th = Tensor::from_slice(&th, x.dims(), x.device())?;
        Ok(((x * th)?, self.schedule.diffusion(t)?))
    }
}

/// The chain in closed form at `y`: `(log p(y), ELBO_ODE, ELBO_SDE, ∫R, ∫F, KL(q_1‖p_1))`.
fn closed_form(y: f64) -> (f64, f64, f64, f64, f64, f64) {
    let (a1, b1, _, _, _) = vp(1.0);
    let (a0, b0, _, _, _) = vp(0.0);
    let delta = b1;
    let recon =
        -0.5 * (((y - a1 * y).powi(2) + b1 * b1) / (delta * delta) + (delta * delta).ln() + LN_2PI);
    let kl0 = 0.5 * (a0 * a0 * y * y + b0 * b0 - 1.0 - (b0 * b0).ln());
    let v1 = v(1.0);
    let kl1 = 0.5 * ((v1 / (b1 * b1)).ln() + (b1 * b1 + a1 * a1 * y * y) / v1 - 1.0);
    // At x = α + β ε: f − f_q = A + B ε and f_bwd − f_q,bwd = C + D ε (docs/MATH.md §4–5), so
    // F = (A² + B²)/2σ², R = (C² + D²)/2σ².
    let gl = gauss_legendre(100, 0.0, 1.0).unwrap();
    let (mut int_f, mut int_r) = (0.0, 0.0);
    for (&t, &w) in gl.nodes.iter().zip(&gl.weights) {
        let (a, b, s2, ad, bd) = vp(t);
        let (alpha, beta) = (a * y, b);
        let th = theta(t);
        let big_a = -th * alpha - ad * y;
        let big_b = -th * beta - bd + 0.5 * s2 / beta;
        let c = big_a + s2 * alpha / v(t);
        let d = big_b + s2 * beta / v(t) - s2 / beta;
        int_f += w * (big_a * big_a + big_b * big_b) / (2.0 * s2);
        int_r += w * (c * c + d * d) / (2.0 * s2);
    }
    let log_p = -0.5 * (y * y / (v1 + delta * delta) + (v1 + delta * delta).ln() + LN_2PI);
    (log_p, recon - kl1, recon - kl0 - int_f, int_r, int_f, kl1)
}

#[test]
fn the_closed_form_chain_satisfies_the_identity_and_the_bounds() {
    for y in [-3.0, -0.5, 0.0, 1.0, 2.5] {
        let (log_p, elbo_ode, elbo_sde, r, _, _) = closed_form(y);
        // The identity ELBO_ODE = ELBO_SDE + ∫R holds to the 100-node quadrature's accuracy.
        assert!((elbo_ode - elbo_sde - r).abs() < 1e-10, "y {y}");
        assert!(elbo_sde < elbo_ode && elbo_ode < log_p, "y {y}");
    }
}

/// The VP schedule of `LAMBDA` and the linear generative SDE built on it.
fn linear_model() -> Result<(VpSchedule, LinearModel)> {
    let full = |v: f64| Tensor::full(v, (1, 1), &Device::Cpu);
    let schedule = VpSchedule::new(full(LAMBDA.0)?, full(LAMBDA.1)?)?;
    let model = LinearModel {
        schedule: schedule.clone(),
    };
    Ok((schedule, model))
}

#[test]
fn the_grid_chain_matches_the_closed_form() -> Result<()> {
    let device = Device::Cpu;
    let (schedule, model) = linear_model()?;
    let config = ChainConfig {
        x_range: (-10.0, 10.0),
        ..ChainConfig::default()
    };
    let ys_host = [-3.0, -0.5, 0.0, 1.0, 2.5];
    let ys = Tensor::from_slice(&ys_host, (ys_host.len(), 1), &device)?;
    let (_, b1, _) = schedule.coefficients(Time::Scalar(1.0))?;
    let started = std::time::Instant::now();
    let result = bound_chain_with_errors(&schedule, &model, &ys, &b1, &config)?;
    eprintln!(
        "chain of 5 points at two resolutions in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for (p, e) in result.points.iter().zip(&result.errors) {
        let (log_p, elbo_ode, elbo_sde, r, f, kl1) = closed_form(p.y);
        let pairs = [
            ("log p(y)", p.log_likelihood, e.log_likelihood, log_p),
            ("ELBO_ODE", p.elbo_ode, e.elbo_ode, elbo_ode),
            ("ELBO_SDE", p.elbo_sde, e.elbo_sde, elbo_sde),
            ("∫R", p.reverse, e.reverse, r),
            ("∫F", p.forward, e.forward, f),
            ("KL(q_1‖p_1)", p.kl_end, e.kl_end, kl1),
        ];
        for (name, got, stated, exact) in pairs {
            let err = (got - exact).abs();
            // The stated error bounds the true one, and the grid is accurate to 1e-4 nats.
            assert!(
                err <= stated,
                "y {}: {name} {got} (exact {exact}, stated error {stated})",
                p.y
            );
            assert!(err < 1e-4, "y {}: {name} {got} vs {exact}", p.y);
        }
        // The identity's residual: the whole computation's error, 1e-4 as above.
        assert!(p.identity_residual().abs() < 1e-4, "y {}", p.y);
        assert!(p.elbo_sde <= p.elbo_ode && p.elbo_ode <= p.log_likelihood);
    }
    let s = &result.summary;
    let mean_exact = |k: fn(f64) -> f64| ys_host.iter().map(|&y| k(y)).sum::<f64>() / 5.0;
    for (name, fig, exact) in [
        ("log p", s.log_likelihood, mean_exact(|y| closed_form(y).0)),
        ("ELBO_ODE", s.elbo_ode, mean_exact(|y| closed_form(y).1)),
        ("∫R", s.reverse, mean_exact(|y| closed_form(y).3)),
    ] {
        assert!(
            (fig.value - exact).abs() <= fig.error,
            "{name}: {fig:?} vs {exact}"
        );
    }
    Ok(())
}

#[test]
fn bad_inputs_are_named_errors() -> Result<()> {
    let device = Device::Cpu;
    let full = |v: f64| Tensor::full(v, (1, 1), &device);
    let (schedule, model) = linear_model()?;
    let config = ChainConfig {
        x_range: (-10.0, 10.0),
        n_cells: 60,
        n_table_times: 11,
        n_time_nodes: 2,
        n_hermite: 3,
    };
    let err = |c: ChainConfig| {
        model_marginals(&model, &c, DType::F64, &device)
            .unwrap_err()
            .to_string()
    };
    assert!(err(ChainConfig {
        x_range: (1.0, -1.0),
        ..config
    })
    .contains("x_range"));
    assert!(err(ChainConfig {
        n_cells: 2,
        ..config
    })
    .contains("n_cells"));
    assert!(err(ChainConfig {
        n_hermite: 101,
        ..config
    })
    .contains("n_hermite"));
    assert!(err(ChainConfig {
        n_time_nodes: 0,
        ..config
    })
    .contains("n_time_nodes"));
    let marginals = model_marginals(&model, &config, DType::F64, &device)?;
    let ys = Tensor::from_slice(&[0.0, 1.0], (2, 1), &device)?;
    let e = bound_chain(&schedule, &model, &marginals, &ys, &full(-1.0)?, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("delta") && e.contains("-1"), "{e}");
    let e = bound_chain(
        &schedule,
        &model,
        &marginals,
        &ys.reshape(2)?,
        &full(0.1)?,
        &config,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ys"), "{e}");
    let other = ChainConfig {
        n_time_nodes: 3,
        ..config
    };
    let e = bound_chain(&schedule, &model, &marginals, &ys, &full(0.1)?, &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("marginals"), "{e}");
    Ok(())
}
