//! The error type of `sde-solvers`.

/// Everything that can go wrong while solving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from `sde-core` (a field, a process or a tensor operation).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from candle outside a field evaluation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A solver argument is outside its allowed range.
    #[error("invalid {name}: {value} ({reason})")]
    InvalidParameter {
        /// The argument's name.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// The state is not finite (at the start, or after integrating up to `t`).
    #[error("non-finite state at t = {t}{}{hint}", entry.map_or(String::new(), |i| format!(", first at entry {i}")))]
    NonFinite {
        /// The time at which the state was found non-finite.
        t: f64,
        /// The flat (row-major) index of the first non-finite entry, where known: row
        /// `entry / d` of a `(batch, d)` state.
        entry: Option<usize>,
        /// Extra context (e.g. a step-size hint); may be empty.
        hint: &'static str,
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
