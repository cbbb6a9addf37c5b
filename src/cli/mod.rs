//! The `millpond` command's parts: one module per command group, plus what they share (the
//! error every command returns, stdout, opening the archive, rendering).

/// `writeln!` for [`Out`]: `outln!(out, "…", …)?`.
macro_rules! outln {
    ($out:expr) => {
        $out.line(format_args!(""))
    };
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}

pub mod progress;
pub mod render;
pub mod restore_dir;
pub mod snapshot;
pub mod wal;

use std::io::Write;

use std::sync::OnceLock;
use std::time::Duration;

use millpond_snapshot::{Archive, ArchiveSettings};
use millpond_state::KeyGroupRange;

/// What a command failed with: one line for `error: …` on stderr, exit code 1.
#[derive(Debug)]
pub struct CliError {
    message: String,
    broken_pipe: bool,
}

impl CliError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            broken_pipe: false,
        }
    }

    /// Whether stdout was closed by its reader (`millpond … | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        self.broken_pipe
    }

    /// The same error with `context` in front.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        CliError {
            message: format!("{context}: {}", self.message),
            broken_pipe: self.broken_pipe,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<millpond_snapshot::Error> for CliError {
    fn from(e: millpond_snapshot::Error) -> Self {
        use millpond_snapshot::Error;
        let message = match e {
            // Its reason says it all; "invalid input:" would mislead for a failed download.
            Error::Invalid { reason } => reason,
            e => e.to_string(),
        };
        CliError::new(message)
    }
}

impl From<millpond_wal::Error> for CliError {
    fn from(e: millpond_wal::Error) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<millpond_state::Error> for CliError {
    fn from(e: millpond_state::Error) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<millpond_format::FormatError> for CliError {
    fn from(e: millpond_format::FormatError) -> Self {
        CliError::new(e.to_string())
    }
}

/// `Result` with [`CliError`].
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Standard output, buffered; a write error (a closed pipe included) becomes a [`CliError`].
pub struct Out {
    inner: std::io::BufWriter<std::io::Stdout>,
}

impl Out {
    /// Buffered stdout.
    pub fn stdout() -> Self {
        Out {
            inner: std::io::BufWriter::with_capacity(64 << 10, std::io::stdout()),
        }
    }

    /// Writes `args` and a newline, through [`render::terminal_safe`]: the last guard
    /// against a control character that a caller forgot to escape (names should be
    /// [`render::escape`]d where they are formatted).
    pub fn line(&mut self, args: std::fmt::Arguments<'_>) -> Result<()> {
        let mut guarded = Guarded {
            out: &mut self.inner,
            error: None,
        };
        let written = std::fmt::Write::write_fmt(&mut guarded, args);
        match (written, guarded.error) {
            (_, Some(e)) => Err(io_error(e)),
            // Only a `Display` impl fails this way: a bug, not the output's.
            (Err(_), None) => Err(CliError::new("formatting output failed")),
            (Ok(()), None) => self.inner.write_all(b"\n").map_err(io_error),
        }
    }

    /// Writes everything buffered.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush().map_err(io_error)
    }
}

/// Text on its way to stdout, made [`render::terminal_safe`] piece by piece (no copy of the
/// line unless something needs escaping).
struct Guarded<'a, W: Write> {
    out: &'a mut W,
    error: Option<std::io::Error>,
}

impl<W: Write> std::fmt::Write for Guarded<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let safe = render::terminal_safe(s);
        self.out.write_all(safe.as_bytes()).map_err(|e| {
            self.error = Some(e);
            std::fmt::Error
        })
    }
}

fn io_error(e: std::io::Error) -> CliError {
    CliError {
        broken_pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
        message: format!("writing to stdout: {e}"),
    }
}

/// The S3 settings of every archive the command opens, set once from `--timeout-seconds`.
static ARCHIVE_SETTINGS: OnceLock<ArchiveSettings> = OnceLock::new();

/// Bounds every S3 request by `timeout` (`--timeout-seconds`), and the retries of one
/// request by as long again. Call before opening an archive; only the first call counts.
pub fn set_timeout(timeout: Duration) {
    let _ = ARCHIVE_SETTINGS.set(ArchiveSettings {
        connect_timeout: timeout.min(ArchiveSettings::default().connect_timeout),
        request_timeout: timeout,
        retry_timeout: timeout,
        ..ArchiveSettings::default()
    });
}

/// Opens the archive at `url`. Unlike `Archive::open`, a local archive must already exist: a
/// command that only reads must not create directories for a mistyped path. A plain path,
/// relative or absolute, is taken as a local directory.
pub fn open_archive(url: &str) -> Result<Archive> {
    let url = url.trim();
    let url = match local_dir(url)? {
        Some(path) => {
            if !path.is_absolute() {
                return Err(CliError::new(format!(
                    "'{url}': a file:// URL needs an absolute path (file:///dir)"
                )));
            }
            if !path.is_dir() {
                return Err(CliError::new(format!(
                    "no archive at '{url}': {} is not a directory",
                    path.display()
                )));
            }
            format!("file://{}", path.display())
        }
        None => url.to_owned(),
    };
    let settings = ARCHIVE_SETTINGS.get_or_init(ArchiveSettings::default);
    Ok(Archive::open_with(&url, settings)?)
}

/// The directory of a local archive URL (`file:///dir` or a plain path, made absolute);
/// `None` for another scheme.
fn local_dir(url: &str) -> Result<Option<std::path::PathBuf>> {
    Ok(match url.strip_prefix("file://") {
        Some(path) => Some(std::path::PathBuf::from(path)),
        None if !url.contains("://") && !url.is_empty() => {
            Some(std::path::absolute(url).map_err(|e| CliError::new(format!("'{url}': {e}")))?)
        }
        None => None,
    })
}

/// Opens the archive at `url` that a command writes a new snapshot into: like
/// [`open_archive`], but a missing local directory is created.
pub fn open_new_archive(url: &str) -> Result<Archive> {
    let url = url.trim();
    if let Some(dir) = local_dir(url)?.filter(|d| d.is_absolute()) {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::new(format!("creating {}: {e}", dir.display())))?;
    }
    open_archive(url)
}

/// Parses `A..B` (end exclusive) into a key-group range; for clap.
pub fn parse_key_groups(s: &str) -> std::result::Result<KeyGroupRange, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B (end exclusive), e.g. 0..64, not '{s}'"))?;
    let parse = |n: &str| {
        n.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{n}' is not a key group (0 to 32767)"))
    };
    let (start, end) = (parse(a)?, parse(b)?);
    if start >= end {
        return Err(format!(
            "the range {start}..{end} is empty (the end is exclusive)"
        ));
    }
    Ok(KeyGroupRange::new(start, end))
}

/// Checks `range` against a snapshot's `max_key_groups`.
pub fn check_key_groups(range: Option<KeyGroupRange>, max_key_groups: u16) -> Result<()> {
    match range {
        Some(r) if r.end > max_key_groups => Err(CliError::new(format!(
            "--key-groups {}..{}: the snapshot has key groups 0..{max_key_groups}",
            r.start, r.end
        ))),
        _ => Ok(()),
    }
}
