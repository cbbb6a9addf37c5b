//! Settings of a millpond instance: plain data with defaults, apart from its components (the
//! clock, the WAL's Pulsar connection, the snapshot archive), which go to the builder.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::snapshot::{CompactionSettings, RestoreSettings, SnapshotSettings};
use crate::state::StoreSettings;
use crate::wal::{SegmentSettings, WalSettings};

/// Settings of a [`Millpond`](crate::Millpond) instance.
///
/// ```
/// use std::time::Duration;
/// let settings = millpond::Settings {
///     snapshot_after_changes: 100_000,
///     snapshot_interval_max: Some(Duration::from_secs(30)),
///     ..millpond::Settings::default()
/// };
/// assert_eq!(settings.snapshot_retain, 3);
///
/// // Snapshots only on request (`Millpond::snapshot_now`): every trigger off.
/// let on_request = millpond::Settings {
///     snapshot_after_changes: u64::MAX,
///     snapshot_after_wal_bytes: u64::MAX,
///     snapshot_interval_max: None,
///     ..millpond::Settings::default()
/// };
/// # let _ = on_request;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
// The derives read the deprecated `snapshot_interval` too.
#[allow(deprecated)]
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
    /// Restoring, and the runs a running instance reads from `{data_dir}/base/`: block cache,
    /// parallel downloads, hard links. Its `key_groups` is ignored (the store's `key_groups`
    /// decides) and `download` is always on (the files must be local before garbage
    /// collection may delete them). Default: [`RestoreSettings::default`] with `hard_links`
    /// on: a `file://` archive's files are linked into `base/`, not copied.
    pub restore: RestoreSettings,
    /// A snapshot starts once the WAL holds this many records (changes and commit markers)
    /// after the last snapshot's LSN, and a state change was committed since: the WAL tail a
    /// recovery replays stays about this long whatever the write rate (docs/snapshot.md,
    /// "When a snapshot starts"). Checked every 100 ms. What `millpond_snapshot_lag_records`
    /// shows. Kafka Streams bounds recovery the same way (`acceptable.recovery.lag`).
    /// Default: 500,000. `u64::MAX`: never; 0 is refused ([`Error::Invalid`](crate::Error)).
    pub snapshot_after_changes: u64,
    /// A snapshot starts once the WAL's sink accepted this many bytes after the last
    /// snapshot's LSN, and a state change was committed since: the same bound as
    /// [`Settings::snapshot_after_changes`] for big values. What
    /// `millpond_snapshot_lag_bytes` shows. Default: 128 MiB. `u64::MAX`: never; 0 is
    /// refused.
    pub snapshot_after_wal_bytes: u64,
    /// A snapshot starts once this long passed since the last one started, if anything was
    /// committed since (only offsets, say, when no state changed: the snapshot then writes a
    /// manifest and no data file, and lets the WAL be truncated). `None`: no time trigger.
    /// Flink's `execution.checkpointing.interval`, except that the volume triggers above
    /// usually come first under load. Default: 60 s. `Some(0)` is refused.
    pub snapshot_interval_max: Option<Duration>,
    /// The time floor: no snapshot starts before this long passed since the last one started
    /// (on request or not), so a burst of writes cannot make a snapshot per commit; after
    /// failed ones it waits longer (2 s, 4 s, … up to 64 s). [`Millpond::snapshot_now`] ignores it
    /// (Flink's `execution.checkpointing.min-pause`, counted from the start). Default: 1 s;
    /// at most [`Settings::snapshot_interval_max`], or [`Builder::open`] refuses it.
    ///
    /// [`Millpond::snapshot_now`]: crate::Millpond::snapshot_now
    /// [`Builder::open`]: crate::Builder::open
    pub snapshot_interval_min: Duration,
    /// The former name of [`Settings::snapshot_interval_max`], read only when it differs from
    /// its default (60 s), with its former meaning: `Some(d)` is `snapshot_interval_max:
    /// Some(d)` (and lowers a default floor above `d` to `d`); `None` means snapshots only on
    /// request, so it turns off the interval and the volume triggers left at their defaults.
    /// Setting it and `snapshot_interval_max` to different values is refused.
    #[deprecated(note = "use `snapshot_interval_max`, and `snapshot_after_changes` / \
                `snapshot_after_wal_bytes` = u64::MAX for snapshots only on request")]
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
    /// When a background thread merges the runs that snapshots add (docs/snapshot.md,
    /// "Compaction"); `None` runs none, and the runs a read consults grow with every
    /// snapshot. Default: `Some(CompactionSettings::default())`: a partition's runs merge into
    /// one once its deltas hold half its bottom run's bytes, or it has 16 of them.
    pub compaction: Option<CompactionSettings>,
}

const DEFAULT_AFTER_CHANGES: u64 = 500_000;
const DEFAULT_AFTER_WAL_BYTES: u64 = 128 << 20;
const DEFAULT_INTERVAL_MAX: Duration = Duration::from_secs(60);
const DEFAULT_INTERVAL_MIN: Duration = Duration::from_secs(1);

impl Settings {
    /// Folds the deprecated `snapshot_interval` into the snapshot triggers and checks them:
    /// afterwards the instance reads only `snapshot_after_changes`,
    /// `snapshot_after_wal_bytes` and `snapshot_interval_{max,min}`.
    pub(crate) fn resolve_snapshot_triggers(&mut self) -> Result<()> {
        #[allow(deprecated)]
        let old = self.snapshot_interval;
        let invalid = |reason: String| Err(Error::Invalid { reason });
        if old != Some(DEFAULT_INTERVAL_MAX) {
            if self.snapshot_interval_max != Some(DEFAULT_INTERVAL_MAX)
                && self.snapshot_interval_max != old
            {
                return invalid(format!(
                    "snapshot_interval ({old:?}) and snapshot_interval_max ({:?}) disagree: \
                     snapshot_interval is the deprecated name of snapshot_interval_max, set \
                     only the latter",
                    self.snapshot_interval_max
                ));
            }
            self.snapshot_interval_max = old;
            match old {
                Some(interval) if self.snapshot_interval_min == DEFAULT_INTERVAL_MIN => {
                    self.snapshot_interval_min = self.snapshot_interval_min.min(interval);
                }
                Some(_) => {}
                None => {
                    if self.snapshot_after_changes == DEFAULT_AFTER_CHANGES {
                        self.snapshot_after_changes = u64::MAX;
                    }
                    if self.snapshot_after_wal_bytes == DEFAULT_AFTER_WAL_BYTES {
                        self.snapshot_after_wal_bytes = u64::MAX;
                    }
                }
            }
        }
        if self.snapshot_after_changes == 0 {
            return invalid(
                "snapshot_after_changes is 0 (a snapshot after every record): use u64::MAX \
                 for no record trigger"
                    .into(),
            );
        }
        if self.snapshot_after_wal_bytes == 0 {
            return invalid(
                "snapshot_after_wal_bytes is 0 (a snapshot after every batch): use u64::MAX \
                 for no byte trigger"
                    .into(),
            );
        }
        if let Some(c) = &self.compaction {
            let cap = self.snapshot.max_delta_runs;
            if cap != 0 && cap <= c.max_runs.max(2) {
                return invalid(format!(
                    "snapshot.max_delta_runs ({cap}) must exceed compaction.max_runs ({}): \
                     compaction leaves a partition's newest delta run alone only past \
                     max_runs, and a snapshot at the cap replaces that run",
                    c.max_runs
                ));
            }
        }
        match self.snapshot_interval_max {
            Some(max) if max.is_zero() => invalid(
                "snapshot_interval_max is 0 (a snapshot at every check): use None for no \
                 time trigger"
                    .into(),
            ),
            Some(max) if max < self.snapshot_interval_min => invalid(format!(
                "snapshot_interval_max ({max:?}) is below snapshot_interval_min ({:?}), the \
                 floor between two snapshots: lower the floor or raise the interval",
                self.snapshot_interval_min
            )),
            _ => Ok(()),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store: StoreSettings::default(),
            wal: WalSettings::default(),
            segments: SegmentSettings::default(),
            snapshot: SnapshotSettings::default(),
            restore: RestoreSettings {
                hard_links: true,
                ..RestoreSettings::default()
            },
            snapshot_after_changes: DEFAULT_AFTER_CHANGES,
            snapshot_after_wal_bytes: DEFAULT_AFTER_WAL_BYTES,
            snapshot_interval_max: Some(DEFAULT_INTERVAL_MAX),
            snapshot_interval_min: DEFAULT_INTERVAL_MIN,
            #[allow(deprecated)]
            snapshot_interval: Some(DEFAULT_INTERVAL_MAX),
            snapshot_retain: 3,
            snapshot_gc_grace: Duration::from_secs(600),
            metrics_interval: Duration::from_secs(1),
            compaction: Some(CompactionSettings::default()),
            replay_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    fn resolved(settings: Settings) -> Result<Settings> {
        let mut settings = settings;
        settings.resolve_snapshot_triggers()?;
        Ok(settings)
    }

    fn triggers(s: &Settings) -> (u64, u64, Option<Duration>, Duration) {
        (
            s.snapshot_after_changes,
            s.snapshot_after_wal_bytes,
            s.snapshot_interval_max,
            s.snapshot_interval_min,
        )
    }

    #[test]
    fn the_defaults_are_the_designs() {
        let s = resolved(Settings::default()).unwrap();
        assert_eq!(
            triggers(&s),
            (
                500_000,
                128 << 20,
                Some(Duration::from_secs(60)),
                Duration::from_secs(1)
            )
        );
    }

    #[test]
    #[allow(deprecated)]
    fn the_deprecated_interval_maps_onto_the_triggers() {
        let on_request = resolved(Settings {
            snapshot_interval: None,
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(
            triggers(&on_request),
            (u64::MAX, u64::MAX, None, Duration::from_secs(1))
        );
        // A trigger set explicitly stays.
        let some = resolved(Settings {
            snapshot_interval: None,
            snapshot_after_changes: 1000,
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(
            triggers(&some),
            (1000, u64::MAX, None, Duration::from_secs(1))
        );
        let fast = resolved(Settings {
            snapshot_interval: Some(Duration::from_millis(250)),
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(
            triggers(&fast),
            (
                500_000,
                128 << 20,
                Some(Duration::from_millis(250)),
                Duration::from_millis(250)
            )
        );
        // Both names, one value: fine; two values: refused.
        let both = Settings {
            snapshot_interval: Some(Duration::from_secs(30)),
            snapshot_interval_max: Some(Duration::from_secs(30)),
            ..Settings::default()
        };
        assert!(resolved(both).is_ok());
        let disagree = Settings {
            snapshot_interval: None,
            snapshot_interval_max: Some(Duration::from_secs(30)),
            ..Settings::default()
        };
        assert!(matches!(resolved(disagree), Err(Error::Invalid { .. })));
        // An explicit floor above the interval is refused, not lowered.
        let floor = Settings {
            snapshot_interval: Some(Duration::from_millis(250)),
            snapshot_interval_min: Duration::from_secs(2),
            ..Settings::default()
        };
        assert!(matches!(resolved(floor), Err(Error::Invalid { .. })));
    }

    #[test]
    fn zero_and_inverted_triggers_are_refused() {
        for bad in [
            Settings {
                snapshot_after_changes: 0,
                ..Settings::default()
            },
            Settings {
                snapshot_after_wal_bytes: 0,
                ..Settings::default()
            },
            Settings {
                snapshot_interval_max: Some(Duration::ZERO),
                ..Settings::default()
            },
            Settings {
                snapshot_interval_max: Some(Duration::from_secs(1)),
                snapshot_interval_min: Duration::from_secs(2),
                ..Settings::default()
            },
            Settings {
                snapshot: SnapshotSettings {
                    max_delta_runs: 16,
                    ..SnapshotSettings::default()
                },
                ..Settings::default()
            },
        ] {
            assert!(matches!(resolved(bad), Err(Error::Invalid { .. })));
        }
        // No floor at all is allowed: at most one snapshot per check.
        assert!(resolved(Settings {
            snapshot_interval_min: Duration::ZERO,
            ..Settings::default()
        })
        .is_ok());
    }
}
