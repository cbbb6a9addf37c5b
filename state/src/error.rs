//! The one error type of `millpond-state`.

use std::fmt;

/// A boxed error from a user-supplied component (a codec or a change sink).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in `millpond-state`, each variant saying what the caller should do.
///
/// No variant means that data already stored was lost: a failed call changes nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input or configuration is wrong (`reason` says how). Fix the input; retrying
    /// the same call fails the same way.
    #[error("invalid input: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },

    /// A key, once encoded, is longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES). Use shorter
    /// keys (for example a hash of a long natural key).
    #[error("key of {len} bytes is over the limit of {max} bytes")]
    KeyTooLarge {
        /// The encoded key's length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A value (for list and map state: the whole entry of one key) would be larger than
    /// `StoreSettings::max_value_bytes`. Split the value or raise the limit.
    #[error("value of {len} bytes for state '{state}' is over the limit of {max} bytes")]
    ValueTooLarge {
        /// The state's name.
        state: String,
        /// The size the value would have had.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A state of that name was registered with another kind or incompatible settings.
    /// Use another name, or the same descriptor as before.
    #[error("state '{name}' is already registered as {existing}, not {requested}")]
    StateMismatch {
        /// The state's name.
        name: String,
        /// What it is registered as.
        existing: String,
        /// What was asked for.
        requested: String,
    },

    /// No state of that name is registered (for example a replayed change for a state this job
    /// no longer declares). Register the state before replaying.
    #[error("no state named '{name}' is registered")]
    UnknownState {
        /// The name asked for.
        name: String,
    },

    /// The key belongs to a key group that this store does not own (see
    /// `StoreSettings::key_groups`). Route the record to the instance that owns the key group.
    #[error("key group {key_group} is not owned by this store (owns {owned})")]
    KeyGroupNotOwned {
        /// The key's key group.
        key_group: u16,
        /// The range this store owns.
        owned: crate::KeyGroupRange,
    },

    /// A codec could not encode or decode a value of state `state`. The stored bytes are kept;
    /// fix the codec (or the schema) and read again.
    #[error("codec failed for state '{state}': {source}")]
    Codec {
        /// The state's name.
        state: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// Stored bytes failed their checksum or framing check. Nothing is skipped silently: the
    /// cold tier is damaged (disk trouble); reopen the store from a snapshot and the WAL.
    #[error("corrupt {what} at {location}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Where.
        location: String,
    },

    /// The change sink (the write-ahead log) refused a change; the state was not changed.
    /// Usually the WAL is closed or fenced by another instance: stop this instance.
    #[error("change sink refused the change: {source}")]
    ChangeSink {
        /// The sink's error.
        #[source]
        source: BoxError,
    },

    /// The base tier (the snapshot the store was restored from) failed to read: a data file
    /// is damaged or could not be fetched. Retry; if it persists, restore from another
    /// snapshot.
    #[error("reading the base snapshot failed: {source}")]
    Base {
        /// The base tier's error.
        #[source]
        source: BoxError,
    },

    /// The cold tier (redb) failed to read or write. The store keeps what it holds in memory,
    /// but it should be closed and reopened from a snapshot and the WAL.
    #[error("cold tier storage failed: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },

    /// The cold tier's background writer failed to write `path` (a full disk, a file size
    /// limit, a failing disk: `source`, whose `kind()` is for example
    /// [`StorageFull`](std::io::ErrorKind::StorageFull)) and stopped. This call and every
    /// later one on the store report the same failure, which changed nothing. The state is
    /// not lost (the cold tier is a cache; the WAL and snapshots hold the state), but the
    /// store can no longer evict: close it, free space or mend the disk, and reopen it from a
    /// snapshot and the WAL.
    #[error("the cold tier's writer failed ({step}) on {path}: {source}")]
    SpillFailed {
        /// The cold tier's file.
        path: String,
        /// What the writer was doing (`spill commit`, `cleanup write`, ...).
        step: &'static str,
        /// The I/O error (for a failure that was not an I/O error, one of kind `Other`
        /// describing it).
        #[source]
        source: std::io::Error,
    },

    /// Another store has this directory open. Close it first, or use another directory.
    #[error("the state directory {path} is in use by another store")]
    Locked {
        /// The directory.
        path: String,
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

    /// The store was closed (by [`Store::close`](crate::Store::close)). Open it again.
    #[error("the store is closed")]
    Closed,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(reason: impl fmt::Display) -> Self {
        Error::Invalid {
            reason: reason.to_string(),
        }
    }

    pub(crate) fn storage(reason: impl fmt::Display) -> Self {
        Error::Storage {
            reason: reason.to_string(),
        }
    }
}

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
