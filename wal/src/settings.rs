//! Tunables of the WAL: plain data with defaults.

/// Whether [`Wal::commit`](crate::Wal::commit) waits until the commit marker is durable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CommitDurability {
    /// `commit` returns once the marker and everything before it are durable. The default:
    /// offsets committed to Kafka after it are safe.
    #[default]
    Wait,
    /// `commit` returns at once with a ticket to wait on. Faster; the caller must wait on the
    /// ticket before telling anyone outside the process that the commit happened.
    Async,
}

/// Settings of the log writer.
///
/// ```
/// use millpond_wal::WalSettings;
/// let s = WalSettings { linger_ms: 1, ..WalSettings::default() };
/// assert_eq!(s.ring_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// Memory for records not yet written to the sink, in bytes: the ring's pre-allocated
    /// buffers. When all are full, appending waits (backpressure); nothing is dropped.
    /// Default: 64 MiB. (A single record larger than a batch may add its own size once.)
    pub ring_bytes: usize,
    /// Most bytes in one batch (one write and one fsync locally, one Pulsar message).
    /// Default: 1 MiB. The ring holds `ring_bytes / batch_bytes` batches (at least 2).
    pub batch_bytes: usize,
    /// How long the flusher waits for a batch to fill before writing what it has, in
    /// milliseconds. A commit flushes at once. Default: 2.
    pub linger_ms: u64,
    /// Whether `commit` waits for durability. Default: wait.
    pub commit_durability: CommitDurability,
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            ring_bytes: 64 << 20,
            batch_bytes: 1 << 20,
            linger_ms: 2,
            commit_durability: CommitDurability::Wait,
        }
    }
}

/// Settings of the local segment sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSettings {
    /// A segment file is closed and a new one started once it holds this many bytes.
    /// Default: 64 MiB.
    pub segment_bytes: u64,
    /// Whether each batch is fsynced (`fdatasync`) before it counts as durable. Default: true.
    /// Turning it off keeps data safe from a process crash but not from a machine crash.
    pub sync: bool,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        SegmentSettings {
            segment_bytes: 64 << 20,
            sync: true,
        }
    }
}
