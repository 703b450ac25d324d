//! The error type of `sde-experiments`.

/// Everything that can go wrong in an experiment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the variational layer (models, objectives).
    #[error(transparent)]
    Variational(#[from] sde_variational::Error),
    /// An error from a solver.
    #[error(transparent)]
    Solver(#[from] sde_solvers::Error),
    /// An error from `sde-core`.
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is outside its allowed range.
    #[error("invalid {name}: {value} ({reason})")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// Training diverged.
    #[error("training diverged: non-finite loss at epoch {epoch}")]
    Diverged {
        /// The epoch at which the loss became non-finite.
        epoch: usize,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        /// The checkpoint's path.
        path: String,
        /// The underlying error.
        source: candle_core::Error,
    },
}

impl Error {
    /// An [`Error::InvalidParameter`] for `name = value`.
    pub fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        reason: &'static str,
    ) -> Self {
        Error::InvalidParameter {
            name,
            value: value.to_string(),
            reason,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
