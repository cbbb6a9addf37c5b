//! The metrics an instance reports through the [`metrics`](https://docs.rs/metrics) facade.
//! Install any `metrics` recorder (Prometheus exporter, statsd, …) to collect them; without
//! one they cost a few atomic loads. Every name is listed here, with its unit.

use crate::state::StoreStats;
use crate::wal::WalStats;

/// Gauge, bytes: state held in memory (the hot tier and what waits to be spilled).
pub const STATE_MEMORY_BYTES: &str = "millpond_state_memory_bytes";
/// Gauge, entries: entries held in memory.
pub const STATE_MEMORY_ENTRIES: &str = "millpond_state_memory_entries";
/// Gauge, 0..=1: share of reads served from memory since the last refresh.
pub const STATE_HIT_RATIO: &str = "millpond_state_hit_ratio";
/// Counter: reads served from memory.
pub const STATE_HITS: &str = "millpond_state_hits_total";
/// Counter: reads that went below memory (redb or the restored snapshot).
pub const STATE_MISSES: &str = "millpond_state_misses_total";
/// Counter: entries written from memory to redb (spills).
pub const STATE_SPILLS: &str = "millpond_state_spills_total";
/// Counter: entries evicted from memory.
pub const STATE_EVICTIONS: &str = "millpond_state_evictions_total";
/// Counter: list appends, map puts and map removes kept as operands on keys not in memory,
/// without reading them (docs/state.md, "Blind appends and puts").
pub const STATE_BLIND_WRITES: &str = "millpond_state_blind_writes_total";
/// Counter: changed entries evicted without a write to redb, because the latest installed
/// snapshot holds them.
pub const STATE_COVERED_DROPS: &str = "millpond_state_covered_drops_total";
/// Gauge, records: WAL records appended but not yet durable.
pub const WAL_LAG_RECORDS: &str = "millpond_wal_lag_records";
/// Counter, bytes: framed bytes the WAL sink accepted.
pub const WAL_BYTES: &str = "millpond_wal_bytes_total";
/// Gauge, records: WAL records (changes and markers) after the last snapshot's LSN: what a
/// crash would replay, and what `Settings::snapshot_after_changes` is compared with. Refreshed
/// every 100 ms.
pub const SNAPSHOT_LAG_RECORDS: &str = "millpond_snapshot_lag_records";
/// Gauge, bytes: WAL bytes after the last snapshot's LSN (counted by batch), compared with
/// `Settings::snapshot_after_wal_bytes`. Refreshed every 100 ms.
pub const SNAPSHOT_LAG_BYTES: &str = "millpond_snapshot_lag_bytes";
/// Gauge, seconds: since the last snapshot this instance committed started (the commit
/// marker it covers is at least that old), or since the instance recovered if it wrote none
/// yet; by the instance's clock. Compared with `Settings::snapshot_interval_max`. Refreshed
/// every 100 ms.
pub const SNAPSHOT_LAG_SECONDS: &str = "millpond_snapshot_lag_seconds";
/// Histogram, seconds: [`Millpond::commit`](crate::Millpond::commit), until durable.
pub const COMMIT_SECONDS: &str = "millpond_commit_seconds";
/// Histogram, seconds: writing one snapshot, from start to the manifest's commit.
pub const SNAPSHOT_SECONDS: &str = "millpond_snapshot_seconds";
/// Counter, bytes: data file bytes uploaded by snapshots.
pub const SNAPSHOT_BYTES: &str = "millpond_snapshot_bytes_total";
/// Histogram, bytes: the data file bytes one snapshot wrote (its new files; the parent's
/// files it reuses are not counted). 0 for a snapshot of offsets only.
pub const SNAPSHOT_DELTA_BYTES: &str = "millpond_snapshot_delta_bytes";
/// Counter, bytes: the data files compactions wrote (docs/snapshot.md, "Compaction").
pub const COMPACTION_BYTES: &str = "millpond_compaction_bytes_total";
/// Counter, keys: entries from which compactions dropped expired data (docs/snapshot.md,
/// "Expired data").
pub const COMPACTION_EXPIRED_KEYS: &str = "millpond_compaction_expired_keys_total";
/// Histogram, seconds: one compaction job, start to commit.
pub const COMPACTION_SECONDS: &str = "millpond_compaction_seconds";
/// Gauge, bytes: the input bytes of the compaction jobs due in the last manifest (about what
/// they will write); it returns to 0 when compaction keeps up. Refreshed after each commit.
pub const COMPACTION_DEBT_BYTES: &str = "millpond_compaction_debt_bytes";
/// Gauge, runs: the most runs a partition of the last manifest has, what a read of a key
/// not in memory consults at worst. Refreshed after each commit.
pub const SNAPSHOT_RUNS_MAX: &str = "millpond_snapshot_runs_max";
/// Counter: snapshots committed, labelled `trigger` with why each started: `changes`
/// (`Settings::snapshot_after_changes`), `bytes` (`snapshot_after_wal_bytes`), `interval`
/// (`snapshot_interval_max`) or `requested` (`Millpond::snapshot_now`).
pub const SNAPSHOTS: &str = "millpond_snapshots_total";
/// Counter: snapshots that failed (the instance stops if one was fenced).
pub const SNAPSHOT_FAILURES: &str = "millpond_snapshot_failures_total";
/// Histogram, seconds: recovery at open (restore and WAL replay), until the first record can
/// be served.
pub const RECOVERY_SECONDS: &str = "millpond_recovery_seconds";

/// Turns cumulative counters into metric increments between two refreshes.
#[derive(Debug, Default)]
pub(crate) struct Reporter {
    last_store: StoreStats,
    last_wal_bytes: u64,
}

impl Reporter {
    pub(crate) fn report(&mut self, store: &StoreStats, wal: &WalStats) {
        let before = &self.last_store;
        let hits = store.hits.saturating_sub(before.hits);
        let misses = store.misses.saturating_sub(before.misses);
        metrics::gauge!(STATE_MEMORY_BYTES).set((store.hot_bytes + store.pending_bytes) as f64);
        metrics::gauge!(STATE_MEMORY_ENTRIES)
            .set((store.hot_entries + store.pending_entries) as f64);
        if hits + misses > 0 {
            metrics::gauge!(STATE_HIT_RATIO).set(hits as f64 / (hits + misses) as f64);
        }
        metrics::counter!(STATE_HITS).increment(hits);
        metrics::counter!(STATE_MISSES).increment(misses);
        metrics::counter!(STATE_SPILLS).increment(store.spills.saturating_sub(before.spills));
        metrics::counter!(STATE_EVICTIONS)
            .increment(store.evictions.saturating_sub(before.evictions));
        metrics::counter!(STATE_BLIND_WRITES)
            .increment(store.blind_writes.saturating_sub(before.blind_writes));
        metrics::counter!(STATE_COVERED_DROPS)
            .increment(store.covered_drops.saturating_sub(before.covered_drops));
        metrics::gauge!(WAL_LAG_RECORDS).set(wal.next_lsn.saturating_sub(wal.durable_below) as f64);
        metrics::counter!(WAL_BYTES)
            .increment(wal.bytes_written.saturating_sub(self.last_wal_bytes));
        self.last_store = *store;
        self.last_wal_bytes = wal.bytes_written;
    }
}

/// What the WAL holds past the last snapshot: the inputs of the snapshot triggers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SnapshotLag {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
}

pub(crate) fn report_snapshot_lag(lag: &SnapshotLag) {
    metrics::gauge!(SNAPSHOT_LAG_RECORDS).set(lag.records as f64);
    metrics::gauge!(SNAPSHOT_LAG_BYTES).set(lag.bytes as f64);
    metrics::gauge!(SNAPSHOT_LAG_SECONDS).set(lag.seconds);
}
