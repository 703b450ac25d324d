//! # sde-experiments
//!
//! The paper's 1-D benchmark (section 8; `REFERENCE.md`): a mixture of five Laplace
//! distributions, and the reference experiments trained on it. The top library layer: it
//! builds on `sde-core`, `sde-solvers` and `sde-variational`, and `xtask` drives it.
//!
//! - [`data`]: the Laplace mixture, its exact density and expected log-likelihood, seeded
//!   training and validation sets.
//! - [`train`](mod@train): a reusable training loop (Adam, shuffled batches, periodic validation,
//!   progress callbacks, checkpoints).
//! - [`ode`]: the ODE (continuous normalizing flow) experiment, REFERENCE.md §1.
//!
//! Library code prints nothing: progress reaches the caller through callbacks.

pub mod data;
pub mod error;
pub mod ode;
pub mod train;

pub use data::{Dataset, LaplaceMixture};
pub use error::{Error, Result};
pub use train::{train, Evaluation, Objective, TrainConfig, TrainHistory};
