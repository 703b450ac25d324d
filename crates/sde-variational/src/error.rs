//! The crate's error type.
//!
//! Lower crates' errors are wrapped with `#[from]`, so `?` works across the layers.

/// Errors of `sde-variational`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from `sde-core` (invalid process parameters, shape mismatches, …).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from a solver.
    #[error(transparent)]
    Solver(#[from] sde_solvers::Error),
    /// An error from candle's tensor operations.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A NaN or infinity where finite numbers are required (a gradient, say).
    #[error("non-finite {what}")]
    NonFinite {
        /// What was non-finite, e.g. `gradient of parameter drift.params`.
        what: String,
    },
    /// A parameter, configuration entry or input is outside its allowed range.
    #[error("invalid {name}: {value} ({reason})")]
    InvalidParameter {
        /// The parameter's name as the user wrote it.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

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

/// The number of rows of `t`, which must be a column `(rows, 1)`: the shape of data, times and
/// noises throughout the crate; an error naming `name` otherwise.
pub(crate) fn column_rows(name: &'static str, t: &candle_core::Tensor) -> Result<usize> {
    match *t.dims() {
        [rows, 1] => Ok(rows),
        ref dims => Err(Error::invalid(
            name,
            format!("shape {dims:?}"),
            "must be (batch, 1)",
        )),
    }
}
