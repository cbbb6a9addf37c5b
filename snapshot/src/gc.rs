//! Garbage collection: old manifests, and data files no kept manifest names, without ever
//! deleting a file that a kept snapshot or a snapshot being written needs (docs/snapshot.md,
//! "Retention and garbage collection", where the order of the steps is argued).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::archive::Archive;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, ManifestKind};
use crate::names::{
    manifest_path, parse_data_name, parse_id, parse_manifest_name, parse_marker_name, DATA,
    MANIFESTS, PENDING,
};
use crate::pending::{Marker, MAX_MARKER_BYTES};

/// The longest grace period [`Archive::gc`] takes: 100 years.
pub const MAX_GC_GRACE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What [`Archive::gc`] removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Manifests deleted (older than the retained snapshots).
    pub manifests_deleted: Vec<String>,
    /// Data files deleted (named by no retained manifest, protected by no live marker, and
    /// older than the grace period).
    pub files_deleted: Vec<String>,
    /// Unreferenced data files kept because they are younger than the grace period.
    pub files_in_grace: usize,
    /// Unreferenced data files kept because a live pending marker names their snapshot: a
    /// writer is uploading them, or crashed before its commit and no writer has claimed the
    /// archive since.
    pub files_pending: usize,
    /// Manifests kept.
    pub manifests_kept: usize,
    /// Snapshot ids of the live pending markers (snapshots being written, or whose writer
    /// crashed before its commit and has not been succeeded by a new claim yet).
    pub pending: Vec<String>,
    /// Stale pending markers deleted (their snapshot committed, or their writer was fenced).
    pub markers_deleted: Vec<String>,
    /// Pending markers that could not be read (damaged, too large, a newer version): kept,
    /// and taken as live, so the files of their snapshot stay. Delete them by hand once no
    /// writer of that snapshot runs.
    pub markers_unreadable: Vec<String>,
    /// Objects in `manifests/`, `data/` and `pending/` (or folders below them) whose names
    /// are not the archive's: never read, never deleted.
    pub ignored: usize,
}

/// A pending marker as GC judges it.
#[derive(Debug)]
struct MarkerState {
    relative: String,
    last_modified: SystemTime,
    /// `None`: unreadable, taken as live.
    marker: Option<Marker>,
}

impl Archive {
    /// Keeps the newest `retain` snapshots and deletes the manifests before them, then every
    /// data file that no kept manifest names, that no live pending marker protects, and that
    /// is older than `grace`; then the stale pending markers older than `grace`.
    ///
    /// Safe while snapshots are written, whatever `grace`: a writer creates its marker
    /// (`pending/<id>.mpp`) before its first upload and deletes it after its commit, and GC
    /// never deletes a file of a snapshot whose marker is live (its epoch is the archive's
    /// current one or newer, and its sequence is not taken yet). Only the objects the archive
    /// names are looked at: a manifest is exactly `manifests/<20 digits>.mpm`, a data file
    /// exactly what the writer names it, both directly in their folder; anything else is
    /// counted in [`GcReport::ignored`] and left alone.
    ///
    /// Checked before anything is listed or deleted (`Error::Invalid`): `retain` at least 1,
    /// `grace` at most [`MAX_GC_GRACE`]. Any failure to list or read a manifest stops GC
    /// before it deletes anything. Files are deleted only after the manifests that named
    /// them, so a crash midway leaves orphans, never a manifest without its files.
    pub fn gc(&self, retain: usize, grace: Duration) -> Result<GcReport> {
        if retain == 0 {
            return Err(Error::Invalid {
                reason: "retain 0 snapshots: GC keeps at least the current one; give 1 or more"
                    .into(),
            });
        }
        let cutoff = grace_cutoff(grace)?;
        let mut report = GcReport::default();

        // 1. The data files, first: only files listed now may be deleted, so a file uploaded
        //    after this point is never a candidate (docs/snapshot.md argues the order).
        let data = self.list_folder(DATA)?;
        report.ignored += data.folders;
        let mut candidates = Vec::new();
        for o in data.objects {
            match parse_data_name(&o.name).map(str::to_owned) {
                Some(id) => candidates.push((o, id)),
                None => report.ignored += 1,
            }
        }

        // 2. The pending markers, after the data files: a writer's marker exists from before
        //    its first upload until after its commit.
        let listing = self.list_folder(PENDING)?;
        report.ignored += listing.folders;
        let mut markers: HashMap<String, MarkerState> = HashMap::new();
        for o in listing.objects {
            let Some(id) = parse_marker_name(&o.name) else {
                report.ignored += 1;
                continue;
            };
            let read = if o.size > MAX_MARKER_BYTES {
                Err(Error::Corrupt {
                    what: "pending marker (larger than 4 KiB; not read)",
                    location: o.relative.clone(),
                })
            } else {
                self.get_limited(
                    &o.relative,
                    MAX_MARKER_BYTES,
                    "pending marker (larger than 4 KiB; refused before reading it)",
                )
                .and_then(|b| Marker::decode(&b, &o.relative))
            };
            let marker = match read {
                Ok(m) => Some(m).filter(|m| m.id == id),
                Err(Error::Corrupt { .. }) => None,
                // Deleted since the listing: its writer committed or gave up, before the
                // manifests are read below.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            markers.insert(
                id.to_owned(),
                MarkerState {
                    relative: o.relative,
                    last_modified: o.last_modified,
                    marker,
                },
            );
        }

        // 3. The manifests, last: every one is read before anything is deleted.
        let listing = self.list_folder(MANIFESTS)?;
        report.ignored += listing.folders;
        let mut sequences = Vec::new();
        for o in &listing.objects {
            match parse_manifest_name(&o.name) {
                Some(seq) => sequences.push(seq),
                None => report.ignored += 1,
            }
        }
        sequences.sort_unstable();
        let manifests = sequences
            .into_iter()
            .map(|seq| self.manifest_at(seq))
            .collect::<Result<Vec<Manifest>>>()?;
        let current_epoch = manifests.iter().map(|m| m.writer_epoch).max().unwrap_or(0);
        let latest_sequence = manifests.last().map_or(0, |m| m.sequence);
        let keep_from = keep_from(&manifests, retain);
        let kept = &manifests[keep_from..];
        report.manifests_kept = kept.len();
        let referenced: HashSet<&str> = kept
            .iter()
            .flat_map(|m| m.files().map(|f| f.path.as_str()))
            .collect();
        // A marker is live while its writer may still commit: not fenced by a newer claim,
        // and its sequence not yet taken (by its own commit or anyone else's).
        let live = |state: &MarkerState| match &state.marker {
            None => true,
            Some(m) => {
                m.writer_epoch >= current_epoch
                    && parse_id(&m.id).is_some_and(|seq| seq > latest_sequence)
            }
        };
        let protected: HashSet<&str> = markers
            .iter()
            .filter(|(_, state)| live(state))
            .map(|(id, _)| id.as_str())
            .collect();

        // 4. Old manifests, oldest first, so that a crash midway leaves a contiguous tail.
        for m in &manifests[..keep_from] {
            self.delete(&manifest_path(m.sequence))?;
            report.manifests_deleted.push(m.id.clone());
        }

        // 5. Data files of the first listing that nothing needs.
        for (o, id) in candidates {
            if referenced.contains(o.relative.as_str()) {
                continue;
            }
            if protected.contains(id.as_str()) {
                report.files_pending += 1;
                continue;
            }
            if o.last_modified > cutoff {
                report.files_in_grace += 1;
                continue;
            }
            self.delete(&o.relative)?;
            report.files_deleted.push(o.relative);
        }

        // 6. Stale markers, after the files they named.
        let mut ids: Vec<&String> = markers.keys().collect();
        ids.sort();
        for id in ids {
            let state = &markers[id];
            if state.marker.is_none() {
                report.markers_unreadable.push(state.relative.clone());
            } else if live(state) {
                report.pending.push(id.clone());
            } else if state.last_modified <= cutoff {
                self.delete(&state.relative)?;
                report.markers_deleted.push(id.clone());
            }
        }
        Ok(report)
    }
}

/// The time before which an unreferenced file is old enough to delete; `Invalid` for a grace
/// beyond [`MAX_GC_GRACE`].
fn grace_cutoff(grace: Duration) -> Result<SystemTime> {
    let invalid = || Error::Invalid {
        reason: format!(
            "a grace period of {} s: at most {} s (100 years) is allowed",
            grace.as_secs(),
            MAX_GC_GRACE.as_secs()
        ),
    };
    if grace > MAX_GC_GRACE {
        return Err(invalid());
    }
    SystemTime::now().checked_sub(grace).ok_or_else(invalid)
}

/// Index of the oldest manifest to keep: the `retain`-th newest snapshot (claims count with
/// the snapshot they copy; the oldest manifest counts as a snapshot).
fn keep_from(manifests: &[Manifest], retain: usize) -> usize {
    let mut snapshots_seen = 0;
    let mut keep_from = 0;
    for (i, m) in manifests.iter().enumerate().rev() {
        if m.kind == ManifestKind::Snapshot || i == 0 {
            snapshots_seen += 1;
        }
        keep_from = i;
        if snapshots_seen >= retain {
            break;
        }
    }
    keep_from
}
