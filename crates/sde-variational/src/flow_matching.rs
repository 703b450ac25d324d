//! Flow matching (`docs/MATH.md` §8; paper §7.3) as a parameterisation of the variational process:
//! the stochastic interpolant `x_t = t y + β_t ε`, `β_t = (1 − t) β₀ + t β₁`, i.e.
//! `q_t(x | y) = N(t y, β_t²)`, whose conditional velocity (the ODE drift of eq. 40 at
//! `x = α + β ε`) is the regression target `u = y + (β₁ − β₀) ε`.
//!
//! The loss `L_FM = E |v_θ(x_t, t) − u|²` trains a velocity field; as an SDE `f = 2 v − f_q,bwd`
//! its ELBO ([`fm_elbo`]) has the closed-form terms `−KL(q₀ ‖ N(0,1)) = ½ (log β₀² + 1 − β₀²)`,
//! `E_{q₁}[log N(y; x₁, δ²)] = −½ (β₁²/δ² + log 2πδ²)` and the diffusion term `2 |v − u|²/σ²`.
//! That last identity needs a reverse drift free of `y`, which holds for exactly one diffusion,
//! `σ²(t) = 2 β₀ β_t / t` ([`Interpolant::y_free_sigma2`]); with the reference's `σ ≡ 1` the
//! monitored `reconstruction − KL − 2 L_FM` is not the ELBO of any SDE. The reference's
//! `β₁ = 0` also needs a vanishing likelihood width to score well, so flow matching is judged by
//! its exact likelihood through the probability-flow ODE ([`crate::NeuralOde`]).
//!
//! The widths `β₀, β₁` are fixed ([`Interpolant::new`]) or learned ([`Interpolant::learned`]),
//! trained then on the negative σ-weighted ELBO, a true bound.

use candle_core::{DType, Device, Tensor, Var};

use crate::elbo::ElboTerms;
use crate::engine::value_and_tangents;
use crate::error::{Error, Result};
use crate::mlp::{softplus, Mlp, Time};
use crate::process::{FlowMarginal, GaussianMarginal, VariationalProcess};

/// The interpolant `x_t = t y + β_t ε` with `β_t = (1 − t) β₀ + t β₁` (reference: `β₀ = 1`,
/// `β₁ = 0`, so the prior is `N(0, β₀²)`). The widths are fixed numbers
/// ([`Interpolant::new`]) or learned ([`Interpolant::learned`]: `β = softplus(θ)` for two
/// `(1, 1)` variables, trained through [`fm_elbo`]).
#[derive(Debug, Clone)]
pub struct Interpolant {
    betas: Betas,
}

#[derive(Debug, Clone)]
enum Betas {
    Fixed(f64, f64),
    Learned { raw0: Var, raw1: Var },
}

impl Interpolant {
    /// The interpolant between `N(0, beta0²)` at t = 0 and `N(y, beta1²)` at t = 1.
    ///
    /// # Errors
    /// `beta0` not finite and positive, `beta1` not finite and non-negative.
    pub fn new(beta0: f64, beta1: f64) -> Result<Self> {
        check_betas(beta0, beta1, false)?;
        Ok(Self {
            betas: Betas::Fixed(beta0, beta1),
        })
    }

    /// An interpolant whose widths are learned, starting from `(beta0, beta1)`: `β = softplus(θ)`
    /// with `θ` two `(1, 1)` variables of `dtype` (returned, for the optimiser).
    ///
    /// # Errors
    /// `beta0` or `beta1` not finite and positive (the softplus never reaches 0, and the ELBO's
    /// reconstruction and weighting need `β₁ > 0`).
    pub fn learned(
        beta0: f64,
        beta1: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, [Var; 2])> {
        check_betas(beta0, beta1, true)?;
        // θ = softplus⁻¹(β) = ln(e^β − 1).
        let var = |b: f64| -> Result<Var> {
            let raw = b.exp_m1().ln();
            Ok(Var::from_tensor(
                &Tensor::full(raw, (1, 1), device)?.to_dtype(dtype)?,
            )?)
        };
        let (raw0, raw1) = (var(beta0)?, var(beta1)?);
        let vars = [raw0.clone(), raw1.clone()];
        Ok((
            Self {
                betas: Betas::Learned { raw0, raw1 },
            },
            vars,
        ))
    }

    /// Whether the widths are learned.
    pub fn is_learned(&self) -> bool {
        matches!(self.betas, Betas::Learned { .. })
    }

    /// `(β₀, β₁)`: their current values.
    ///
    /// # Errors
    /// Reading a learned width's variable fails.
    pub fn betas(&self) -> Result<(f64, f64)> {
        match &self.betas {
            Betas::Fixed(b0, b1) => Ok((*b0, *b1)),
            Betas::Learned { raw0, raw1 } => {
                let value = |raw: &Var| -> Result<f64> {
                    Ok(softplus(raw.as_tensor())?
                        .to_dtype(DType::F64)?
                        .flatten_all()?
                        .get(0)?
                        .to_scalar::<f64>()?)
                };
                Ok((value(raw0)?, value(raw1)?))
            }
        }
    }

    /// A copy with the widths' current values, fixed: builds no gradient graph.
    pub fn detached(&self) -> Result<Self> {
        let (b0, b1) = self.betas()?;
        Self::new(b0, b1)
    }

    /// `(β₀, β₁)` as `(1, 1)` tensors of `dtype` (with gradients to the variables when learned).
    fn beta_tensors(&self, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        match &self.betas {
            Betas::Fixed(b0, b1) => {
                let full = |b: f64| -> Result<Tensor> {
                    Ok(Tensor::full(b, (1, 1), device)?.to_dtype(dtype)?)
                };
                Ok((full(*b0)?, full(*b1)?))
            }
            Betas::Learned { raw0, raw1 } => Ok((
                softplus(raw0.as_tensor())?.to_dtype(dtype)?,
                softplus(raw1.as_tensor())?.to_dtype(dtype)?,
            )),
        }
    }

    /// The diffusion `σ²(t) = 2 β₀ β_t / t` under which the interpolant's reverse-time drift
    /// `f_q,bwd = x / t` does not depend on `y` (`docs/MATH.md` §8): the coefficient of `y` in
    /// `f_q,bwd = y + (β̇/β)(x − t y) + ½ σ² (x − t y)/β²` is `1 − t β̇/β − t σ²/(2β²)`, and
    /// `β_t − t β̇ = β₀`. With it the FM ELBO's diffusion term is `2 |v − u|² / σ²`
    /// ([`fm_elbo`]). Infinite at t = 0, zero at t = 1 when `β₁ = 0`.
    pub fn y_free_sigma2(&self, t: &Tensor) -> Result<Tensor> {
        let (b0, b1) = self.beta_tensors(t.dtype(), t.device())?;
        let beta_t = t.broadcast_mul(&(&b1 - &b0)?)?.broadcast_add(&b0)?;
        Ok((beta_t.broadcast_mul(&b0)? / t)?.affine(2.0, 0.0)?)
    }

    /// `(β_t, β̇ / β_t, c_t = 1 − t β̇/β_t)` at `t`.
    fn coefficients(&self, t: f64) -> Result<(f64, f64, f64)> {
        let (b0, b1) = self.betas()?;
        let beta = (1.0 - t) * b0 + t * b1;
        let r = (b1 - b0) / beta;
        Ok((beta, r, 1.0 - t * r))
    }

    /// The marginal score from the marginal velocity (`docs/MATH.md` §8): both are affine in
    /// `E[y | x_t]`, so `ŷ = (v − (β̇/β) x) / c_t` and `∇ log q_t(x) = −(x − t ŷ) / β_t²`.
    /// Exact for the optimum; for a learned velocity it defines the score an SDE sampler uses.
    ///
    /// # Errors
    /// `t` outside `[0, 1)` when `β₁ = 0` (the score is singular at the data), or `c_t = 0`.
    pub fn score_from_velocity(&self, x: &Tensor, v: &Tensor, t: f64) -> Result<Tensor> {
        let (beta, r, c) = self.check_time(t)?;
        let y_hat = ((v - (x * r)?)? / c)?;
        Ok(((x - (y_hat * t)?)? / (-beta * beta))?)
    }

    /// The marginal velocity from the marginal score, the inverse of
    /// [`score_from_velocity`](Self::score_from_velocity): `E[y | x_t] = (x + β_t² s) / t`,
    /// `v = c_t E[y | x_t] + (β̇/β) x`.
    ///
    /// # Errors
    /// `t` not in `(0, 1)` (the data point is not identified at t = 0), or `c_t = 0`.
    pub fn velocity_from_score(&self, x: &Tensor, s: &Tensor, t: f64) -> Result<Tensor> {
        if t <= 0.0 {
            return Err(Error::invalid(
                "t",
                t,
                "must be positive to recover E[y | x] from a score",
            ));
        }
        let (beta, r, c) = self.check_time(t)?;
        let y_hat = ((x + (s * (beta * beta))?)? / t)?;
        Ok(((y_hat * c)? + (x * r)?)?)
    }

    fn check_time(&self, t: f64) -> Result<(f64, f64, f64)> {
        let (beta, r, c) = self.coefficients(t)?;
        let valid = t.is_finite() && (0.0..=1.0).contains(&t) && beta > 0.0 && c != 0.0;
        if !valid {
            return Err(Error::invalid(
                "t",
                t,
                "must lie in [0, 1] where β_t > 0 and c_t ≠ 0",
            ));
        }
        Ok((beta, r, c))
    }
}

impl VariationalProcess for Interpolant {
    type Marginal = GaussianMarginal;

    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<GaussianMarginal> {
        let (alpha, beta, dbeta) = match (&self.betas, t) {
            // Fixed widths: scalar coefficients (two ops fewer per flow-matching step).
            (Betas::Fixed(b0, b1), Time::Scalar(t)) => (
                y.affine(t, 0.0)?,
                y.ones_like()?.affine((1.0 - t) * b0 + t * b1, 0.0)?,
                y.ones_like()?.affine(b1 - b0, 0.0)?,
            ),
            (Betas::Fixed(b0, b1), Time::PerSample(ts)) => (
                (ts * y)?,
                ts.affine(b1 - b0, *b0)?,
                y.ones_like()?.affine(b1 - b0, 0.0)?,
            ),
            // Learned widths: the same line through (1, 1) tensors, so gradients reach them.
            (Betas::Learned { .. }, t) => {
                let (b0, b1) = self.beta_tensors(y.dtype(), y.device())?;
                let slope = (&b1 - &b0)?;
                let (alpha, beta) = match t {
                    Time::Scalar(t) => (
                        y.affine(t, 0.0)?,
                        slope.affine(t, 0.0)?.add(&b0)?.broadcast_as(y.dims())?,
                    ),
                    Time::PerSample(ts) => {
                        ((ts * y)?, ts.broadcast_mul(&slope)?.broadcast_add(&b0)?)
                    }
                };
                (alpha, beta, slope.broadcast_as(y.dims())?)
            }
        };
        let (dalpha_dt, dbeta_dt) = if derivatives {
            (Some(y.clone()), Some(dbeta))
        } else {
            (None, None)
        };
        Ok(GaussianMarginal {
            alpha,
            beta,
            dalpha_dt,
            dbeta_dt,
        })
    }
}

fn check_betas(beta0: f64, beta1: f64, learned: bool) -> Result<()> {
    if !(beta0.is_finite() && beta0 > 0.0) {
        return Err(Error::invalid(
            "beta0",
            beta0,
            "must be finite and positive",
        ));
    }
    if learned && !(beta1.is_finite() && beta1 > 0.0) {
        return Err(Error::invalid(
            "beta1",
            beta1,
            "must be finite and positive when learned (β = softplus(θ) never reaches 0)",
        ));
    }
    if !(beta1.is_finite() && beta1 >= 0.0) {
        return Err(Error::invalid(
            "beta1",
            beta1,
            "must be finite and non-negative",
        ));
    }
    Ok(())
}

/// The flow-matching loss per row, `|v(x_t, t) − u|²` with `x_t = t y + β_t ε` and
/// `u = y + (β₁ − β₀) ε`, for data `y`, times `t` and normals `eps`, all `(B, 1)`; `v` is a
/// network on `[x, t]` (through the engine).
pub fn fm_loss(
    v: &Mlp,
    interpolant: &Interpolant,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    let q = interpolant.marginal(y, Time::PerSample(t), true)?;
    let x = q.sample(eps)?;
    let u = q.ode_drift_at_eps(eps)?;
    let (value, _) = value_and_tangents(v, &x, Time::PerSample(t), &[])?;
    Ok((value - u)?.sqr()?)
}

/// A flow-matching model sampled by an SDE (`docs/MATH.md` §2 and §8): the forward drift
/// `f = v + ½ σ(t)² ∇log q_t` with the score from the learned velocity
/// ([`Interpolant::score_from_velocity`]) and the diffusion `σ(t) = η β_t`. Any `σ` keeps the
/// marginals of the ODE; this one vanishes with `β_t` at the data end, where the score grows like
/// `1/β_t²`, so that `½ σ² ∇log q_t` stays bounded.
#[derive(Debug, Clone)]
pub struct FlowSde<'a> {
    v: &'a Mlp,
    interpolant: Interpolant,
    eta: f64,
}

impl<'a> FlowSde<'a> {
    /// The SDE of velocity `v` on `interpolant` with noise scale `eta ≥ 0` (0: the ODE).
    ///
    /// # Errors
    /// `eta` negative or not finite.
    pub fn new(v: &'a Mlp, interpolant: Interpolant, eta: f64) -> Result<Self> {
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(Error::invalid(
                "eta",
                eta,
                "must be finite and non-negative",
            ));
        }
        Ok(Self {
            v,
            interpolant,
            eta,
        })
    }

    fn sigma(&self, t: f64) -> Result<f64> {
        let (b0, b1) = self.interpolant.betas()?;
        Ok(self.eta * ((1.0 - t) * b0 + t * b1))
    }
}

fn core_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl sde_core::Drift<Tensor> for FlowSde<'_> {
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        let run = || -> Result<Tensor> {
            let (v, _) = value_and_tangents(self.v, x, Time::Scalar(t), &[])?;
            if self.eta == 0.0 {
                return Ok(v);
            }
            let s = self.interpolant.score_from_velocity(x, &v, t)?;
            let sigma = self.sigma(t)?;
            Ok((v + (s * (0.5 * sigma * sigma))?)?)
        };
        run().map_err(core_err)
    }
}

impl sde_core::Diffusion<Tensor> for FlowSde<'_> {
    fn diffusion(&self, _x: &Tensor, t: f64) -> sde_core::Result<sde_core::Noise<Tensor>> {
        Ok(sde_core::Noise::Scalar(self.sigma(t).map_err(core_err)?))
    }

    fn diffusion_divergence(&self, _x: &Tensor, _t: f64) -> sde_core::Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The σ-weighted flow-matching loss per row, `|v(x_t, t) − u|² / σ²` (`docs/MATH.md` §8), for a
/// diffusion `sigma2` `(B, 1)` (or `(1, 1)`) at the rows' times: the weighting under which
/// `2 L_FM` is the SDE ELBO's diffusion term when the reverse drift does not depend on `y`.
/// With `σ ≡ 1` it is [`fm_loss`].
pub fn fm_loss_weighted(
    v: &Mlp,
    interpolant: &Interpolant,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
    sigma2: &Tensor,
) -> Result<Tensor> {
    Ok(fm_loss(v, interpolant, y, t, eps)?.broadcast_div(sigma2)?)
}

/// How [`fm_elbo`]'s diffusion term weights the squared velocity error `|v − u|²`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FmWeighting {
    /// `σ ≡ 1`, the plain MSE of the reference: `reconstruction − KL − 2 L_FM` is then the
    /// quantity the reference code monitors, a bound only where the reverse drift does not
    /// depend on `y`.
    #[default]
    Unit,
    /// `σ²(t) = 2 β₀ β_t / t` ([`Interpolant::y_free_sigma2`]): the reverse drift does not
    /// depend on `y`, and the terms are the SDE ELBO of `f = 2 v − x/t` with this diffusion.
    YFree,
}

/// The flow-matching ELBO's terms per row (`docs/MATH.md` §8) for data `y`, times `t` and normals
/// `eps` (all `(B, 1)`), likelihood `N(y; x₁, δ²)` of width `delta` (`(1, 1)` or `(B, 1)`):
/// reconstruction and `KL(q₀ ‖ N(0, 1))` in closed form from the interpolant's marginals (the
/// general [`GaussianMarginal`] formulas), and the diffusion term `2 |v − u|² / σ²` with `σ²` as
/// `weighting` says. With a learned interpolant every term carries gradients to `β₀, β₁`: its
/// negative mean is the loss that learns them.
pub fn fm_elbo(
    v: &Mlp,
    interpolant: &Interpolant,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
    delta: &Tensor,
    weighting: FmWeighting,
) -> Result<ElboTerms> {
    let q1 = interpolant.marginal(y, Time::Scalar(1.0), false)?;
    let q0 = interpolant.marginal(y, Time::Scalar(0.0), false)?;
    let sq = match weighting {
        FmWeighting::Unit => fm_loss(v, interpolant, y, t, eps)?,
        FmWeighting::YFree => {
            fm_loss_weighted(v, interpolant, y, t, eps, &interpolant.y_free_sigma2(t)?)?
        }
    };
    Ok(ElboTerms {
        reconstruction: q1.expected_gaussian_log_likelihood(y, delta)?,
        prior_kl: q0.kl_to_standard_normal()?,
        diffusion: sq.affine(2.0, 0.0)?,
    })
}
