//! Mixtures of variational flows (`docs/MATH.md` §5; paper §6, eq. 41–43), and the empirical
//! data-set mixture, the exact optimum of flow and score matching on a data set (appendix F).
//!
//! For `q_t(x) = Σ_k π_k q_t^k(x)` with component flows `q_t^k` (velocities `v_k`, scores
//! `s_k`) and weights `π_k` constant in time:
//!
//! ```text
//! r_k(x, t)    = π_k q_t^k(x) / q_t(x)                       (responsibilities)
//! v(x, t)      = Σ_k r_k v_k(x, t)                             (ODE drift)
//! ∇ log q_t(x) = Σ_k r_k s_k(x, t)                             (score)
//! f_q = v ± (½ ∂σ²/∂x + ½ σ² ∇ log q_t)                        (SDE drifts, shared σ)
//! ```
//!
//! (`Σ_k π_k q^k` solves the continuity equation with flux `Σ_k π_k q^k v_k = q v`.) The SDE
//! drifts come from the same function as every flow's, [`crate::process::sde_drift`].
//!
//! [`Mixture`] holds `K` component flows at the same rows; [`DataMixture`] is the mixture
//! `(1/N) Σ_n q_t(· | y_n)` of a variational process over a data set, evaluated for a batch of
//! points against all `N` data at once — the optimal velocity `E[f_q,ode | x_t = x]` of flow
//! matching and the optimal score of denoising score matching, and a field the solvers take.

use candle_core::{Tensor, D};

use crate::error::{column_rows, Error, Result};
use crate::mlp::Time;
use crate::process::{sde_drift, DiffusionAt, FlowMarginal, VariationalProcess};

/// A mixture evaluated at a batch of points: all `(B, 1)` except the responsibilities.
#[derive(Debug, Clone)]
pub struct MixtureAt {
    /// `log q_t(x)`.
    pub log_density: Tensor,
    /// `r_k(x)`, `(B, K)`, rows summing to 1.
    pub responsibilities: Tensor,
    /// `v(x, t) = Σ_k r_k v_k`.
    pub velocity: Tensor,
    /// `∇ log q_t(x) = Σ_k r_k s_k`.
    pub score: Tensor,
}

impl MixtureAt {
    /// The forward SDE drift for the diffusion `d` at the same points.
    pub fn forward_drift(&self, d: &DiffusionAt) -> Result<Tensor> {
        sde_drift(&self.velocity, &self.score, d, 1.0)
    }

    /// The reverse-time SDE drift for the diffusion `d` at the same points.
    pub fn reverse_drift(&self, d: &DiffusionAt) -> Result<Tensor> {
        sde_drift(&self.velocity, &self.score, d, -1.0)
    }
}

/// Combine per-component columns `(B, K)` — log weights (or `(1, K)`), log densities,
/// velocities and scores — into the mixture's density, responsibilities, velocity and score.
fn combine(log_w: &Tensor, log_q: &Tensor, v: &Tensor, s: &Tensor) -> Result<MixtureAt> {
    let joint = log_q.broadcast_add(log_w)?;
    // Log-sum-exp with the row maximum taken out (a constant: no gradient needed through it).
    let max = joint.max_keepdim(D::Minus1)?.detach();
    let shifted = joint.broadcast_sub(&max)?.exp()?;
    let total = shifted.sum_keepdim(D::Minus1)?;
    let log_density = (total.log()? + max)?;
    let r = shifted.broadcast_div(&total)?;
    Ok(MixtureAt {
        log_density,
        velocity: (&r * v)?.sum_keepdim(D::Minus1)?,
        score: (&r * s)?.sum_keepdim(D::Minus1)?,
        responsibilities: r,
    })
}

/// The columns `(log q, v, s)` of one flow at `x`, each `(rows, 1)`.
fn component<M: FlowMarginal>(q: &M, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let eps = q.eps_of(x)?;
    let (v, score) = q.ode_drift_and_score_at_eps(&eps)?;
    Ok((q.log_density_at_eps(&eps)?, v, score))
}

/// `q_t = Σ_k π_k q_t^k` for component flows at the same `B` rows, with `ode_drift`-capable
/// components (evaluated with time derivatives).
#[derive(Debug, Clone)]
pub struct Mixture<M> {
    components: Vec<M>,
    log_weights: Tensor,
}

impl<M: FlowMarginal> Mixture<M> {
    /// The mixture of `components` with weights `softmax(logits)`; `logits` `(1, K)` (shared by
    /// all rows) or `(B, K)` (per row, e.g. from a network of `y`).
    ///
    /// # Errors
    /// No components, or `logits` of another shape.
    pub fn new(components: Vec<M>, logits: &Tensor) -> Result<Self> {
        let k = components.len();
        let rows = match components.first() {
            Some(c) => c.like().dim(0)?,
            None => {
                return Err(Error::invalid(
                    "components",
                    0,
                    "a mixture needs a component",
                ))
            }
        };
        if logits.dims() != [1, k] && logits.dims() != [rows, k] {
            return Err(Error::invalid(
                "logits",
                format!(
                    "shape {:?} for {k} components of {rows} rows",
                    logits.dims()
                ),
                "must be (1, K) or (rows, K)",
            ));
        }
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let log_weights = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
        Ok(Self {
            components,
            log_weights,
        })
    }

    /// The components.
    pub fn components(&self) -> &[M] {
        &self.components
    }

    /// `log π_k`, `(1, K)` or `(B, K)`.
    pub fn log_weights(&self) -> &Tensor {
        &self.log_weights
    }

    /// Density, responsibilities, velocity and score at `x` `(B, 1)`.
    pub fn at(&self, x: &Tensor) -> Result<MixtureAt> {
        let mut cols = (Vec::new(), Vec::new(), Vec::new());
        for q in &self.components {
            let (l, v, s) = component(q, x)?;
            cols.0.push(l);
            cols.1.push(v);
            cols.2.push(s);
        }
        combine(
            &self.log_weights,
            &Tensor::cat(&cols.0, 1)?,
            &Tensor::cat(&cols.1, 1)?,
            &Tensor::cat(&cols.2, 1)?,
        )
    }
}

/// The data-set mixture `q_t(x) = (1/N) Σ_n q_t(x | y_n)` of a variational process: for flow
/// matching's interpolant its velocity is the exact minimiser of the flow-matching loss on the
/// data set, `v*(x, t) = E[f_q,ode(x | y) | x_t = x]`, and its score that of denoising score
/// matching (`docs/MATH.md` §5, appendix F). Points are evaluated against all `N` data at once
/// (`B × N` rows through the process), so keep `N` moderate.
#[derive(Debug, Clone)]
pub struct DataMixture<'a, P> {
    process: &'a P,
    ys: Tensor,
}

impl<'a, P: VariationalProcess> DataMixture<'a, P> {
    /// The mixture of `process` over the data `ys` `(N, 1)`, `N ≥ 1`.
    ///
    /// # Errors
    /// `ys` not `(N, 1)` with `N ≥ 1`.
    pub fn new(process: &'a P, ys: Tensor) -> Result<Self> {
        match *ys.dims() {
            [n, 1] if n >= 1 => Ok(Self { process, ys }),
            ref dims => Err(Error::invalid(
                "ys",
                format!("shape {dims:?}"),
                "must be (N, 1) with N ≥ 1",
            )),
        }
    }

    /// Density, responsibilities `(B, N)`, velocity and score at points `x` `(B, 1)` and time
    /// `t`.
    pub fn at(&self, x: &Tensor, t: f64) -> Result<MixtureAt> {
        let b = column_rows("x", x)?;
        let n = self.ys.dim(0)?;
        // Row b·N + n pairs point b with datum n.
        let xs = x.broadcast_as((b, n))?.reshape((b * n, 1))?;
        let ys = self.ys.t()?.broadcast_as((b, n))?.reshape((b * n, 1))?;
        let q = self.process.marginal(&ys, Time::Scalar(t), true)?;
        let (l, v, s) = component(&q, &xs)?;
        let log_w = Tensor::full(-(n as f64).ln(), (1, n), x.device())?.to_dtype(x.dtype())?;
        combine(
            &log_w,
            &l.reshape((b, n))?,
            &v.reshape((b, n))?,
            &s.reshape((b, n))?,
        )
    }

    /// The data, `(N, 1)`.
    pub fn data(&self) -> &Tensor {
        &self.ys
    }
}

fn core_err(e: Error) -> sde_core::Error {
    sde_core::Error::Field(Box::new(e))
}

impl<P: VariationalProcess> sde_core::VectorField<Tensor> for DataMixture<'_, P> {
    fn velocity(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        self.at(x, t).map(|m| m.velocity).map_err(core_err)
    }
}

impl<P: VariationalProcess> sde_core::Score<Tensor> for DataMixture<'_, P> {
    fn score(&self, x: &Tensor, t: f64) -> sde_core::Result<Tensor> {
        self.at(x, t).map(|m| m.score).map_err(core_err)
    }
}
