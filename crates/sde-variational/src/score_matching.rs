//! Score matching (`docs/MATH.md` §7; paper §7.2) as a parameterisation of the SDE ELBO: the
//! variational process is the variance-preserving one of [`crate::vdm`], the generative drift is
//! `f = f_q,bwd + σ² s_θ` with a learned score `s_θ`, and the drift-matching term becomes the
//! denoising score-matching loss `½ σ² |s_θ(x_t, t) − ∇ₓ log q_t(x_t | y)|²` with
//! `∇ₓ log q_t(x_t | y) = −ε / b_t` (eq. 56).
//!
//! The score is parameterised by noise prediction, `s_θ(x, t) = −M(x, t) / b_t` with `M` a tanh
//! MLP on `[x, t]`, so the loss is `½ σ²/b² |ε − M|² = ½ (λ₁ − λ₀) |ε − M|²`. Generation runs
//! the generative (reverse-time) SDE, or the probability-flow ODE
//! `v = f − ½ σ² s_θ = ½ σ² (x + s_θ)` (the VP reverse drift is `½ σ² x`), whose exact
//! likelihood comes from [`sde_solvers::cnf`].

use candle_core::{DType, Tensor};
use sde_core::{DivergenceField, VectorField};

use crate::elbo::GenerativeSde;
use crate::engine::value_and_tangents;
use crate::error::{Error, Result};
use crate::mlp::{Mlp, Time};
use crate::process::{DiffusionAt, FlowMarginal, VariationalProcess};
use crate::vdm::{VdmSde, VpSchedule};

/// The score-matching generative SDE on a VP schedule: `f = f_q,bwd + σ² s_θ`,
/// `s_θ = −M(x, t)/b_t`.
#[derive(Debug, Clone)]
pub struct ScoreSde {
    schedule: VpSchedule,
    net: Mlp,
}

impl ScoreSde {
    /// The SDE of `schedule` and the noise-prediction network `net` (input `[x, t]`, one
    /// output).
    ///
    /// # Errors
    /// A network of another shape.
    pub fn new(schedule: VpSchedule, net: Mlp) -> Result<Self> {
        if net.in_dim() != 2 || net.out_dim() != 1 {
            return Err(Error::invalid(
                "net",
                format!("widths {:?}", net.config().widths),
                "must map [x, t] to one output",
            ));
        }
        Ok(Self { schedule, net })
    }

    /// The schedule.
    pub fn schedule(&self) -> &VpSchedule {
        &self.schedule
    }

    /// The network `M`.
    pub fn net(&self) -> &Mlp {
        &self.net
    }

    /// A copy that builds no gradient graph.
    pub fn detached(&self) -> Result<Self> {
        Ok(Self {
            schedule: self.schedule.detached(),
            net: self.net.detached()?,
        })
    }

    /// The learned score `s_θ(x, t) = −M(x, t)/b_t` and, with `dx`, its `∂/∂x`.
    pub fn score(&self, x: &Tensor, t: Time<'_>, dx: bool) -> Result<(Tensor, Option<Tensor>)> {
        let dirs: &[usize] = if dx { &[0] } else { &[] };
        let (m, dm) = value_and_tangents(&self.net, x, t, dirs)?;
        let (_, b, _) = self.schedule.coefficients(t)?;
        let s = m.broadcast_div(&b)?.neg()?;
        let ds = match dm.first() {
            Some(dm) => Some(dm.broadcast_div(&b)?.neg()?),
            None => None,
        };
        Ok((s, ds))
    }

    /// The reverse drift `f_q,bwd` of the VP process and the diffusion at `x` and `t`
    /// ([`vp_reverse_and_diffusion`]).
    fn reverse_and_diffusion(&self, x: &Tensor, t: Time<'_>) -> Result<(Tensor, DiffusionAt)> {
        vp_reverse_and_diffusion(&self.schedule, x, t)
    }
}

/// The reverse drift `f_q,bwd` of the VP process (`½ σ² x`, the same for every data point:
/// evaluated through the process at `y = 0`) and the diffusion, at `x` and `t`.
fn vp_reverse_and_diffusion(
    schedule: &VpSchedule,
    x: &Tensor,
    t: Time<'_>,
) -> Result<(Tensor, DiffusionAt)> {
    let (_, _, sigma2) = schedule.coefficients(t)?;
    let d = DiffusionAt {
        sigma2: sigma2.broadcast_as(x.dims())?.contiguous()?,
        dsigma2_dx: None,
    };
    let q = schedule.marginal(&x.zeros_like()?, t, true)?;
    Ok((q.reverse_drift(x, &d)?, d))
}

/// A generative SDE on a VP schedule whose drift is `f = f_q,bwd + σ² s_θ` for a learned score
/// `s_θ`: what its probability-flow ODE ([`ScoreFlow`]) needs. [`ScoreSde`] (noise prediction)
/// and [`VdmSde`] (signal prediction, `s_θ = −(x − a_t ŷ)/b_t²`, because the VDM drift
/// `f_q(x, ŷ, t) = f_q,bwd + σ² ∇ₓ log q_t(x | ŷ)`) are two parameterisations of it.
pub trait VpScore {
    /// The schedule.
    fn vp_schedule(&self) -> &VpSchedule;
    /// `s_θ(x, t)` and, with `dx`, `∂s_θ/∂x`.
    fn learned_score(&self, x: &Tensor, t: Time<'_>, dx: bool) -> Result<(Tensor, Option<Tensor>)>;
}

impl VpScore for ScoreSde {
    fn vp_schedule(&self) -> &VpSchedule {
        &self.schedule
    }

    fn learned_score(&self, x: &Tensor, t: Time<'_>, dx: bool) -> Result<(Tensor, Option<Tensor>)> {
        self.score(x, t, dx)
    }
}

impl VpScore for VdmSde {
    fn vp_schedule(&self) -> &VpSchedule {
        self.schedule()
    }

    /// `s = −(x − a ŷ)/b²` with `ŷ = x + M`, and `∂s/∂x = −(1 − a (1 + ∂M/∂x))/b²`.
    fn learned_score(&self, x: &Tensor, t: Time<'_>, dx: bool) -> Result<(Tensor, Option<Tensor>)> {
        let dirs: &[usize] = if dx { &[0] } else { &[] };
        let (m, dm) = value_and_tangents(self.net(), x, t, dirs)?;
        let (a, b, _) = self.schedule().coefficients(t)?;
        let b2 = b.sqr()?;
        let y_hat = (x + m)?;
        let s = (x - y_hat.broadcast_mul(&a)?)?.broadcast_div(&b2)?.neg()?;
        let ds = match dm.first() {
            // −(1 − a − a ∂M/∂x)/b².
            Some(dm) => Some(
                dm.broadcast_mul(&a)?
                    .broadcast_add(&a)?
                    .affine(1.0, -1.0)?
                    .broadcast_div(&b2)?,
            ),
            None => None,
        };
        Ok((s, ds))
    }
}

impl GenerativeSde for ScoreSde {
    fn drift_and_diffusion(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, DiffusionAt)> {
        let (bwd, d) = self.reverse_and_diffusion(x, Time::PerSample(t))?;
        let (s, _) = self.score(x, Time::PerSample(t), false)?;
        let f = (bwd + (&d.sigma2 * s)?)?;
        Ok((f, d))
    }
}

/// The denoising score-matching loss per row, `½ σ²(t) |s_θ(x_t, t) + ε/b_t|²` at
/// `x_t = a_t y + b_t ε` — the SDE ELBO's diffusion term for [`ScoreSde`] (tested).
pub fn dsm_loss(model: &ScoreSde, y: &Tensor, t: &Tensor, eps: &Tensor) -> Result<Tensor> {
    let (a, b, sigma2) = model.schedule.coefficients(Time::PerSample(t))?;
    let x = (y.broadcast_mul(&a)? + eps.broadcast_mul(&b)?)?;
    let (s, _) = model.score(&x, Time::PerSample(t), false)?;
    let target = eps.broadcast_div(&b)?.neg()?;
    Ok(((s - target)?.sqr()?.broadcast_mul(&sigma2)? * 0.5)?)
}

/// The probability-flow ODE of a [`VpScore`] model ([`ScoreSde`], or [`VdmSde`]), `v = ½ σ² (x + s_θ)`, with its divergence
/// `½ σ² (1 + ∂s_θ/∂x)`: a continuous normalizing flow whose exact likelihood
/// [`sde_solvers::cnf::integrate`] computes (pass a detached model for evaluation).
#[derive(Debug, Clone)]
pub struct ScoreFlow<'a, M = ScoreSde>(pub &'a M);

fn core_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl<M: VpScore> ScoreFlow<'_, M> {
    fn eval(&self, x: &Tensor, t: f64, div: bool) -> Result<(Tensor, Option<Tensor>)> {
        let model = self.0;
        let (s, ds) = model.learned_score(x, Time::Scalar(t), div)?;
        let (bwd, d) = vp_reverse_and_diffusion(model.vp_schedule(), x, Time::Scalar(t))?;
        // v = f − ½ σ² s = f_q,bwd + ½ σ² s.
        let v = (bwd + (&d.sigma2 * s)?.affine(0.5, 0.0)?)?;
        let divergence = match ds {
            Some(ds) => Some((ds.affine(1.0, 1.0)? * &d.sigma2)?.affine(0.5, 0.0)?),
            None => None,
        };
        Ok((v, divergence))
    }

    /// `log p_1(y)` per row of `ys` `(B, 1)` under the probability-flow ODE: integrate from
    /// t = 1 to t = 0 on `n_steps` steps of `method`, add the standard normal's log-density.
    pub fn log_likelihood(
        &self,
        ys: &Tensor,
        method: sde_solvers::OdeMethod,
        n_steps: usize,
    ) -> Result<Tensor> {
        let grid = sde_solvers::TimeGrid::uniform(1.0, 0.0, n_steps)?;
        let zero = Tensor::zeros(ys.dims(), ys.dtype(), ys.device())?;
        let sol = sde_solvers::cnf::integrate(method, self, ys.clone(), zero, &grid)?;
        let log_p0 = sol
            .x_end
            .sqr()?
            .affine(-0.5, -0.5 * crate::process::LN_2PI)?;
        Ok((log_p0 + sol.divergence_integral)?.to_dtype(DType::F64)?)
    }
}

impl<M: VpScore> VectorField<Tensor> for ScoreFlow<'_, M> {
    fn velocity(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        self.eval(x, t, false).map(|(v, _)| v).map_err(core_err)
    }
}

impl<M: VpScore> DivergenceField<Tensor, Tensor> for ScoreFlow<'_, M> {
    fn velocity_divergence(&self, x: &Tensor, t: f64) -> sde_core::Result<(Tensor, Tensor)> {
        match self.eval(x, t, true).map_err(core_err)? {
            (v, Some(div)) => Ok((v, div)),
            (_, None) => Err(core_err(Error::invalid(
                "score",
                "no tangent",
                "the engine returned no ∂s/∂x",
            ))),
        }
    }
}

/// One time per step, for the solvers (sampling the generative SDE by Euler–Maruyama).
impl sde_core::Drift<Tensor> for ScoreSde {
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        let run = || -> Result<Tensor> {
            let (bwd, d) = self.reverse_and_diffusion(x, Time::Scalar(t))?;
            let (s, _) = self.score(x, Time::Scalar(t), false)?;
            Ok((bwd + (&d.sigma2 * s)?)?)
        };
        run().map_err(core_err)
    }
}

impl sde_core::Diffusion<Tensor> for ScoreSde {
    /// `σ(t) = √((λ₁ − λ₀) b_t²)`, the same for every path.
    fn diffusion(&self, _x: &Tensor, t: f64) -> sde_core::Result<sde_core::Noise<Tensor>> {
        let run = || -> Result<f64> {
            let (_, _, sigma2) = self.schedule.coefficients(Time::Scalar(t))?;
            let v: Vec<f64> = sigma2.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            Ok(v.first().copied().unwrap_or(f64::NAN).sqrt())
        };
        run().map(sde_core::Noise::Scalar).map_err(core_err)
    }

    fn diffusion_divergence(&self, _x: &Tensor, _t: f64) -> sde_core::Result<Option<Tensor>> {
        Ok(None)
    }
}
