//! The base tier: the read-only state a store was restored from (a snapshot's data files),
//! read where the hot and cold tiers miss, so that a restore moves files instead of
//! re-inserting every entry. A running instance replaces it with each newer snapshot of its
//! own changes ([`Store::install_base`](crate::Store::install_base)), so that the cold tier
//! holds only what changed since (docs/state.md, "Cold tier rotation").
//!
//! The store never writes to its base. A change to a key of the base goes to the hot tier and
//! from there to the cold tier like any other; a delete becomes a tombstone in the cold tier,
//! which hides the base's version.

use crate::error::BoxError;

/// Read-only entries under the store's tiers. `millpond-snapshot` implements it over the data
/// files of a snapshot.
pub trait BaseTier: Send + Sync + 'static {
    /// The encoded entry of composite key `key` (the store's cold-tier encoding, see
    /// docs/state.md), or `None` if the base has none. Called on the caller's thread with the
    /// key's shard lock held, like a cold-tier read: it should take about as long.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BoxError>;

    /// The log position the base holds the state at: it holds every change with an LSN up to
    /// this one (a snapshot's commit-marker LSN; 0 for a base that is not a snapshot of a
    /// log). Operands the store keeps with LSNs at or below it are not applied over the
    /// base again.
    fn covered_lsn(&self) -> u64;

    /// Whether a list append or map put on `key` may be kept as an operand over this base
    /// without reading it: whether no layer of the base holds more than
    /// [`HEAVY_ENTRY_BYTES`](millpond_format::entry::HEAVY_ENTRY_BYTES) for the key. Default:
    /// `false` (every such write reads the key first, as a base that cannot tell requires).
    fn blind_ok(&self, key: &[u8]) -> bool {
        let _ = key;
        false
    }
}
