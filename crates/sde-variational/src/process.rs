//! Variational processes with Gaussian marginals `q_t(x | y) = N(α(y, t), β(y, t)²)`
//! (`docs/MATH.md` §5; paper §6, eq. 39–40 and 44), evaluated per row at per-row times.
//!
//! This module is the one place where the variational drifts are written. For a marginal with
//! time derivatives `∂α/∂t`, `∂β/∂t` and a generative diffusion `σ²(x, t)` with `∂σ²/∂x`:
//!
//! ```text
//! f_q,ode = ∂α/∂t + (∂β/∂t / β)(x − α)                 (ODE drift: the flow α + β ε)
//! ∇ₓ log q_t = −(x − α) / β²                            (score)
//! f_q     = f_q,ode + ½ ∂σ²/∂x + ½ σ² ∇ₓ log q_t        (forward SDE drift)
//! f_q,bwd = f_q,ode − ½ ∂σ²/∂x − ½ σ² ∇ₓ log q_t        (reverse-time SDE drift)
//! ```
//!
//! Every model of the paper is a parameterisation of `α` and `β` ([`GaussianProcess`]): the
//! SDE experiment's networks ([`NetworkGaussian`]), and (in later modules) the VDM schedule and
//! the flow-matching interpolant.

use candle_core::{DType, Tensor, Var};

use crate::engine::value_and_tangents;
use crate::error::{Error, Result};
use crate::mlp::{Mlp, Time};

/// `ln(2π)`.
pub(crate) const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// A generative diffusion at the rows `(x, t)` as the losses need it.
#[derive(Debug, Clone)]
pub struct DiffusionAt {
    /// `σ²(x, t)`, `(B, 1)`.
    pub sigma2: Tensor,
    /// `∂σ²/∂x`, `(B, 1)`, or `None` where `σ` does not depend on `x`.
    pub dsigma2_dx: Option<Tensor>,
}

/// `q_t(x | y) = N(α, β²)` at a batch of rows `(y, t)`, with the time derivatives where they
/// were asked for. All tensors `(B, 1)`.
#[derive(Debug, Clone)]
pub struct GaussianMarginal {
    /// The mean `α(y, t)`.
    pub alpha: Tensor,
    /// The standard deviation `β(y, t) > 0`.
    pub beta: Tensor,
    /// `∂α/∂t`, a forward-mode tangent (so a loss containing it back-propagates).
    pub dalpha_dt: Option<Tensor>,
    /// `∂β/∂t`.
    pub dbeta_dt: Option<Tensor>,
}

impl GaussianMarginal {
    /// `x = α + β ε`: the reparameterised sample for standard normals `eps` `(B, 1)`.
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        Ok((&self.alpha + (&self.beta * eps)?)?)
    }

    /// The score `∇ₓ log q_t(x | y) = −(x − α)/β²`.
    pub fn score(&self, x: &Tensor) -> Result<Tensor> {
        Ok(((x - &self.alpha)? / self.beta.sqr()?)?.neg()?)
    }

    fn derivatives(&self) -> Result<(&Tensor, &Tensor)> {
        match (&self.dalpha_dt, &self.dbeta_dt) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(Error::invalid(
                "marginal",
                "without time derivatives",
                "the drifts need ∂α/∂t and ∂β/∂t: evaluate it with derivatives = true",
            )),
        }
    }

    /// `ε = (x − α) / β`: the standard normal that puts `x` on the flow `α + β ε`.
    fn eps_of(&self, x: &Tensor) -> Result<Tensor> {
        Ok(((x - &self.alpha)? / &self.beta)?)
    }

    /// The ODE drift (velocity) `∂α/∂t + (∂β/∂t / β)(x − α)` (eq. 40): the flow `α + β ε`.
    pub fn ode_drift(&self, x: &Tensor) -> Result<Tensor> {
        self.ode_drift_at_eps(&self.eps_of(x)?)
    }

    /// The forward SDE drift `f_q = f_q,ode + ½ ∂σ²/∂x + ½ σ² ∇ₓ log q_t` for the diffusion
    /// `d` at the same rows (eq. 44, `docs/MATH.md` §5).
    pub fn forward_drift(&self, x: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        self.sde_drift_at_eps(&self.eps_of(x)?, d, 1.0)
    }

    /// The reverse-time SDE drift `f_q,bwd = f_q,ode − ½ ∂σ²/∂x − ½ σ² ∇ₓ log q_t`.
    pub fn reverse_drift(&self, x: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        self.sde_drift_at_eps(&self.eps_of(x)?, d, -1.0)
    }

    /// The ODE drift at the reparameterised point `x = α + β ε`, written in `ε`:
    /// `f_q,ode = ∂α/∂t + ∂β/∂t ε` (no division by `β`, so it holds where `β` reaches 0, as
    /// at the data end of flow matching's interpolant). The conditional flow-matching target,
    /// and the one place the ODE drift is written.
    pub fn ode_drift_at_eps(&self, eps: &Tensor) -> Result<Tensor> {
        let (da, db) = self.derivatives()?;
        Ok((da + (db * eps)?)?)
    }

    /// The forward SDE drift at the reparameterised point `x = α + β ε`, written in `ε`:
    /// `f_q = ∂α/∂t + ∂β/∂t ε + ½ ∂σ²/∂x − ½ σ² ε / β` (the losses call this form: they draw
    /// `ε`).
    pub fn forward_drift_at_eps(&self, eps: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        self.sde_drift_at_eps(eps, d, 1.0)
    }

    /// `f_q,ode ± (½ ∂σ²/∂x + ½ σ² ∇ log q)` at `x = α + β ε`, with `∇ log q = −ε / β`;
    /// `sign` +1 forward, −1 reverse: the one place the SDE drifts are written.
    pub(crate) fn sde_drift_at_eps(
        &self,
        eps: &Tensor,
        d: &DiffusionAt,
        sign: f64,
    ) -> Result<Tensor> {
        let mut f = self.ode_drift_at_eps(eps)?;
        f = (f + ((&d.sigma2 * eps)? / &self.beta)?.affine(-0.5 * sign, 0.0)?)?;
        if let Some(ds) = &d.dsigma2_dx {
            f = (f + ds.affine(0.5 * sign, 0.0)?)?;
        }
        Ok(f)
    }

    /// `KL(N(α, β²) ‖ N(0, 1)) = ½ (α² + β² − 1 − log β²)` per row (`docs/MATH.md` §5).
    pub fn kl_to_standard_normal(&self) -> Result<Tensor> {
        let b2 = self.beta.sqr()?;
        Ok(((self.alpha.sqr()? + &b2)? - b2.log()?)?.affine(0.5, -0.5)?)
    }

    /// `E_{x ~ N(α, β²)}[log N(y; x, δ²)] = −½ [((y − α)² + β²)/δ² + log(2π δ²)]` per row, for
    /// `delta` `(B, 1)` or `(1, 1)` (broadcast).
    pub fn expected_gaussian_log_likelihood(&self, y: &Tensor, delta: &Tensor) -> Result<Tensor> {
        let d2 = delta.sqr()?;
        let num = ((y - &self.alpha)?.sqr()? + self.beta.sqr()?)?;
        let quad = num.broadcast_div(&d2)?;
        let log_norm = d2.log()?.affine(1.0, LN_2PI)?;
        Ok(quad.broadcast_add(&log_norm)?.affine(-0.5, 0.0)?)
    }
}

/// A parameterisation of the Gaussian variational process: `α(y, t)`, `β(y, t)` and, on
/// request, their time derivatives, per row.
pub trait GaussianProcess {
    /// The marginal at data `y` `(B, 1)` and times `t` (one per row, or one for all);
    /// `derivatives` asks for `∂α/∂t` and `∂β/∂t`.
    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<GaussianMarginal>;
}

/// The SDE experiment's variational process (`docs/REFERENCE.md` §2):
///
/// ```text
/// α(y, t) = t y + (1 − t) A(y, t),      β(y, t) = t β₁ + (1 − t) softplus(B(y, t))
/// ```
///
/// with `A`, `B` tanh MLPs on `[y, t]` (B with a softplus output) and `β₁ = exp(log β₁)` a
/// learned scalar — the likelihood width too, so that `q_1(x | y) = N(y, β₁²)` matches the
/// likelihood. The time derivatives come from the engine's `∂/∂t` tangents:
/// `∂α/∂t = y − A + (1 − t) ∂A/∂t`, `∂β/∂t = β₁ − softplus(B) + (1 − t) ∂softplus(B)/∂t`.
#[derive(Debug, Clone)]
pub struct NetworkGaussian {
    a: Mlp,
    b: Mlp,
    log_beta1: Tensor,
}

impl NetworkGaussian {
    /// The process of networks `a` (identity output) and `b` (softplus output), both with
    /// input `[y, t]` and one output, and the scalar `log_beta1` (a `(1, 1)` tensor, usually a
    /// [`Var`]).
    ///
    /// # Errors
    /// Networks of other shapes, or `log_beta1` not `(1, 1)` in the networks' dtype.
    pub fn new(a: Mlp, b: Mlp, log_beta1: Tensor) -> Result<Self> {
        for (name, net) in [("a", &a), ("b", &b)] {
            if net.in_dim() != 2 || net.out_dim() != 1 {
                return Err(Error::invalid(
                    name,
                    format!("widths {:?}", net.config().widths),
                    "must map [y, t] to one output",
                ));
            }
        }
        if b.config().output != crate::mlp::Activation::Softplus {
            return Err(Error::invalid(
                "b",
                format!("{:?} output", b.config().output),
                "must have a softplus output (β > 0)",
            ));
        }
        if b.dtype() != a.dtype() {
            return Err(Error::invalid(
                "b",
                format!("{:?} for an {:?} network a", b.dtype(), a.dtype()),
                "both networks must have one dtype",
            ));
        }
        if log_beta1.dims() != [1, 1] || log_beta1.dtype() != a.dtype() {
            return Err(Error::invalid(
                "log_beta1",
                format!("shape {:?} dtype {:?}", log_beta1.dims(), log_beta1.dtype()),
                "must be (1, 1) in the networks' dtype",
            ));
        }
        Ok(Self { a, b, log_beta1 })
    }

    /// A `(1, 1)` variable holding `ln beta1`.
    ///
    /// # Errors
    /// `beta1` not finite and positive, or a dtype other than `f32`/`f64`.
    pub fn log_beta1_var(beta1: f64, dtype: DType, device: &candle_core::Device) -> Result<Var> {
        if !(beta1.is_finite() && beta1 > 0.0) {
            return Err(Error::invalid(
                "beta1",
                beta1,
                "must be finite and positive",
            ));
        }
        Ok(Var::from_tensor(
            &Tensor::full(beta1.ln(), (1, 1), device)?.to_dtype(dtype)?,
        )?)
    }

    /// `β₁ = exp(log β₁)`, `(1, 1)`: the width of `q_1` and of the likelihood.
    pub fn beta1(&self) -> Result<Tensor> {
        Ok(self.log_beta1.exp()?)
    }

    /// The mean network `A`.
    pub fn a(&self) -> &Mlp {
        &self.a
    }

    /// The scale network `B`.
    pub fn b(&self) -> &Mlp {
        &self.b
    }

    /// A copy that builds no gradient graph (detached parameters), for evaluation.
    pub fn detached(&self) -> Result<Self> {
        Ok(Self {
            a: self.a.detached()?,
            b: self.b.detached()?,
            log_beta1: self.log_beta1.detach(),
        })
    }
}

impl GaussianProcess for NetworkGaussian {
    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<GaussianMarginal> {
        let batch = y.dim(0)?;
        let beta1 = self.beta1()?;
        if let Time::Scalar(tv) = t {
            if tv == 1.0 {
                // α(y, 1) = y, β(y, 1) = β₁ exactly: the networks are multiplied by 0.
                if !derivatives {
                    return Ok(GaussianMarginal {
                        alpha: y.clone(),
                        beta: beta1.broadcast_as((batch, 1))?.contiguous()?,
                        dalpha_dt: None,
                        dbeta_dt: None,
                    });
                }
            }
        }
        let dirs: &[usize] = if derivatives { &[1] } else { &[] };
        let (av, ad) = value_and_tangents(&self.a, y, t, dirs)?;
        let (bv, bd) = value_and_tangents(&self.b, y, t, dirs)?;
        if let (Time::Scalar(tv), false) = (t, derivatives) {
            if tv == 0.0 {
                // α(y, 0) = A(y, 0), β(y, 0) = softplus(B(y, 0)): the prior end, without the
                // multiplications by 0 and 1 (the KL term evaluates it at every step).
                return Ok(GaussianMarginal {
                    alpha: av,
                    beta: bv,
                    dalpha_dt: None,
                    dbeta_dt: None,
                });
            }
        }
        // Multiplications by t and by 1 − t, for a scalar time or a (B, 1) column.
        let omt = match t {
            Time::PerSample(ts) => Some(ts.affine(-1.0, 1.0)?),
            Time::Scalar(_) => None,
        };
        let times_t = |v: &Tensor| -> Result<Tensor> {
            Ok(match t {
                Time::Scalar(tv) => v.affine(tv, 0.0)?,
                Time::PerSample(ts) => ts.broadcast_mul(v)?,
            })
        };
        let times_omt = |v: &Tensor| -> Result<Tensor> {
            Ok(match (t, &omt) {
                (_, Some(omt)) => (omt * v)?,
                (Time::Scalar(tv), None) => v.affine(1.0 - tv, 0.0)?,
                (Time::PerSample(ts), None) => (ts.affine(-1.0, 1.0)? * v)?,
            })
        };
        // α = t y + (1 − t) A and β = t β₁ + (1 − t) softplus(B) (exactly y and β₁ at t = 1);
        // ∂α/∂t = (y − A) + (1 − t) ∂A/∂t and likewise for β.
        let beta1_col = beta1.broadcast_as((batch, 1))?;
        let alpha = (times_t(y)? + times_omt(&av)?)?;
        let beta = (times_t(&beta1_col)? + times_omt(&bv)?)?;
        let (dalpha_dt, dbeta_dt) = if derivatives {
            (
                Some(((y - &av)? + times_omt(&ad[0])?)?),
                Some(((&beta1_col - &bv)? + times_omt(&bd[0])?)?),
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

/// The variational process of fixed data `ys` `(B, 1)` as a field the solvers integrate with
/// one time per step: its ODE drift `f_q,ode` ([`VectorField`](sde_core::VectorField)), or its
/// reverse-time SDE (drift `f_q,bwd` ([`Drift`](sde_core::Drift)) with the generative
/// diffusion ([`Diffusion`](sde_core::Diffusion))). Integrated from `x_1` at t = 1 down to
/// t = 0 it *encodes* data into the prior's space: the ODE maps `α(y,1) + β(y,1) ε` to
/// `α(y,0) + β(y,0) ε` (the flow of eq. 39–40), the SDE keeps the marginals `q_t(·|y)`.
#[derive(Debug, Clone)]
pub struct VariationalField<'a, P, G> {
    process: &'a P,
    model: &'a G,
    ys: Tensor,
}

impl<'a, P: GaussianProcess, G: crate::elbo::GenerativeSde> VariationalField<'a, P, G> {
    /// The field of `process` for data `ys` `(B, 1)`; `model` supplies the diffusion of the
    /// SDE form (unused by the ODE form).
    pub fn new(process: &'a P, model: &'a G, ys: Tensor) -> Self {
        Self { process, model, ys }
    }

    fn at(&self, x: &Tensor, t: f64) -> Result<(GaussianMarginal, Tensor)> {
        if x.dims() != self.ys.dims() {
            return Err(Error::invalid(
                "x",
                format!(
                    "shape {:?} for data of shape {:?}",
                    x.dims(),
                    self.ys.dims()
                ),
                "the state must have one row per data point",
            ));
        }
        let q = self.process.marginal(&self.ys, Time::Scalar(t), true)?;
        let eps = q.eps_of(x)?;
        Ok((q, eps))
    }

    fn t_column(&self, t: f64) -> Result<Tensor> {
        Ok(Tensor::full(t, self.ys.dims(), self.ys.device())?.to_dtype(self.ys.dtype())?)
    }
}

fn core_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl<P: GaussianProcess, G: crate::elbo::GenerativeSde> sde_core::VectorField<Tensor>
    for VariationalField<'_, P, G>
{
    fn velocity(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        self.at(x, t)
            .and_then(|(q, eps)| q.ode_drift_at_eps(&eps))
            .map_err(core_err)
    }
}

impl<P: GaussianProcess, G: crate::elbo::GenerativeSde> sde_core::Drift<Tensor>
    for VariationalField<'_, P, G>
{
    /// The reverse-time drift `f_q,bwd` (for a decreasing time grid, `docs/MATH.md` §1).
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        let run = || -> Result<Tensor> {
            let (q, eps) = self.at(x, t)?;
            let (_, d) = self.model.drift_and_diffusion(x, &self.t_column(t)?)?;
            q.sde_drift_at_eps(&eps, &d, -1.0)
        };
        run().map_err(core_err)
    }
}

impl<P: GaussianProcess, G: crate::elbo::GenerativeSde> sde_core::Diffusion<Tensor>
    for VariationalField<'_, P, G>
{
    fn diffusion(&self, x: &Tensor, t: f64) -> sde_core::Result<sde_core::Noise<Tensor>> {
        let run = || -> Result<Tensor> {
            let (_, d) = self.model.drift_and_diffusion(x, &self.t_column(t)?)?;
            Ok(d.sigma2.sqrt()?)
        };
        run().map(sde_core::Noise::Diagonal).map_err(core_err)
    }

    fn diffusion_divergence(&self, x: &Tensor, t: f64) -> sde_core::Result<Option<Tensor>> {
        let run = || -> Result<Option<Tensor>> {
            let (_, d) = self.model.drift_and_diffusion(x, &self.t_column(t)?)?;
            Ok(d.dsigma2_dx)
        };
        run().map_err(core_err)
    }
}
