//! The one error type of the `millpond` facade.

/// What can go wrong while opening, running or closing a millpond instance, each variant
/// saying what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process holds this data directory. Stop it first, or give this instance its
    /// own directory.
    #[error("the data directory {path} is in use by another process ({holder})")]
    Locked {
        /// The lock file.
        path: String,
        /// What the lock file says about its holder.
        holder: String,
    },

    /// A newer instance took this job's state over (its snapshot archive claim or its WAL
    /// writer epoch is higher). Stop this instance: nothing it changes can be committed. Its
    /// replacement resumes from the last commit.
    #[error("fenced: a newer instance owns this state ({reason})")]
    Fenced {
        /// What fenced it.
        reason: String,
    },

    /// The settings or the builder's components do not fit together, or do not fit the
    /// snapshot being restored. Fix the configuration; nothing was changed.
    #[error("invalid configuration: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },

    /// The instance failed earlier (a WAL or snapshot failure) and was stopped. Close it and
    /// open it again: recovery resumes from the last commit.
    #[error("the instance failed earlier: {reason}")]
    Failed {
        /// The first failure.
        reason: String,
    },

    /// The instance is closed.
    #[error("the instance is closed")]
    Closed,

    /// From the keyed state.
    #[error(transparent)]
    State(#[from] millpond_state::Error),

    /// From the write-ahead log.
    #[error(transparent)]
    Wal(millpond_wal::Error),

    /// From snapshots.
    #[error(transparent)]
    Snapshot(millpond_snapshot::Error),

    /// The job's function failed on a record (`millpond::kafka`): the job stopped, and
    /// nothing it changed after its last commit counts. Fix the cause; a restart reads the
    /// record again.
    #[cfg(feature = "kafka")]
    #[error("processing {topic}-{partition} at offset {offset}: {source}")]
    Process {
        /// The record's topic.
        topic: String,
        /// The record's partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// What the job's function returned.
        #[source]
        source: millpond_state::BoxError,
    },

    /// The job's `before_commit` hook failed (`millpond::kafka`, flushing its output, say): the
    /// job stopped without committing. Fix the cause and restart: records after the last
    /// commit are read again.
    #[cfg(feature = "kafka")]
    #[error("the job's before_commit hook failed: {0}")]
    BeforeCommit(#[source] millpond_state::BoxError),

    /// From the Kafka client (`millpond::kafka`): the brokers are unreachable, a setting is
    /// refused, the group failed. Check the consumer settings and the brokers.
    #[cfg(feature = "kafka")]
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// A file system operation on the data directory failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<millpond_wal::Error> for Error {
    fn from(e: millpond_wal::Error) -> Self {
        match e {
            millpond_wal::Error::Fenced { reason } => Error::Fenced { reason },
            e => Error::Wal(e),
        }
    }
}

impl From<millpond_snapshot::Error> for Error {
    fn from(e: millpond_snapshot::Error) -> Self {
        match e {
            millpond_snapshot::Error::Fenced { .. } => Error::Fenced {
                reason: e.to_string(),
            },
            // Settings that do not fit the archive (its key groups, say).
            millpond_snapshot::Error::Invalid { reason } => Error::Invalid { reason },
            e => Error::Snapshot(e),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}
