//! Tests of the variational flows (`sde_variational::process::FlowMarginal`,
//! `sde_variational::flow`): the sinh–arcsinh flow reduces to the Gaussian without shape; its
//! inverse, log-determinant, time derivative and score against round trips and finite
//! differences; samples transported by its derived ODE drift land on the flow.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{column, net, random_process, random_sde, rel_err, values};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_solvers::{OdeMethod, TimeGrid};
use sde_variational::flow::{asinh, SinhArcsinh, SinhArcsinhMarginal};
use sde_variational::{
    Activation, DiffusionAt, FlowMarginal, GaussianLikelihood, NetworkGaussian, Result, Time,
    VariationalField, VariationalProcess,
};

/// A random sinh–arcsinh process on a random Gaussian process (2-16-16 networks, f64).
fn random_flow(seed: u64) -> Result<SinhArcsinh<NetworkGaussian>> {
    let base = random_process(seed, 0.3)?;
    let mut rng = StdRng::seed_from_u64(seed + 1000);
    let shape = net(vec![2, 16, 16, 2], Activation::Identity, "shape", &mut rng)?.detached()?;
    SinhArcsinh::new(base, shape)
}

const YS: [f64; 6] = [-2.5, -1.0, 0.0, 0.3, 1.4, 3.0];
const TS: [f64; 6] = [0.0, 0.1, 0.35, 0.5, 0.8, 0.97];
const EPS: [f64; 6] = [-3.5, -0.8, 0.0, 0.2, 1.1, 2.9];

fn shifted(ts: &[f64], h: f64) -> Result<Tensor> {
    column(&ts.iter().map(|t| t + h).collect::<Vec<_>>())
}

#[test]
fn without_shape_the_sinh_arcsinh_flow_is_the_gaussian() -> Result<()> {
    let process = random_process(1, 0.2)?;
    let (ys, ts, eps) = (column(&YS)?, column(&TS)?, column(&EPS)?);
    let g = process.marginal(&ys, Time::PerSample(&ts), true)?;
    let zero = ys.zeros_like()?;
    let f = SinhArcsinhMarginal {
        base: g.clone(),
        skew: zero.clone(),
        log_tail: zero.clone(),
        dskew_dt: Some(zero.clone()),
        dlog_tail_dt: Some(zero.clone()),
    };
    let x = g.sample(&eps)?;
    let d = DiffusionAt {
        sigma2: column(&[0.3, 1.0, 2.0, 0.7, 1.5, 0.1])?,
        dsigma2_dx: Some(column(&[0.1, -0.2, 0.0, 0.5, -1.0, 0.3])?),
    };
    let rule = sde_core::quadrature::gauss_hermite(16)?;
    let y_obs = column(&[0.1, -0.4, 0.2, 1.0, 1.2, 2.5])?;
    let delta = Tensor::full(0.3f64, (1, 1), &Device::Cpu)?;
    let pairs = [
        (f.sample(&eps)?, x.clone()),
        (f.eps_of(&x)?, eps.clone()),
        (f.log_density(&x)?, g.log_density(&x)?),
        (f.ode_drift(&x)?, g.ode_drift(&x)?),
        (f.score(&x)?, g.score(&x)?),
        (f.forward_drift(&x, &d)?, g.forward_drift(&x, &d)?),
        (f.reverse_drift(&x, &d)?, g.reverse_drift(&x, &d)?),
        // The quadrature defaults against the Gaussian's closed forms (the integrands are
        // quadratic in ε: the 16-node rule is exact up to rounding).
        (f.kl_to_standard_normal(&rule)?, g.kl_to_standard_normal()?),
        (
            f.expected_log_likelihood(&y_obs, &GaussianLikelihood::new(delta.clone())?, &rule)?,
            g.expected_gaussian_log_likelihood(&y_obs, &delta)?,
        ),
    ];
    // The same algebra in another order: rounding only (measured ≤ 3.5e-16; 1e-12 leaves room
    // for other platforms' libm).
    for (i, (a, b)) in pairs.iter().enumerate() {
        let e = rel_err(a, b)?;
        assert!(e < 1e-12, "quantity {i}: relative error {e:e}");
    }
    // The Gaussian's log-density is the closed form (rounding of a few operations).
    let closed = ((&x - &g.alpha)? / &g.beta)?
        .sqr()?
        .affine(-0.5, -0.5 * 1.837_877_066_409_345_3)?
        .sub(&g.beta.log()?)?;
    assert!(rel_err(&g.log_density(&x)?, &closed)? < 1e-14);
    Ok(())
}

#[test]
fn inverse_log_det_time_derivative_and_score_match_round_trips_and_finite_differences() -> Result<()>
{
    let process = random_flow(2)?;
    let (ys, ts, eps) = (column(&YS)?, column(&TS)?, column(&EPS)?);
    let q = process.marginal(&ys, Time::PerSample(&ts), true)?;
    let x = q.sample(&eps)?;
    // The shape is real: far from the Gaussian with the same α, β.
    let linear = q.base.sample(&eps)?;
    assert!(
        rel_err(&x, &linear)? > 1e-2,
        "the random shape is negligible"
    );

    // Round trip ε → x → ε (rounding only; measured 3.8e-16).
    let e = rel_err(&q.eps_of(&x)?, &eps)?;
    assert!(e < 1e-12, "round trip off by {e:e}");

    // log ∂φ/∂ε against a central difference in ε (h = 1e-5: truncation ~h² φ''', rounding
    // ~1e-16/h; measured 8.7e-11, asserted 1e-8).
    let h = 1e-5;
    let dphi = ((q.sample(&(&eps + h)?)? - q.sample(&(&eps - h)?)?)? / (2.0 * h))?;
    let e = rel_err(&q.log_det(&eps)?.exp()?, &dphi)?;
    assert!(e < 1e-8, "∂φ/∂ε off by {e:e}");

    // ∂φ/∂t (the ODE drift at ε) against a central difference of φ(ε, t ± h): this checks the
    // networks' ∂/∂t tangents and the chain rule through skew and tail weight (measured 1.6e-11,
    // asserted 1e-7: the same h as above, through networks whose third derivatives are larger).
    let at = |dt: f64| -> Result<Tensor> {
        process
            .marginal(&ys, Time::PerSample(&shifted(&TS, dt)?), false)?
            .sample(&eps)
    };
    let fd = ((at(h)? - at(-h)?)? / (2.0 * h))?;
    let e = rel_err(&q.ode_drift_at_eps(&eps)?, &fd)?;
    assert!(e < 1e-7, "∂φ/∂t off by {e:e}");

    // The score against a central difference of log q in x (measured 1.4e-11; asserted 1e-6,
    // which a wrong term in the score, of relative size ≳ 1e-3, would exceed).
    let hx = 1e-5;
    let fd = ((q.log_density(&(&x + hx)?)? - q.log_density(&(&x - hx)?)?)? / (2.0 * hx))?;
    let e = rel_err(&q.score(&x)?, &fd)?;
    assert!(e < 1e-6, "score off by {e:e}");

    // The density integrates to 1 (one row; midpoint sum over a wide fine grid, the tails
    // beyond ±40 β carry nothing at these shapes; measured |mass − 1| = 3.5e-14, asserted 1e-6).
    let one = process.marginal(&column(&[0.7])?, Time::Scalar(0.2), false)?;
    let (a, b) = (values(&one.base.alpha)?[0], values(&one.base.beta)?[0]);
    let n = 200_000;
    let (lo, hi) = (a - 40.0 * b, a + 40.0 * b);
    let dx = (hi - lo) / n as f64;
    let xs: Vec<f64> = (0..n).map(|i| lo + (i as f64 + 0.5) * dx).collect();
    let rows = Tensor::from_slice(&xs, (n, 1), &Device::Cpu)?;
    let wide = process.marginal(
        &Tensor::full(0.7f64, (n, 1), &Device::Cpu)?,
        Time::Scalar(0.2),
        false,
    )?;
    let mass: f64 = values(&wide.log_density(&rows)?.exp()?)?
        .iter()
        .sum::<f64>()
        * dx;
    assert!((mass - 1.0).abs() < 1e-6, "mass {mass}");
    Ok(())
}

#[test]
fn samples_transported_by_the_derived_ode_drift_land_on_the_flow() -> Result<()> {
    // x(t1) from x(t0) = φ(ε, t0) by RK4 on v(x, t) = ∂_tφ(φ⁻¹(x, t), t) equals φ(ε, t1): the
    // derived drift transports the flow (eq. 39–40). Both directions. RK4 with 100 steps on
    // these smooth fields: measured 2.5e-11 and 3.9e-11; asserted 1e-6, far below what a wrong
    // velocity term would leave (the shape moves φ by more than 1e-2).
    let process = random_flow(3)?;
    let model = random_sde(4)?; // the field's SDE form needs a diffusion; unused by the ODE
    let ys = column(&YS)?;
    let eps = column(&EPS)?;
    let field = VariationalField::new(&process, &model, ys.clone());
    let flow_at =
        |t: f64| -> Result<Tensor> { process.marginal(&ys, Time::Scalar(t), false)?.sample(&eps) };
    for (t0, t1) in [(0.0, 1.0), (0.9, 0.05)] {
        let x1 = OdeMethod::Rk4
            .solve(
                &field,
                flow_at(t0)?,
                &TimeGrid::uniform(t0, t1, 100)?,
                false,
            )?
            .into_last();
        let e = rel_err(&x1, &flow_at(t1)?)?;
        assert!(e < 1e-6, "from t = {t0} to {t1}: off by {e:e}");
    }
    Ok(())
}

#[test]
fn asinh_is_accurate_and_differentiable_everywhere() -> Result<()> {
    let zs = [-1e6, -30.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 7.0, 1e6];
    let var = Var::from_tensor(&column(&zs)?)?;
    let a = asinh(var.as_tensor())?;
    for (z, v) in zs.iter().zip(values(&a)?) {
        // Absolute accuracy (ln(1 + z) rounds tiny z to ~1e-16 absolute).
        let tol = 4e-16 * z.asinh().abs().max(1.0);
        assert!((v - z.asinh()).abs() <= tol, "asinh({z}) = {v}");
    }
    // d asinh / dz = 1 / √(1 + z²), zero included (where a sign-based formula gives 0).
    let grads = a.sum_all()?.backward()?;
    let g = values(grads.get(var.as_tensor()).expect("a gradient"))?;
    for (z, gv) in zs.iter().zip(g) {
        let exact = 1.0 / (1.0 + z * z).sqrt();
        assert!(
            (gv - exact).abs() <= 1e-12 * exact,
            "d asinh({z}) = {gv}, not {exact}"
        );
    }
    // f32, far in the tails: finite values and gradients.
    let var = Var::from_tensor(&column(&zs)?.to_dtype(DType::F32)?)?;
    let a = asinh(var.as_tensor())?;
    let grads = a.sum_all()?.backward()?;
    let g = values(grads.get(var.as_tensor()).expect("a gradient"))?;
    assert!(values(&a)?.iter().chain(&g).all(|v| v.is_finite()));
    Ok(())
}

#[test]
fn a_shape_network_of_the_wrong_size_is_refused() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    for (widths, output) in [
        (vec![2, 8, 1], Activation::Identity),
        (vec![3, 8, 2], Activation::Identity),
        (vec![2, 8, 2], Activation::Softplus),
    ] {
        let shape = net(widths, output, "shape", &mut rng)?;
        let e = SinhArcsinh::new(random_process(6, 0.2)?, shape)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape"), "{e}");
    }
    Ok(())
}
