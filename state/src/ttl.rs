//! Time-to-live, with Flink's semantics (`StateTtlConfig`).

use std::time::Duration;

/// When the expiry of an entry is refreshed. Flink: `StateTtlConfig.UpdateType`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TtlUpdateType {
    /// Only writes (create and update) refresh the expiry. Flink's default, `OnCreateAndWrite`.
    #[default]
    OnCreateAndWrite,
    /// Reads refresh it too. Flink's `OnReadAndWrite`. Each refreshing read is a change that
    /// the change sink (the WAL) records, so that recovery restores the same expiry.
    OnReadAndWrite,
}

/// Whether an expired entry that is still stored may be returned. Flink:
/// `StateTtlConfig.StateVisibility`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TtlVisibility {
    /// Expired entries are never returned. Flink's default, `NeverReturnExpired`.
    #[default]
    NeverReturnExpired,
    /// An expired entry still stored is returned once, then removed. Flink's
    /// `ReturnExpiredIfNotCleanedUp`.
    ReturnExpiredIfNotCleanedUp,
}

/// The TTL of one state. Processing time only, from the store's [`Clock`](crate::Clock).
///
/// For list and map state, every element (every map entry) has its own expiry, as in Flink.
/// Expired entries are removed on access, incrementally in the background, when evicted from
/// memory, and they are never written into snapshots.
///
/// ```
/// use std::time::Duration;
/// use millpond_state::{TtlConfig, TtlUpdateType};
/// let ttl = TtlConfig::new(Duration::from_secs(3600)).with_update_type(TtlUpdateType::OnReadAndWrite);
/// assert_eq!(ttl.ttl_ms(), 3_600_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TtlConfig {
    /// How long an entry lives after its last refresh.
    pub ttl: Duration,
    /// What refreshes it. Default: on create and write.
    pub update_type: TtlUpdateType,
    /// Whether expired entries may be returned. Default: never.
    pub visibility: TtlVisibility,
}

impl TtlConfig {
    /// Entries live for `ttl` after a write; expired entries are never returned.
    pub fn new(ttl: Duration) -> Self {
        TtlConfig {
            ttl,
            update_type: TtlUpdateType::default(),
            visibility: TtlVisibility::default(),
        }
    }

    /// Sets the update type.
    pub fn with_update_type(mut self, update_type: TtlUpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    /// Sets the visibility.
    pub fn with_visibility(mut self, visibility: TtlVisibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// The TTL in whole milliseconds (at least 1).
    pub fn ttl_ms(&self) -> u64 {
        (self.ttl.as_millis() as u64).max(1)
    }
}
