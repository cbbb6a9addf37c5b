//! The one error type of `millpond-wal`.

/// What can go wrong in the WAL, each variant saying what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes of the log failed a checksum, framing or LSN-continuity check before its end.
    /// Never skipped: the log is damaged; restore from an older snapshot or a replica.
    #[error("corrupt {what} at {location}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Where.
        location: String,
    },

    /// Another writer owns this log (a newer instance took over). Stop this instance: its
    /// changes can no longer be made durable.
    #[error("fenced: another writer owns the log ({reason})")]
    Fenced {
        /// What the sink reported.
        reason: String,
    },

    /// The sink is unreachable or timed out after its retries. Retry later, or stop and
    /// recover: nothing appended after the last durable commit is lost from the source's view,
    /// since its offsets were not committed.
    #[error("WAL sink unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
    },

    /// Applying a replayed change failed (`source` says why; usually a state that the job no
    /// longer registers). Register every state the log names before replaying.
    #[error("applying the change at LSN {lsn} failed: {source}")]
    Apply {
        /// The LSN of the commit marker whose unit failed.
        lsn: u64,
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The caller's input or configuration is wrong.
    #[error("invalid input: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },

    /// A file system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// The log failed earlier (the flusher stopped on an error) and takes no more appends.
    /// Reopen it; recovery replays what was durable.
    #[error("the WAL failed earlier and was stopped: {reason}")]
    Failed {
        /// The first failure.
        reason: String,
    },

    /// The log was closed.
    #[error("the WAL is closed")]
    Closed,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
