//! Folding layers equals replaying the changes one by one (design §4.3, "Property"), for the
//! entry tags that exist today (1–4).
//!
//! For any sequence of changes of one key (all five state kinds, with and without a TTL, on a
//! clock that moves by up to two TTLs between changes) and any cut of it into layers:
//!
//! - the **reference** applies the changes one by one with [`fold::apply_at`] at each change's
//!   replay time ([`ttl::replay_time`]), which is what `Store::apply` does through the same
//!   functions;
//! - the **layers** gather each segment's changes in a [`KeyChanges`] without looking below
//!   (barriers resolve at once, other changes wait for the base), optionally pass through the
//!   sort-run encoding, optionally merge with the next segment's changes ([`KeyChanges::then`],
//!   as the snapshot writer merges sorted runs), and are then resolved over the **encoded**
//!   entry of the layer below. A layer that ends with no data over something is stored as a
//!   tombstone (tag 4), as a delta would be.
//!
//! At every layer the decoded entry equals the reference after the same prefix.
//!
//! The second property is the one delta runs rely on: each segment is written as it was
//! gathered, **without** reading below (a full entry, a tombstone, or an operand chain, tag 5),
//! and a reader folds the runs newest first until a full entry or a tombstone, as a restored
//! store and compaction do. It equals the reference after every segment.
//!
//! What this does not prove: that `Store::apply` (the hot tier, redb, TTL on access) agrees
//! with `fold::apply_at`; the state crate's replay tests cover that.

use std::collections::BTreeMap;

use millpond_format::{fold, ttl, ChangeOp, Entry, KeyChanges, StateKind};
use proptest::prelude::*;

/// A change without its expiry, which the clock and the TTL give.
#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>),
    Clear,
    ListAppend(Vec<Vec<u8>>),
    ListReplace(Vec<Vec<u8>>),
    MapPut(Vec<u8>, Vec<u8>),
    MapRemove(Vec<u8>),
    Touch,
    MapTouch(Vec<u8>),
}

/// One step of the generated history: the clock advance before it, the op, and how the layers
/// treat the boundary after it.
#[derive(Debug, Clone)]
struct Step {
    advance_ms: u64,
    op: Op,
    /// A segment ends after this change.
    cut: bool,
    /// The segment's changes pass through the sort-run encoding.
    via_sort_run: bool,
    /// The segment is written as a layer (else merged with the next segment's changes).
    materialize: bool,
}

impl Op {
    fn change(&self, expires_at_ms: u64) -> ChangeOp<'_> {
        match self {
            Op::Put(v) => ChangeOp::Put {
                value: v,
                expires_at_ms,
            },
            Op::Clear => ChangeOp::Clear,
            Op::ListAppend(vs) => ChangeOp::ListAppend {
                values: vs,
                expires_at_ms,
            },
            Op::ListReplace(vs) => ChangeOp::ListReplace {
                values: vs,
                expires_at_ms,
            },
            Op::MapPut(k, v) => ChangeOp::MapPut {
                user_key: k,
                value: v,
                expires_at_ms,
            },
            Op::MapRemove(k) => ChangeOp::MapRemove { user_key: k },
            Op::Touch => ChangeOp::Touch { expires_at_ms },
            Op::MapTouch(k) => ChangeOp::MapTouch {
                user_key: k,
                expires_at_ms,
            },
        }
    }
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..4, 0..3)
}

/// Few user keys, so that puts, removes and touches meet the same map entry.
fn user_key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
}

fn op(kind: StateKind) -> BoxedStrategy<Op> {
    match kind {
        StateKind::Value | StateKind::Reducing | StateKind::Aggregating => prop_oneof![
            4 => bytes().prop_map(Op::Put),
            1 => Just(Op::Clear),
            2 => Just(Op::Touch),
        ]
        .boxed(),
        StateKind::List => prop_oneof![
            4 => prop::collection::vec(bytes(), 0..3).prop_map(Op::ListAppend),
            1 => prop::collection::vec(bytes(), 0..3).prop_map(Op::ListReplace),
            1 => Just(Op::Clear),
            2 => Just(Op::Touch),
        ]
        .boxed(),
        StateKind::Map => prop_oneof![
            4 => (user_key(), bytes()).prop_map(|(k, v)| Op::MapPut(k, v)),
            2 => user_key().prop_map(Op::MapRemove),
            2 => user_key().prop_map(Op::MapTouch),
            1 => Just(Op::Touch),
            1 => Just(Op::Clear),
        ]
        .boxed(),
    }
}

fn kind() -> impl Strategy<Value = StateKind> {
    prop::sample::select(vec![
        StateKind::Value,
        StateKind::List,
        StateKind::Map,
        StateKind::Reducing,
        StateKind::Aggregating,
    ])
}

const TTL_MS: u64 = 1_000;

/// How far the clock moves before a change: anything up to two TTLs, and often exactly to
/// an expiry's edge (expiry is inclusive: data expiring at `t` is gone at `t`).
fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0..=2 * TTL_MS,
        1 => prop::sample::select(vec![0, 1, TTL_MS - 1, TTL_MS, TTL_MS + 1]),
    ]
}

/// A state kind, its TTL (or none), and a history of up to 40 changes.
fn history() -> impl Strategy<Value = (StateKind, Option<u64>, Vec<Step>)> {
    (kind(), prop::option::of(Just(TTL_MS))).prop_flat_map(|(kind, ttl)| {
        let step = (
            advance(),
            op(kind),
            prop::bool::weighted(0.3),
            any::<bool>(),
            prop::bool::weighted(0.7),
        )
            .prop_map(|(advance_ms, op, cut, via_sort_run, materialize)| Step {
                advance_ms,
                op,
                cut,
                via_sort_run,
                materialize,
            });
        (Just(kind), Just(ttl), prop::collection::vec(step, 1..40))
    })
}

fn tombstone() -> Vec<u8> {
    let mut out = Vec::new();
    Entry::Tombstone.encode(&mut out);
    out
}

/// What a reader of a layer sees: its decoded entry, a tombstone or nothing being no data.
fn visible(layer: Option<&[u8]>) -> Option<Entry> {
    let entry = Entry::decode(layer?, || "layer".to_owned()).expect("a layer decodes");
    (!matches!(entry, Entry::Tombstone)).then_some(entry)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn folding_layers_equals_replaying_the_changes_one_by_one(
        (kind, ttl_ms, steps) in history()
    ) {
        let mut now_ms = 1_000_000u64;
        // The reference: the entry after each prefix of the history.
        let mut reference: Option<Entry> = None;
        // The layers: the encoded entry of the newest layer written, and the changes gathered
        // since (`pending`: segments merged, waiting to be written; `segment`: the current one).
        let mut below: Option<Vec<u8>> = None;
        let mut pending = KeyChanges::default();
        let mut segment = KeyChanges::default();
        let mut layers = 0;
        let last = steps.len() - 1;
        for (i, step) in steps.iter().enumerate() {
            now_ms += step.advance_ms;
            let expires_at_ms = ttl_ms.map_or(0, |t| now_ms + t);
            let change = step.op.change(expires_at_ms);
            prop_assert!(kind.accepts(&change));

            fold::apply_at(&mut reference, &change, ttl::replay_time(&change, ttl_ms));
            segment.push(kind, ttl_ms, &change).unwrap();

            if !(step.cut || i == last) {
                continue;
            }
            let mut gathered = std::mem::take(&mut segment);
            if step.via_sort_run {
                let mut run = vec![0xAA]; // runs append: an entry never starts at byte 0
                gathered.encode(&mut run);
                let back = KeyChanges::decode(&run[1..]).unwrap();
                prop_assert_eq!(&back, &gathered);
                gathered = back;
            }
            pending.then(gathered);
            if !(step.materialize || i == last) {
                continue;
            }
            let changes = std::mem::take(&mut pending);
            below = match changes.resolve(below.as_deref()).unwrap() {
                Some(entry) => Some(entry),
                // No data over something older: a tombstone hides it.
                None if below.is_some() => Some(tombstone()),
                None => None,
            };
            layers += 1;
            prop_assert_eq!(
                visible(below.as_deref()),
                reference.clone(),
                "layer {} (after change {}) of {} state, ttl {:?}",
                layers, i, kind, ttl_ms
            );
        }
        // Reads filter the folded result at their own time: the same on both sides.
        let read_at = now_ms + TTL_MS / 2;
        let (mut folded, mut replayed) = (visible(below.as_deref()), reference);
        ttl::drop_expired(&mut folded, read_at);
        ttl::drop_expired(&mut replayed, read_at);
        prop_assert_eq!(folded, replayed);
    }
}

/// Folds delta runs (newest last in `runs`) as a reader does: newest first until a layer is a
/// full result, then the collected chains oldest first.
fn fold_runs(runs: &[Vec<u8>]) -> Option<Entry> {
    let mut collected = Vec::new();
    for run in runs.iter().rev() {
        let layer = KeyChanges::decode(run).expect("a run entry decodes");
        let known = layer.is_known();
        collected.push(layer);
        if known {
            break;
        }
    }
    let mut acc = KeyChanges::default();
    for layer in collected.into_iter().rev() {
        acc.then(layer);
    }
    acc.fold_over(None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn folding_delta_runs_equals_replaying_the_changes_one_by_one(
        (kind, ttl_ms, steps) in history()
    ) {
        let mut now_ms = 1_000_000u64;
        let mut reference: Option<Entry> = None;
        let mut runs: Vec<Vec<u8>> = Vec::new();
        let mut segment = KeyChanges::default();
        let mut lsn = 0;
        let last = steps.len() - 1;
        for (i, step) in steps.iter().enumerate() {
            now_ms += step.advance_ms;
            lsn += 1;
            let expires_at_ms = ttl_ms.map_or(0, |t| now_ms + t);
            let change = step.op.change(expires_at_ms);
            fold::apply_at(&mut reference, &change, ttl::replay_time(&change, ttl_ms));
            segment.push_logged(kind, ttl_ms, &change, lsn).unwrap();
            if !(step.cut || i == last) {
                continue;
            }
            let mut run = Vec::new();
            std::mem::take(&mut segment).encode(&mut run);
            runs.push(run);
            prop_assert_eq!(fold_runs(&runs), reference.clone(), "after change {}", i);
        }
    }
}

/// An operand chain's bytes, byte for byte (docs/snapshot.md, "Entries", tag 5).
#[test]
fn an_operand_chain_is_encoded_as_documented() {
    let mut c = KeyChanges::default();
    let values = [b"ab".to_vec()];
    c.push_logged(
        StateKind::List,
        Some(1_000),
        &ChangeOp::ListAppend {
            values: &values,
            expires_at_ms: 5_000,
        },
        7,
    )
    .unwrap();
    let mut out = Vec::new();
    c.encode(&mut out);
    let mut want = vec![5, 1, 0, 0, 0, 1];
    want.extend_from_slice(&7u64.to_le_bytes()); // lsn
    want.extend_from_slice(&4_000u64.to_le_bytes()); // made_at_ms = expiry - ttl
    want.extend_from_slice(&5_000u64.to_le_bytes()); // expires_at_ms
    want.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, b'a', b'b']);
    let crc = crc32c::crc32c(&want);
    want.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(out, want);
    assert_eq!(KeyChanges::decode(&out).unwrap(), c);
    for cut in 0..out.len() {
        assert!(KeyChanges::decode(&out[..cut]).is_err());
    }
    for bit in 0..out.len() * 8 {
        let mut bad = out.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(KeyChanges::decode(&bad).is_err(), "bit {bit}");
    }
}

/// The rows of the folding table that tags 1–4 already have, spelled out: a barrier needs
/// nothing below, an append or a put applies to what is below, and a change made after what
/// is below expired sees nothing.
#[test]
fn barriers_ignore_what_is_below_and_other_changes_apply_to_it() {
    let mut below = Vec::new();
    Entry::Map(BTreeMap::from([(
        b"a".to_vec(),
        millpond_format::Elem {
            value: b"1".to_vec(),
            expires_at_ms: 5_000,
        },
    )]))
    .encode(&mut below);

    let mut put = KeyChanges::default();
    put.push(
        StateKind::Map,
        Some(TTL_MS),
        &ChangeOp::MapPut {
            user_key: b"b",
            value: b"2",
            expires_at_ms: 5_500,
        },
    )
    .unwrap();
    assert!(put.needs_base());
    // Made at 4_500, before the entry below expired: both entries are there.
    let Entry::Map(map) =
        Entry::decode(&put.resolve(Some(&below)).unwrap().unwrap(), String::new).unwrap()
    else {
        panic!("a map")
    };
    assert_eq!(map.keys().collect::<Vec<_>>(), [b"a", b"b"]);

    let mut late = KeyChanges::default();
    late.push(
        StateKind::Map,
        Some(TTL_MS),
        &ChangeOp::MapPut {
            user_key: b"b",
            value: b"2",
            expires_at_ms: 6_000,
        },
    )
    .unwrap();
    // Made at 5_000, when the entry below had expired: only the new one.
    let Entry::Map(map) =
        Entry::decode(&late.resolve(Some(&below)).unwrap().unwrap(), String::new).unwrap()
    else {
        panic!("a map")
    };
    assert_eq!(map.keys().collect::<Vec<_>>(), [b"b"]);

    let mut clear = KeyChanges::default();
    clear.push(StateKind::Map, None, &ChangeOp::Clear).unwrap();
    assert!(!clear.needs_base());
    assert_eq!(clear.resolve(Some(&below)).unwrap(), None);
    // A barrier ignores even a damaged entry below: it never reads it.
    assert_eq!(clear.resolve(Some(b"damaged")).unwrap(), None);
    assert!(put.resolve(Some(b"damaged")).is_err());
}
