//! `millpond wal inspect`: the batches of a write-ahead log, and what recovery would make of
//! them. It reads the log with `millpond_wal::WalReader`, the one implementation of the log's
//! rules, and shows its events: accepted batches and their records, duplicates and zombie
//! batches skipped, takeovers by a newer writer.

use std::path::Path;

use millpond_wal::batch::BatchHeader;
use millpond_wal::proto::state_change::Op;
use millpond_wal::{
    Event, LocalSegmentSource, ReplayOutcome, Skip, SourceOffset, WalPosition, WalReader, WalSource,
};

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

fn op_text(op: &Op, value_as: Render) -> String {
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
        Op::Put(p) => format!("put {}{}", value(&p.value), exp(p.expires_at_ms)),
        Op::Clear(_) => "clear".to_owned(),
        Op::ListAppend(l) => {
            format!("list-append [{}]{}", list(&l.values), exp(l.expires_at_ms))
        }
        Op::ListReplace(l) => {
            format!("list-replace [{}]{}", list(&l.values), exp(l.expires_at_ms))
        }
        Op::MapPut(m) => format!(
            "map-put {} => {}{}",
            user_key(&m.user_key),
            value(&m.value),
            exp(m.expires_at_ms)
        ),
        Op::MapRemove(m) => format!("map-remove {}", user_key(&m.user_key)),
        Op::Touch(t) => format!("touch{}", exp(t.expires_at_ms)),
        Op::MapTouch(t) => format!(
            "map-touch {}{}",
            user_key(&t.user_key),
            exp(t.expires_at_ms)
        ),
    }
}

/// What the summary counts beyond the reader's outcome.
#[derive(Default)]
struct Tally {
    /// Batches read: accepted and skipped.
    batches: u64,
    bytes: u64,
    first_lsn: Option<u64>,
    /// Records read, by kind.
    changes: u64,
    commits: u64,
    rollbacks: u64,
    /// Changes a rollback discarded.
    rolled_back: u64,
    /// Takeovers by a newer writer, and the uncommitted changes they superseded.
    takeovers: u64,
    superseded: u64,
    /// When the last commit marker was written.
    last_commit_at_ms: u64,
    outcome: ReplayOutcome,
}

/// An accepted batch, printed once its records are read.
struct Open {
    header: BatchHeader,
    position: String,
    bytes: usize,
    changes: u64,
    commits: u64,
    rollbacks: u64,
    lines: Vec<String>,
}

impl Open {
    fn print(self, out: &mut Out) -> Result<()> {
        let h = self.header;
        outln!(
            out,
            "LSN {}..={}  {}  {} bytes  epoch {}  {} changes  {} commits  {} rollbacks",
            h.first_lsn,
            h.last_lsn,
            self.position,
            self.bytes,
            h.epoch,
            self.changes,
            self.commits,
            self.rollbacks
        )?;
        for line in self.lines {
            outln!(out, "{line}")?;
        }
        Ok(())
    }
}

fn inspect(
    source: &mut dyn WalSource,
    what: &str,
    opts: &InspectOptions,
    out: &mut Out,
) -> Result<Tally> {
    let mut t = Tally::default();
    outln!(out, "WAL {}", escape(what))?;
    let mut reader = WalReader::new(source, 0);
    let mut open: Option<Open> = None;
    while let Some(event) = reader.next()? {
        let batch_starts = matches!(
            event,
            Event::Batch { .. } | Event::Skipped { .. } | Event::Superseded { .. }
        );
        if batch_starts {
            if let Some(done) = open.take() {
                done.print(out)?;
            }
        }
        match event {
            Event::Batch {
                header,
                position,
                bytes,
            } => {
                t.batches += 1;
                t.bytes += bytes as u64;
                t.first_lsn.get_or_insert(header.first_lsn);
                open = Some(Open {
                    header: *header,
                    position: position.to_string(),
                    bytes,
                    changes: 0,
                    commits: 0,
                    rollbacks: 0,
                    lines: Vec::new(),
                });
            }
            Event::Skipped {
                header,
                position,
                bytes,
                why,
            } => {
                t.batches += 1;
                t.bytes += bytes as u64;
                let why = match why {
                    Skip::Duplicate => "duplicate of records already read (skipped)".to_owned(),
                    Skip::Zombie { log_epoch } => format!(
                        "a zombie's (epoch {log_epoch} was read before it: its writer was \
                         taken over), skipped as recovery does"
                    ),
                    _ => "already covered (skipped)".to_owned(),
                };
                outln!(
                    out,
                    "LSN {}..={}  {position}  {bytes} bytes  epoch {}  {why}",
                    header.first_lsn,
                    header.last_lsn,
                    header.epoch
                )?;
            }
            Event::Superseded {
                from_lsn,
                epoch,
                discarded,
            } => {
                t.takeovers += 1;
                t.superseded += discarded;
                outln!(
                    out,
                    "takeover: writer epoch {epoch} starts at LSN {from_lsn}; the {discarded} \
                     uncommitted changes read from there on, written by the older writer after \
                     the takeover, no longer count"
                )?;
            }
            Event::Change { lsn, change } => {
                t.changes += 1;
                if let Some(o) = open.as_mut() {
                    o.changes += 1;
                    if opts.verbose {
                        o.lines.push(format!(
                            "  LSN {lsn}  change  state={} ({}) key_group={} key={}  {}",
                            escape(&change.state),
                            change.kind,
                            change.key_group,
                            show(&change.key, opts.key_as),
                            op_text(change.op(), opts.value_as)
                        ));
                    }
                }
            }
            Event::Commit {
                lsn,
                point,
                committed_at_ms,
            } => {
                t.commits += 1;
                t.last_commit_at_ms = committed_at_ms;
                if let Some(o) = open.as_mut() {
                    o.commits += 1;
                    if opts.verbose {
                        o.lines.push(format!(
                            "  LSN {lsn}  commit  offsets {}  at {}",
                            offsets_text(&point.offsets),
                            rfc3339_ms(committed_at_ms)
                        ));
                    }
                }
            }
            Event::Rollback { lsn, discarded } => {
                t.rollbacks += 1;
                t.rolled_back += discarded;
                if let Some(o) = open.as_mut() {
                    o.rollbacks += 1;
                    if opts.verbose {
                        o.lines.push(format!(
                            "  LSN {lsn}  rollback  ({discarded} uncommitted changes discarded)"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(done) = open.take() {
        done.print(out)?;
    }
    t.outcome = reader.into_outcome();
    Ok(t)
}

fn summary(t: &Tally, out: &mut Out) -> Result<()> {
    outln!(out, "summary")?;
    let o = &t.outcome;
    let records = match t.first_lsn {
        Some(first) => format!("LSN {first}..={}", o.next_lsn - 1),
        None => "none (an empty log)".to_owned(),
    };
    let rows = [
        (
            "batches",
            format!(
                "{} ({}), {} duplicates, {} zombie batches",
                t.batches,
                size(t.bytes),
                o.duplicates,
                o.fenced
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
            match &o.last_commit {
                Some(c) => format!(
                    "LSN {} at {} ({})",
                    c.lsn,
                    c.position,
                    rfc3339_ms(t.last_commit_at_ms)
                ),
                None => "none".to_owned(),
            },
        ),
        (
            "offsets",
            o.last_commit
                .as_ref()
                .map_or_else(|| "none".to_owned(), |c| offsets_text(&c.offsets)),
        ),
        (
            "committed",
            format!("{} changes (replay applies them)", o.applied),
        ),
        (
            "uncommitted",
            format!(
                "{} changes after the last commit (replay does not apply them)",
                o.uncommitted
            ),
        ),
        (
            "rolled back",
            format!("{} changes (discarded by a rollback)", t.rolled_back),
        ),
        (
            "writer epochs",
            format!(
                "highest {}, {} takeovers ({} uncommitted changes superseded)",
                o.epoch, t.takeovers, t.superseded
            ),
        ),
        ("next LSN", o.next_lsn.to_string()),
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
            other => other.to_string(),
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
