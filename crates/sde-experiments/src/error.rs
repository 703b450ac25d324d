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
    /// Training met a non-finite loss, metric or gradient and stopped; the last checkpoint is
    /// left as it was.
    #[error("training stopped: non-finite {what} at epoch {epoch}, batch {batch}")]
    NonFinite {
        /// The figure (and its value), e.g. `loss = NaN`.
        what: String,
        /// The epoch being trained (1-based).
        epoch: usize,
        /// The batch within the epoch (0-based).
        batch: usize,
    },
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint's path.
        path: String,
        /// What went wrong.
        reason: String,
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

/// Checks that every named count is at least 1 (draws per point, solver steps, samples).
///
/// # Errors
/// [`Error::InvalidParameter`] naming the first count that is 0.
pub fn check_counts(counts: &[(&'static str, usize)]) -> Result<()> {
    match counts.iter().find(|(_, n)| *n == 0) {
        Some((name, _)) => Err(Error::invalid(name, 0, "must be at least 1")),
        None => Ok(()),
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
