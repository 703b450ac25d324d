//! A non-linear variational flow: the sinh–arcsinh transform of a Gaussian process
//! (`docs/MATH.md` §5; paper §6, eq. 38–40).
//!
//! For a Gaussian process `N(α(y, t), β(y, t)²)` and time-dependent shape parameters, a skew
//! `s(y, t)` and a log tail weight `ℓ(y, t)` (`τ = e^ℓ`), the flow
//!
//! ```text
//! φ(ε, t) = α + β sinh(τ asinh(ε) + s),      ε ~ N(0, 1)
//! ```
//!
//! is increasing in `ε`, equal to the linear flow `α + β ε` at `s = 0, τ = 1`, skewed for
//! `s ≠ 0`, with heavier (`τ > 1`) or lighter (`τ < 1`) tails than the normal (Jones & Pewsey's
//! sinh–arcsinh family). With `u = asinh ε`, `w = τ u + s`:
//!
//! ```text
//! φ⁻¹(x)      = sinh((asinh((x − α)/β) − s) / τ)
//! ∂φ/∂ε       = β τ cosh(w) / √(1 + ε²)
//! ∂φ/∂t       = ∂α/∂t + ∂β/∂t sinh(w) + β cosh(w) (τ ∂ℓ/∂t u + ∂s/∂t)
//! ∇ₓ log q_t  = (−ε − τ tanh(w)/√(1 + ε²) + ε/(1 + ε²)) / (∂φ/∂ε)
//! ```
//!
//! [`SinhArcsinh`] puts learned shape on top of any [`GaussianProcess`] with `s = (1 − t) S(y, t)`
//! and `ℓ = (1 − t) L(y, t)` from one tanh network `[y, t] → (S, L)`: the shape vanishes at
//! `t = 1`, so `q_1` stays the base process's Gaussian (the likelihood end), while the prior end
//! `q_0(·|y)` — the posterior over the latent — may be skewed and heavy-tailed.

use candle_core::Tensor;

use crate::engine::value_and_tangents;
use crate::error::{Error, Result};
use crate::mlp::{Activation, Mlp, Time};
use crate::process::{
    tile_opt, tile_rows, FlowMarginal, GaussianMarginal, GaussianProcess, VariationalProcess,
};

/// `asinh z` to rounding in absolute terms, for either sign (`ln(z + √(z² + 1))` for `z ≥ 0`, its odd reflection
/// otherwise) and with the right derivative `1/√(z² + 1)` everywhere, zero included. Each branch
/// sees an argument clamped to `≥ −1`, where `z + √(z² + 1) ≥ √2 − 1`, so the branch not taken
/// never forms a log of 0 (whose backward would give 0 × ∞ = NaN).
pub fn asinh(z: &Tensor) -> Result<Tensor> {
    let pos = |v: &Tensor| -> Result<Tensor> {
        let v = v.maximum(-1.0)?;
        Ok((&v + (v.sqr()? + 1.0)?.sqrt()?)?.log()?)
    };
    let up = pos(z)?;
    let down = pos(&z.neg()?)?.neg()?;
    Ok(z.ge(0.0)?.where_cond(&up, &down)?)
}

/// `(sinh w, cosh w)`.
fn sinh_cosh(w: &Tensor) -> Result<(Tensor, Tensor)> {
    let ep = w.exp()?;
    let em = w.neg()?.exp()?;
    Ok((((&ep - &em)? * 0.5)?, ((ep + em)? * 0.5)?))
}

/// The sinh–arcsinh flow `α + β sinh(τ asinh(ε) + s)` at a batch of rows, `τ = e^ℓ`; all
/// tensors `(B, 1)`. The time derivatives are needed by the drifts only.
#[derive(Debug, Clone)]
pub struct SinhArcsinhMarginal {
    /// The location and scale: the base Gaussian `N(α, β²)`, with `∂α/∂t`, `∂β/∂t`.
    pub base: GaussianMarginal,
    /// The skew `s`.
    pub skew: Tensor,
    /// The log tail weight `ℓ = log τ`.
    pub log_tail: Tensor,
    /// `∂s/∂t`.
    pub dskew_dt: Option<Tensor>,
    /// `∂ℓ/∂t`.
    pub dlog_tail_dt: Option<Tensor>,
}

/// The intermediate values of the sinh–arcsinh flow at one `ε`, computed once and shared by
/// the flow's value, slope, velocity and score.
struct Parts {
    /// `u = asinh ε`.
    u: Tensor,
    /// `τ = e^ℓ`.
    tau: Tensor,
    /// `sinh w`, `cosh w` for `w = τ u + s`.
    sh: Tensor,
    ch: Tensor,
    /// `√(1 + ε²)`.
    root: Tensor,
}

impl SinhArcsinhMarginal {
    fn parts(&self, eps: &Tensor) -> Result<Parts> {
        let u = asinh(eps)?;
        let tau = self.log_tail.exp()?;
        let w = ((&tau * &u)? + &self.skew)?;
        let (sh, ch) = sinh_cosh(&w)?;
        let root = (eps.sqr()? + 1.0)?.sqrt()?;
        Ok(Parts {
            u,
            tau,
            sh,
            ch,
            root,
        })
    }

    /// `∂φ/∂ε = β τ cosh(w) / √(1 + ε²)`.
    fn slope(&self, p: &Parts) -> Result<Tensor> {
        Ok(((&self.base.beta * &p.tau)? * &p.ch)?.div(&p.root)?)
    }

    /// `∂φ/∂t = ∂α/∂t + ∂β/∂t sinh w + β cosh(w) (τ ∂ℓ/∂t u + ∂s/∂t)`.
    fn velocity(&self, p: &Parts) -> Result<Tensor> {
        let (Some(ds), Some(dl)) = (&self.dskew_dt, &self.dlog_tail_dt) else {
            return Err(Error::invalid(
                "marginal",
                "without time derivatives",
                "the drifts need ∂s/∂t and ∂ℓ/∂t: evaluate it with derivatives = true",
            ));
        };
        let (Some(da), Some(db)) = (&self.base.dalpha_dt, &self.base.dbeta_dt) else {
            return Err(Error::invalid(
                "marginal",
                "without time derivatives",
                "the drifts need ∂α/∂t and ∂β/∂t: evaluate it with derivatives = true",
            ));
        };
        // ∂w/∂t = τ ∂ℓ/∂t u + ∂s/∂t.
        let dw = (((&p.tau * dl)? * &p.u)? + ds)?;
        Ok(((da + (db * &p.sh)?)? + ((&self.base.beta * &p.ch)? * dw)?)?)
    }

    /// `(−ε − d/dε log ∂φ/∂ε) / ∂φ/∂ε`, with `d/dε log ∂φ/∂ε = τ tanh(w)/√(1 + ε²) − ε/(1 + ε²)`.
    fn score(&self, eps: &Tensor, p: &Parts) -> Result<Tensor> {
        let th = (&p.sh / &p.ch)?;
        let dlog_slope = (((th * &p.tau)? / &p.root)? - (eps / p.root.sqr()?)?)?;
        Ok(((eps.neg()? - dlog_slope)? / self.slope(p)?)?)
    }
}

impl FlowMarginal for SinhArcsinhMarginal {
    fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        let p = self.parts(eps)?;
        Ok((&self.base.alpha + (&self.base.beta * p.sh)?)?)
    }

    fn eps_of(&self, x: &Tensor) -> Result<Tensor> {
        let w = asinh(&((x - &self.base.alpha)? / &self.base.beta)?)?;
        let u = ((w - &self.skew)? / self.log_tail.exp()?)?;
        Ok(sinh_cosh(&u)?.0)
    }

    fn log_det(&self, eps: &Tensor) -> Result<Tensor> {
        Ok(self.slope(&self.parts(eps)?)?.log()?)
    }

    fn ode_drift_at_eps(&self, eps: &Tensor) -> Result<Tensor> {
        self.velocity(&self.parts(eps)?)
    }

    fn score_at_eps(&self, eps: &Tensor) -> Result<Tensor> {
        self.score(eps, &self.parts(eps)?)
    }

    /// Both from one evaluation of the flow's intermediate values.
    fn ode_drift_and_score_at_eps(&self, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        let p = self.parts(eps)?;
        Ok((self.velocity(&p)?, self.score(eps, &p)?))
    }

    fn like(&self) -> &Tensor {
        &self.base.alpha
    }

    fn tile(&self, n: usize) -> Result<Self> {
        Ok(Self {
            base: self.base.tile(n)?,
            skew: tile_rows(&self.skew, n)?,
            log_tail: tile_rows(&self.log_tail, n)?,
            dskew_dt: tile_opt(&self.dskew_dt, n)?,
            dlog_tail_dt: tile_opt(&self.dlog_tail_dt, n)?,
        })
    }
}

/// Learned sinh–arcsinh shape on top of a Gaussian process `base`: `s = (1 − t) S(y, t)`,
/// `ℓ = (1 − t) L(y, t)` with `(S, L)` the two outputs of a tanh network on `[y, t]`, so that
/// `q_1` is the base's Gaussian and `q_t` for `t < 1` may be skewed and heavy- or light-tailed.
/// `∂s/∂t = −S + (1 − t) ∂S/∂t` and likewise `∂ℓ/∂t`, the `∂/∂t` from the engine's tangents.
#[derive(Debug, Clone)]
pub struct SinhArcsinh<P> {
    base: P,
    shape: Mlp,
}

impl<P: GaussianProcess> SinhArcsinh<P> {
    /// The flow of `base` shaped by `shape`, a network `[y, t] → (S, L)` with identity output.
    ///
    /// # Errors
    /// `shape` not mapping two inputs to two outputs, or with a non-identity output.
    pub fn new(base: P, shape: Mlp) -> Result<Self> {
        if shape.in_dim() != 2 || shape.out_dim() != 2 {
            return Err(Error::invalid(
                "shape",
                format!("widths {:?}", shape.config().widths),
                "must map [y, t] to two outputs (skew, log tail weight)",
            ));
        }
        if shape.config().output != Activation::Identity {
            return Err(Error::invalid(
                "shape",
                format!("{:?} output", shape.config().output),
                "must have an identity output (skew and log tail weight are unbounded)",
            ));
        }
        Ok(Self { base, shape })
    }

    /// The Gaussian process under the shape.
    pub fn base(&self) -> &P {
        &self.base
    }

    /// The shape network.
    pub fn shape(&self) -> &Mlp {
        &self.shape
    }
}

impl SinhArcsinh<crate::process::NetworkGaussian> {
    /// A copy that builds no gradient graph (detached parameters), for evaluation.
    pub fn detached(&self) -> Result<Self> {
        Self::new(self.base.detached()?, self.shape.detached()?)
    }
}

impl<P: GaussianProcess> VariationalProcess for SinhArcsinh<P> {
    type Marginal = SinhArcsinhMarginal;

    fn marginal(&self, y: &Tensor, t: Time<'_>, derivatives: bool) -> Result<Self::Marginal> {
        let base = self.base.marginal(y, t, derivatives)?;
        let dirs: &[usize] = if derivatives { &[1] } else { &[] };
        let (out, tangents) = value_and_tangents(&self.shape, y, t, dirs)?;
        let omt = match t {
            Time::Scalar(tv) => {
                Tensor::full(1.0 - tv, y.dims(), y.device())?.to_dtype(y.dtype())?
            }
            Time::PerSample(ts) => ts.affine(-1.0, 1.0)?,
        };
        // Column k of the network: its value times (1 − t), and the time derivative
        // −value + (1 − t) ∂value/∂t.
        let column = |k: usize| -> Result<(Tensor, Option<Tensor>)> {
            let v = out.narrow(1, k, 1)?;
            let value = (&omt * &v)?;
            let dt = match tangents.first() {
                Some(d) => Some(((&omt * d.narrow(1, k, 1)?)? - &v)?),
                None => None,
            };
            Ok((value, dt))
        };
        let (skew, dskew_dt) = column(0)?;
        let (log_tail, dlog_tail_dt) = column(1)?;
        Ok(SinhArcsinhMarginal {
            base,
            skew,
            log_tail,
            dskew_dt,
            dlog_tail_dt,
        })
    }
}
