//! The archive: where snapshots live in object storage, and the commit protocol that makes a
//! snapshot current exactly once (docs/snapshot.md, "Commit protocol").
//!
//! ```text
//! <root>/data/<snapshot id>-<n>.mpdf           data files, written once under unique names
//! <root>/manifests/<sequence, 20 digits>.mpm   manifests; the highest sequence is current
//! <root>/pending/<snapshot id>.mpp             markers of snapshots being written
//! ```
//!
//! Committing manifest `n + 1` is a conditional create (`PutMode::Create`): of two writers
//! racing for the same sequence exactly one wins. A writer takes over an archive by committing
//! a *claim* manifest with a higher epoch; an older writer whose create then fails finds the
//! higher epoch and is fenced. The protocol needs nothing but conditional create and a
//! consistent list, which both the local filesystem and S3 give (the local filesystem has no
//! `PutMode::Update`, so there is no separate pointer object to swap).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::error::{Error, Result};
use crate::manifest::{Manifest, ManifestKind, MAX_MANIFEST_BYTES};
pub(crate) use crate::names::{data_path, new_id};
use crate::names::{manifest_path, parse_manifest_name, MANIFESTS};
use millpond_wal::runtime::OwnRuntime;

/// Part size of multipart uploads; files below it go up in one put.
const PART_BYTES: usize = 16 << 20;
/// Parts of one file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// How an archive talks to S3: timeouts and retries. The local filesystem ignores them.
///
/// A call (a get, a put, a list page) fails with [`Error::TimedOut`] at the latest after
/// about `retry_timeout + request_timeout` (plus a backoff of at most a second), however
/// silent the endpoint: with the defaults, 30 s against a server that accepts connections and
/// never answers (object_store's own defaults retried for up to 3 minutes).
///
/// ```
/// use std::time::Duration;
/// use millpond_snapshot::{Archive, ArchiveSettings};
///
/// let settings = ArchiveSettings {
///     request_timeout: Duration::from_secs(120), // a slow link: a 16 MiB part needs longer
///     ..ArchiveSettings::default()
/// };
/// let dir = tempfile::tempdir().unwrap();
/// let archive = Archive::open_with(&format!("file://{}", dir.path().display()), &settings).unwrap();
/// assert!(archive.latest().unwrap().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSettings {
    /// Time to establish a connection. Default: 5 s.
    pub connect_timeout: Duration,
    /// Time for one request, from connecting to the last byte of the answer (for an upload,
    /// sending a whole part of up to 16 MiB included). A request that takes longer fails and
    /// is retried if it is safe to repeat. Raise it for slow links. Default: 30 s (the
    /// `millpond` command: `--timeout-seconds`, `MILLPOND_TIMEOUT_SECONDS`).
    pub request_timeout: Duration,
    /// Retries of a failed request (connection errors, 5xx answers, timeouts of requests that
    /// are safe to repeat), with exponential backoff from 100 ms up to 1 s. Default: 3.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt of a request. Default: 10 s
    /// (so a request that timed out once, after `request_timeout`, is not tried again; one
    /// that failed fast is). The `millpond` command sets it to `--timeout-seconds`.
    pub retry_timeout: Duration,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        ArchiveSettings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        }
    }
}

impl ArchiveSettings {
    fn check(&self) -> Result<()> {
        let zero = [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        match zero {
            Some((name, _)) => Err(Error::Invalid {
                reason: format!("ArchiveSettings::{name} is 0: give a positive time"),
            }),
            None => Ok(()),
        }
    }

    /// The timeouts as S3 builder options: set one by one, since replacing the whole
    /// `ClientOptions` would drop what `from_env` read (`AWS_ALLOW_HTTP`, say).
    #[cfg(feature = "s3")]
    fn client_config(&self) -> [(object_store::aws::AmazonS3ConfigKey, String); 2] {
        use object_store::aws::AmazonS3ConfigKey::Client;
        use object_store::ClientConfigKey;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        [
            (
                Client(ClientConfigKey::ConnectTimeout),
                ms(self.connect_timeout),
            ),
            (Client(ClientConfigKey::Timeout), ms(self.request_timeout)),
        ]
    }

    #[cfg(feature = "s3")]
    fn retry(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// A location in object storage holding snapshots: manifests and data files.
///
/// The API blocks (it runs object_store's futures on the archive's own small runtime). Called
/// or dropped inside another async runtime it does not panic, but it blocks that thread: from
/// async code, use the facade's async calls (they run it on a thread of their own).
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    rt: Arc<OwnRuntime>,
    /// The directory of a local archive, read directly when files are fetched whole.
    local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("url", &self.url).finish()
    }
}

/// An object directly in a folder of the archive, as listed.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// The path relative to the root: `<folder>/<name>`.
    pub(crate) relative: String,
    /// The last part of the path.
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) last_modified: SystemTime,
}

/// What a folder of the archive holds directly: objects, and how many sub-folders there are
/// (never looked into).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) objects: Vec<Listed>,
    pub(crate) folders: usize,
}

impl Archive {
    /// Opens the archive at `url` with the default [`ArchiveSettings`]:
    ///
    /// - `file:///absolute/dir` (or a plain absolute path): a local directory, created if
    ///   missing;
    /// - `s3://bucket/prefix` (feature `s3`): S3 or an S3-compatible server, configured from
    ///   the usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    ///   `AWS_DEFAULT_REGION`, `AWS_ENDPOINT` for another endpoint, `AWS_ALLOW_HTTP=true` for
    ///   plain HTTP).
    ///
    /// A malformed URL, an unknown scheme, missing S3 credentials or an `s3://` URL in a build
    /// without the feature `s3` is `Error::Invalid`.
    /// Nothing is read or written yet: an unreachable S3 endpoint shows at the first call.
    pub fn open(url: &str) -> Result<Archive> {
        Archive::open_with(url, &ArchiveSettings::default())
    }

    /// Opens the archive at `url` (see [`Archive::open`]) with `settings`: S3 timeouts and
    /// retries. A zero timeout is `Error::Invalid`.
    pub fn open_with(url: &str, settings: &ArchiveSettings) -> Result<Archive> {
        settings.check()?;
        let invalid = |reason: String| Error::Invalid { reason };
        if let Some(rest) = url.strip_prefix("s3://") {
            return Archive::open_s3(url, rest, settings);
        }
        let dir = match url.strip_prefix("file://") {
            Some(path) => path,
            None if url.starts_with('/') => url,
            None => {
                return Err(invalid(format!(
                    "'{url}': expected file:///absolute/path or s3://bucket/prefix"
                )))
            }
        };
        if !dir.starts_with('/') {
            return Err(invalid(format!("'{url}': the path must be absolute")));
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| invalid(format!("'{url}': {e}")))?;
        let mut archive = Archive::from_store(Arc::new(store), "", url)?;
        archive.local = Some(std::path::PathBuf::from(dir));
        Ok(archive)
    }

    /// The S3 archive at `url` (`s3://` + `rest`).
    #[cfg(feature = "s3")]
    fn open_s3(url: &str, rest: &str, settings: &ArchiveSettings) -> Result<Archive> {
        let invalid = |reason: String| Error::Invalid { reason };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("'{url}': no bucket in the S3 URL")));
        }
        let has_credentials = [
            "AWS_ACCESS_KEY_ID",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if !has_credentials {
            return Err(invalid(format!(
                "'{url}': no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or use a web identity or container credentials)"
            )));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(settings.retry());
        for (key, value) in settings.client_config() {
            builder = builder.with_config(key, value);
        }
        if std::env::var_os("AWS_DEFAULT_REGION").is_none()
            && std::env::var_os("AWS_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let store = builder
            .build()
            .map_err(|e| invalid(format!("'{url}': {e}")))?;
        Archive::from_store(Arc::new(store), prefix, url)
    }

    /// Without the feature `s3` there is no S3 client: say which feature to enable.
    #[cfg(not(feature = "s3"))]
    fn open_s3(url: &str, _rest: &str, _settings: &ArchiveSettings) -> Result<Archive> {
        Err(Error::Invalid {
            reason: format!(
                "'{url}': this build has no S3 support; enable the feature `s3` (of the \
                 `millpond` crate, or of `millpond-snapshot`) for s3:// archives"
            ),
        })
    }

    /// The directory of a local (`file://`) archive.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local.as_deref()
    }

    /// An archive under `prefix` of any object store (for tests, decorators and stores
    /// configured by hand). `url` names it in messages.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Result<Archive> {
        let rt = OwnRuntime::multi_thread("millpond-archive", 2).map_err(|source| Error::Io {
            path: "archive runtime".to_owned(),
            source,
        })?;
        Ok(Archive {
            store,
            root: Path::from(prefix.trim_matches('/')),
            url: url.to_owned(),
            rt: Arc::new(rt),
            local: None,
        })
    }

    /// The URL the archive was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn block_on<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.rt.block_on(f)
    }

    pub(crate) fn runtime(&self) -> &OwnRuntime {
        &self.rt
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The full object path of `relative` (`data/…`, `manifests/…`).
    pub(crate) fn path(&self, relative: &str) -> Path {
        let mut p = self.root.clone();
        for part in relative.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    /// The objects directly in `folder` (`manifests`, `data`, `pending`), and how many
    /// sub-folders it has. Only the folder's own level is listed: what lies below (a
    /// `backup/` copy, say) is never seen, let alone parsed.
    pub(crate) fn list_folder(&self, folder: &str) -> Result<Listing> {
        let prefix = self.path(folder);
        let listed = self
            .block_on(self.store.list_with_delimiter(Some(&prefix)))
            .map_err(|e| os_error("listing", &format!("{folder}/ in {}", self.url), e))?;
        let mut listing = Listing {
            objects: Vec::with_capacity(listed.objects.len()),
            folders: listed.common_prefixes.len(),
        };
        for meta in listed.objects {
            let Some(name) = meta.location.filename().map(str::to_owned) else {
                continue;
            };
            listing.objects.push(Listed {
                relative: format!("{folder}/{name}"),
                name,
                size: meta.size,
                last_modified: meta.last_modified.into(),
            });
        }
        Ok(listing)
    }

    /// Sequences of the manifests present, ascending. Only objects directly in `manifests/`
    /// named exactly `<20 digits>.mpm` count; anything else there is ignored.
    pub fn sequences(&self) -> Result<Vec<u64>> {
        let mut seqs: Vec<u64> = self
            .list_folder(MANIFESTS)?
            .objects
            .iter()
            .filter_map(|o| parse_manifest_name(&o.name))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Reads manifest `sequence`. A missing one is `Error::NotFound`; one larger than
    /// [`MAX_MANIFEST_BYTES`] is `Error::Corrupt`, refused before its bytes are read.
    pub fn manifest_at(&self, sequence: u64) -> Result<Manifest> {
        let rel = manifest_path(sequence);
        let bytes = self.get_limited(
            &rel,
            MAX_MANIFEST_BYTES as u64,
            "manifest (larger than the 256 MiB limit; refused before reading it)",
        )?;
        let m = Manifest::decode(&bytes, &rel)?;
        if m.sequence != sequence {
            return Err(Error::Corrupt {
                what: "manifest (sequence differs from its name)",
                location: rel,
            });
        }
        Ok(m)
    }

    /// The current manifest (highest sequence), or `None` for an empty archive.
    pub fn latest(&self) -> Result<Option<Manifest>> {
        match self.sequences()?.last() {
            Some(&seq) => self.manifest_at(seq).map(Some),
            None => Ok(None),
        }
    }

    /// The manifest with id or sequence `id` (`"latest"` for the current one).
    pub fn find(&self, id: &str) -> Result<Manifest> {
        if id == "latest" {
            return self.latest()?.ok_or_else(|| Error::NotFound {
                what: format!("a snapshot in {} (the archive is empty)", self.url),
            });
        }
        let seq: Option<u64> = id.split('-').next().and_then(|s| s.parse().ok());
        let not_found = || Error::NotFound {
            what: format!("snapshot '{id}' in {}", self.url),
        };
        let seq = seq.ok_or_else(not_found)?;
        match self.manifest_at(seq) {
            Ok(m) if m.id == id || id.parse::<u64>().is_ok() => Ok(m),
            Ok(_) => Err(not_found()),
            Err(Error::NotFound { .. }) => Err(not_found()),
            Err(e) => Err(e),
        }
    }

    /// Every manifest present, by sequence.
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        self.sequences()?
            .into_iter()
            .map(|s| self.manifest_at(s))
            .collect()
    }

    /// Takes over the archive as its only writer: commits a claim manifest (the current
    /// state, an epoch above every earlier writer's) and returns it. From then on a writer
    /// with an older epoch is fenced. An empty archive gets a first, empty claim with
    /// `max_key_groups`; otherwise that must match the archive's.
    pub fn claim(&self, max_key_groups: u16) -> Result<Manifest> {
        loop {
            let current = self
                .latest()?
                .unwrap_or_else(|| Manifest::empty(max_key_groups));
            if current.max_key_groups != max_key_groups {
                return Err(Error::Invalid {
                    reason: format!(
                        "the archive's state has {} key groups, not {max_key_groups}",
                        current.max_key_groups
                    ),
                });
            }
            let mut claim = current.clone();
            claim.sequence = current.sequence + 1;
            claim.id = new_id(claim.sequence);
            claim.parent_id = (!current.id.is_empty()).then(|| current.id.clone());
            claim.writer_epoch = current.writer_epoch + 1;
            claim.created_at_ms = now_ms();
            claim.kind = ManifestKind::Claim;
            match self.create_manifest(&claim) {
                Ok(()) => return Ok(claim),
                // Another writer claimed or committed meanwhile: claim above it.
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits `manifest` (sequence = previous + 1, written by a writer of
    /// `manifest.writer_epoch`). If the sequence is taken, the writer is fenced when the
    /// manifest there has a higher epoch, and gets `Error::Conflict` otherwise; if it holds
    /// this very manifest (an earlier attempt landed but its reply was lost), it is committed.
    /// A manifest that landed below a higher sequence (a zombie writer's create into a
    /// sequence that garbage collection had freed) is not current: the writer is fenced.
    ///
    /// An `Error::ObjectStore` or `Error::TimedOut` leaves the outcome unknown: the create
    /// may have landed. Retry the same manifest (which resolves it), or read the latest
    /// manifest.
    pub(crate) fn commit(&self, manifest: &Manifest) -> Result<()> {
        match self.create_manifest(manifest) {
            Ok(()) => self.check_on_top(manifest),
            Err(Error::Conflict { .. }) => {
                // A retry after a lost reply finds its own manifest there: committed.
                if let Ok(there) = self.manifest_at(manifest.sequence) {
                    if there.id == manifest.id {
                        return self.check_on_top(manifest);
                    }
                }
                let newest = self.latest()?;
                match newest {
                    Some(m) if m.writer_epoch > manifest.writer_epoch => Err(Error::Fenced {
                        epoch: manifest.writer_epoch,
                        newer_epoch: m.writer_epoch,
                    }),
                    _ => Err(Error::Conflict {
                        sequence: manifest.sequence,
                    }),
                }
            }
            other => other,
        }
    }

    /// After `manifest` was created: `Ok` if no higher sequence exists, so that it became
    /// current when it landed. A higher one means the create filled a sequence that garbage
    /// collection had deleted, under manifests of a newer writer: the snapshot is not
    /// current and never will be (GC deletes it with the other old manifests).
    fn check_on_top(&self, manifest: &Manifest) -> Result<()> {
        let top = self.sequences()?.last().copied().unwrap_or(0);
        if top <= manifest.sequence {
            return Ok(());
        }
        let newest = self.manifest_at(top)?;
        if newest.writer_epoch > manifest.writer_epoch {
            Err(Error::Fenced {
                epoch: manifest.writer_epoch,
                newer_epoch: newest.writer_epoch,
            })
        } else {
            Err(Error::Conflict {
                sequence: manifest.sequence,
            })
        }
    }

    fn create_manifest(&self, manifest: &Manifest) -> Result<()> {
        let rel = manifest_path(manifest.sequence);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from(manifest.encode());
        match self.block_on(self.store.put_opts(&self.path(&rel), payload, opts)) {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict {
                sequence: manifest.sequence,
            }),
            Err(e) => Err(os_error("committing", &rel, e)),
        }
    }

    /// The whole object `relative`, if it is at most `max_bytes`. The size comes with the
    /// answer's headers (the object's metadata on a local disk) and is checked before any of
    /// the body is read: a larger object is `Error::Corrupt` with `too_large` as its `what`,
    /// and costs no memory.
    pub(crate) fn get_limited(
        &self,
        relative: &str,
        max_bytes: u64,
        too_large: &'static str,
    ) -> Result<Vec<u8>> {
        let path = self.path(relative);
        let r = self.block_on(async {
            let got = self.store.get(&path).await?;
            if got.meta.size > max_bytes {
                return Ok(Err(got.meta.size));
            }
            got.bytes().await.map(Ok)
        });
        match r {
            Ok(Ok(b)) => Ok(b.to_vec()),
            Ok(Err(size)) => Err(Error::Corrupt {
                what: too_large,
                location: format!("{relative} ({size} bytes, at most {max_bytes} allowed)"),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(self.not_found(relative)),
            Err(e) => Err(os_error("reading", relative, e)),
        }
    }

    /// Creates (or replaces) the small object `relative`.
    pub(crate) fn put_small(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        self.block_on(
            self.store
                .put(&self.path(relative), PutPayload::from(bytes)),
        )
        .map(|_| ())
        .map_err(|e| os_error("writing", relative, e))
    }

    /// Bytes `range` of object `relative`.
    pub(crate) fn get_range(&self, relative: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(relative);
        match self.block_on(self.store.get_range(&path, range)) {
            Ok(b) => Ok(b.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Err(self.not_found(relative)),
            Err(e) => Err(os_error("reading", relative, e)),
        }
    }

    /// `Error::NotFound` for object `relative` of this archive.
    pub(crate) fn not_found(&self, relative: &str) -> Error {
        Error::NotFound {
            what: format!("{relative} in {}", self.url),
        }
    }

    /// A writer for a new data file at `relative`, uploaded as it is written.
    pub(crate) fn upload(&self, relative: &str) -> Upload<'_> {
        Upload {
            archive: self,
            relative: relative.to_owned(),
            buf: Vec::new(),
            multipart: None,
        }
    }

    /// Deletes object `relative`; a missing one is no error.
    pub(crate) fn delete(&self, relative: &str) -> Result<()> {
        match self.block_on(self.store.delete(&self.path(relative))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(os_error("deleting", relative, e)),
        }
    }
}

/// A data file on its way to the archive: one put if it stays small, a multipart upload with
/// a few parts in flight otherwise. Nothing is visible under its name until `finish`.
pub(crate) struct Upload<'a> {
    archive: &'a Archive,
    relative: String,
    buf: Vec<u8>,
    multipart: Option<WriteMultipart>,
}

impl Upload<'_> {
    fn send_part(&mut self) -> Result<()> {
        let a = self.archive;
        let path = a.path(&self.relative);
        let _guard = a.runtime().enter();
        if self.multipart.is_none() {
            let up = a
                .block_on(a.store.put_multipart(&path))
                .map_err(|e| os_error("starting upload of", &self.relative, e))?;
            self.multipart = Some(WriteMultipart::new_with_chunk_size(up, PART_BYTES));
        }
        let mp = self.multipart.as_mut().expect("just set");
        a.block_on(mp.wait_for_capacity(PARTS_IN_FLIGHT))
            .map_err(|e| os_error("uploading", &self.relative, e))?;
        mp.put(std::mem::take(&mut self.buf).into());
        Ok(())
    }

    /// Completes the upload.
    pub fn finish(mut self) -> Result<()> {
        let a = self.archive;
        let path = a.path(&self.relative);
        let _guard = a.runtime().enter();
        match self.multipart.take() {
            None => {
                let payload = PutPayload::from(std::mem::take(&mut self.buf));
                a.block_on(a.store.put(&path, payload))
                    .map_err(|e| os_error("uploading", &self.relative, e))?;
            }
            Some(mut mp) => {
                mp.put(std::mem::take(&mut self.buf).into());
                a.block_on(mp.finish())
                    .map_err(|e| os_error("completing upload of", &self.relative, e))?;
            }
        }
        Ok(())
    }
}

impl Drop for Upload<'_> {
    /// An upload dropped before `finish` (the snapshot failed) is aborted, so that S3 does not
    /// keep its parts: they are invisible to GC.
    fn drop(&mut self) {
        if let Some(mp) = self.multipart.take() {
            let _guard = self.archive.runtime().enter();
            let _ = self.archive.block_on(mp.abort());
        }
    }
}

impl std::io::Write for Upload<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PART_BYTES {
            self.send_part().map_err(std::io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The error for a failed object-store call `op` on `what`: `Error::TimedOut` when the store
/// did not answer in time (the request or connect timeout of [`ArchiveSettings`]),
/// `Error::ObjectStore` otherwise.
pub(crate) fn os_error(op: &'static str, what: &str, source: object_store::Error) -> Error {
    if is_timeout(&source) {
        return Error::TimedOut {
            op,
            path: what.to_owned(),
            source: Box::new(source),
        };
    }
    Error::ObjectStore {
        op,
        path: what.to_owned(),
        source: Box::new(source),
    }
}

/// Whether an object-store error is, somewhere in its chain of sources, a timeout.
fn is_timeout(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if is_http_timeout(err) {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Whether `err` is the HTTP client's timeout (object_store's `client` module exists only with
/// a cloud store, here S3).
#[cfg(feature = "s3")]
fn is_http_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<object_store::client::HttpError>()
        .is_some_and(|http| http.kind() == object_store::client::HttpErrorKind::Timeout)
}

/// Without the feature `s3` there is no HTTP client, and no HTTP timeout.
#[cfg(not(feature = "s3"))]
fn is_http_timeout(_err: &(dyn std::error::Error + 'static)) -> bool {
    false
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What [`Archive::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files checked.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Entries read.
    pub entries: u64,
    /// Files whose manifest entry has no digest (written under manifest version 1): their
    /// content was checked by CRC-32C only, which cannot tell an older version of the file
    /// from the right one. A new snapshot rewrites such files only when their key groups
    /// change; `millpond snapshot rescale` into a new archive records digests for them.
    pub files_crc_only: usize,
}

impl Archive {
    /// Checks a snapshot end to end, one file at a time in bounded memory: each object's size
    /// against the manifest before it is read, then its footer, index and file id, its key
    /// groups and entry count, every block's checksum, framing and key order, and the digest
    /// and CRC-32C of the whole file (one pass over the bytes). `progress` is called with the
    /// bytes checked so far. The first damage found is the error (`Error::Corrupt` naming the
    /// file and what differed, or `Error::NotFound` for a missing file).
    pub fn verify(
        &self,
        manifest: &Manifest,
        mut progress: impl FnMut(u64),
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for f in manifest.files() {
            crate::fetch::verify_file(self, f)?;
            report.files += 1;
            report.files_crc_only += usize::from(f.digest.is_none());
            report.bytes += f.bytes;
            report.entries += f.entries;
            progress(report.bytes);
        }
        Ok(report)
    }
}

#[cfg(all(test, not(feature = "s3")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_s3_feature_an_s3_url_is_invalid_and_names_the_feature() {
        match Archive::open("s3://bucket/prefix") {
            Err(Error::Invalid { reason }) => {
                assert!(reason.contains("feature `s3`"), "{reason}");
                assert!(reason.contains("s3://bucket/prefix"), "{reason}");
            }
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }
}
