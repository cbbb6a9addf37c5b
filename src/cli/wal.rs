//! `millpond wal inspect`: the batches of a write-ahead log, and what replay would make of
//! them (the same rules as `millpond_wal::replay`: changes count once a commit marker follows
//! them, a rollback discards the changes before it, batches at or below the LSNs already read
//! are duplicates, a gap in LSNs is damage).

use std::path::Path;

use millpond_wal::batch::{self, Decoded};
use millpond_wal::proto::{self, record::Body, state_change::Op};
use millpond_wal::{LocalSegmentSource, SourceOffset, WalPosition, WalSource};
use prost::Message;

use super::render::{escape, rfc3339_ms, show, size, Render};
use super::{CliError, Out, Result};

/// What `wal inspect` shows.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// Every record, not just every batch.
    pub verbose: bool,
    /// How keys are shown in records.
    pub key_as: Render,
    /// How values are shown in records.
    pub value_as: Render,
}

fn position_text(p: &WalPosition) -> String {
    match p {
        WalPosition::Local { segment, offset } => format!("{segment:020}.wal@{offset}"),
        WalPosition::Pulsar {
            ledger_id,
            entry_id,
            partition,
            batch_index,
        } => format!("pulsar {ledger_id}:{entry_id}:{partition}:{batch_index}"),
    }
}

fn offsets_text(offsets: &[SourceOffset]) -> String {
    if offsets.is_empty() {
        return "none".to_owned();
    }
    offsets
        .iter()
        .map(|o| format!("{}/{}={}", escape(&o.topic), o.partition, o.next_offset))
        .collect::<Vec<_>>()
        .join(" ")
}

fn op_text(op: Option<&Op>, value_as: Render) -> String {
    let value = |b: &[u8]| show(b, value_as);
    let user_key = |b: &[u8]| show(b, Render::Auto);
    let exp = |e: u64| {
        if e == 0 {
            String::new()
        } else {
            format!(" expires={}", rfc3339_ms(e))
        }
    };
    let list = |vs: &[Vec<u8>]| vs.iter().map(|v| value(v)).collect::<Vec<_>>().join(", ");
    match op {
        None => "(no op)".to_owned(),
        Some(Op::Put(p)) => format!("put {}{}", value(&p.value), exp(p.expires_at_ms)),
        Some(Op::Clear(_)) => "clear".to_owned(),
        Some(Op::ListAppend(l)) => {
            format!("list-append [{}]{}", list(&l.values), exp(l.expires_at_ms))
        }
        Some(Op::ListReplace(l)) => {
            format!("list-replace [{}]{}", list(&l.values), exp(l.expires_at_ms))
        }
        Some(Op::MapPut(m)) => format!(
            "map-put {} => {}{}",
            user_key(&m.user_key),
            value(&m.value),
            exp(m.expires_at_ms)
        ),
        Some(Op::MapRemove(m)) => format!("map-remove {}", user_key(&m.user_key)),
        Some(Op::Touch(t)) => format!("touch{}", exp(t.expires_at_ms)),
        Some(Op::MapTouch(t)) => format!(
            "map-touch {}{}",
            user_key(&t.user_key),
            exp(t.expires_at_ms)
        ),
    }
}

/// The last commit marker seen.
struct Commit {
    lsn: u64,
    offsets: Vec<SourceOffset>,
    position: WalPosition,
    committed_at_ms: u64,
}

/// Replay's bookkeeping, without applying anything.
#[derive(Default)]
struct Tally {
    batches: u64,
    duplicates: u64,
    bytes: u64,
    first_lsn: Option<u64>,
    /// Highest LSN read.
    seen: u64,
    changes: u64,
    commits: u64,
    rollbacks: u64,
    /// Changes followed by a commit marker.
    committed: u64,
    /// Changes since the last commit marker or rollback.
    pending: u64,
    /// Changes a rollback discarded.
    rolled_back: u64,
    last_commit: Option<Commit>,
}

fn inspect(
    source: &mut dyn WalSource,
    what: &str,
    opts: &InspectOptions,
    out: &mut Out,
) -> Result<Tally> {
    let mut t = Tally::default();
    outln!(out, "WAL {}", escape(what))?;
    while let Some(stored) = source.next_batch()? {
        let pos = position_text(&stored.position);
        let damage = |what: &str| CliError::new(format!("corrupt WAL: {what} at {pos}"));
        let (h, payload) = match batch::decode(&stored.bytes, || pos.clone())? {
            Decoded::Batch(h, p) if h.framed_len() == stored.bytes.len() => (h, p),
            Decoded::Batch(..) => return Err(damage("bytes after a batch")),
            Decoded::Incomplete => return Err(damage("an incomplete batch")),
        };
        t.batches += 1;
        t.bytes += stored.bytes.len() as u64;
        if t.first_lsn.is_some() && h.last_lsn <= t.seen {
            t.duplicates += 1;
            outln!(
                out,
                "LSN {}..={}  {pos}  {} bytes  duplicate of records already read (skipped)",
                h.first_lsn,
                h.last_lsn,
                stored.bytes.len()
            )?;
            continue;
        }
        if t.first_lsn.is_some() && h.first_lsn > t.seen + 1 {
            return Err(damage(&format!(
                "an LSN gap (expected LSN {}, the batch starts at {})",
                t.seen + 1,
                h.first_lsn
            )));
        }
        t.first_lsn.get_or_insert(h.first_lsn);
        let (mut changes, mut commits, mut rollbacks) = (0u64, 0u64, 0u64);
        let mut lines = Vec::new();
        for (i, record) in batch::records(payload, h.count).enumerate() {
            let lsn = h.first_lsn + i as u64;
            let record = record?;
            if lsn <= t.seen {
                continue; // overlaps records already read
            }
            let bad = || CliError::new(format!("corrupt WAL: record LSN {lsn} at {pos}"));
            let body = proto::Record::decode(record)
                .map_err(|_| bad())?
                .body
                .ok_or_else(bad)?;
            match body {
                Body::Change(c) => {
                    changes += 1;
                    t.pending += 1;
                    if opts.verbose {
                        let key = show(&c.key, opts.key_as);
                        let kind = proto::StateKind::try_from(c.kind).map_or_else(
                            |_| format!("kind {}", c.kind),
                            |k| {
                                k.as_str_name()
                                    .trim_start_matches("STATE_KIND_")
                                    .to_lowercase()
                            },
                        );
                        lines.push(format!(
                            "  LSN {lsn}  change  state={} ({kind}) key_group={} key={key}  {}",
                            escape(&c.state),
                            c.key_group,
                            op_text(c.op.as_ref(), opts.value_as)
                        ));
                    }
                }
                Body::Commit(c) => {
                    commits += 1;
                    t.committed += t.pending;
                    t.pending = 0;
                    let offsets: Vec<SourceOffset> = c
                        .offsets
                        .into_iter()
                        .map(|o| SourceOffset {
                            topic: o.topic,
                            partition: o.partition,
                            next_offset: o.next_offset,
                        })
                        .collect();
                    if opts.verbose {
                        lines.push(format!(
                            "  LSN {lsn}  commit  offsets {}  at {}",
                            offsets_text(&offsets),
                            rfc3339_ms(c.committed_at_ms)
                        ));
                    }
                    t.last_commit = Some(Commit {
                        lsn,
                        offsets,
                        position: stored.position.clone(),
                        committed_at_ms: c.committed_at_ms,
                    });
                }
                Body::Rollback(r) => {
                    rollbacks += 1;
                    t.rolled_back += t.pending;
                    t.pending = 0;
                    if opts.verbose {
                        lines.push(format!(
                            "  LSN {lsn}  rollback  (changes after LSN {} discarded)",
                            r.last_committed_lsn
                        ));
                    }
                }
            }
        }
        t.seen = h.last_lsn;
        t.changes += changes;
        t.commits += commits;
        t.rollbacks += rollbacks;
        outln!(
            out,
            "LSN {}..={}  {pos}  {} bytes  {changes} changes  {commits} commits  {rollbacks} rollbacks",
            h.first_lsn,
            h.last_lsn,
            stored.bytes.len()
        )?;
        for line in lines {
            outln!(out, "{line}")?;
        }
    }
    Ok(t)
}

fn summary(t: &Tally, out: &mut Out) -> Result<()> {
    outln!(out, "summary")?;
    let records = match t.first_lsn {
        Some(first) => format!("LSN {first}..={}", t.seen),
        None => "none (an empty log)".to_owned(),
    };
    let rows = [
        (
            "batches",
            format!(
                "{} ({}), {} duplicates",
                t.batches,
                size(t.bytes),
                t.duplicates
            ),
        ),
        ("records", records),
        (
            "records by kind",
            format!(
                "{} changes, {} commits, {} rollbacks",
                t.changes, t.commits, t.rollbacks
            ),
        ),
        (
            "last commit",
            match &t.last_commit {
                Some(c) => format!(
                    "LSN {} at {} ({})",
                    c.lsn,
                    position_text(&c.position),
                    rfc3339_ms(c.committed_at_ms)
                ),
                None => "none".to_owned(),
            },
        ),
        (
            "offsets",
            t.last_commit
                .as_ref()
                .map_or_else(|| "none".to_owned(), |c| offsets_text(&c.offsets)),
        ),
        (
            "committed",
            format!("{} changes (replay applies them)", t.committed),
        ),
        (
            "uncommitted",
            format!(
                "{} changes after the last commit (replay does not apply them)",
                t.pending
            ),
        ),
        (
            "rolled back",
            format!("{} changes (discarded by a rollback)", t.rolled_back),
        ),
        ("next LSN", (t.seen + 1).to_string()),
    ];
    for (name, value) in rows {
        outln!(out, "  {name:<16} {value}")?;
    }
    Ok(())
}

/// `wal inspect DIR`: a local segment directory, read by the same source as recovery, so the
/// same rule decides where its valid data ends: a torn tail is reported (where, how many bytes,
/// after which LSN), anything else damaged is an error naming the segment (exit 1).
pub fn inspect_dir(dir: &Path, opts: &InspectOptions, out: &mut Out) -> Result<()> {
    if !dir.is_dir() {
        return Err(CliError::new(format!(
            "{}: not a directory (expected the WAL's segment directory)",
            escape(&dir.to_string_lossy())
        )));
    }
    let mut source = LocalSegmentSource::open(dir, 0)?;
    let t = inspect(&mut source, &dir.display().to_string(), opts, out)?;
    if t.batches == 0 {
        outln!(
            out,
            "no batches (no *.wal segment files, or only empty or torn ones, in {})",
            escape(&dir.to_string_lossy())
        )?;
    }
    summary(&t, out)?;
    let acknowledged = match source.acknowledged_lsn() {
        Some(lsn) => format!("LSN {lsn} (damage at or below it is corruption, never cut)"),
        None => "unknown (no ACKED file: a log of an older version or never written)".to_owned(),
    };
    outln!(out, "  {:<16} {acknowledged}", "acknowledged")?;
    if let Some(torn) = source.torn_tail() {
        let place = match torn.position {
            WalPosition::Local { segment, offset } => {
                format!(
                    "at byte {offset} of {}",
                    escape(&dir.join(format!("{segment:020}.wal")).to_string_lossy())
                )
            }
            other => position_text(&other),
        };
        outln!(
            out,
            "  {:<16} {} bytes {place}, after LSN {} (a batch cut short by a crash before it was \
             acknowledged; the writer cuts them off when it reopens the log)",
            "torn tail",
            torn.bytes,
            torn.last_lsn
        )?;
    }
    Ok(())
}

/// `wal inspect --pulsar-url URL --topic TOPIC`: a WAL kept in Pulsar, read with a
/// non-durable reader (it leaves nothing on the broker).
#[cfg(feature = "pulsar")]
pub fn inspect_pulsar(
    url: &str,
    topic: &str,
    token: Option<String>,
    opts: &InspectOptions,
    out: &mut Out,
) -> Result<()> {
    use millpond_wal::pulsar::{PulsarSettings, PulsarSource};
    let settings = PulsarSettings {
        auth_token: token,
        // A tool answers soon or says why; the job's defaults wait longer.
        max_retries: 3,
        operation_timeout: std::time::Duration::from_secs(10),
        ..PulsarSettings::for_topic(url, topic)
    };
    let mut source = PulsarSource::open(settings, None).map_err(|e| {
        CliError::from(e).context(format!("reading {} at {}", escape(topic), escape(url)))
    })?;
    let t = inspect(&mut source, topic, opts, out)?;
    if t.batches == 0 {
        outln!(out, "no batches (the topic is empty)")?;
    }
    summary(&t, out)
}
