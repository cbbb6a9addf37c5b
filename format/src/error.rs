//! The one error type of `millpond-format`.

/// What can go wrong when reading or building one of the formats, each variant saying what
/// the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Stored bytes failed their checksum or framing check (`what` was being read, at
    /// `location`). Never skipped: the copy is damaged; read another one (restore from a
    /// snapshot and the WAL).
    #[error("corrupt {what} at {location}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Where.
        location: String,
    },

    /// The caller's input does not fit the format (`reason` says how), for example a change
    /// that does not fit its state's kind. Fix the input; retrying fails the same way.
    #[error("invalid input: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    pub(crate) fn corrupt(what: &'static str, location: impl Into<String>) -> Self {
        FormatError::Corrupt {
            what,
            location: location.into(),
        }
    }
}
