//! The TTL rule, one for reads, replay and the snapshot writer: a change is applied to the
//! data as it was when the change was made ("TTL at the time a change was made",
//! docs/state.md), and what has expired at a time is dropped before anything sees it.

use crate::entry::Entry;
use crate::op::ChangeOp;

/// Expiry timestamps: 0 means "never expires".
pub const NEVER: u64 = 0;

/// Whether data expiring at `expires_at_ms` has expired at `now_ms`.
#[inline]
pub fn is_expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != NEVER && expires_at_ms <= now_ms
}

/// When a logged change was made, as replay needs it, for a state whose TTL is `ttl_ms`
/// (`None`: the state has none): a change with an expiry was made at `expiry - ttl`, and is
/// replayed against the data as it was then, so that (for example) a TTL refresh does not
/// revive what had expired. `None`: no TTL filtering.
///
/// ```
/// use millpond_format::{ttl::replay_time, ChangeOp};
/// let touch = ChangeOp::Touch { expires_at_ms: 70_000 };
/// assert_eq!(replay_time(&touch, Some(60_000)), Some(10_000));
/// assert_eq!(replay_time(&touch, None), None);
/// assert_eq!(replay_time(&ChangeOp::Clear, Some(60_000)), None);
/// ```
pub fn replay_time(op: &ChangeOp<'_>, ttl_ms: Option<u64>) -> Option<u64> {
    let ttl_ms = ttl_ms?;
    let expires = match *op {
        ChangeOp::Put { expires_at_ms, .. }
        | ChangeOp::ListAppend { expires_at_ms, .. }
        | ChangeOp::ListReplace { expires_at_ms, .. }
        | ChangeOp::MapPut { expires_at_ms, .. }
        | ChangeOp::Touch { expires_at_ms }
        | ChangeOp::MapTouch { expires_at_ms, .. } => expires_at_ms,
        _ => NEVER,
    };
    (expires != NEVER).then(|| expires.saturating_sub(ttl_ms))
}

/// Drops what TTL says is gone at `now_ms`: an expired value, or expired elements (all of
/// them, or an emptied list or map: `None`). Returns whether anything was dropped.
pub fn drop_expired(entry: &mut Option<Entry>, now_ms: u64) -> bool {
    let Some(e) = entry else {
        return false;
    };
    if e.all_expired(now_ms) {
        *entry = None;
        return true;
    }
    let purged = e.purge_expired(now_ms);
    if e.is_empty() {
        *entry = None;
    }
    purged
}

impl Entry {
    /// Whether nothing in it is live at `now_ms` (a tombstone: false, it is not data).
    pub fn all_expired(&self, now_ms: u64) -> bool {
        match self {
            Entry::Value { expires_at_ms, .. } => is_expired(*expires_at_ms, now_ms),
            Entry::List(elems) => elems.iter().all(|e| is_expired(e.expires_at_ms, now_ms)),
            Entry::Map(map) => map.values().all(|e| is_expired(e.expires_at_ms, now_ms)),
            Entry::Tombstone => false,
        }
    }

    /// Drops expired elements of lists and maps (a value is all or nothing: see
    /// [`all_expired`](Self::all_expired)). Returns whether anything was dropped.
    pub fn purge_expired(&mut self, now_ms: u64) -> bool {
        match self {
            Entry::List(elems) => {
                let before = elems.len();
                elems.retain(|e| !is_expired(e.expires_at_ms, now_ms));
                elems.len() != before
            }
            Entry::Map(map) => {
                let before = map.len();
                map.retain(|_, e| !is_expired(e.expires_at_ms, now_ms));
                map.len() != before
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Elem;

    #[test]
    fn expiry_is_inclusive_and_zero_is_never() {
        assert!(!is_expired(NEVER, u64::MAX));
        assert!(!is_expired(10, 9));
        assert!(is_expired(10, 10));
    }

    #[test]
    fn drop_expired_keeps_live_elements_and_empties_to_none() {
        let elem = |v: &[u8], e| Elem {
            value: v.to_vec(),
            expires_at_ms: e,
        };
        let mut list = Some(Entry::List(vec![elem(b"a", 5), elem(b"b", 0)]));
        assert!(drop_expired(&mut list, 5));
        assert_eq!(list, Some(Entry::List(vec![elem(b"b", 0)])));
        assert!(!drop_expired(&mut list, 100));
        let mut gone = Some(Entry::List(vec![elem(b"a", 5)]));
        assert!(drop_expired(&mut gone, 6));
        assert_eq!(gone, None);
        let mut none = None;
        assert!(!drop_expired(&mut none, 6));
    }
}
