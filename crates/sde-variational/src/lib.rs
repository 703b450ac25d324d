//! # sde-variational
//!
//! Variational objectives for generative ODE/SDE models — the training layer of the
//! workspace: the exact likelihood of a continuous normalizing flow through the augmented
//! ODE, the SDE evidence lower bound with a Gaussian variational process, the variational
//! diffusion model (VDM), and score and flow matching (`docs/MATH.md` §3–8, `docs/REFERENCE.md`).
//!
//! Such losses contain derivatives of neural networks (the divergence of a flow, `∂/∂t` of
//! a learned mean or scale). candle differentiates in reverse mode only, once, so this crate
//! computes those derivatives in forward mode as ordinary tensor expressions, which then
//! back-propagate to the weights like any loss.
//!
//! This crate so far:
//! - [`cnf`]: [`NeuralOde`], the exact log-likelihood of a continuous normalizing flow
//!   through the augmented ODE, and sampling.
//! - [`engine`]: the fused CPU engine for the paper's small networks — value and any number
//!   of forward-mode tangents (`∂/∂x`, `∂/∂t`) of a tanh MLP on rows `[x…, t]`, per-row or
//!   scalar time, identity or softplus output, forward and backward in one candle op.
//! - [`optim`]: [`Adam`], PyTorch's Adam/AdamW with host-side `f64` moments, global-norm
//!   clipping in a fixed parameter order and a checkpointable [`AdamState`].
//! - [`process`]: variational processes as flows of a standard normal ([`FlowMarginal`],
//!   [`VariationalProcess`]) — the one place where the forward and reverse-time SDE drifts are
//!   written — with the linear flow, the Gaussian `N(α, β²)` ([`GaussianMarginal`],
//!   [`GaussianProcess`]), and the SDE experiment's networks [`NetworkGaussian`].
//! - [`mixture`]: mixtures of variational flows (responsibilities, drift, score, SDE drifts)
//!   and the data-set mixture, the exact optimum of flow and score matching on a data set.
//! - [`elbo`]: the SDE ELBO, term by term per data point, for any [`GenerativeSde`] and any
//!   [`VariationalProcess`].
//! - [`flow`]: a non-linear variational flow, the sinh–arcsinh transform of a Gaussian process
//!   with learned, time-dependent skew and tail weight ([`flow::SinhArcsinh`]).
//! - [`likelihood`]: likelihoods `p(y | x_1)` behind one trait, [`Likelihood`] — the
//!   Gaussian (closed-form reconstruction term) and the discretised Gaussian for ordinal data
//!   (tail-stable `log(Φ(b) − Φ(a))` as a custom op, Gauss–Hermite reconstruction term).
//! - [`exact`]: the whole bound chain `ELBO_SDE ≤ ELBO_ODE ≤ log p(y)` of a 1-D model, from
//!   its Fokker–Planck marginals on a grid; the Liouville density of a flow.
//! - [`neural_sde`]: [`NeuralSde`], a drift and a softplus diffusion network, usable by the
//!   losses, the solvers and the Fokker–Planck solver.
//! - [`vdm`]: the variational diffusion model as a parameterisation of the SDE ELBO — the
//!   variance-preserving schedule [`vdm::VpSchedule`] and the signal-prediction SDE
//!   [`vdm::VdmSde`].
//! - [`flow_matching`]: the stochastic interpolant as a variational process, the
//!   flow-matching loss and its ELBO terms.
//! - [`score_matching`]: denoising score matching on the VP process as a parameterisation of
//!   the SDE ELBO, and its probability-flow ODE with an exact likelihood.
//! - [`mlp`]: the tanh MLPs of the reference experiments ([`Mlp`], [`MlpConfig`]), seeded
//!   PyTorch-style initialisation into a [`candle_nn::VarMap`], forward-mode tangents and
//!   Jacobian–vector products, and exact and Hutchinson divergences of fields `v(x, t)`.
//!
//! The traits whose methods are called on processes, marginals, models and likelihoods are
//! in [`prelude`] (`use sde_variational::prelude::*;`).
//!
//! Layering: `sde-core` → `sde-solvers` → `sde-variational` → `sde-experiments` → `xtask`.
//! This crate names neither `sde-experiments` nor `xtask`.

pub mod cnf;
pub mod elbo;
pub mod engine;
pub mod error;
pub mod exact;
pub mod flow;
pub mod flow_matching;
pub mod likelihood;
pub mod mixture;
pub mod mlp;
pub mod network_elbo;
pub mod neural_sde;
pub mod optim;
pub mod process;
pub mod score_matching;
mod simd;
pub mod vdm;

pub use cnf::NeuralOde;
pub use elbo::{sde_elbo, ElboTerms, GenerativeSde};
pub use error::{Error, Result};
pub use likelihood::{DiscretisedGaussian, GaussianLikelihood, Likelihood};
pub use mlp::{
    divergence_exact, divergence_hutchinson, softplus, with_time, Activation, Mlp, MlpConfig, Time,
};
pub use neural_sde::NeuralSde;
pub use optim::{Adam, AdamConfig, AdamState, WeightDecay};
pub use process::{
    DiffusionAt, FlowMarginal, GaussianMarginal, GaussianProcess, NetworkGaussian,
    VariationalField, VariationalProcess,
};

/// The traits whose methods a user calls, for one glob import:
/// `use sde_variational::prelude::*;` brings `marginal`, the flow's drifts and densities,
/// `drift_and_diffusion` and the likelihoods' methods into scope.
pub mod prelude {
    pub use crate::elbo::GenerativeSde;
    pub use crate::likelihood::Likelihood;
    pub use crate::process::{FlowMarginal, GaussianProcess, VariationalProcess};
}
