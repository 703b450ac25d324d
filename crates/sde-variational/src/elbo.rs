//! The SDE evidence lower bound (`docs/MATH.md` §4; paper §5.2, eq. 36) for any generative
//! SDE and any variational process (a flow of a standard normal, Gaussian or not), term by term
//! and per data point:
//!
//! ```text
//! ELBO_SDE(y) = E_{q_1}[log p(y | x_1)] − KL(q_0(·|y) ‖ N(0, 1)) − ∫₀¹ E_{q_t}[(f − f_q)² / 2σ²] dt
//! ```
//!
//! The reconstruction and prior terms are in closed form for a Gaussian `q` and a Gaussian
//! likelihood, and by 16-node Gauss–Hermite quadrature over `ε` for other flows (exact for
//! polynomials of degree 31 in `ε`); the diffusion (drift-matching) term is estimated at the times `t` and noises `ε`
//! the caller draws — one `(t, ε)` per row for training (simulation-free, Algorithm 2), many per
//! point, or quadrature nodes, for evaluation.

use candle_core::Tensor;

use crate::error::{column_rows, Error, Result};
use crate::mlp::Time;
use std::sync::OnceLock;

use sde_core::quadrature::{gauss_hermite, Rule};

use crate::likelihood::Likelihood;
use crate::process::{DiffusionAt, FlowMarginal, VariationalProcess};

/// A generative SDE `dx = f(x, t) dt + σ(x, t) dW` as the losses see it: drift and diffusion
/// at rows `(x, t)` with one time per row.
pub trait GenerativeSde {
    /// `f(x, t)` `(B, 1)` and the diffusion (`σ²`, `∂σ²/∂x`) at `x` `(B, 1)`, `t` `(B, 1)`.
    fn drift_and_diffusion(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, DiffusionAt)>;
}

/// The three terms of the SDE ELBO per row, `(B, 1)` each; `ELBO = reconstruction − prior_kl −
/// diffusion`.
#[derive(Debug, Clone)]
pub struct ElboTerms {
    /// `E_{q_1}[log p(y | x_1)]`, closed form.
    pub reconstruction: Tensor,
    /// `KL(q_0(·|y) ‖ p_0)`, closed form.
    pub prior_kl: Tensor,
    /// The single-sample estimate `(f − f_q)² / 2σ²` of `∫₀¹ F(t) dt` at the row's `(t, ε)`.
    pub diffusion: Tensor,
}

impl ElboTerms {
    /// `reconstruction − prior_kl − diffusion`, per row.
    pub fn elbo(&self) -> Result<Tensor> {
        Ok(((&self.reconstruction - &self.prior_kl)? - &self.diffusion)?)
    }
}

/// The Gauss–Hermite rule of the ELBO's terms for non-Gaussian marginals: 16 nodes, computed once.
pub fn elbo_rule() -> Result<&'static Rule> {
    static RULE: OnceLock<Rule> = OnceLock::new();
    if let Some(r) = RULE.get() {
        return Ok(r);
    }
    let rule = gauss_hermite(16)?;
    Ok(RULE.get_or_init(|| rule))
}

/// The integrand of the diffusion term, `(f − f_q)² / 2σ²`, at `x_t = φ(ε, t)` for data `y`
/// `(B, 1)`, times `t` `(B, 1)` and standard normals `eps` `(B, 1)`.
pub fn diffusion_term<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    model: &G,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    let q = process.marginal(y, Time::PerSample(t), true)?;
    let x = q.sample(eps)?;
    let (f, d) = model.drift_and_diffusion(&x, t)?;
    let fq = q.forward_drift_at_eps(eps, &d)?;
    // (f − f_q)² / 2σ².
    Ok(((f - fq)?.sqr()? / &d.sigma2)?.affine(0.5, 0.0)?)
}

/// Checks that the data `y` is `(B, 1)` and the times `t` and noises `eps` are shaped like it;
/// returns `B`.
pub(crate) fn check_rows(y: &Tensor, t: &Tensor, eps: &Tensor) -> Result<usize> {
    let batch = column_rows("y", y)?;
    for (name, v) in [("t", t), ("eps", eps)] {
        if v.dims() != [batch, 1] {
            return Err(Error::invalid(
                name,
                format!("shape {:?} for data of shape {:?}", v.dims(), y.dims()),
                "must be (batch, 1) like the data",
            ));
        }
    }
    Ok(batch)
}

/// The SDE ELBO's terms for data `y` `(B, 1)` with the diffusion term at the rows' `t`, `eps`
/// `(B, 1)`, and the likelihood `p(y | x_1)` (for the paper's Gaussian `N(y; x_1, δ²)`, a
/// [`GaussianLikelihood`](crate::likelihood::GaussianLikelihood)).
///
/// # Errors
/// `y` not `(B, 1)`, `t` or `eps` not shaped like it; errors of the likelihood (a width of
/// another shape, say), the model or the process.
pub fn sde_elbo<P: VariationalProcess, G: GenerativeSde>(
    process: &P,
    model: &G,
    y: &Tensor,
    t: &Tensor,
    eps: &Tensor,
    likelihood: &dyn Likelihood,
) -> Result<ElboTerms> {
    check_rows(y, t, eps)?;
    let q1 = process.marginal(y, Time::Scalar(1.0), false)?;
    let q0 = process.marginal(y, Time::Scalar(0.0), false)?;
    let rule = elbo_rule()?;
    Ok(ElboTerms {
        reconstruction: q1.expected_log_likelihood(y, likelihood, rule)?,
        prior_kl: FlowMarginal::kl_to_standard_normal(&q0, rule)?,
        diffusion: diffusion_term(process, model, y, t, eps)?,
    })
}
