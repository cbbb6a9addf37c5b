//! What a running instance's store reads below its redb cold tier: the runs of its latest
//! manifest, kept on local disk in `{data_dir}/base/`, installed after every snapshot and
//! compaction commit; and the rotation of the cold tier that keeps redb down to what changed
//! since about the last snapshot (docs/state.md, "Cold tier rotation").
//!
//! The order of steps after a commit of manifest `M` (LSN `S`):
//! 1. If `S + 1 ≥` the LSN read after the first rotation (or the store was opened over a
//!    snapshot), `M`'s runs become the store's base. Before the first rotation the store may
//!    have forgotten deletes of keys it never spilled, which a base would bring back.
//! 2. If the sealed redb file's rotation LSN `L` has `S + 1 ≥ L`, every change it holds is in
//!    `M`, which the store now reads: the sealed file is deleted.
//! 3. With no sealed file left, the cold tier rotates and `L` is read from the WAL.
//!
//! Local files the installed manifest does not name are deleted. GC of the archive waits
//! until every file the store reads is local, since until then reads go to the archive.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::snapshot::{Archive, Manifest, RestoreSettings, SnapshotBase};
use crate::state::Store;
use crate::wal::Wal;

pub(crate) struct LowerTiers {
    pub(crate) dir: PathBuf,
    pub(crate) restore: RestoreSettings,
    /// The runs the store reads (the restored snapshot's, then each installed one's).
    pub(crate) base: Option<Arc<SnapshotBase>>,
    /// A manifest may be installed once its LSN + 1 reaches this (`Some(0)`: opened over a
    /// snapshot; `None`: not before the first rotation).
    pub(crate) installable_from: Option<u64>,
    /// The WAL's next LSN read after the rotation that sealed the current sealed file.
    pub(crate) sealed_below: Option<u64>,
}

impl LowerTiers {
    pub(crate) fn new(
        dir: PathBuf,
        restore: RestoreSettings,
        base: Option<Arc<SnapshotBase>>,
    ) -> Self {
        LowerTiers {
            installable_from: base.as_ref().map(|_| 0),
            dir,
            restore,
            base,
            sealed_below: None,
        }
    }

    /// Brings the store's lower tiers up to `manifest`, the writer's latest (the steps of the
    /// module's doc).
    pub(crate) fn refresh(
        &mut self,
        archive: &Archive,
        manifest: &Manifest,
        store: &Store,
        wal: &Wal,
    ) -> Result<()> {
        let current = self.base.as_ref().map(|b| b.manifest().id.clone());
        let has_files = manifest.files().next().is_some();
        if has_files
            && current.as_deref() != Some(manifest.id.as_str())
            && self
                .installable_from
                .is_some_and(|from| manifest.lsn + 1 >= from)
        {
            let next = match &self.base {
                Some(b) => b.next(archive, manifest)?,
                None => SnapshotBase::open(archive, manifest, &self.dir, &self.restore)?,
            };
            store.install_base(next.clone());
            remove_unnamed(&self.dir, &next.local_names(), true);
            self.base = Some(next);
        }
        let base_lsn = self.base.as_ref().map(|b| b.manifest().lsn);
        if let (Some(below), Some(lsn)) = (self.sealed_below, base_lsn) {
            if lsn + 1 >= below {
                store.drop_sealed_cold()?;
                self.sealed_below = None;
            }
        }
        if self.sealed_below.is_none() && store.rotate_cold()? {
            let below = wal.next_lsn();
            self.sealed_below = Some(below);
            self.installable_from.get_or_insert(below);
        }
        Ok(())
    }

    /// Whether every file the store reads below redb is local (archive GC may run).
    pub(crate) fn is_local(&self) -> bool {
        self.base.as_ref().is_none_or(|b| b.is_local())
    }
}

/// Deletes the files of `dir` not named in `keep`: copies of runs no manifest the store reads
/// names any more. With `downloading`, a download in progress of a kept file (`<stem>.part`)
/// stays too.
pub(crate) fn remove_unnamed(dir: &Path, keep: &HashSet<String>, downloading: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stem = |name: &str| {
        Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
    };
    let stems: HashSet<String> = keep.iter().filter_map(|n| stem(n)).collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let part_of_kept = downloading
            && name.ends_with(".part")
            && stem(&name).is_some_and(|s| stems.contains(&s));
        if !keep.contains(&name) && !part_of_kept {
            // Best effort: what stays is deleted after the next commit or at the next open.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the named files stay, and a download of one of them in progress when asked.
    #[test]
    fn remove_unnamed_keeps_the_named_files_and_their_downloads_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a-1.mpdf", "a-1.part", "b-2.mpdf", "b-2.part", "c-3.part"];
        let keep: HashSet<String> = ["a-1.mpdf".to_string()].into();
        for downloading in [true, false] {
            for n in names {
                std::fs::write(dir.path().join(n), b"x").unwrap();
            }
            remove_unnamed(dir.path(), &keep, downloading);
            let mut left: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            let expected: &[&str] = if downloading {
                &["a-1.mpdf", "a-1.part"]
            } else {
                &["a-1.mpdf"]
            };
            assert_eq!(left, expected, "downloading: {downloading}");
            for n in left {
                std::fs::remove_file(dir.path().join(n)).unwrap();
            }
        }
    }
}
