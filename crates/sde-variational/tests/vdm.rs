//! The variational diffusion model as a parameterisation of the SDE ELBO (`docs/MATH.md` §6): the
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
use sde_variational::flow_matching::{fm_loss_weighted, Interpolant};
use sde_variational::vdm::{drift_matching_closed_form, VdmSde, VpSchedule};
use sde_variational::{
    Activation, DiffusionAt, FlowMarginal, Mlp, MlpConfig, Result, Time, VariationalProcess,
};

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

/// Flow matching as an SDE (`docs/MATH.md` §8, eq. 58): drift `f = 2 v − f_q,bwd` with the
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
        interpolant: interpolant.clone(),
    };
    let general = diffusion_term(&interpolant, &model, &y, &t, &eps)?;
    // 2 L_FM with the σ-weighting of docs/MATH.md §8: 2 |v − u|² / σ².
    let twice = (fm_loss_weighted(&v, &interpolant, &y, &t, &eps, &fm_sigma2(&t)?)? * 2.0)?;
    let e = rel_err(&general, &twice)?;
    // The same algebra in two orders; the y-terms cancel in f_q,bwd to rounding of |y| ≤ 8
    // times coefficients ≲ 20: 1e-10 relative.
    assert!(e < 1e-10, "{e:e}");
    Ok(())
}

mod score {
    use super::*;
    use sde_solvers::OdeMethod;
    use sde_variational::score_matching::{dsm_loss, ScoreFlow, ScoreSde};

    fn score_model(seed: u64) -> Result<ScoreSde> {
        let vdm = model(DType::F64, seed, (-5.0, 5.0))?;
        ScoreSde::new(vdm.schedule().detached(), vdm.net().clone())
    }

    #[test]
    fn dsm_loss_is_the_sde_elbo_diffusion_term() -> Result<()> {
        let sm = score_model(11)?;
        let mut rng = StdRng::seed_from_u64(12);
        let n = 200;
        let y = column(
            (0..n).map(|_| rng.random_range(-8.0..8.0)).collect(),
            DType::F64,
        )?;
        let t = column(
            (0..n).map(|_| rng.random_range(0.0..1.0)).collect(),
            DType::F64,
        )?;
        let eps = column(
            (0..n)
                .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
                .collect(),
            DType::F64,
        )?;
        let general = diffusion_term(sm.schedule(), &sm, &y, &t, &eps)?;
        let dsm = dsm_loss(&sm, &y, &t, &eps)?;
        // The same algebra in two orders (the general one cancels the y terms of f_q against
        // f_q,bwd): a few ulp of terms up to σ²|x|/b² ≈ 1e3 near t = 1, so 1e-10 relative.
        let e = rel_err(&general, &dsm)?;
        assert!(e < 1e-10, "{e:e}");
        Ok(())
    }

    #[test]
    fn the_probability_flow_divergence_matches_finite_differences() -> Result<()> {
        let sm = score_model(13)?;
        let flow = ScoreFlow(&sm);
        let x = column(vec![-3.0, -0.4, 0.0, 1.1, 5.0], DType::F64)?;
        for t in [0.05, 0.5, 0.95] {
            let e = divergence_error(&flow, &x, t)?;
            assert!(e < 1e-6, "t {t}: {e:e}");
        }
        Ok(())
    }

    #[test]
    fn the_probability_flow_density_integrates_to_one() -> Result<()> {
        let sm = score_model(14)?;
        // With λ from −5 to 5 the ½σ²x term alone stretches the prior by e^{½∫σ²dt} = e^{2.5}
        // ≈ 12, so an untrained model's density spreads over ±60: integrate over [−90, 90].
        let ys: Vec<f64> = (0..=900).map(|i| -90.0 + 0.2 * i as f64).collect();
        let ll = values(&ScoreFlow(&sm).log_likelihood(
            &column(ys.clone(), DType::F64)?,
            OdeMethod::Rk4,
            100,
        )?)?;
        let mass: f64 = ll.iter().map(|l| l.exp()).sum::<f64>() * 0.2;
        // A change of variables of N(0, 1) by a smooth flow: mass 1 up to RK4's error and the
        // Riemann sum (h = 0.2 on a density of scale ≈ 12: both far below 1e-3).
        assert!((mass - 1.0).abs() < 1e-3, "{mass}");
        Ok(())
    }
}

/// The relative error of a probability-flow field's divergence at `x` against central
/// differences of its velocity. With h = 1e-5 in f64 the differences are ≈ 1e-9 relative for
/// these smooth fields, so callers allow 1e-6.
fn divergence_error<F: sde_core::DivergenceField<Tensor, Tensor>>(
    flow: &F,
    x: &Tensor,
    t: f64,
) -> Result<f64> {
    let h = 1e-5;
    let field = |x: &Tensor| {
        flow.velocity_divergence(x, t)
            .map_err(sde_variational::Error::from)
    };
    let (_, div) = field(x)?;
    let (vp, _) = field(&(x + h)?)?;
    let (vm, _) = field(&(x - h)?)?;
    rel_err(&div, &((vp - vm)? / (2.0 * h))?)
}

/// The VDM's implied score `s = −(x − a ŷ)/b²` reproduces its drift, `f = ½σ²x + σ² s`, and its
/// probability-flow divergence matches central differences of the velocity.
#[test]
fn the_vdm_score_gives_its_drift_and_a_probability_flow() -> Result<()> {
    use sde_variational::score_matching::{ScoreFlow, VpScore};
    let vdm = model(DType::F64, 21, (-5.0, 5.0))?;
    let x = column(vec![-6.0, -1.3, 0.0, 0.7, 3.9], DType::F64)?;
    let flow = ScoreFlow(&vdm);
    for t in [0.05, 0.5, 0.95] {
        let ts = Tensor::full(t, (5, 1), &Device::Cpu)?;
        let (f, d) = vdm.drift_and_diffusion(&x, &ts)?;
        let (s, _) = vdm.learned_score(&x, Time::Scalar(t), false)?;
        let implied = ((x.broadcast_mul(&d.sigma2)? * 0.5)? + s.broadcast_mul(&d.sigma2)?)?;
        // Two orders of the same algebra: a few ulp of terms up to σ²|x|/b² ≈ 1e3, relative.
        assert!(rel_err(&f, &implied)? < 1e-10, "t {t}");
        let e = divergence_error(&flow, &x, t)?;
        assert!(e < 1e-6, "t {t}: {e:e}");
    }
    Ok(())
}
