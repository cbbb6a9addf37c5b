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
    fold(layers, Output::Full, location)
}

fn fold(layers: &[Vec<u8>], output: Output, location: &str) -> Result<Option<Vec<u8>>> {
    let Some(newest) = layers.first() else {
        return Ok(None);
    };
    // Tags 1–3 are full entries: nothing below can change them.
    if matches!(newest.first(), Some(1..=3)) {
        return Ok(Some(newest.clone()));
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
    Ok(match output {
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
    })
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
        };
        for i in 0..m.runs.len() {
            m.advance(i)?;
        }
        Ok(m)
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
            if let Some(v) = fold(&self.layers, self.output, &self.location)? {
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
}
