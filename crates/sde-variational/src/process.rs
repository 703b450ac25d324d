//! Variational processes as time-dependent flows of a standard normal (`docs/MATH.md` §5;
//! paper §6, eq. 38–40 and 44), evaluated per row at per-row times.
//!
//! A variational marginal `q_t(· | y)` is the law of `x = φ(ε, t)`, `ε ~ N(0, 1)`, for a flow
//! `φ` invertible in `ε` ([`FlowMarginal`]). Everything the losses need follows from `φ`, its
//! inverse, `∂φ/∂t` and `log ∂φ/∂ε`:
//!
//! ```text
//! f_q,ode(x)  = ∂_tφ(ε, t)                              at ε = φ⁻¹(x, t)      (eq. 39–40)
//! log q_t(x)  = log N(ε; 0, 1) − log ∂φ/∂ε
//! ∇ₓ log q_t  = (−ε − ∂²φ/∂ε² / ∂φ/∂ε) / ∂φ/∂ε
//! f_q     = f_q,ode + ½ ∂σ²/∂x + ½ σ² ∇ₓ log q_t        (forward SDE drift, eq. 38)
//! f_q,bwd = f_q,ode − ½ ∂σ²/∂x − ½ σ² ∇ₓ log q_t        (reverse-time SDE drift)
//! ```
//!
//! for a generative diffusion `σ²(x, t)` with `∂σ²/∂x`. This module is the one place where the
//! SDE drifts are written ([`sde_drift`]); mixtures of flows (`crate::mixture`) combine
//! component drifts and scores and call it too.
//!
//! The linear flow `φ = α(y, t) + β(y, t) ε` is the Gaussian process `N(α, β²)`
//! ([`GaussianMarginal`], with closed-form KL and expected log-likelihood); every model of the
//! paper parameterises `α` and `β` ([`GaussianProcess`]): the SDE experiment's networks
//! ([`NetworkGaussian`]), the VDM schedule and the flow-matching interpolant. A non-linear
//! flow is in `crate::flow`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use sde_variational::prelude::*;
//! use sde_variational::{DiffusionAt, GaussianMarginal};
//! # fn main() -> sde_variational::Result<()> {
//! let col = |v: f64| Tensor::new(&[[v]], &Device::Cpu);
//! // q_t = N(1, 0.5²) moving with ∂α/∂t = 2, ∂β/∂t = −0.5.
//! let q = GaussianMarginal {
//!     alpha: col(1.0)?,
//!     beta: col(0.5)?,
//!     dalpha_dt: Some(col(2.0)?),
//!     dbeta_dt: Some(col(-0.5)?),
//! };
//! let x = q.sample(&col(0.4)?)?; // α + β ε = 1.2
//! let value = |t: Tensor| -> sde_variational::Result<f64> { Ok(t.to_vec2::<f64>()?[0][0]) };
//! assert!((value(q.ode_drift(&x)?)? - 1.8).abs() < 1e-12); // 2 − 0.5 · 0.4
//! assert!((value(q.score(&x)?)? + 0.8).abs() < 1e-12); // −ε/β
//! // Under σ² = 1: f_q = 1.8 + ½ (−0.8) = 1.4 and f_q,bwd = 1.8 − ½ (−0.8) = 2.2.
//! let d = DiffusionAt { sigma2: col(1.0)?, dsigma2_dx: None };
//! assert!((value(q.forward_drift(&x, &d)?)? - 1.4).abs() < 1e-12);
//! assert!((value(q.reverse_drift(&x, &d)?)? - 2.2).abs() < 1e-12);
//! # Ok(()) }
//! ```

use candle_core::{DType, Tensor, Var};

use crate::engine::values_and_tangents;
use crate::error::{Error, Result};
use crate::likelihood::Likelihood;
use crate::mlp::{Mlp, Time};
use sde_core::quadrature::Rule;

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

/// `f_q,ode ± (½ ∂σ²/∂x + ½ σ² ∇ log q)`: the forward (`sign` +1) or reverse-time (`sign` −1)
/// SDE drift of a variational process with ODE drift `v` and score `score` under the
/// diffusion `d` (eq. 38): the one place the SDE drifts are written.
pub fn sde_drift(v: &Tensor, score: &Tensor, d: &DiffusionAt, sign: f64) -> Result<Tensor> {
    let mut f = (v + (&d.sigma2 * score)?.affine(0.5 * sign, 0.0)?)?;
    if let Some(ds) = &d.dsigma2_dx {
        f = (f + ds.affine(0.5 * sign, 0.0)?)?;
    }
    Ok(f)
}

/// A time-dependent invertible flow `x = φ(ε, t)` of a standard normal, at a batch of rows
/// `(y, t)`: the variational marginal `q_t(· | y)` as the losses need it. All tensors `(B, 1)`.
///
/// Implementors give the flow, its inverse, `log ∂φ/∂ε`, `∂φ/∂t` and the score at `φ(ε)`; the
/// density, the drifts in `x` and the SDE drifts follow. The ε-forms are what the losses call
/// (they draw `ε`), so no inverse is taken in training.
pub trait FlowMarginal {
    /// `x = φ(ε, t)`: the reparameterised sample for standard normals `eps`.
    fn sample(&self, eps: &Tensor) -> Result<Tensor>;

    /// `ε = φ⁻¹(x, t)`.
    fn eps_of(&self, x: &Tensor) -> Result<Tensor>;

    /// `log ∂φ/∂ε` at `eps` (the flow increases in `ε`).
    fn log_det(&self, eps: &Tensor) -> Result<Tensor>;

    /// The ODE drift (velocity) `∂φ/∂t` at `eps` (eq. 39–40): moving `ε`'s image along the flow.
    fn ode_drift_at_eps(&self, eps: &Tensor) -> Result<Tensor>;

    /// The score `∇ₓ log q_t` at `x = φ(ε, t)`.
    fn score_at_eps(&self, eps: &Tensor) -> Result<Tensor>;

    /// The ODE drift and the score at `x = φ(ε)` together: what the SDE drifts need. Flows
    /// whose two share intermediate values override it to compute them once.
    fn ode_drift_and_score_at_eps(&self, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.ode_drift_at_eps(eps)?, self.score_at_eps(eps)?))
    }

    /// `log q_t(x | y) = log N(ε; 0, 1) − log ∂φ/∂ε` at `x = φ(ε)`.
    fn log_density_at_eps(&self, eps: &Tensor) -> Result<Tensor> {
        Ok((eps.sqr()?.affine(-0.5, -0.5 * LN_2PI)? - self.log_det(eps)?)?)
    }

    /// `log q_t(x | y)`.
    fn log_density(&self, x: &Tensor) -> Result<Tensor> {
        self.log_density_at_eps(&self.eps_of(x)?)
    }

    /// The ODE drift at `x`: `∂φ/∂t` at `φ⁻¹(x)`.
    fn ode_drift(&self, x: &Tensor) -> Result<Tensor> {
        self.ode_drift_at_eps(&self.eps_of(x)?)
    }

    /// The score `∇ₓ log q_t(x | y)`.
    fn score(&self, x: &Tensor) -> Result<Tensor> {
        self.score_at_eps(&self.eps_of(x)?)
    }

    /// The forward SDE drift `f_q` at `x = φ(ε)` for the diffusion `d` at the same rows.
    fn forward_drift_at_eps(&self, eps: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        let (v, score) = self.ode_drift_and_score_at_eps(eps)?;
        sde_drift(&v, &score, d, 1.0)
    }

    /// The forward SDE drift `f_q` at `x`.
    fn forward_drift(&self, x: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        self.forward_drift_at_eps(&self.eps_of(x)?, d)
    }

    /// The reverse-time SDE drift `f_q,bwd` at `x = φ(ε)`.
    fn reverse_drift_at_eps(&self, eps: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        let (v, score) = self.ode_drift_and_score_at_eps(eps)?;
        sde_drift(&v, &score, d, -1.0)
    }

    /// The reverse-time SDE drift `f_q,bwd` at `x`.
    fn reverse_drift(&self, x: &Tensor, d: &DiffusionAt) -> Result<Tensor> {
        self.reverse_drift_at_eps(&self.eps_of(x)?, d)
    }

    /// `KL(q_t(·|y) ‖ N(0, 1)) = E_ε[½ φ(ε)² − ½ ε² − log ∂φ/∂ε]` per row, by the Gauss–Hermite
    /// rule `rule` over `ε` (deterministic and differentiable). Closed forms override it.
    fn kl_to_standard_normal(&self, rule: &Rule) -> Result<Tensor>
    where
        Self: Sized,
    {
        expect_over_eps(self, rule, |q, eps| {
            let x = q.sample(eps)?;
            Ok(((x.sqr()? - eps.sqr()?)?.affine(0.5, 0.0)? - q.log_det(eps)?)?)
        })
    }

    /// `E_{x ~ q_t}[log p(y | x)]` per row for the likelihood `likelihood`: the SDE ELBO's
    /// reconstruction term, by the rule `rule` over `ε`. Gaussian marginals override it with
    /// the likelihood's own expectation under a Gaussian (closed form where one exists).
    fn expected_log_likelihood(
        &self,
        y: &Tensor,
        likelihood: &dyn Likelihood,
        rule: &Rule,
    ) -> Result<Tensor>
    where
        Self: Sized,
    {
        let y = tile_rows(y, rule.len())?;
        expect_over_eps(self, rule, |q, eps| {
            likelihood.log_prob(&y, &q.sample(eps)?)
        })
    }

    /// A `(B, 1)` tensor of the rows (say, the mean): its shape, dtype and device build the
    /// constants of the quadrature over `ε`.
    fn like(&self) -> &Tensor;

    /// The same flow with every row repeated `n` times in place (row `i n + j` is row `i`), so
    /// that a quadrature over `n` nodes runs as one batch.
    fn tile(&self, n: usize) -> Result<Self>
    where
        Self: Sized;
}

/// `t` `(B, 1)` with every row repeated `n` times in place: `(B n, 1)`, row `i n + j` is row `i`.
pub fn tile_rows(t: &Tensor, n: usize) -> Result<Tensor> {
    let b = t.dim(0)?;
    Ok(t.broadcast_as((b, n))?.reshape((b * n, 1))?)
}

/// [`tile_rows`] of an optional tensor.
pub(crate) fn tile_opt(t: &Option<Tensor>, n: usize) -> Result<Option<Tensor>> {
    t.as_ref().map(|t| tile_rows(t, n)).transpose()
}

/// `Σ_j w_j g(q, ε_j)` per row over the nodes `ε_j` of `rule`, evaluated as one batch: `g`
/// receives the flow tiled to `B n` rows ([`FlowMarginal::tile`]) and the column of nodes
/// (row `i n + j` holds `ε_j`), and returns a `(B n, 1)` column.
pub fn expect_over_eps<M: FlowMarginal>(
    q: &M,
    rule: &Rule,
    g: impl Fn(&M, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = rule.len();
    if n == 0 {
        return Err(Error::invalid(
            "rule",
            "no nodes",
            "a quadrature rule needs a node",
        ));
    }
    let like = q.like();
    let b = like.dim(0)?;
    let nodes: Vec<f64> = (0..b).flat_map(|_| rule.nodes.iter().copied()).collect();
    let eps = Tensor::from_vec(nodes, (b * n, 1), like.device())?.to_dtype(like.dtype())?;
    let weights =
        Tensor::from_slice(&rule.weights, (1, n), like.device())?.to_dtype(like.dtype())?;
    let values = g(&q.tile(n)?, &eps)?.reshape((b, n))?;
    Ok(values.broadcast_mul(&weights)?.sum_keepdim(1)?)
}

impl GaussianMarginal {
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

    /// `KL(N(α, β²) ‖ N(0, 1)) = ½ (α² + β² − 1 − log β²)` per row, in closed form
    /// (`docs/MATH.md` §5).
    pub fn kl_to_standard_normal(&self) -> Result<Tensor> {
        let b2 = self.beta.sqr()?;
        Ok(((self.alpha.sqr()? + &b2)? - b2.log()?)?.affine(0.5, -0.5)?)
    }

    /// `E_{x ~ N(α, β²)}[log N(y; x, δ²)] = −½ [((y − α)² + β²)/δ² + log(2π δ²)]` per row in
    /// closed form, for `delta` `(B, 1)` or `(1, 1)` (broadcast): the formula of
    /// [`GaussianLikelihood`](crate::likelihood::GaussianLikelihood)'s
    /// `expected_log_prob`, without its value checks (the training loops check the loss).
    pub fn expected_gaussian_log_likelihood(&self, y: &Tensor, delta: &Tensor) -> Result<Tensor> {
        crate::likelihood::gaussian_expected_log_prob(y, &self.alpha, &self.beta, delta)
    }
}

/// The linear flow `φ = α + β ε`: `∂φ/∂ε = β`, `∂φ/∂t = ∂α/∂t + ∂β/∂t ε` (no division by `β`,
/// so it holds where `β` reaches 0, as at the data end of flow matching's interpolant), score
/// `−ε / β`.
impl FlowMarginal for GaussianMarginal {
    fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        Ok((&self.alpha + (&self.beta * eps)?)?)
    }

    fn eps_of(&self, x: &Tensor) -> Result<Tensor> {
        Ok(((x - &self.alpha)? / &self.beta)?)
    }

    fn log_det(&self, eps: &Tensor) -> Result<Tensor> {
        Ok(self.beta.log()?.broadcast_as(eps.dims())?.contiguous()?)
    }

    fn ode_drift_at_eps(&self, eps: &Tensor) -> Result<Tensor> {
        let (da, db) = self.derivatives()?;
        Ok((da + (db * eps)?)?)
    }

    fn score_at_eps(&self, eps: &Tensor) -> Result<Tensor> {
        Ok((eps / &self.beta)?.neg()?)
    }

    /// `−(x − α) / β²`, without forming `ε`.
    fn score(&self, x: &Tensor) -> Result<Tensor> {
        Ok(((x - &self.alpha)? / self.beta.sqr()?)?.neg()?)
    }

    fn kl_to_standard_normal(&self, _rule: &Rule) -> Result<Tensor> {
        GaussianMarginal::kl_to_standard_normal(self)
    }

    fn expected_log_likelihood(
        &self,
        y: &Tensor,
        likelihood: &dyn Likelihood,
        _rule: &Rule,
    ) -> Result<Tensor> {
        likelihood.expected_log_prob(y, &self.alpha, &self.beta)
    }

    fn like(&self) -> &Tensor {
        &self.alpha
    }

    fn tile(&self, n: usize) -> Result<Self> {
        Ok(Self {
            alpha: tile_rows(&self.alpha, n)?,
            beta: tile_rows(&self.beta, n)?,
            dalpha_dt: tile_opt(&self.dalpha_dt, n)?,
            dbeta_dt: tile_opt(&self.dbeta_dt, n)?,
        })
    }
}

/// A variational process: its marginal flow at rows `(y, t)`, with `∂φ/∂t` on request.
pub trait VariationalProcess {
    /// The flow the process evaluates to at a batch of rows.
    type Marginal: FlowMarginal;

    /// The marginal at data `y` `(B, 1)` and times `t` (one per row, or one for all);
    /// `derivatives` asks for the time derivatives the drifts need.
    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<Self::Marginal>;
}

/// A variational process with Gaussian marginals `N(α(y, t), β(y, t)²)`: the linear flow. Every
/// [`VariationalProcess`] whose marginal is a [`GaussianMarginal`] is one.
pub trait GaussianProcess: VariationalProcess<Marginal = GaussianMarginal> {}

impl<P: VariationalProcess<Marginal = GaussianMarginal>> GaussianProcess for P {}

/// The two results of a two-network evaluation.
pub(crate) fn two<T>(v: Vec<T>) -> Result<[T; 2]> {
    let n = v.len();
    v.try_into().map_err(|_| {
        Error::invalid(
            "nets",
            format!("{n} results"),
            "an evaluation of two networks returns two",
        )
    })
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

    /// `log β₁`, `(1, 1)` (the variable, where the process was built from one).
    pub fn log_beta1(&self) -> &Tensor {
        &self.log_beta1
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

impl VariationalProcess for NetworkGaussian {
    type Marginal = GaussianMarginal;

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
        // A and B at the same rows: one op, each network on its own thread.
        let [(av, ad), (bv, bd)] = two(values_and_tangents(
            &[(&self.a, dirs), (&self.b, dirs)],
            y,
            t,
        )?)?;
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

impl<'a, P: VariationalProcess, G: crate::elbo::GenerativeSde> VariationalField<'a, P, G> {
    /// The field of `process` for data `ys` `(B, 1)`; `model` supplies the diffusion of the
    /// SDE form (unused by the ODE form).
    pub fn new(process: &'a P, model: &'a G, ys: Tensor) -> Self {
        Self { process, model, ys }
    }

    fn at(&self, x: &Tensor, t: f64) -> Result<(P::Marginal, Tensor)> {
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

impl<P: VariationalProcess, G: crate::elbo::GenerativeSde> sde_core::VectorField<Tensor>
    for VariationalField<'_, P, G>
{
    fn velocity(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        self.at(x, t)
            .and_then(|(q, eps)| q.ode_drift_at_eps(&eps))
            .map_err(core_err)
    }
}

impl<P: VariationalProcess, G: crate::elbo::GenerativeSde> sde_core::Drift<Tensor>
    for VariationalField<'_, P, G>
{
    /// The reverse-time drift `f_q,bwd` (for a decreasing time grid, `docs/MATH.md` §1).
    fn drift(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        let run = || -> Result<Tensor> {
            let (q, eps) = self.at(x, t)?;
            let (_, d) = self.model.drift_and_diffusion(x, &self.t_column(t)?)?;
            q.reverse_drift_at_eps(&eps, &d)
        };
        run().map_err(core_err)
    }
}

impl<P: VariationalProcess, G: crate::elbo::GenerativeSde> sde_core::Diffusion<Tensor>
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
