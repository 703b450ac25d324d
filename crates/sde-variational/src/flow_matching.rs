//! Flow matching (`MATH.md` §8; paper §7.3) as a parameterisation of the variational process:
//! the stochastic interpolant `x_t = t y + β_t ε`, `β_t = (1 − t) β₀ + t β₁`, i.e.
//! `q_t(x | y) = N(t y, β_t²)`, whose conditional velocity (the ODE drift of eq. 40 at
//! `x = α + β ε`) is the regression target `u = y + (β₁ − β₀) ε`.
//!
//! The loss `L_FM = E |v_θ(x_t, t) − u|²` trains a velocity field; as an SDE its ELBO has the
//! closed-form terms `−KL(q₀ ‖ N(0,1)) = ½ (log β₀² + 1 − β₀²)`,
//! `E_{q₁}[log N(y; x₁, δ²)] = −½ (β₁²/δ² + log 2πδ²)` and the diffusion term `2 L_FM` (when
//! the reverse drift does not depend on `y`, as for the reference `β₁ = 0`). With `β₁ → 0` the
//! reconstruction diverges, so flow matching is judged by its exact likelihood through the
//! probability-flow ODE ([`crate::NeuralOde`]).

use candle_core::Tensor;

use crate::engine::value_and_tangents;
use crate::error::{Error, Result};
use crate::mlp::{Mlp, Time};
use crate::process::{GaussianMarginal, GaussianProcess, LN_2PI};

/// The interpolant `x_t = t y + β_t ε` with `β_t = (1 − t) β₀ + t β₁` (reference: `β₀ = 1`,
/// `β₁ = 0`, so the prior is `N(0, β₀²)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interpolant {
    beta0: f64,
    beta1: f64,
}

impl Interpolant {
    /// The interpolant between `N(0, beta0²)` at t = 0 and `N(y, beta1²)` at t = 1.
    ///
    /// # Errors
    /// `beta0` not finite and positive, `beta1` not finite and non-negative.
    pub fn new(beta0: f64, beta1: f64) -> Result<Self> {
        if !(beta0.is_finite() && beta0 > 0.0) {
            return Err(Error::invalid(
                "beta0",
                beta0,
                "must be finite and positive",
            ));
        }
        if !(beta1.is_finite() && beta1 >= 0.0) {
            return Err(Error::invalid(
                "beta1",
                beta1,
                "must be finite and non-negative",
            ));
        }
        Ok(Self { beta0, beta1 })
    }

    /// `(β₀, β₁)`.
    pub fn betas(&self) -> (f64, f64) {
        (self.beta0, self.beta1)
    }

    /// `−KL(q₀ ‖ N(0, 1)) = ½ (log β₀² + 1 − β₀²)` (the same for every data point).
    pub fn neg_prior_kl(&self) -> f64 {
        let b2 = self.beta0 * self.beta0;
        0.5 * (b2.ln() + 1.0 - b2)
    }

    /// `(β_t, β̇ / β_t, c_t = 1 − t β̇/β_t)` at `t`.
    fn coefficients(&self, t: f64) -> (f64, f64, f64) {
        let beta = (1.0 - t) * self.beta0 + t * self.beta1;
        let r = (self.beta1 - self.beta0) / beta;
        (beta, r, 1.0 - t * r)
    }

    /// The marginal score from the marginal velocity (`MATH.md` §8): both are affine in
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
        let (beta, r, c) = self.coefficients(t);
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

    /// `E_{q₁}[log N(y; x₁, δ²)] = −½ (β₁²/δ² + log 2πδ²)` (the same for every data point).
    pub fn reconstruction(&self, delta: f64) -> f64 {
        -0.5 * (self.beta1 * self.beta1 / (delta * delta) + (delta * delta).ln() + LN_2PI)
    }
}

impl GaussianProcess for Interpolant {
    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<GaussianMarginal> {
        let (b0, b1) = (self.beta0, self.beta1);
        let (alpha, beta) = match t {
            Time::Scalar(t) => (
                y.affine(t, 0.0)?,
                Tensor::full((1.0 - t) * b0 + t * b1, y.dims(), y.device())?.to_dtype(y.dtype())?,
            ),
            Time::PerSample(ts) => ((ts * y)?, ts.affine(b1 - b0, b0)?),
        };
        let (dalpha_dt, dbeta_dt) = if derivatives {
            (
                Some(y.clone()),
                Some(Tensor::full(b1 - b0, y.dims(), y.device())?.to_dtype(y.dtype())?),
            )
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

/// A flow-matching model sampled by an SDE (`MATH.md` §2 and §8): the forward drift
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

    fn sigma(&self, t: f64) -> f64 {
        let (b0, b1) = self.interpolant.betas();
        self.eta * ((1.0 - t) * b0 + t * b1)
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
            let sigma = self.sigma(t);
            Ok((v + (s * (0.5 * sigma * sigma))?)?)
        };
        run().map_err(core_err)
    }
}

impl sde_core::Diffusion<Tensor> for FlowSde<'_> {
    fn diffusion(&self, _x: &Tensor, t: f64) -> sde_core::Result<sde_core::Noise<Tensor>> {
        Ok(sde_core::Noise::Scalar(self.sigma(t)))
    }

    fn diffusion_divergence(&self, _x: &Tensor, _t: f64) -> sde_core::Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The σ-weighted flow-matching loss per row, `|v(x_t, t) − u|² / σ²` (`MATH.md` §8), for a
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
