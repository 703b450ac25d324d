//! The variational diffusion model as a parameterisation of the SDE ELBO (`MATH.md` §6): the
//! general drift-matching code with `f = f_q(x, ŷ, t)` equals the closed form
//! `½ SNR'(t)(y − ŷ)²`; the VP process's reverse drift is `½ σ² x` for every `y`; the schedule's
//! time derivatives match finite differences.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use common::{rel_err, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sde_variational::elbo::{diffusion_term, GenerativeSde};
use sde_variational::flow_matching::{fm_loss, Interpolant};
use sde_variational::vdm::{drift_matching_closed_form, VdmSde, VpSchedule};
use sde_variational::{Activation, DiffusionAt, GaussianProcess, Mlp, MlpConfig, Result, Time};

fn model(dtype: DType, seed: u64, lambda: (f64, f64)) -> Result<VdmSde> {
    let mut rng = StdRng::seed_from_u64(seed);
    let net = Mlp::new(
        &MlpConfig::new(vec![2, 16, 16, 1], Activation::Identity),
        &VarMap::new(),
        "m",
        dtype,
        &Device::Cpu,
        &mut rng,
    )?;
    let (l0, l1) = VpSchedule::vars(lambda.0, lambda.1, dtype, &Device::Cpu)?;
    VdmSde::new(
        VpSchedule::new(l0.as_tensor().clone(), l1.as_tensor().clone())?,
        net,
    )
}

fn column(v: Vec<f64>, dtype: DType) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, (n, 1), &Device::Cpu)?.to_dtype(dtype)?)
}

#[test]
fn general_drift_matching_equals_the_closed_form() -> Result<()> {
    // f64: the two are the same algebra in a different order, a few ulp apart (1e-10 allows
    // for SNR' up to e⁵·10 amplifying them). f32 (the "to f32 precision"): 1e-4
    // relative, since (f − f_q)² / 2σ² divides by σ² ∝ b² ≈ e^{−5} near t = 1.
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        let vdm = model(dtype, 1, (-5.0, 5.0))?;
        let mut rng = StdRng::seed_from_u64(2);
        let n = 200;
        let y = column((0..n).map(|_| rng.random_range(-8.0..8.0)).collect(), dtype)?;
        let t = column((0..n).map(|_| rng.random_range(0.0..1.0)).collect(), dtype)?;
        let eps = column(
            (0..n)
                .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
                .collect(),
            dtype,
        )?;
        let general = diffusion_term(vdm.schedule(), &vdm, &y, &t, &eps)?;
        let closed = drift_matching_closed_form(&vdm, &y, &t, &eps)?;
        let e = rel_err(&general, &closed)?;
        assert!(e < tol, "{dtype:?}: {e:e}");
    }
    Ok(())
}

#[test]
fn the_vp_reverse_drift_is_half_sigma2_x_for_every_y() -> Result<()> {
    let vdm = model(DType::F64, 3, (-4.0, 6.0))?;
    let schedule = vdm.schedule();
    let x = column(vec![-3.0, -0.5, 0.0, 1.2, 4.0], DType::F64)?;
    for t in [0.1, 0.5, 0.9] {
        let ts = Tensor::full(t, (5, 1), &Device::Cpu)?;
        let d: DiffusionAt = schedule.diffusion(&ts)?;
        let half_sigma2_x = values(&(x.broadcast_mul(&d.sigma2)? * 0.5)?)?;
        for y in [-7.0, 0.3, 5.0] {
            let ys = Tensor::full(y, (5, 1), &Device::Cpu)?;
            let q = schedule.marginal(&ys, Time::Scalar(t), true)?;
            let bwd = values(&q.reverse_drift(&x, &d)?)?;
            for (a, b) in bwd.iter().zip(&half_sigma2_x) {
                // Cancellation of the y terms leaves a few ulp of |ȧ y| ≲ 10.
                assert!((a - b).abs() < 1e-12, "t {t} y {y}: {a} vs {b}");
            }
        }
    }
    Ok(())
}

#[test]
fn schedule_derivatives_and_identity_match() -> Result<()> {
    let vdm = model(DType::F64, 4, (-5.0, 5.0))?;
    let s = vdm.schedule();
    let ys = column(vec![1.0], DType::F64)?;
    let h = 1e-5;
    for t in [0.05, 0.4, 0.95] {
        let q = s.marginal(&ys, Time::Scalar(t), true)?;
        let at = |t: f64| -> Result<(f64, f64)> {
            let q = s.marginal(&ys, Time::Scalar(t), false)?;
            Ok((values(&q.alpha)?[0], values(&q.beta)?[0]))
        };
        let (ap, bp) = at(t + h)?;
        let (am, bm) = at(t - h)?;
        let (a, b) = (values(&q.alpha)?[0], values(&q.beta)?[0]);
        // a² + b² = 1 (variance preserving), to rounding.
        assert!((a * a + b * b - 1.0).abs() < 1e-14);
        // Central differences, h = 1e-5: error ≈ h² |a'''| ≲ 1e-9 here.
        let da = values(q.dalpha_dt.as_ref().expect("asked for"))?[0];
        let db = values(q.dbeta_dt.as_ref().expect("asked for"))?[0];
        assert!((da - (ap - am) / (2.0 * h)).abs() < 1e-7, "ȧ at {t}");
        assert!((db - (bp - bm) / (2.0 * h)).abs() < 1e-7, "ḃ at {t}");
    }
    // Bad endpoints are refused, naming them.
    let e = VpSchedule::vars(5.0, -5.0, DType::F64, &Device::Cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("lambda"), "{e}");
    Ok(())
}

/// Flow matching as an SDE (`MATH.md` §8, eq. 58): drift `f = 2 v − f_q,bwd` with the
/// diffusion `σ²(t) = 2 (1 − t)/t`, for which the interpolant's reverse drift does not depend
/// on `y` (β₀ = 1, β₁ = 0: the coefficient of `y` in `f_q,bwd` is
/// `1/(1 − t) − ½ σ² t/(1 − t)²`, zero exactly then).
struct FmSde {
    v: Mlp,
    interpolant: Interpolant,
}

fn fm_sigma2(t: &Tensor) -> Result<Tensor> {
    Ok((t.affine(-2.0, 2.0)? / t)?)
}

impl GenerativeSde for FmSde {
    fn drift_and_diffusion(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, DiffusionAt)> {
        let d = DiffusionAt {
            sigma2: fm_sigma2(t)?,
            dsigma2_dx: None,
        };
        // Any y will do, the reverse drift does not depend on it: take y = 0.
        let q = self
            .interpolant
            .marginal(&x.zeros_like()?, Time::PerSample(t), true)?;
        let (v, _) =
            sde_variational::engine::value_and_tangents(&self.v, x, Time::PerSample(t), &[])?;
        let f = ((v * 2.0)? - q.reverse_drift(x, &d)?)?;
        Ok((f, d))
    }
}

#[test]
fn the_fm_elbo_diffusion_term_is_twice_the_weighted_fm_loss() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(9);
    let v = Mlp::new(
        &MlpConfig::new(vec![2, 16, 16, 1], Activation::Identity),
        &VarMap::new(),
        "v",
        DType::F64,
        &Device::Cpu,
        &mut rng,
    )?;
    let interpolant = Interpolant::new(1.0, 0.0)?;
    let n = 100;
    let y = column(
        (0..n).map(|_| rng.random_range(-8.0..8.0)).collect(),
        DType::F64,
    )?;
    // t away from 0 (σ² → ∞) and 1 (β → 0).
    let t = column(
        (0..n).map(|_| rng.random_range(0.05..0.95)).collect(),
        DType::F64,
    )?;
    let eps = column(
        (0..n)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect(),
        DType::F64,
    )?;
    let model = FmSde {
        v: v.clone(),
        interpolant,
    };
    let general = diffusion_term(&interpolant, &model, &y, &t, &eps)?;
    // 2 L_FM with the σ-weighting of MATH.md §8: 2 |v − u|² / σ².
    let twice = ((fm_loss(&v, &interpolant, &y, &t, &eps)? / fm_sigma2(&t)?)? * 2.0)?;
    let e = rel_err(&general, &twice)?;
    // The same algebra in two orders; the y-terms cancel in f_q,bwd to rounding of |y| ≤ 8
    // times coefficients ≲ 20: 1e-10 relative.
    assert!(e < 1e-10, "{e:e}");
    Ok(())
}
