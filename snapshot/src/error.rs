//! The one error type of `millpond-snapshot`.

/// What can go wrong with snapshot files, each variant saying what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes of a file failed a checksum, framing or ordering check. Never skipped or
    /// repaired: the file is damaged; fetch it again, or restore from an older snapshot.
    #[error("corrupt {what} at {location}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Where: block number and byte offset, index entry, or footer.
        location: String,
    },

    /// The caller's input or configuration is wrong (keys out of order, a key too short, an
    /// entry too large). Nothing was written for the rejected call; fix the input.
    #[error("invalid input: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },

    /// Writing or reading the underlying file or stream failed. A writer that saw this is
    /// unusable (its output is incomplete): discard the output and start again.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved, or what was being written when there is no path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
