//! # sde-experiments
//!
//! The paper's 1-D benchmark (section 8; `docs/REFERENCE.md`): a mixture of five Laplace
//! distributions, and the reference experiments trained on it. The top library layer: it
//! builds on `sde-core`, `sde-solvers` and `sde-variational`, and `xtask` drives it.
//!
//! - [`data`]: the Laplace mixture, its exact density and expected log-likelihood, seeded
//!   training and validation sets.
//! - [`train`](mod@train): a reusable training loop (the library's Adam, shuffled batches,
//!   named metrics, periodic validation, progress callbacks, checkpoints that resume
//!   bit-identically).
//! - [`checkpoint`]: one-file atomic checkpoints with a configuration fingerprint.
//! - [`ode`]: the ODE (continuous normalizing flow) experiment, `docs/REFERENCE.md` §1.
//! - [`sde`]: the SDE experiment (learned drift, diffusion and Gaussian variational process,
//!   SDE ELBO), `docs/REFERENCE.md` §2.
//! - [`vdm`]: the VDM experiment (learned log-SNR schedule, signal prediction), `docs/REFERENCE.md` §3.
//! - [`fm`]: the flow-matching experiment with its exact likelihood, `docs/REFERENCE.md` §4.
//! - [`sm`]: a score-matching run (VDM's network and budget; not in the paper) with its ELBO
//!   and exact probability-flow likelihood.
//! - [`exact`]: beyond the paper — the whole bound chain `ELBO_SDE ≤ ELBO_ODE ≤ log p(y)` of
//!   the trained SDE, VDM and score models from their Fokker–Planck marginals, and the
//!   Liouville cross-check of the flows' likelihoods (`docs/MATH.md` §4).
//! - [`evaluate`]: Kolmogorov–Smirnov and Wasserstein-1 distances, kernel density estimates.
//!
//! Library code prints nothing: progress reaches the caller through callbacks.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod exact;
pub mod fm;
pub mod ode;
pub mod sde;
pub mod sm;
pub mod train;
pub mod vdm;

pub use checkpoint::{config_hash, Checkpoint};
pub use data::{Dataset, Distribution, Gaussian1d, LaplaceMixture};
pub use error::{Error, Result};
pub use train::{
    train, BatchLoss, Evaluation, Metric, Objective, TrainConfig, TrainHistory, TrainRng,
    Validation,
};
