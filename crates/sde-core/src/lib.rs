//! # sde-core
//!
//! The bottom layer of the workspace: the mathematics of generative ODE/SDE models without
//! any solver or training code.
//!
//! - [`Vector`]: the state algebra (implemented for `f32`, `f64`, `[T; N]`, `Vec<T>`, pairs
//!   and batched candle [`Tensor`](candle_core::Tensor)s) that lets one solver serve
//!   closed-form `f64` processes and neural drifts alike.
//! - Capabilities as small traits: [`VectorField`], [`Drift`], [`Diffusion`], [`Score`],
//!   [`DivergenceField`]; [`PointwiseSde`] for one-dimensional laws applied entrywise.
//! - Closed-form processes with exact marginals ([`process`]): Brownian motion,
//!   Ornstein–Uhlenbeck, geometric Brownian motion, variance-preserving and
//!   variance-exploding SDEs.
//! - ODE ↔ SDE conversion through the Fokker–Planck identities ([`convert`]):
//!   [`ProbabilityFlow`], [`ForwardSde`], [`ReverseTimeSde`] (`docs/MATH.md` §2).
//! - Gaussian and Gaussian-mixture marginals and paths ([`gaussian`]).
//! - A mass-conserving 1-D Fokker–Planck solver ([`fokker_planck`]) that evolves a density
//!   on a grid under any 1-D drift and diffusion; [`grid`] turns its cell averages into a
//!   log-density and score ([`grid::GridDensity`]) and tabulates neural coefficients for it
//!   ([`grid::TabulatedSde`]).
//! - Seeded standard-normal draws ([`noise`]).
//! - Gauss–Hermite and Gauss–Legendre quadrature rules ([`quadrature`]).
//!
//! Layering: `sde-core` → `sde-solvers` → `sde-variational` → `sde-experiments` → `xtask`.
//! This crate names none of the others.
//!
//! ```
//! use sde_core::{GaussianMarginals, LinearGaussianSde, OrnsteinUhlenbeck, ProbabilityFlow,
//!                VectorField};
//! # fn main() -> sde_core::Result<()> {
//! let ou = OrnsteinUhlenbeck::new(1.0, 1.0)?;
//! let marginals = GaussianMarginals::new(ou, 0.0, 1.0)?; // stationary: N(0, 1/2) …
//! let flow = ProbabilityFlow::new(ou, marginals);
//! // dx/dt = −θx + ½ s² (x − m_t)/v_t: at v = 1 this is −x + x/2.
//! let v: f64 = flow.velocity(&2.0, 0.0)?;
//! assert!((v - (-2.0 + 1.0)).abs() < 1e-12);
//! # Ok(()) }
//! ```

pub mod convert;
pub mod error;
pub mod field;
pub mod fokker_planck;
pub mod gaussian;
pub mod grid;
pub mod noise;
pub mod process;
pub mod quadrature;
pub mod real;
pub mod vector;

pub use convert::{ForwardSde, ProbabilityFlow, ReverseTimeSde, Sde};
pub use error::{Error, Result};
pub use field::{
    Diffusion, DivergenceField, Drift, FnField, Noise, PointwiseField, PointwiseSde, Score,
    VectorField,
};
pub use gaussian::{Gaussian, GaussianMixture, LinearGaussianPath, MixturePath};
pub use process::{
    BrownianMotion, GaussianMarginals, GeometricBrownianMotion, LinearGaussianSde,
    OrnsteinUhlenbeck, VarianceExploding, VariancePreserving,
};
pub use real::Real;
pub use vector::{tensor_standard_normal, Vector};
