//! The error type of `sde-core`.

/// Everything that can go wrong in `sde-core`. Messages are lowercase and name the parameter
/// and the offending value, e.g. `invalid theta: -1 (must be positive)`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter is outside its allowed range.
    #[error("invalid {name}: {value} ({reason})")]
    InvalidParameter {
        /// The parameter's name as the user wrote it.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// Two states, or a state and a parameter, have incompatible shapes.
    #[error("shape mismatch in {name}: {left} vs {right}")]
    ShapeMismatch {
        /// Where the mismatch happened.
        name: &'static str,
        /// The first shape.
        left: String,
        /// The second shape.
        right: String,
    },
    /// A state or a computed quantity is not finite.
    #[error("non-finite {name} at t = {t}")]
    NonFinite {
        /// What became non-finite.
        name: &'static str,
        /// The time at which it was found.
        t: f64,
    },
    /// A field of a higher layer (e.g. a neural network) failed while being evaluated.
    #[error("field evaluation failed: {0}")]
    Field(Box<dyn std::error::Error + Send + Sync>),
    /// An error from candle's tensor operations.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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

/// Returns an error unless `value` is finite.
pub fn check_finite(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::invalid(name, value, "must be finite"))
    }
}

/// Returns an error unless `value` is finite and strictly positive.
pub fn check_positive(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Error::invalid(name, value, "must be finite and positive"))
    }
}

/// Returns an error unless `value` is finite and non-negative.
pub fn check_non_negative(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(Error::invalid(
            name,
            value,
            "must be finite and non-negative",
        ))
    }
}
