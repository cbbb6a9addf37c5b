//! Reading a partition through its runs: a key's entry is the fold of its layers, newest run
//! first down to the first full entry or tombstone (docs/snapshot.md, "Runs"). The same fold
//! serves point reads of a restored store ([`fold_layers`]) and the merges of whole runs
//! ([`FoldedMerge`]) that dumps, rescales and compactions do, so that every reader agrees
//! with WAL replay by construction (`millpond_format::fold`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use millpond_format::KeyChanges;

use crate::error::{Error, Result};

/// Entries of one run in key order.
pub(crate) type RunEntries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + 'a>;

/// What a merge writes for each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// The folded state: full entries only, keys without data left out (a bottom run, a
    /// dump, a restore).
    Full,
    /// The layers combined without what is below the merged runs: full entries, tombstones
    /// and operand chains (a delta run made of several).
    Layers,
}

/// One layer: an entry of any tag (1–5), damage reported at `location`.
fn decode(layer: &[u8], location: &str) -> Result<KeyChanges> {
    KeyChanges::decode(layer).map_err(|_| Error::Corrupt {
        what: "data file entry",
        location: location.to_owned(),
    })
}

/// One key's entry from its layers (encoded entries, newest first; nothing below the last):
/// the full entry, or `None` if the key has no data. A newest layer that is a full entry is
/// returned as it is, without decoding.
pub(crate) fn fold_layers(layers: &[Vec<u8>], location: &str) -> Result<Option<Vec<u8>>> {
    Ok(fold(layers, Output::Full, location, 0)?.0)
}

/// The fold of `layers` written as `output`, with what has expired at `horizon_ms` dropped
/// from full results (0: nothing dropped); and whether anything was.
fn fold(
    layers: &[Vec<u8>],
    output: Output,
    location: &str,
    horizon_ms: u64,
) -> Result<(Option<Vec<u8>>, bool)> {
    let Some(newest) = layers.first() else {
        return Ok((None, false));
    };
    // Tags 1–3 are full entries: nothing below can change them.
    if horizon_ms == 0 && matches!(newest.first(), Some(1..=3)) {
        return Ok((Some(newest.clone()), false));
    }
    let mut collected = Vec::with_capacity(layers.len());
    for layer in layers {
        let changes = decode(layer, location)?;
        let known = changes.is_known();
        collected.push(changes);
        if known {
            break;
        }
    }
    let mut acc = KeyChanges::default();
    for layer in collected.into_iter().rev() {
        acc.then(layer);
    }
    let dropped = horizon_ms != 0 && acc.drop_expired_at(horizon_ms);
    if !dropped && matches!(newest.first(), Some(1..=3)) {
        return Ok((Some(newest.clone()), false));
    }
    let out = match output {
        Output::Full => acc.fold_over(None).map(|e| {
            let mut out = Vec::with_capacity(e.encoded_size_hint() + 8);
            e.encode(&mut out);
            out
        }),
        Output::Layers => {
            let mut out = Vec::new();
            acc.encode(&mut out);
            Some(out)
        }
    };
    Ok((out, dropped))
}

/// A k-way merge of runs (newest first) that yields each key once, its layers folded.
pub(crate) struct FoldedMerge<'a> {
    runs: Vec<RunEntries<'a>>,
    heads: Vec<Option<Vec<u8>>>,
    /// (key, run index) of every run's head: smallest key first, and for equal keys the
    /// newest run first.
    order: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    output: Output,
    location: String,
    layers: Vec<Vec<u8>>,
    horizon_ms: u64,
    expired: u64,
}

impl<'a> FoldedMerge<'a> {
    /// Merges `runs`, newest first; `location` names them in errors.
    pub(crate) fn new(runs: Vec<RunEntries<'a>>, output: Output, location: String) -> Result<Self> {
        let mut m = FoldedMerge {
            heads: (0..runs.len()).map(|_| None).collect(),
            runs,
            order: BinaryHeap::new(),
            output,
            location,
            layers: Vec::new(),
            horizon_ms: 0,
            expired: 0,
        };
        for i in 0..m.runs.len() {
            m.advance(i)?;
        }
        Ok(m)
    }

    /// Drops from full results what has expired at `horizon_ms` (0: nothing), as compaction
    /// may (docs/snapshot.md, "Expired data").
    pub(crate) fn drop_expired_at(mut self, horizon_ms: u64) -> Self {
        self.horizon_ms = horizon_ms;
        self
    }

    /// Keys whose entry lost expired data so far.
    pub(crate) fn expired(&self) -> u64 {
        self.expired
    }

    fn advance(&mut self, i: usize) -> Result<()> {
        if let Some((k, v)) = self.runs[i].next().transpose()? {
            self.heads[i] = Some(v);
            self.order.push(Reverse((k, i)));
        }
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            let Some(Reverse((key, i))) = self.order.pop() else {
                return Ok(None);
            };
            self.layers.clear();
            self.layers
                .push(self.heads[i].take().expect("a head for every queued run"));
            self.advance(i)?;
            while let Some(Reverse((k, _))) = self.order.peek() {
                if *k != key {
                    break;
                }
                let Reverse((_, j)) = self.order.pop().expect("peeked");
                self.layers
                    .push(self.heads[j].take().expect("a head for every queued run"));
                self.advance(j)?;
            }
            let (v, dropped) = fold(&self.layers, self.output, &self.location, self.horizon_ms)?;
            self.expired += u64::from(dropped);
            if let Some(v) = v {
                return Ok(Some((key, v)));
            }
        }
    }
}

impl Iterator for FoldedMerge<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millpond_format::{ChangeOp, StateKind};

    fn layer(kind: StateKind, ops: &[ChangeOp<'_>]) -> Vec<u8> {
        let mut c = KeyChanges::default();
        for op in ops {
            c.push(kind, None, op).unwrap();
        }
        let mut out = Vec::new();
        c.encode(&mut out);
        out
    }

    fn run(entries: Vec<(&[u8], Vec<u8>)>) -> RunEntries<'static> {
        Box::new(
            entries
                .into_iter()
                .map(|(k, v)| Ok((k.to_vec(), v)))
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    #[test]
    fn newer_runs_fold_over_older_ones_and_deletes_leave_keys_out() {
        let vals = [b"b".to_vec()];
        let older = run(vec![
            (
                b"k1",
                layer(
                    StateKind::Value,
                    &[ChangeOp::Put {
                        value: b"old",
                        expires_at_ms: 0,
                    }],
                ),
            ),
            (
                b"k2",
                layer(
                    StateKind::List,
                    &[ChangeOp::ListReplace {
                        values: &[b"a".to_vec()],
                        expires_at_ms: 0,
                    }],
                ),
            ),
        ]);
        let newer = run(vec![
            (b"k1", layer(StateKind::Value, &[ChangeOp::Clear])),
            (
                b"k2",
                layer(
                    StateKind::List,
                    &[ChangeOp::ListAppend {
                        values: &vals,
                        expires_at_ms: 0,
                    }],
                ),
            ),
        ]);
        let out: Vec<_> = FoldedMerge::new(vec![newer, older], Output::Full, "t".into())
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, b"k2");
        let view = millpond_format::EntryView::decode(&out[0].1).unwrap();
        assert_eq!(
            view,
            millpond_format::EntryView::List(vec![(b"a".to_vec(), 0), (b"b".to_vec(), 0)])
        );
    }

    /// An entry that expired at the horizon: left out of a bottom run, but a tombstone in a
    /// delta run, so that an older run's version of the key cannot reappear below it.
    #[test]
    fn expired_entries_are_left_out_of_bottoms_and_hidden_in_deltas() {
        let put = |v: &'static [u8], e| {
            layer(
                StateKind::Value,
                &[ChangeOp::Put {
                    value: v,
                    expires_at_ms: e,
                }],
            )
        };
        let newer = || run(vec![(b"k1", put(b"new", 100)), (b"k2", put(b"live", 500))]);
        let merged = |output, horizon| {
            let mut m = FoldedMerge::new(vec![newer()], output, "t".into())
                .unwrap()
                .drop_expired_at(horizon);
            let out: Vec<_> = m.by_ref().collect::<Result<_>>().unwrap();
            (out, m.expired())
        };
        let (full, expired) = merged(Output::Full, 100);
        assert_eq!(expired, 1);
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].0, b"k2");
        let (layers, _) = merged(Output::Layers, 100);
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].0, b"k1");
        assert_eq!(
            millpond_format::EntryView::decode(&layers[0].1).unwrap(),
            millpond_format::EntryView::Tombstone
        );
        assert_eq!(
            layers[1].1,
            put(b"live", 500),
            "a live entry is copied as it was"
        );
        // Horizon 0: nothing dropped, nothing decoded.
        let (all, expired) = merged(Output::Full, 0);
        assert_eq!((all.len(), expired), (2, 0));
    }
}
