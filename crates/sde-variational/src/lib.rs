//! # sde-variational
//!
//! Variational objectives for generative ODE/SDE models — the training layer of the
//! workspace: the exact likelihood of a continuous normalizing flow through the augmented
//! ODE, the SDE evidence lower bound with a Gaussian variational process, the variational
//! diffusion model (VDM), and score and flow matching (`MATH.md` §3–8, `REFERENCE.md`).
//!
//! Such losses contain derivatives of neural networks (the divergence of a flow, `∂/∂t` of
//! a learned mean or scale). candle differentiates in reverse mode only, once, so this crate
//! computes those derivatives in forward mode as ordinary tensor expressions, which then
//! back-propagate to the weights like any loss.
//!
//! This crate so far:
//! - [`cnf`]: [`NeuralOde`], the exact log-likelihood of a continuous normalizing flow
//!   through the augmented ODE, and sampling.
//! - [`fused`]: a fused CPU kernel (value and `∂v/∂x` of a 1-D field in one candle op, with a
//!   hand-derived backward) that `NeuralOde` uses automatically where it applies.
//! - [`mlp`]: the tanh MLPs of the reference experiments ([`Mlp`], [`MlpConfig`]), seeded
//!   PyTorch-style initialisation into a [`candle_nn::VarMap`], forward-mode tangents and
//!   Jacobian–vector products, and exact and Hutchinson divergences of fields `v(x, t)`.
//!
//! Layering: `sde-core` → `sde-solvers` → `sde-variational` → `sde-experiments` → `xtask`.
//! This crate names neither `sde-experiments` nor `xtask`.

pub mod cnf;
pub mod error;
pub mod fused;
pub mod mlp;

pub use cnf::NeuralOde;
pub use error::{Error, Result};
pub use mlp::{
    divergence_exact, divergence_hutchinson, softplus, with_time, Activation, Mlp, MlpConfig, Time,
};
