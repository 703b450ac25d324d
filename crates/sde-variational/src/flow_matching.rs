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
