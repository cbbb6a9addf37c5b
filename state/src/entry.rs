//! What the hot tier keeps for one key: the decoded [`Entry`] (`millpond_format`, which also
//! holds its encoding and the rules that change it) plus what the hot tier adds, the dirty
//! bit and the bytes charged to the memory budget.

use millpond_format::Entry;

/// A hot-tier entry.
#[derive(Debug)]
pub(crate) struct HotEntry {
    pub data: Entry,
    /// Differs from the cold tier: must be written there when evicted.
    pub dirty: bool,
    /// Bytes charged to the shard's budget for this entry (key included).
    pub charged: u32,
    /// The LSN of the newest change the entry includes (for an entry read from below, the
    /// LSN that layer holds the key up to). A dirty entry at or below the LSN of the installed
    /// base is dropped when evicted: the base holds it.
    pub upto: u64,
    /// The entry is an operand stub: `data` is a placeholder and the key's operands are in
    /// [`Shard::stubs`](crate::shard::Shard::stubs), to be folded over what is below.
    pub stub: bool,
}

/// Fixed cost of one hot entry beyond its key and payload: the LRU node (key, entry, two
/// links) as its own allocation, and the hash table's slot at its typical load.
pub(crate) const ENTRY_OVERHEAD: usize =
    ((std::mem::size_of::<(crate::hot_key::HotKey, HotEntry)>() + 16 + 8 + 15) & !15) + 24;
