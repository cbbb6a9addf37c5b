//! Settings of a millpond instance: plain data with defaults, apart from its components (the
//! clock, the WAL's Pulsar connection, the snapshot archive), which go to the builder.

use std::time::Duration;

use crate::snapshot::{RestoreSettings, SnapshotSettings};
use crate::state::StoreSettings;
use crate::wal::{SegmentSettings, WalSettings};

/// Settings of a [`Millpond`](crate::Millpond) instance.
///
/// ```
/// use std::time::Duration;
/// let settings = millpond::Settings {
///     snapshot_interval: Some(Duration::from_secs(30)),
///     ..millpond::Settings::default()
/// };
/// assert_eq!(settings.snapshot_retain, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The keyed state: memory budget, key groups (`key_groups` is the range this instance
    /// owns, for a rescaled job), shards, TTL cleanup. Default: [`StoreSettings::default`].
    pub store: StoreSettings,
    /// The WAL writer: ring size, batch size, linger, commit durability.
    /// Default: [`WalSettings::default`].
    pub wal: WalSettings,
    /// The local WAL segments (the embedded default; unused with a Pulsar WAL).
    /// Default: [`SegmentSettings::default`] (64 MiB segments, fsync on).
    pub segments: SegmentSettings,
    /// Writing snapshots: sort buffer, data file size, compression.
    /// Default: [`SnapshotSettings::default`], with the temporary directory under the data
    /// directory when unset.
    pub snapshot: SnapshotSettings,
    /// Restoring: block cache, parallel downloads. Its `key_groups` is ignored (the store's
    /// `key_groups` decides) and `download` is always on (the restored files must be local
    /// before garbage collection may delete them). Default: [`RestoreSettings::default`].
    pub restore: RestoreSettings,
    /// How often a snapshot is written in the background; `None` for only on request
    /// ([`Millpond::snapshot_now`](crate::Millpond::snapshot_now)). A snapshot holds what the
    /// WAL committed since the last one, so a shorter interval means a shorter WAL tail to
    /// replay after a crash (faster recovery), at the price of more uploads. Default: 60 s.
    pub snapshot_interval: Option<Duration>,
    /// Snapshots kept in the archive; older ones are deleted after each new snapshot.
    /// Default: 3 (at least 1 is kept whatever the value).
    pub snapshot_retain: usize,
    /// A data file or manifest no kept snapshot names is deleted only once it is this old.
    /// It is not what protects a snapshot in progress: a writer puts a pending marker in the
    /// archive before uploading, and garbage collection keeps every file of a sequence that
    /// has a marker, however old (docs/snapshot.md "Garbage collection"). The grace covers
    /// the rest: a writer whose marker GC judged stale (older than the grace and past the
    /// latest snapshot) and that still uploads. Keep it above the longest snapshot upload.
    /// Default: 10 minutes.
    pub snapshot_gc_grace: Duration,
    /// Threads that apply the WAL's changes to the store during recovery (the log is read and
    /// decoded on one more). The changes of a key group go to one thread, so each key's stay
    /// in order. Default: the machine's parallelism, at most 8; 1 applies them on the reading
    /// thread.
    pub replay_threads: usize,
    /// How often the metrics gauges (state size, hit rate, WAL lag) are refreshed.
    /// Default: 1 s.
    pub metrics_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store: StoreSettings::default(),
            wal: WalSettings::default(),
            segments: SegmentSettings::default(),
            snapshot: SnapshotSettings::default(),
            restore: RestoreSettings::default(),
            snapshot_interval: Some(Duration::from_secs(60)),
            snapshot_retain: 3,
            snapshot_gc_grace: Duration::from_secs(600),
            metrics_interval: Duration::from_secs(1),
            replay_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
        }
    }
}
