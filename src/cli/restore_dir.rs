//! The directory `millpond snapshot restore --to DIR` fills, and how an earlier restore there
//! is replaced without ever destroying what it should not.
//!
//! 1. [`Target::check`], before anything is written or deleted: the target is resolved (the
//!    parent's symlinks followed, the target's own never); refused if it is a symlink or not a
//!    directory, if it is the archive's directory, inside it or holds it, if it is not empty
//!    without `--force`, and with `--force` unless it is an earlier restore
//!    ([`earlier_restore`] says what proves one).
//! 2. [`Target::stage`]: the restore is written into a new directory beside the target,
//!    `<name>.restore-<random>` (created by `mkdir`, so never through a symlink), and checked
//!    there: every file complete and of the manifest's size, the manifest written last.
//! 3. [`Staging::commit`]: the target is checked again (the download may have taken hours),
//!    then the complete restore is swapped into place: `renameat2(RENAME_EXCHANGE)`, so the
//!    target is at every moment the old restore or the new one, or two renames where the file
//!    system cannot exchange. Then the parent directory is synced and the old restore removed
//!    (`remove_dir_all`, which unlinks symlinks and never follows them).
//!
//! A failure before the swap leaves the target as it was and removes the staging directory.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use millpond_snapshot::manifest::MAX_MANIFEST_BYTES;
use millpond_snapshot::{Archive, FileRef, Manifest};

use super::render::escape;
use super::snapshot::RESTORED_MANIFEST;
use super::{CliError, Result};

/// Random characters in the names of the staging and old directories.
const RANDOM_CHARS: usize = 12;

/// A file's identity: device and inode. Two paths with one identity are one file, whatever
/// symlinks or bind mounts lead to them.
type Identity = (u64, u64);

fn identity(m: &Metadata) -> Identity {
    (m.dev(), m.ino())
}

/// A path for a message, [`escape`]d.
fn show(p: &Path) -> String {
    escape(&p.to_string_lossy()).into_owned()
}

fn io_error(what: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::new(format!("{}: {e}", show(what)))
}

/// The name a data file gets in a restore: the last part of its archive path (as
/// `SnapshotBase` names its local copies).
fn local_name(f: &FileRef) -> &str {
    f.local_name()
}

/// The name a download writes before it renames the file into place (`SnapshotBase`'s
/// `<stem>.part`).
fn part_name(name: &str) -> OsString {
    Path::new(name).with_extension("part").into_os_string()
}

/// Checks the names the restore of `files` will write. A manifest names its files, so a
/// damaged or hostile one could name `data/..`, two files alike (or alike but for the
/// extension, which their downloads share), or the restore's own manifest: refused before
/// anything is written.
pub fn check_names(files: &[&FileRef]) -> Result<()> {
    // Names and download names (`a.mpdf` and `a.txt` would share `a.part`) all distinct.
    let mut seen: HashSet<OsString> = HashSet::new();
    for f in files {
        let name = local_name(f);
        let bad = matches!(name, "" | "." | "..")
            || name.contains('\0')
            || name == RESTORED_MANIFEST
            || Path::new(name).extension().is_some_and(|e| e == "part");
        if bad || !seen.insert(name.into()) || !seen.insert(part_name(name)) {
            return Err(CliError::new(format!(
                "the manifest names a data file '{}' that cannot be restored under its own name \
                 (it is empty, `.` or `..`, a name the restore uses itself, or the name of \
                 another file): the manifest is damaged; restore another snapshot",
                escape(&f.path)
            )));
        }
    }
    Ok(())
}

/// What is at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Nothing: the restore creates it.
    Nothing,
    /// An empty directory.
    Empty(Identity),
    /// An earlier restore (see [`earlier_restore`]).
    Restore(Identity),
}

/// The directory a restore goes to, checked ([`Target::check`]).
#[derive(Debug)]
pub struct Target {
    /// `<parent>/<name>`.
    path: PathBuf,
    /// The target's parent, its symlinks resolved (it may not exist yet).
    parent: PathBuf,
    /// The target's last component, never resolved.
    name: OsString,
    found: Found,
    force: bool,
}

impl Target {
    /// Checks the target `to` of a restore from `archive`: see the module's docs. Writes and
    /// deletes nothing.
    pub fn check(to: &Path, archive: &Archive, force: bool) -> Result<Target> {
        let absolute = std::path::absolute(to).map_err(io_error(to))?;
        let name = absolute.file_name().ok_or_else(|| {
            CliError::new(format!(
                "--to {}: give the directory by its name (not `/`, not ending in `..`)",
                show(to)
            ))
        })?;
        let parent = resolve_parent(absolute.parent().unwrap_or(Path::new("/")))?;
        let path = parent.join(name);
        let meta = target_metadata(&path)?;
        if let Some(root) = archive.local_root() {
            refuse_overlap(&path, meta.as_ref(), root)?;
        }
        let found = found(&path, meta.as_ref(), force)?;
        Ok(Target {
            name: name.to_owned(),
            path,
            parent,
            found,
            force,
        })
    }

    /// The target's path (its parent's symlinks resolved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether something (an empty directory or an earlier restore) is there now.
    pub fn exists(&self) -> bool {
        self.found != Found::Nothing
    }

    /// Creates the staging directory beside the target (and the target's missing parents).
    /// Dropped without [`Staging::commit`], it is removed with all it holds.
    pub fn stage(&self) -> Result<Staging> {
        fs::create_dir_all(&self.parent).map_err(io_error(&self.parent))?;
        let dir = self.sibling("restore")?;
        Ok(Staging { dir })
    }

    /// A new, empty directory `<parent>/<name>.<what>-<random>`, created by `mkdir` (which
    /// fails on any existing name, a symlink included), removed when dropped.
    fn sibling(&self, what: &str) -> Result<tempfile::TempDir> {
        let mut prefix = self.name.clone();
        prefix.push(format!(".{what}-"));
        tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(RANDOM_CHARS)
            .tempdir_in(&self.parent)
            .map_err(|e| {
                CliError::new(format!(
                    "creating a directory beside {}: {e}",
                    show(&self.path)
                ))
            })
    }

    /// Checks that the target is still what [`Target::check`] found: the same directory (or
    /// still nothing), still no symlink, still empty or an earlier restore.
    fn recheck(&self) -> Result<()> {
        let meta = target_metadata(&self.path)?;
        let now = found(&self.path, meta.as_ref(), self.force)?;
        let same = match (&self.found, &now) {
            (Found::Nothing, Found::Nothing) => true,
            (Found::Empty(a) | Found::Restore(a), Found::Empty(b) | Found::Restore(b)) => a == b,
            _ => false,
        };
        if !same {
            return Err(CliError::new(format!(
                "{} changed while the snapshot was downloaded (something else writes there): \
                 nothing was replaced",
                show(&self.path)
            )));
        }
        Ok(())
    }
}

/// `parent` with its symlinks resolved: the nearest existing ancestor canonicalized, the
/// missing rest appended (the restore creates it).
fn resolve_parent(parent: &Path) -> Result<PathBuf> {
    let mut missing: Vec<&OsStr> = Vec::new();
    let mut at = parent;
    loop {
        match fs::metadata(at) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(CliError::new(format!("{} is not a directory", show(at)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match (at.components().next_back(), at.parent()) {
                    (Some(Component::Normal(name)), Some(up)) => {
                        missing.push(name);
                        at = up;
                    }
                    // `..` after a missing directory: there is nothing to resolve it against.
                    _ => return Err(io_error(at)(e)),
                }
            }
            Err(e) => return Err(io_error(at)(e)),
        }
    }
    let mut resolved = fs::canonicalize(at).map_err(io_error(at))?;
    resolved.extend(missing.iter().rev());
    Ok(resolved)
}

/// What is at `path` itself (never followed): `None` if nothing; a symlink or a
/// non-directory is refused.
fn target_metadata(path: &Path) -> Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
        Ok(m) if m.file_type().is_symlink() => Err(CliError::new(format!(
            "{} is a symbolic link: a restore never writes through one; give the directory \
             it points to, if that is what you mean",
            show(path)
        ))),
        Ok(m) if !m.is_dir() => Err(CliError::new(format!("{} is not a directory", show(path)))),
        Ok(m) => Ok(Some(m)),
    }
}

/// Refuses a target that is the local archive at `root`, inside it, or holds it: a restore
/// must never write into the archive, and replacing the target must never delete any of it.
/// Compared by identity, so symlinks and bind mounts do not hide the overlap. The archive's
/// directories are its root and where symlinks directly in it lead (`data/` on another disk).
fn refuse_overlap(path: &Path, target: Option<&Metadata>, root: &Path) -> Result<()> {
    let root = fs::canonicalize(root).map_err(io_error(root))?;
    let mut archive_dirs = vec![root.clone()];
    for entry in fs::read_dir(&root).map_err(io_error(&root))? {
        let entry = entry.map_err(io_error(&root))?;
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            if let Ok(resolved) = fs::canonicalize(entry.path()) {
                archive_dirs.push(resolved);
            }
        }
    }
    // The target, then every existing directory above it.
    let above: Vec<Identity> = target
        .map(identity)
        .into_iter()
        .chain(
            path.ancestors()
                .skip(1)
                .filter_map(|a| fs::metadata(a).ok().map(|m| identity(&m))),
        )
        .collect();
    for dir in &archive_dirs {
        let Ok(dir_meta) = fs::metadata(dir) else {
            continue;
        };
        // Which of the archive's directories, when a symlink in it leads elsewhere.
        let which = if *dir == root {
            String::new()
        } else {
            format!(" (its link to {})", show(dir))
        };
        if above.contains(&identity(&dir_meta)) {
            return Err(CliError::new(format!(
                "--to {} is inside the archive {}{which} (or is it): a restore goes outside \
                 the archive",
                show(path),
                show(&root)
            )));
        }
        if let Some(target) = target {
            let holds = dir
                .ancestors()
                .filter_map(|a| fs::metadata(a).ok())
                .any(|m| identity(&m) == identity(target));
            if holds {
                return Err(CliError::new(format!(
                    "--to {} holds the archive {}{which}: replacing it would delete the \
                     archive; restore into a directory of its own",
                    show(path),
                    show(&root)
                )));
            }
        }
    }
    Ok(())
}

/// What the directory `path` (with `meta`) holds, refusing what a restore may not replace.
fn found(path: &Path, meta: Option<&Metadata>, force: bool) -> Result<Found> {
    let Some(meta) = meta else {
        return Ok(Found::Nothing);
    };
    let id = identity(meta);
    let mut entries = fs::read_dir(path).map_err(io_error(path))?;
    if entries.next().is_none() {
        return Ok(Found::Empty(id));
    }
    if !force {
        return Err(CliError::new(format!(
            "{} is not empty: restore into an empty or new directory, or pass --force to \
             replace an earlier restore there",
            show(path)
        )));
    }
    earlier_restore(path)?;
    Ok(Found::Restore(id))
}

/// Checks that `dir` is an earlier restore, which `--force` may replace. What proves one: a
/// `manifest.mpm` that is a regular file holding a valid manifest, and nothing else but files
/// or symlinks named as that manifest's data files and the temporary names a restore or a
/// download leaves (`<stem>.part`, `manifest.mpm.part`). Anything else (a subdirectory,
/// another name) means someone keeps other things there, so `--force` on a home directory
/// deletes nothing. Symlinks are allowed only because removing one never touches what it
/// points to.
fn earlier_restore(dir: &Path) -> Result<()> {
    let refuse = |why: String| {
        CliError::new(format!(
            "{} is not an earlier restore ({why}): --force replaces only a directory that \
             `millpond snapshot restore` wrote; restore into an empty or new directory, or \
             remove this one yourself",
            show(dir)
        ))
    };
    let manifest = read_restored_manifest(&dir.join(RESTORED_MANIFEST)).map_err(refuse)?;
    let mut allowed: HashSet<OsString> = [
        OsString::from(RESTORED_MANIFEST),
        OsString::from(format!("{RESTORED_MANIFEST}.part")),
    ]
    .into();
    for f in manifest.files() {
        allowed.insert(local_name(f).into());
        allowed.insert(part_name(local_name(f)));
    }
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        // The entry's own type: a symlink is not followed.
        let kind = entry.file_type().map_err(io_error(&entry.path()))?;
        let shown = escape(&name.to_string_lossy()).into_owned();
        if !allowed.contains(&name) {
            return Err(refuse(format!(
                "'{shown}' is not one of the files of snapshot {}",
                escape(&manifest.id)
            )));
        }
        if !(kind.is_file() || kind.is_symlink()) {
            return Err(refuse(format!("'{shown}' is not a file")));
        }
    }
    Ok(())
}

/// The manifest an earlier restore left at `path`, read without following a symlink and no
/// larger than a manifest may be; `Err`: why it proves nothing.
fn read_restored_manifest(path: &Path) -> std::result::Result<Manifest, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("no {RESTORED_MANIFEST}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("its {RESTORED_MANIFEST} is not a regular file"));
    }
    // O_NOFOLLOW: a symlink swapped in since is not opened; O_NONBLOCK: nor does a FIFO hang
    // the open. The identity check catches any other swap.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("reading its {RESTORED_MANIFEST}: {e}"))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("reading its {RESTORED_MANIFEST}: {e}"))?;
    if identity(&opened) != identity(&meta) {
        return Err(format!("its {RESTORED_MANIFEST} changed while it was read"));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading its {RESTORED_MANIFEST}: {e}"))?;
    Manifest::decode(&bytes, &path.to_string_lossy())
        .map_err(|e| format!("its {RESTORED_MANIFEST} is not a valid manifest: {e}"))
}

/// A restore being written, in a new directory beside the target; removed with all it holds
/// unless [`Staging::commit`] puts it in place.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    /// The staging directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Checks that the staging directory holds exactly `files`, each a regular file of the
    /// manifest's size: what the download wrote is complete, and nothing else crept in.
    pub fn check_files(&self, files: &[&FileRef]) -> Result<()> {
        let dir = self.path();
        let mut expected: HashSet<&str> = files.iter().map(|f| local_name(f)).collect();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let file = name.to_str().and_then(|n| {
                files
                    .iter()
                    .find(|f| local_name(f) == n && expected.remove(n))
            });
            let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
            match file {
                Some(f) if meta.is_file() && meta.len() == f.bytes => {}
                _ => {
                    return Err(CliError::new(format!(
                        "the download left {} that is not a complete data file of the snapshot",
                        show(&path)
                    )))
                }
            }
        }
        if let Some(name) = expected.iter().next() {
            return Err(CliError::new(format!(
                "the download did not write {}",
                show(&dir.join(name))
            )));
        }
        Ok(())
    }

    /// Writes `manifest` as `manifest.mpm` (a new file, never one that exists), synced, then
    /// syncs the directory: its presence says the files are all there.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<PathBuf> {
        let path = self.path().join(RESTORED_MANIFEST);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all(&manifest.encode())
            .and_then(|()| file.sync_all())
            .map_err(io_error(&path))?;
        sync_dir(self.path())?;
        Ok(path)
    }

    /// Puts the complete restore in place of `target`, checked again first, and removes what
    /// was there. Until the swap, a failure leaves the target as it was.
    pub fn commit(self, target: &Target) -> Result<()> {
        target.recheck()?;
        if target.found != Found::Nothing {
            // The replaced directory's permissions carry over (a restore kept private stays so).
            let mode = fs::symlink_metadata(&target.path).map_err(io_error(&target.path))?;
            fs::set_permissions(self.path(), mode.permissions()).map_err(io_error(self.path()))?;
        }
        let old = match target.found {
            Found::Nothing => {
                fs::rename(self.path(), &target.path).map_err(io_error(&target.path))?;
                // The staging name is gone; nothing to remove.
                let _ = self.dir.keep();
                None
            }
            Found::Empty(_) | Found::Restore(_) => {
                if exchange(self.path(), &target.path).map_err(io_error(&target.path))? {
                    // The staging name now holds the old restore.
                    Some(self.dir)
                } else {
                    Some(swap_by_renames(self.dir, target)?)
                }
            }
        };
        sync_dir(&target.parent)?;
        if let Some(old) = old {
            let left = old.path().to_owned();
            if let Err(e) = old.close() {
                eprintln!(
                    "warning: the replaced restore could not be removed ({e}): remove {} \
                     yourself",
                    show(&left)
                );
            }
        }
        Ok(())
    }
}

/// Swaps the directories `a` and `b` in one step (`renameat2` with `RENAME_EXCHANGE`, Linux
/// 3.15). `Ok(false)`: this system or file system cannot; nothing was done.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated strings alive for the call's duration; AT_FDCWD makes
    // them relative to the working directory (they are absolute anyway).
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Puts `staging` in place of the target by two renames, for file systems that cannot
/// exchange: the old restore moves into a new directory beside it (`<name>.old-<random>`),
/// the staging directory takes its name. If the second rename fails the old restore is put
/// back. Returns the directory holding the old restore. A crash between the renames leaves
/// no target, and the old restore in `<name>.old-<random>/<name>`.
fn swap_by_renames(staging: tempfile::TempDir, target: &Target) -> Result<tempfile::TempDir> {
    let trash = target.sibling("old")?;
    let old = trash.path().join(&target.name);
    fs::rename(&target.path, &old).map_err(io_error(&target.path))?;
    if let Err(e) = fs::rename(staging.path(), &target.path) {
        return match fs::rename(&old, &target.path) {
            Ok(()) => Err(io_error(&target.path)(e)),
            Err(back) => {
                // Never delete the only copy.
                let kept = trash.keep().join(&target.name);
                Err(CliError::new(format!(
                    "{}: {e}; the earlier restore could not be put back ({back}) and is at {}",
                    show(&target.path),
                    show(&kept)
                )))
            }
        };
    }
    let _ = staging.keep();
    Ok(trash)
}

/// Syncs the directory `dir`, so that the names created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target `dir/name`, holding one file `old`.
    fn old_target(dir: &Path, name: &str) -> Target {
        let path = dir.join(name);
        fs::create_dir(&path).unwrap();
        fs::write(path.join("old"), b"old").unwrap();
        Target {
            found: Found::Restore(identity(&fs::metadata(&path).unwrap())),
            path,
            parent: dir.to_owned(),
            name: name.into(),
            force: true,
        }
    }

    fn names(dir: &Path) -> Vec<OsString> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    #[test]
    fn swap_by_renames_replaces_the_target_and_keeps_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let target = old_target(dir.path(), "t");
        let staging = target.sibling("restore").unwrap();
        fs::write(staging.path().join("new"), b"new").unwrap();
        let trash = swap_by_renames(staging, &target).unwrap();
        assert_eq!(fs::read(dir.path().join("t/new")).unwrap(), b"new");
        assert_eq!(fs::read(trash.path().join("t/old")).unwrap(), b"old");
        trash.close().unwrap();
        assert_eq!(names(dir.path()), ["t"]);
    }

    #[test]
    fn swap_by_renames_puts_the_old_back_when_the_new_cannot_move() {
        let dir = tempfile::tempdir().unwrap();
        let target = old_target(dir.path(), "t");
        let staging = target.sibling("restore").unwrap();
        // The staging directory vanishes before the swap: the second rename fails.
        fs::remove_dir(staging.path()).unwrap();
        assert!(swap_by_renames(staging, &target).is_err());
        assert_eq!(fs::read(dir.path().join("t/old")).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["t"]);
    }

    #[test]
    fn a_target_that_changed_during_the_download_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let target = |found| Target {
            path: path.clone(),
            parent: dir.path().to_owned(),
            name: "t".into(),
            found,
            force: false,
        };
        // Missing, then created and filled by someone else.
        let missing = target(Found::Nothing);
        missing.recheck().unwrap();
        fs::create_dir(&path).unwrap();
        assert!(missing.recheck().is_err());
        // Empty, then given a file.
        let empty = target(Found::Empty(identity(&fs::metadata(&path).unwrap())));
        empty.recheck().unwrap();
        fs::write(path.join("x"), b"").unwrap();
        assert!(empty.recheck().is_err());
        // Empty, then replaced by another empty directory, or by a symlink.
        fs::remove_file(path.join("x")).unwrap();
        // The old one is kept (renamed), so the new one cannot reuse its inode: a file system
        // may hand a freed inode to the next directory made (CI's did).
        fs::rename(&path, dir.path().join("old-t")).unwrap();
        fs::create_dir(dir.path().join("other")).unwrap();
        fs::create_dir(&path).unwrap();
        let err = empty.recheck().unwrap_err().to_string();
        assert!(err.contains("changed"), "{err}");
        fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("other"), &path).unwrap();
        let err = empty.recheck().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn exchange_swaps_two_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("in-a"), b"").unwrap();
        // The file systems tests run on (tmpfs, ext4, xfs, btrfs) can.
        assert_eq!(exchange(&a, &b).unwrap(), cfg!(target_os = "linux"));
        if cfg!(target_os = "linux") {
            assert!(b.join("in-a").exists() && !a.join("in-a").exists());
        }
    }

    #[test]
    fn remove_dir_all_unlinks_symlinks_without_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        let doomed = dir.path().join("doomed");
        fs::create_dir(&doomed).unwrap();
        std::os::unix::fs::symlink(&outside, doomed.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), doomed.join("file-link")).unwrap();
        fs::remove_dir_all(&doomed).unwrap();
        assert!(!doomed.exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn hostile_file_names_are_refused() {
        let file = |path: &str| FileRef {
            path: path.to_owned(),
            first_key_group: 0,
            last_key_group: 0,
            bytes: 1,
            entries: 1,
            crc32c: 0,
            written_by: 1,
            digest: None,
            file_id: None,
        };
        let ok = [file("data/a.mpdf"), file("data/b.mpdf")];
        assert!(check_names(&ok.iter().collect::<Vec<_>>()).is_ok());
        for bad in [
            vec![file("data/..")],
            vec![file("data/")],
            vec![file("data/manifest.mpm")],
            vec![file("data/x.part")],
            vec![file("data/a.mpdf"), file("data/sub/a.mpdf")],
            vec![file("data/a.mpdf"), file("data/a.txt")],
        ] {
            let refs: Vec<&FileRef> = bad.iter().collect();
            assert!(check_names(&refs).is_err(), "{bad:?}");
        }
    }
}
