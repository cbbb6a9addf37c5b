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

    /// A snapshot, manifest or file does not exist: check the id (`millpond snapshot list`)
    /// and the archive URL.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },

    /// Another writer with a newer epoch has taken over the archive: this writer must stop
    /// (its job instance is a zombie). Nothing it wrote is visible.
    #[error("fenced: this writer has epoch {epoch}, the archive belongs to epoch {newer_epoch}")]
    Fenced {
        /// This writer's epoch.
        epoch: u64,
        /// The epoch that took over.
        newer_epoch: u64,
    },

    /// Another commit of the same writer epoch took the manifest sequence: two snapshot
    /// writers share one claim. Claim the archive again before writing.
    #[error("manifest sequence {sequence} was taken by a writer of the same epoch")]
    Conflict {
        /// The sequence.
        sequence: u64,
    },

    /// A compaction stopped because its `cancel` flag was set (the instance is closing). Its
    /// uploads are left for GC; nothing was committed. Nothing to do.
    #[error("compaction cancelled")]
    Cancelled,

    /// The object store failed (network, server, credentials). Retry, and check the store's
    /// URL and credentials if it persists. For a commit the outcome is unknown until the
    /// retry (see `SnapshotWriter::commit`).
    #[error("object store failed {op} {path}: {source}")]
    ObjectStore {
        /// What was being done.
        op: &'static str,
        /// The object involved.
        path: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },

    /// The object store did not answer in time: a request took longer than
    /// `ArchiveSettings::request_timeout` (or connecting took longer than `connect_timeout`),
    /// and no retry was left. Check that the endpoint (`AWS_ENDPOINT`) is right and the store
    /// up; if it is only slow, raise the timeout (`ArchiveSettings`, `millpond
    /// --timeout-seconds`). Retrying may succeed; for a commit the outcome is unknown, as for
    /// `ObjectStore`.
    #[error(
        "object store timed out {op} {path} (raise ArchiveSettings::request_timeout, or \
         --timeout-seconds / MILLPOND_TIMEOUT_SECONDS of the millpond command, if the store is \
         slow rather than unreachable): {source}"
    )]
    TimedOut {
        /// What was being done.
        op: &'static str,
        /// The object involved.
        path: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },

    /// The state crate refused an entry or a change (a change of a state the snapshot does
    /// not know, a damaged entry): the WAL and the manifest disagree; restore from another
    /// snapshot.
    #[error(transparent)]
    State(#[from] millpond_state::Error),

    /// Reading the write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] millpond_wal::Error),

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

impl Error {
    /// Whether retrying the same call may succeed (a transient object-store failure or
    /// timeout).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::ObjectStore { .. } | Error::TimedOut { .. } | Error::Io { .. }
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The formats' errors keep their meaning: damaged bytes stay [`Error::Corrupt`], input that
/// does not fit stays [`Error::Invalid`].
impl From<millpond_format::FormatError> for Error {
    fn from(e: millpond_format::FormatError) -> Self {
        match e {
            millpond_format::FormatError::Corrupt { what, location } => {
                Error::Corrupt { what, location }
            }
            millpond_format::FormatError::Invalid { reason } => Error::Invalid { reason },
            other => Error::Invalid {
                reason: other.to_string(),
            },
        }
    }
}
