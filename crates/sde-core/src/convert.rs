//! ODE ↔ SDE conversion through the Fokker–Planck identities (`docs/MATH.md` §2, paper eq. 11–20).
//!
//! Given marginals `p_t` with score `s = ∇log p_t` and any diffusion `g` (`D = g gᵀ`), three
//! processes share the marginals `p_t`:
//!
//! - probability-flow ODE `f_ode = f_fwd − ½ ∇·D − ½ D s`
//! - forward SDE          `f_fwd = f_ode + ½ ∇·D + ½ D s`
//! - reverse-time SDE     `f_bwd = f_ode − ½ ∇·D − ½ D s = f_fwd − ∇·D − D s`, simulated from
//!   t = 1 down to t = 0 as `x_{t−h} = x_t − h f_bwd(x_t, t) + g √h ε`.
//!
//! Each conversion is an adapter struct implementing the target trait, so the solvers never
//! know which one they integrate.

use crate::error::Result;
use crate::field::{Diffusion, Drift, Noise, Score, VectorField};
use crate::vector::Vector;

/// `½ ∇·D + ½ D s` — the correction between the probability-flow ODE and the forward SDE.
fn half_correction<S, G, Sc>(diffusion: &G, score: &Sc, x: &S, t: f64) -> Result<(S, Noise<S>)>
where
    S: Vector,
    G: Diffusion<S>,
    Sc: Score<S>,
{
    let g = diffusion.diffusion(x, t)?;
    let ds = g.apply_d(&score.score(x, t)?)?;
    let c = match diffusion.diffusion_divergence(x, t)? {
        Some(div) => div.add(&ds)?.scale(0.5)?,
        None => ds.scale(0.5)?,
    };
    Ok((c, g))
}

/// The probability-flow ODE of an SDE with known marginal score: `f − ½∇·D − ½ D∇log p_t`.
#[derive(Debug, Clone)]
pub struct ProbabilityFlow<P, Sc> {
    sde: P,
    score: Sc,
}

impl<P, Sc> ProbabilityFlow<P, Sc> {
    /// The probability-flow ODE of `sde`, whose marginals have score `score`.
    pub fn new(sde: P, score: Sc) -> Self {
        Self { sde, score }
    }
}

impl<S: Vector, P: Drift<S> + Diffusion<S>, Sc: Score<S>> VectorField<S>
    for ProbabilityFlow<P, Sc>
{
    fn velocity(&self, x: &S, t: f64) -> Result<S> {
        let f = self.sde.drift(x, t)?;
        let (c, _) = half_correction(&self.sde, &self.score, x, t)?;
        f.sub(&c)
    }
}

/// A forward SDE with the marginals of an ODE: drift `f_ode + ½∇·D + ½ D∇log p_t`, diffusion
/// `g` (any choice of `g` keeps the marginals).
#[derive(Debug, Clone)]
pub struct ForwardSde<F, Sc, G> {
    ode: F,
    score: Sc,
    diffusion: G,
}

impl<F, Sc, G> ForwardSde<F, Sc, G> {
    /// The forward SDE of the ODE `ode` whose marginals have score `score`, with diffusion `g`.
    pub fn new(ode: F, score: Sc, diffusion: G) -> Self {
        Self {
            ode,
            score,
            diffusion,
        }
    }
}

impl<S: Vector, F: VectorField<S>, Sc: Score<S>, G: Diffusion<S>> Drift<S>
    for ForwardSde<F, Sc, G>
{
    fn drift(&self, x: &S, t: f64) -> Result<S> {
        let v = self.ode.velocity(x, t)?;
        let (c, _) = half_correction(&self.diffusion, &self.score, x, t)?;
        v.add(&c)
    }
}

impl<S: Vector, F, Sc, G: Diffusion<S>> Diffusion<S> for ForwardSde<F, Sc, G> {
    fn diffusion(&self, x: &S, t: f64) -> Result<Noise<S>> {
        self.diffusion.diffusion(x, t)
    }
    fn diffusion_divergence(&self, x: &S, t: f64) -> Result<Option<S>> {
        self.diffusion.diffusion_divergence(x, t)
    }
}

/// The reverse-time SDE of a forward SDE with known marginal score: drift
/// `f_bwd = f − ∇·D − D∇log p_t`, the same diffusion. Integrate it on a *decreasing* time grid
/// (from t = 1 to t = 0); the solvers then take `x_{t−h} = x_t − h f_bwd + g √h ε`.
#[derive(Debug, Clone)]
pub struct ReverseTimeSde<P, Sc> {
    sde: P,
    score: Sc,
}

impl<P, Sc> ReverseTimeSde<P, Sc> {
    /// The reverse-time SDE of `sde`, whose marginals have score `score`.
    pub fn new(sde: P, score: Sc) -> Self {
        Self { sde, score }
    }
}

impl<S: Vector, P: Drift<S> + Diffusion<S>, Sc: Score<S>> Drift<S> for ReverseTimeSde<P, Sc> {
    fn drift(&self, x: &S, t: f64) -> Result<S> {
        let f = self.sde.drift(x, t)?;
        let (c, _) = half_correction(&self.sde, &self.score, x, t)?;
        f.add_scaled(-2.0, &c)
    }
}

impl<S: Vector, P: Diffusion<S>, Sc> Diffusion<S> for ReverseTimeSde<P, Sc> {
    fn diffusion(&self, x: &S, t: f64) -> Result<Noise<S>> {
        self.sde.diffusion(x, t)
    }
    fn diffusion_divergence(&self, x: &S, t: f64) -> Result<Option<S>> {
        self.sde.diffusion_divergence(x, t)
    }
}

/// An SDE assembled from a drift and a diffusion given separately.
#[derive(Debug, Clone)]
pub struct Sde<F, G> {
    /// The drift.
    pub drift: F,
    /// The diffusion.
    pub diffusion: G,
}

impl<S, F: Drift<S>, G> Drift<S> for Sde<F, G> {
    fn drift(&self, x: &S, t: f64) -> Result<S> {
        self.drift.drift(x, t)
    }
}

impl<S, F, G: Diffusion<S>> Diffusion<S> for Sde<F, G> {
    fn diffusion(&self, x: &S, t: f64) -> Result<Noise<S>> {
        self.diffusion.diffusion(x, t)
    }
    fn diffusion_divergence(&self, x: &S, t: f64) -> Result<Option<S>> {
        self.diffusion.diffusion_divergence(x, t)
    }
}
