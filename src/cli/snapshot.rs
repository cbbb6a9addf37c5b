//! `millpond snapshot …`: list, inspect, verify, restore, dump, rescale and collect garbage.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond_format::{CompositeKey, EntryView};
use millpond_snapshot::compaction::{self, CompactionKind, CompactionSettings};
use millpond_snapshot::{
    Archive, FileRef, Manifest, ManifestKind, Partition, RescaleSource, RestoreSettings, RunKind,
    SnapshotBase, SnapshotSettings,
};
use millpond_state::{KeyGroupRange, StateSchema, TtlConfig, TtlUpdateType, TtlVisibility};
use millpond_wal::{SourceOffset, WalPosition};
use serde_json::{json, Value};

use super::render::{escape, json, json_pretty, render, rfc3339_ms, size, Render, Table};
use super::{check_key_groups, parse_key_groups, progress, restore_dir, CliError, Out, Result};

/// Name of the manifest `restore` writes next to the files.
pub const RESTORED_MANIFEST: &str = "manifest.mpm";
/// How often `restore` redraws its progress.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Offsets shown in one cell of `list`; the rest are counted.
const LIST_OFFSETS_SHOWN: usize = 3;

/// The manifest `id` names (id, sequence or `latest`).
fn find(archive: &Archive, id: &str) -> Result<Manifest> {
    archive.find(id).map_err(|e| {
        let missing = matches!(e, millpond_snapshot::Error::NotFound { .. });
        let e = CliError::from(e);
        if missing {
            CliError::new(format!(
                "{e} (`millpond snapshot list` shows the snapshots)"
            ))
        } else {
            e
        }
    })
}

fn kind_name(kind: ManifestKind) -> &'static str {
    match kind {
        ManifestKind::Snapshot => "snapshot",
        ManifestKind::Claim => "claim",
        ManifestKind::Compaction => "compaction",
    }
}

fn offset_text(o: &SourceOffset) -> String {
    format!("{}/{}={}", o.topic, o.partition, o.next_offset)
}

fn offsets_summary(offsets: &[SourceOffset]) -> String {
    if offsets.is_empty() {
        return "-".to_owned();
    }
    let mut s: Vec<String> = offsets
        .iter()
        .take(LIST_OFFSETS_SHOWN)
        .map(offset_text)
        .collect();
    if offsets.len() > LIST_OFFSETS_SHOWN {
        s.push(format!("+{} more", offsets.len() - LIST_OFFSETS_SHOWN));
    }
    s.join(" ")
}

fn position_text(p: Option<&WalPosition>) -> String {
    match p {
        None => "-".to_owned(),
        Some(WalPosition::Local { segment, offset }) => {
            format!("local segment {segment:020}.wal, byte {offset}")
        }
        Some(WalPosition::Pulsar {
            ledger_id,
            entry_id,
            partition,
            batch_index,
        }) => format!(
            "pulsar ledger {ledger_id}, entry {entry_id}, partition {partition}, batch index {batch_index}"
        ),
    }
}

fn position_json(p: Option<&WalPosition>) -> Value {
    match p {
        None => Value::Null,
        Some(WalPosition::Local { segment, offset }) => {
            json!({"type": "local", "segment": segment, "offset": offset})
        }
        Some(WalPosition::Pulsar {
            ledger_id,
            entry_id,
            partition,
            batch_index,
        }) => json!({
            "type": "pulsar",
            "ledger_id": ledger_id,
            "entry_id": entry_id,
            "partition": partition,
            "batch_index": batch_index,
        }),
    }
}

fn ttl_names(t: &TtlConfig) -> (&'static str, &'static str) {
    (
        match t.update_type {
            TtlUpdateType::OnCreateAndWrite => "on-create-and-write",
            TtlUpdateType::OnReadAndWrite => "on-read-and-write",
        },
        match t.visibility {
            TtlVisibility::NeverReturnExpired => "never-return-expired",
            TtlVisibility::ReturnExpiredIfNotCleanedUp => "return-expired-if-not-cleaned-up",
        },
    )
}

fn offsets_json(offsets: &[SourceOffset]) -> Value {
    offsets
        .iter()
        .map(|o| json!({"topic": o.topic, "partition": o.partition, "next_offset": o.next_offset}))
        .collect()
}

fn summary_json(m: &Manifest) -> Value {
    json!({
        "sequence": m.sequence,
        "id": m.id,
        "parent_id": m.parent_id,
        "kind": kind_name(m.kind),
        "writer_epoch": m.writer_epoch,
        "created_at_ms": m.created_at_ms,
        "created_at": rfc3339_ms(m.created_at_ms),
        "max_key_groups": m.max_key_groups,
        "lsn": m.lsn,
        "captured_at_ms": m.captured_at_ms,
        "files": m.files().count(),
        "total_entries": m.total_entries(),
        "total_bytes": m.total_bytes(),
        "offsets": offsets_json(&m.offsets),
    })
}

/// The manifest as one JSON object (`inspect --json`).
pub fn manifest_json(m: &Manifest) -> Value {
    let states: Vec<Value> = m
        .states
        .iter()
        .map(|s| {
            let ttl = s.ttl.map(|t| {
                let (update, visibility) = ttl_names(&t);
                json!({"ttl_ms": t.ttl_ms(), "update_type": update, "visibility": visibility})
            });
            json!({"name": s.name, "kind": s.kind.to_string(), "id": s.id, "ttl": ttl})
        })
        .collect();
    let files: Vec<Value> = m
        .files()
        .map(|f| {
            json!({
                "path": f.path,
                "first_key_group": f.first_key_group,
                "last_key_group": f.last_key_group,
                "bytes": f.bytes,
                "entries": f.entries,
                "crc32c": f.crc32c,
                // null: a file written before digests (manifest version 1), checked by its
                // CRC-32C only.
                "digest": f.digest.map(|d| d.to_string()),
                "file_id": f.file_id.map(|id| id.to_string()),
                "written_by": f.written_by,
            })
        })
        .collect();
    let partitions: Vec<Value> = m
        .partitions
        .iter()
        .map(|p| {
            let runs: Vec<Value> = p
                .runs
                .iter()
                .map(|r| {
                    json!({
                        "kind": run_kind_name(r.kind),
                        "upto_lsn": r.upto_lsn,
                        "written_by": r.written_by,
                        "files": r.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
                        "bytes": r.files.iter().map(|f| f.bytes).sum::<u64>(),
                        "entries": r.files.iter().map(|f| f.entries).sum::<u64>(),
                    })
                })
                .collect();
            json!({
                "first_key_group": p.first_key_group,
                "last_key_group": p.last_key_group,
                "runs": runs,
                "compaction_due": due_name(p),
            })
        })
        .collect();
    let mut v = summary_json(m);
    v["wal_position"] = position_json(m.wal_position.as_ref());
    v["states"] = Value::Array(states);
    v["files"] = Value::Array(files);
    v["partitions"] = Value::Array(partitions);
    let owed = compaction::debt(m, &CompactionSettings::default());
    v["compaction"] = json!({
        "jobs_due": owed.jobs,
        "debt_bytes": owed.bytes,
        "max_runs": owed.max_runs,
    });
    v
}

/// The compaction job due in `p` under the default policy (what an instance with default
/// settings would run): "major", "minor" or null.
fn due_name(p: &Partition) -> Option<&'static str> {
    compaction::due(p, &CompactionSettings::default()).map(|job| match job.kind {
        CompactionKind::Major => "major",
        CompactionKind::Minor => "minor",
    })
}

fn run_kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Delta => "delta",
        RunKind::Bottom => "bottom",
    }
}

/// `snapshot list`.
pub fn list(archive: &Archive, as_json: bool, out: &mut Out) -> Result<()> {
    let manifests = archive.manifests()?;
    if as_json {
        let all: Vec<Value> = manifests.iter().map(summary_json).collect();
        return outln!(out, "{}", json(&Value::Array(all)));
    }
    if manifests.is_empty() {
        eprintln!("no snapshots in {}", escape(archive.url()));
        return Ok(());
    }
    let mut t = Table::new(&[
        ">SEQ", "ID", "KIND", ">EPOCH", "CREATED", ">LSN", ">FILES", ">ENTRIES", ">BYTES",
        "OFFSETS",
    ]);
    for m in &manifests {
        t.row(vec![
            m.sequence.to_string(),
            m.id.clone(),
            kind_name(m.kind).to_owned(),
            m.writer_epoch.to_string(),
            rfc3339_ms(m.created_at_ms),
            m.lsn.to_string(),
            m.files().count().to_string(),
            m.total_entries().to_string(),
            size(m.total_bytes()),
            offsets_summary(&m.offsets),
        ]);
    }
    for line in t.lines("") {
        outln!(out, "{line}")?;
    }
    Ok(())
}

/// `snapshot inspect`.
pub fn inspect(archive: &Archive, id: &str, as_json: bool, out: &mut Out) -> Result<()> {
    let m = find(archive, id)?;
    if as_json {
        return outln!(out, "{}", json_pretty(&manifest_json(&m)));
    }
    outln!(out, "snapshot {}", escape(&m.id))?;
    let fields = [
        ("sequence", m.sequence.to_string()),
        ("kind", kind_name(m.kind).to_owned()),
        (
            "parent",
            m.parent_id
                .as_deref()
                .map_or_else(|| "-".into(), |p| escape(p).into_owned()),
        ),
        ("writer epoch", m.writer_epoch.to_string()),
        (
            "created",
            format!("{} ({} ms)", rfc3339_ms(m.created_at_ms), m.created_at_ms),
        ),
        ("key groups", format!("0..{}", m.max_key_groups)),
        ("LSN", m.lsn.to_string()),
        (
            "captured (TTL)",
            if m.captured_at_ms == 0 {
                "- (compaction drops nothing expired)".into()
            } else {
                format!("{} ({} ms)", rfc3339_ms(m.captured_at_ms), m.captured_at_ms)
            },
        ),
        ("WAL position", position_text(m.wal_position.as_ref())),
        (
            "totals",
            format!(
                "{} files, {} entries, {} ({} bytes)",
                m.files().count(),
                m.total_entries(),
                size(m.total_bytes()),
                m.total_bytes()
            ),
        ),
    ];
    for (name, value) in fields {
        outln!(out, "  {name:<13} {value}")?;
    }

    outln!(out, "offsets ({})", m.offsets.len())?;
    let mut t = Table::new(&["TOPIC", ">PARTITION", ">NEXT_OFFSET"]);
    for o in &m.offsets {
        t.row(vec![
            o.topic.clone(),
            o.partition.to_string(),
            o.next_offset.to_string(),
        ]);
    }
    if !m.offsets.is_empty() {
        for line in t.lines("  ") {
            outln!(out, "{line}")?;
        }
    }

    outln!(out, "states ({})", m.states.len())?;
    let mut t = Table::new(&["NAME", ">ID", "KIND", "TTL"]);
    for s in &m.states {
        let ttl = s.ttl.map_or_else(
            || "-".to_owned(),
            |t| {
                let (update, visibility) = ttl_names(&t);
                format!("{} ms, {update}, {visibility}", t.ttl_ms())
            },
        );
        t.row(vec![
            s.name.clone(),
            s.id.to_string(),
            s.kind.to_string(),
            ttl,
        ]);
    }
    if !m.states.is_empty() {
        for line in t.lines("  ") {
            outln!(out, "{line}")?;
        }
    }

    outln!(out, "files ({})", m.files().count())?;
    let mut t = Table::new(&[
        "PATH",
        "KEY_GROUPS",
        ">BYTES",
        ">ENTRIES",
        "CRC32C",
        "XXH3_128",
        "FILE_ID",
        ">WRITTEN_BY",
    ]);
    for f in m.files() {
        t.row(vec![
            f.path.clone(),
            format!("{}..={}", f.first_key_group, f.last_key_group),
            f.bytes.to_string(),
            f.entries.to_string(),
            format!("{:08x}", f.crc32c),
            // A file written before digests (manifest version 1) has only its CRC-32C, which
            // cannot tell an older version of the file from the right one.
            f.digest
                .map_or_else(|| "crc32c only".to_owned(), |d| d.to_string()),
            f.file_id
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            f.written_by.to_string(),
        ]);
    }
    if m.files().next().is_some() {
        for line in t.lines("  ") {
            outln!(out, "{line}")?;
        }
    }

    // The runs a read of each partition's keys consults, newest first; deltas fold over the
    // bottom run (docs/snapshot.md, "Partitions and runs").
    outln!(out, "partitions ({})", m.partitions.len())?;
    let mut t = Table::new(&[
        "KEY_GROUPS",
        ">RUNS",
        ">BOTTOM",
        ">DELTAS",
        ">DELTA_BYTES",
        "NEWEST_LSN",
        "DUE",
    ]);
    for p in &m.partitions {
        let bytes = |kind| -> u64 {
            p.runs
                .iter()
                .filter(|r| r.kind == kind)
                .flat_map(|r| &r.files)
                .map(|f| f.bytes)
                .sum()
        };
        let deltas = p.runs.iter().filter(|r| r.kind == RunKind::Delta).count();
        t.row(vec![
            format!("{}..={}", p.first_key_group, p.last_key_group),
            p.runs.len().to_string(),
            size(bytes(RunKind::Bottom)),
            deltas.to_string(),
            size(bytes(RunKind::Delta)),
            p.runs
                .first()
                .map_or_else(|| "-".to_owned(), |r| r.upto_lsn.to_string()),
            due_name(p).unwrap_or("-").to_owned(),
        ]);
    }
    if !m.partitions.is_empty() {
        for line in t.lines("  ") {
            outln!(out, "{line}")?;
        }
        let owed = compaction::debt(&m, &CompactionSettings::default());
        outln!(
            out,
            "compaction (default policy): {} jobs due, {} to merge; at most {} runs in a partition",
            owed.jobs,
            size(owed.bytes),
            owed.max_runs
        )?;
    }
    Ok(())
}

/// `snapshot verify`.
pub fn verify(archive: &Archive, id: &str, out: &mut Out) -> Result<()> {
    let m = find(archive, id)?;
    let bar = progress::bytes_bar(m.total_bytes(), "verifying");
    let result = archive.verify(&m, |done| bar.set_position(done));
    bar.finish_and_clear();
    let report = result.map_err(|e| {
        let damaged = matches!(
            e,
            millpond_snapshot::Error::Corrupt { .. } | millpond_snapshot::Error::NotFound { .. }
        );
        let e = CliError::from(e);
        if damaged {
            e.context(format!("snapshot {} is damaged", escape(&m.id)))
        } else {
            e.context(format!("verifying snapshot {}", escape(&m.id)))
        }
    })?;
    outln!(
        out,
        "ok: snapshot {}: {} files, {} entries, {} checked",
        escape(&m.id),
        report.files,
        report.entries,
        size(report.bytes)
    )?;
    if report.files_crc_only > 0 {
        // Files of a version-1 manifest have no digest: an older version of one would pass.
        outln!(
            out,
            "note: {} of the files were written before digests (manifest version 1) and were \
             checked by CRC-32C only, which cannot tell an older version of a file from the \
             right one",
            report.files_crc_only
        )?;
    }
    Ok(())
}

/// `snapshot restore`: downloads into a new directory beside `to`, checks it, and only then
/// puts it in place of `to` (module [`restore_dir`]: what is checked, and why nothing that
/// should not be can be destroyed).
pub fn restore(
    archive: &Archive,
    id: &str,
    to: &Path,
    key_groups: Option<KeyGroupRange>,
    force: bool,
    out: &mut Out,
) -> Result<()> {
    // Every input is checked before anything is written or deleted.
    let m = find(archive, id)?;
    check_key_groups(key_groups, m.max_key_groups)?;
    let range = key_groups.unwrap_or_else(|| KeyGroupRange::all(m.max_key_groups));
    let r = range.as_range();
    let files: Vec<&FileRef> = m.files_for(r.start, r.end).collect();
    restore_dir::check_names(&files)?;
    let target = restore_dir::Target::check(to, archive, force)?;

    let failed = |e: CliError| {
        e.context(format!(
            "restoring snapshot {} into {} (nothing was replaced: {})",
            escape(&m.id),
            escape(&target.path().to_string_lossy()),
            if target.exists() {
                "it is as it was"
            } else {
                "nothing was written there"
            }
        ))
    };
    let staging = target.stage()?;
    download(archive, &m, key_groups, staging.path()).map_err(failed)?;
    staging.check_files(&files).map_err(failed)?;
    staging.write_manifest(&m).map_err(failed)?;
    staging.commit(&target).map_err(failed)?;

    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    outln!(
        out,
        "restored snapshot {} ({}) into {}: {} files, {}, manifest {}",
        escape(&m.id),
        key_groups.map_or_else(
            || format!("all {} key groups", m.max_key_groups),
            |r| format!("key groups {}..{}", r.start, r.end)
        ),
        escape(&target.path().to_string_lossy()),
        files.len(),
        size(bytes),
        escape(&target.path().join(RESTORED_MANIFEST).to_string_lossy())
    )
}

/// Downloads the files of `m` (of `key_groups`) into the new, empty directory `dir`, each
/// checked by the library against the manifest before it gets its name, with a progress bar.
fn download(
    archive: &Archive,
    m: &Manifest,
    key_groups: Option<KeyGroupRange>,
    dir: &Path,
) -> Result<()> {
    let base = SnapshotBase::open(
        archive,
        m,
        dir,
        &RestoreSettings {
            key_groups,
            ..RestoreSettings::default()
        },
    )?;
    let (_, total) = base.progress();
    let bar = progress::bytes_bar(total, "restoring");
    let waiter = {
        let base = Arc::clone(&base);
        std::thread::Builder::new()
            .name("millpond-restore-wait".into())
            .spawn(move || base.wait_local())
            .map_err(|e| CliError::new(format!("starting the restore: {e}")))?
    };
    while !waiter.is_finished() {
        bar.set_position(base.progress().0);
        std::thread::sleep(POLL_INTERVAL);
    }
    bar.finish_and_clear();
    waiter
        .join()
        .map_err(|_| CliError::new("the restore's download thread panicked"))??;
    if !base.is_local() {
        return Err(CliError::new("the download ended with files still missing"));
    }
    Ok(())
}

/// Output format of `dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    /// One JSON object per line, one line per key.
    Jsonl,
}

/// What `dump` was asked.
#[derive(Debug)]
pub struct DumpArgs {
    /// Snapshot id, sequence or `latest`.
    pub id: String,
    /// The state's name.
    pub state: String,
    /// Output format.
    pub format: DumpFormat,
    /// Only these key groups.
    pub key_groups: Option<KeyGroupRange>,
    /// How keys are shown.
    pub key_as: Render,
    /// How map user keys are shown.
    pub user_key_as: Render,
    /// How values are shown.
    pub value_as: Render,
}

/// One key of a dump as a JSON object.
fn entry_json(
    schema: &StateSchema,
    key_group: u16,
    key: &[u8],
    view: EntryView,
    args: &DumpArgs,
) -> Option<Value> {
    let (k, k_enc) = render(key, args.key_as);
    let mut v = json!({
        "key_group": key_group,
        "key": k,
        "key_encoding": k_enc.name(),
        "kind": schema.kind.to_string(),
    });
    match view {
        EntryView::Value {
            value,
            expires_at_ms,
        } => {
            let (x, enc) = render(&value, args.value_as);
            v["value"] = x;
            v["value_encoding"] = enc.name().into();
            v["expires_at_ms"] = expires_at_ms.into();
        }
        EntryView::List(elems) => {
            v["list"] = elems
                .iter()
                .map(|(value, expires_at_ms)| {
                    let (x, enc) = render(value, args.value_as);
                    json!({"value": x, "value_encoding": enc.name(), "expires_at_ms": expires_at_ms})
                })
                .collect();
        }
        EntryView::Map(entries) => {
            v["map"] = entries
                .iter()
                .map(|(user_key, value, expires_at_ms)| {
                    let (uk, uk_enc) = render(user_key, args.user_key_as);
                    let (x, enc) = render(value, args.value_as);
                    json!({
                        "key": uk,
                        "key_encoding": uk_enc.name(),
                        "value": x,
                        "value_encoding": enc.name(),
                        "expires_at_ms": expires_at_ms,
                    })
                })
                .collect();
        }
        // A tombstone hides an older version; a snapshot has none below it: no data.
        _ => return None,
    }
    Some(v)
}

/// `snapshot dump`: reads the files in place (range reads; nothing is downloaded).
pub fn dump(archive: &Archive, args: &DumpArgs, out: &mut Out) -> Result<()> {
    let m = find(archive, &args.id)?;
    check_key_groups(args.key_groups, m.max_key_groups)?;
    let Some(schema) = m.states.iter().find(|s| s.name == args.state) else {
        let names: Vec<String> = m
            .states
            .iter()
            .map(|s| format!("'{}' ({})", escape(&s.name), s.kind))
            .collect();
        return Err(CliError::new(format!(
            "snapshot {} has no state '{}'; its states: {}",
            escape(&m.id),
            escape(&args.state),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let DumpFormat::Jsonl = args.format;
    let scratch = tempfile::Builder::new()
        .prefix("millpond-dump-")
        .tempdir()
        .map_err(|e| CliError::new(format!("creating a temporary directory: {e}")))?;
    let base = SnapshotBase::open(
        archive,
        &m,
        scratch.path(),
        &RestoreSettings {
            key_groups: args.key_groups,
            download: false,
            ..RestoreSettings::default()
        },
    )?;
    let range = args
        .key_groups
        .unwrap_or_else(|| KeyGroupRange::all(m.max_key_groups));
    let mut keys = 0u64;
    for entry in base.entries(range) {
        let (ck, encoded) = entry.map_err(|e| CliError::from(e).context("reading the snapshot"))?;
        let Ok(CompositeKey {
            key_group,
            state_id,
            key,
        }) = CompositeKey::parse(&ck)
        else {
            return Err(CliError::new(format!(
                "corrupt snapshot {}: a key of {} bytes, shorter than its prefix",
                escape(&m.id),
                ck.len()
            )));
        };
        if state_id != schema.id || !range.contains(key_group) {
            continue;
        }
        let view = EntryView::decode(&encoded).map_err(|e| {
            CliError::from(e).context(format!("snapshot {}, key group {key_group}", escape(&m.id)))
        })?;
        if let Some(line) = entry_json(schema, key_group, key, view, args) {
            outln!(out, "{}", json(&line))?;
            keys += 1;
        }
    }
    out.flush()?;
    eprintln!(
        "{keys} keys of state '{}' ({}) from snapshot {}",
        escape(&schema.name),
        schema.kind,
        escape(&m.id)
    );
    Ok(())
}

/// One source of `rescale`: `URL[@SNAPSHOT_ID][#A..B]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescaleFrom {
    /// The instance's archive.
    pub url: String,
    /// Snapshot id, sequence or `latest` (the default).
    pub id: String,
    /// The key groups the instance owned; `None`: whatever its files hold.
    pub key_groups: Option<KeyGroupRange>,
}

/// Whether `s` is a snapshot id (`<20 digits>-<16 hex digits>`), a sequence or `latest`.
fn is_snapshot_id(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('-') {
        None => s == "latest" || digits(s),
        Some((seq, random)) => {
            seq.len() == 20
                && digits(seq)
                && random.len() == 16
                && random.bytes().all(|b| b.is_ascii_hexdigit())
        }
    }
}

/// Parses `URL[@SNAPSHOT_ID][#A..B]`; for clap. An `@…` or `#…` suffix that is not a
/// snapshot id or a range is part of the URL.
pub fn parse_rescale_from(s: &str) -> std::result::Result<RescaleFrom, String> {
    let mut rest = s.trim();
    let mut key_groups = None;
    if let Some((head, range)) = rest.rsplit_once('#') {
        if range.contains("..") {
            key_groups = Some(parse_key_groups(range)?);
            rest = head;
        }
    }
    let mut id = "latest";
    if let Some((head, tail)) = rest.rsplit_once('@') {
        if is_snapshot_id(tail) {
            id = tail;
            rest = head;
        }
    }
    if rest.is_empty() {
        return Err(format!(
            "expected URL[@SNAPSHOT_ID][#A..B], e.g. s3://bucket/job-0@latest#0..64, not '{s}'"
        ));
    }
    Ok(RescaleFrom {
        url: rest.to_owned(),
        id: id.to_owned(),
        key_groups,
    })
}

/// The arguments of `snapshot rescale`.
#[derive(Debug, clap::Args)]
pub struct RescaleArgs {
    /// A source snapshot, URL[@SNAPSHOT_ID][#A..B]: an instance's archive, its snapshot (id,
    /// sequence or `latest`, the default) and the key groups the instance owned (end
    /// exclusive; default: whatever its files hold). Repeat for a merge.
    #[arg(
        long = "from",
        value_name = "URL[@ID][#A..B]",
        required = true,
        value_parser = parse_rescale_from
    )]
    pub from: Vec<RescaleFrom>,
    /// The new archive: file:///dir or a plain path (created if missing), or
    /// s3://bucket/prefix. It must hold no manifest.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The key groups of the new snapshot, A..B (end exclusive), e.g. 0..64.
    #[arg(long, value_name = "A..B", value_parser = super::parse_key_groups)]
    pub key_groups: KeyGroupRange,
}

/// `snapshot rescale`: the first snapshot of the empty archive `--to`, holding key groups
/// `--key-groups` of the `--from` snapshots.
pub fn rescale(args: &RescaleArgs, out: &mut Out) -> Result<()> {
    let RescaleArgs {
        from,
        to,
        key_groups,
    } = args;
    let key_groups = *key_groups;
    let mut opened = Vec::with_capacity(from.len());
    for f in from {
        let archive = super::open_archive(&f.url)?;
        let m = find(&archive, &f.id)?;
        check_key_groups(f.key_groups, m.max_key_groups)
            .map_err(|e| e.context(format!("--from {}", escape(&f.url))))?;
        opened.push((archive, m, f.key_groups));
    }
    let dest = super::open_new_archive(to)?;
    let sources: Vec<RescaleSource<'_>> = opened
        .iter()
        .map(|(archive, m, range)| RescaleSource {
            key_groups: *range,
            ..RescaleSource::new(archive, m)
        })
        .collect();
    let report =
        millpond_snapshot::rescale(&sources, &dest, key_groups, &SnapshotSettings::default())?;
    for (archive, m, range) in &opened {
        outln!(
            out,
            "from {} snapshot {} ({})",
            escape(archive.url()),
            escape(&m.id),
            range.map_or_else(
                || "the key groups its files hold".to_owned(),
                |r| format!("key groups {}..{}", r.start, r.end)
            )
        )?;
    }
    let m = &report.manifest;
    outln!(
        out,
        "wrote snapshot {} to {}: key groups {}..{}, {} files ({} written, {} copied), {} \
         entries, {} ({} bytes)",
        escape(&m.id),
        escape(dest.url()),
        key_groups.start,
        key_groups.end,
        m.files().count(),
        report.files_written,
        report.files_copied,
        report.entries,
        size(report.bytes),
        report.bytes
    )?;
    outln!(
        out,
        "{} states, {} offsets ({}); LSN 0: the instance starts a new WAL",
        m.states.len(),
        m.offsets.len(),
        escape(&offsets_summary(&m.offsets))
    )
}

/// `snapshot gc`.
pub fn gc(archive: &Archive, retain: usize, grace: Duration, out: &mut Out) -> Result<()> {
    let report = archive.gc(retain, grace)?;
    for id in &report.manifests_deleted {
        outln!(out, "deleted manifest {}", escape(id))?;
    }
    for path in &report.files_deleted {
        outln!(out, "deleted file {}", escape(path))?;
    }
    for id in &report.markers_deleted {
        outln!(
            out,
            "deleted stale pending marker of snapshot {}",
            escape(id)
        )?;
    }
    for id in &report.pending {
        outln!(
            out,
            "snapshot {} is being written (or its writer stopped before committing it, and \
             no writer has claimed the archive since): its files are kept",
            escape(id)
        )?;
    }
    for path in &report.markers_unreadable {
        outln!(
            out,
            "unreadable pending marker {}: kept, with its snapshot's files (delete it by \
             hand once no writer writes that snapshot)",
            escape(path)
        )?;
    }
    outln!(
        out,
        "kept {} manifests; deleted {} manifests and {} data files; {} unreferenced data files \
         kept (younger than the grace period of {} s), {} of snapshots being written; {} \
         objects ignored (names that are not the archive's)",
        report.manifests_kept,
        report.manifests_deleted.len(),
        report.files_deleted.len(),
        report.files_in_grace,
        grace.as_secs(),
        report.files_pending,
        report.ignored
    )
}
