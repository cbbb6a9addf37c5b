//! Tunables of a store: plain data with defaults. Components (clock, change sink) are given to
//! the [`StoreBuilder`](crate::StoreBuilder) instead.

use crate::key_group::{KeyGroupRange, DEFAULT_MAX_KEY_GROUPS};

/// Settings of a [`Store`](crate::Store).
///
/// ```
/// use millpond_state::StoreSettings;
/// let settings = StoreSettings { memory_budget_bytes: 256 << 20, ..StoreSettings::default() };
/// assert_eq!(settings.max_key_groups, 128);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Memory the store may use, in bytes: the hot tier, the spill queue and the cold tier's
    /// page cache together. Default: 512 MiB. Flink's nearest knob is the managed memory of
    /// the RocksDB backend (`taskmanager.memory.managed.size`).
    pub memory_budget_bytes: usize,
    /// Number of key groups, fixed for the life of the state. Default: 128; at most 32768.
    /// Flink: `pipeline.max-parallelism`.
    pub max_key_groups: u16,
    /// The key groups this store owns; keys of other key groups are refused. Default: `None`,
    /// all of them. Set it when running several instances (see
    /// [`KeyGroupRange::for_instance`]).
    pub key_groups: Option<KeyGroupRange>,
    /// Number of shards, each with its own lock and LRU. Default: 16; at most
    /// `max_key_groups`. More shards mean less lock contention between threads.
    pub shards: usize,
    /// Largest encoded value, in bytes; for list and map state, the whole entry of one key.
    /// Default: 16 MiB.
    pub max_value_bytes: usize,
    /// Share of the budget for the cold tier's page cache, in bytes. Default: `None`, a tenth
    /// of the budget (between 1 MiB and 256 MiB).
    pub cold_cache_bytes: Option<usize>,
    /// Share of the budget for evicted entries waiting to be written to the cold tier, in
    /// bytes. When it is full, evicting callers wait. Default: `None`, a tenth of the budget
    /// (at least 256 KiB).
    pub spill_queue_bytes: Option<usize>,
    /// How often the background TTL cleanup runs a step, in milliseconds. 0 turns it off.
    /// Default: 1000.
    pub ttl_cleanup_interval_ms: u64,
    /// Entries examined per TTL cleanup step, in the hot tier and in the cold tier. Default:
    /// 1000. Flink: `cleanupIncrementally(cleanupSize, ..)` does 5 per state access.
    pub ttl_cleanup_entries_per_step: usize,
    /// Whether a list append, a map put or a map remove on a key that is not in memory is
    /// kept as an operand instead of reading the key's list or map from disk first
    /// (docs/state.md, "Blind appends and puts"). Flink's RocksDB backend does the same with
    /// a merge operator. Taken only when `max_value_bytes` is at least 16 MiB and no layer
    /// holds more than 64 KiB for the key, so that the value limit still holds. Default:
    /// `true`.
    pub blind_writes: bool,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            memory_budget_bytes: 512 << 20,
            max_key_groups: DEFAULT_MAX_KEY_GROUPS,
            key_groups: None,
            shards: 16,
            max_value_bytes: 16 << 20,
            cold_cache_bytes: None,
            spill_queue_bytes: None,
            ttl_cleanup_interval_ms: 1000,
            ttl_cleanup_entries_per_step: 1000,
            blind_writes: true,
        }
    }
}

/// The budget split that a store derives from its settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub hot_bytes: usize,
    pub cold_cache_bytes: usize,
    pub spill_queue_bytes: usize,
}

impl StoreSettings {
    pub(crate) fn validate(&self) -> Result<Budget, String> {
        if self.max_key_groups == 0 || self.max_key_groups > crate::MAX_KEY_GROUPS_LIMIT {
            return Err(format!(
                "max_key_groups must be in 1..={}, not {}",
                crate::MAX_KEY_GROUPS_LIMIT,
                self.max_key_groups
            ));
        }
        if self.shards == 0 || self.shards > self.max_key_groups as usize {
            return Err(format!(
                "shards must be in 1..=max_key_groups ({}), not {}",
                self.max_key_groups, self.shards
            ));
        }
        if let Some(r) = self.key_groups {
            if r.is_empty() || r.end > self.max_key_groups {
                return Err(format!(
                    "key_groups {r} must be a non-empty part of [0, {})",
                    self.max_key_groups
                ));
            }
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > (1 << 31) {
            return Err("max_value_bytes must be in 1..=2 GiB".into());
        }
        let budget = self.memory_budget_bytes;
        let cold_cache_bytes = self
            .cold_cache_bytes
            .unwrap_or((budget / 10).clamp(1 << 20, 256 << 20));
        let spill_queue_bytes = self
            .spill_queue_bytes
            .unwrap_or((budget / 10).max(256 << 10));
        let hot_bytes = budget
            .checked_sub(cold_cache_bytes + spill_queue_bytes)
            .filter(|hot| *hot >= self.shards * 4096)
            .ok_or_else(|| {
                format!(
                    "memory_budget_bytes {budget} leaves too little for the hot tier after the \
                     cold cache ({cold_cache_bytes}) and spill queue ({spill_queue_bytes}): raise it"
                )
            })?;
        Ok(Budget {
            hot_bytes,
            cold_cache_bytes,
            spill_queue_bytes,
        })
    }
}
