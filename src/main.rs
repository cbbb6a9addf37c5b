//! `millpond`: look into and operate millpond's snapshots and write-ahead logs.
//!
//! ```text
//! millpond snapshot list|inspect|verify|restore|dump|gc --store URL …
//! millpond snapshot rescale --from URL[@ID][#A..B]… --to URL --key-groups A..B
//! millpond wal inspect DIR
//! ```
//!
//! The archive comes from `--store URL` or `MILLPOND_STORE`: `file:///absolute/dir` or
//! `s3://bucket/prefix` (S3 credentials from the usual `AWS_*` variables; `--timeout-seconds`
//! or `MILLPOND_TIMEOUT_SECONDS` bounds each request). Every command and its output:
//! docs/cli.md.
//!
//! Exit codes: 0 success; 1 failure (a missing snapshot, damage, a wrong URL or missing
//! credentials, a target that would be overwritten), with one `error: ` line on stderr; 2 a
//! usage error (clap's). Nothing is overwritten without `--force`, and `restore --force`
//! replaces only an earlier restore. Names from files and archives are printed with control
//! characters escaped (`cli::render::escape`).
//!
//! Built with the feature `cli` (`cargo install millpond --features cli`), which also brings S3
//! archives; `--features cli,pulsar` adds `wal inspect --pulsar-url`.
//!
//! The library calls block (the archive runs its own small tokio runtime), so `main` is an
//! ordinary synchronous function.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cli::render::Render;
use cli::CliError;

/// millpond's snapshots and write-ahead logs: list, inspect, verify, restore, dump, collect.
#[derive(Debug, Parser)]
#[command(name = "millpond", version, propagate_version = true)]
struct Cli {
    /// Seconds an S3 request may take (connecting, sending, the whole answer) before it fails;
    /// retries of a failed request stop as long again after its first attempt. Raise it for
    /// a slow link. Default 30. Local archives ignore it.
    #[arg(
        long,
        global = true,
        env = "MILLPOND_TIMEOUT_SECONDS",
        value_name = "S",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    timeout_seconds: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Snapshots in an archive (a local directory or S3).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The write-ahead log.
    #[command(subcommand)]
    Wal(WalCommand),
}

/// Where the snapshots are.
#[derive(Debug, Args)]
struct Store {
    /// The archive: file:///absolute/dir (a plain path works too) or s3://bucket/prefix (S3
    /// credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_DEFAULT_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP).
    #[arg(long, env = "MILLPOND_STORE", value_name = "URL")]
    store: String,
}

/// Key groups `A..B` (end exclusive), e.g. `0..64`.
#[derive(Debug, Args)]
struct KeyGroups {
    /// Only key groups A..B (end exclusive), e.g. 0..64: one instance of a rescaled job.
    #[arg(long, value_name = "A..B", value_parser = cli::parse_key_groups)]
    key_groups: Option<millpond_state::KeyGroupRange>,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// One line per manifest: sequence, id, kind, epoch, time, LSN, size, offsets.
    List {
        #[command(flatten)]
        store: Store,
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Everything a manifest says: offsets, WAL position, states, every file.
    Inspect {
        #[command(flatten)]
        store: Store,
        /// Snapshot id, sequence number, or `latest`.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reads every file of a snapshot and checks every checksum; exit 1 on damage.
    Verify {
        #[command(flatten)]
        store: Store,
        /// Snapshot id, sequence number, or `latest`.
        id: String,
    },
    /// Downloads a snapshot's files (all, or those of some key groups) and its manifest into a
    /// new directory beside DIR, checks them, then puts it in place of DIR.
    Restore {
        #[command(flatten)]
        store: Store,
        /// Snapshot id, sequence number, or `latest`.
        id: String,
        /// The directory to restore into: missing or empty unless --force; never a symlink,
        /// never inside the archive or holding it.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        key_groups: KeyGroups,
        /// Replace an earlier restore in DIR (a directory holding only a restore's
        /// manifest.mpm and files), once the new one is complete and checked.
        #[arg(long)]
        force: bool,
    },
    /// Every entry of one state, one JSON line per key (read in place, nothing downloaded).
    Dump {
        #[command(flatten)]
        store: Store,
        /// Snapshot id, sequence number, or `latest`.
        id: String,
        /// The state's name (`snapshot inspect` lists them).
        #[arg(long, value_name = "NAME")]
        state: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = cli::snapshot::DumpFormat::Jsonl)]
        format: cli::snapshot::DumpFormat,
        #[command(flatten)]
        key_groups: KeyGroups,
        /// How to show keys (the built-in codecs write integers big-endian).
        #[arg(long, value_enum, default_value_t = Render::Auto)]
        key_as: Render,
        /// How to show map user keys.
        #[arg(long, value_enum, default_value_t = Render::Auto)]
        user_key_as: Render,
        /// How to show values and list elements.
        #[arg(long, value_enum, default_value_t = Render::Auto)]
        value_as: Render,
    },
    /// Builds, in an empty archive, the first snapshot of key groups A..B taken from one or
    /// more instances' snapshots: the state of one instance of a rescaled job.
    Rescale(cli::snapshot::RescaleArgs),
    /// Keeps the newest N snapshots; deletes older manifests and unreferenced data files.
    Gc {
        #[command(flatten)]
        store: Store,
        /// Snapshots to keep (at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        retain: u64,
        /// Unreferenced data files younger than this are kept (files of snapshots being
        /// written are kept whatever it is). At most 3153600000 (100 years).
        #[arg(
            long,
            value_name = "S",
            default_value_t = 3600,
            value_parser = clap::value_parser!(u64).range(0..=millpond_snapshot::MAX_GC_GRACE.as_secs())
        )]
        grace_seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Lists the batches of a WAL and sums up what replay would apply.
    Inspect(WalInspect),
}

#[derive(Debug, Args)]
struct WalInspect {
    /// A local segment directory (the WAL's `*.wal` files).
    #[cfg_attr(not(feature = "pulsar"), arg(required = true))]
    #[cfg_attr(
        feature = "pulsar",
        arg(required_unless_present = "topic", conflicts_with = "topic")
    )]
    dir: Option<PathBuf>,
    /// Print every record, not just every batch.
    #[arg(long, short)]
    verbose: bool,
    /// How to show keys in --verbose output.
    #[arg(long, value_enum, default_value_t = Render::Auto)]
    key_as: Render,
    /// How to show values in --verbose output.
    #[arg(long, value_enum, default_value_t = Render::Auto)]
    value_as: Render,
    /// Pulsar broker service URL (pulsar:// or pulsar+ssl://), with --topic.
    #[cfg(feature = "pulsar")]
    #[arg(long, value_name = "URL", requires = "topic")]
    pulsar_url: Option<String>,
    /// A WAL kept in Pulsar: its full topic, persistent://tenant/namespace/name.
    #[cfg(feature = "pulsar")]
    #[arg(long, value_name = "TOPIC", requires = "pulsar_url")]
    topic: Option<String>,
    /// Pulsar token (a JWT), if the broker wants one.
    #[cfg(feature = "pulsar")]
    #[arg(
        long,
        env = "MILLPOND_PULSAR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pulsar_token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = std::panic::catch_unwind(|| run(cli)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Err(CliError::new(format!(
            "internal error (a bug in millpond, please report it): {what}"
        )))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the source's message holds (an S3 error body, say), and
            // nothing a terminal would act on (a name in a library's message is not escaped).
            let message = e.to_string();
            let message: Vec<&str> = message.split_whitespace().collect();
            eprintln!("error: {}", cli::render::terminal_safe(&message.join(" ")));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> cli::Result<()> {
    if let Some(seconds) = cli.timeout_seconds {
        cli::set_timeout(std::time::Duration::from_secs(seconds));
    }
    let mut out = cli::Out::stdout();
    match cli.command {
        Command::Snapshot(cmd) => match cmd {
            SnapshotCommand::List { store, json } => {
                cli::snapshot::list(&cli::open_archive(&store.store)?, json, &mut out)
            }
            SnapshotCommand::Inspect { store, id, json } => {
                cli::snapshot::inspect(&cli::open_archive(&store.store)?, &id, json, &mut out)
            }
            SnapshotCommand::Verify { store, id } => {
                cli::snapshot::verify(&cli::open_archive(&store.store)?, &id, &mut out)
            }
            SnapshotCommand::Restore {
                store,
                id,
                to,
                key_groups,
                force,
            } => cli::snapshot::restore(
                &cli::open_archive(&store.store)?,
                &id,
                &to,
                key_groups.key_groups,
                force,
                &mut out,
            ),
            SnapshotCommand::Dump {
                store,
                id,
                state,
                format,
                key_groups,
                key_as,
                user_key_as,
                value_as,
            } => cli::snapshot::dump(
                &cli::open_archive(&store.store)?,
                &cli::snapshot::DumpArgs {
                    id,
                    state,
                    format,
                    key_groups: key_groups.key_groups,
                    key_as,
                    user_key_as,
                    value_as,
                },
                &mut out,
            ),
            SnapshotCommand::Rescale(args) => cli::snapshot::rescale(&args, &mut out),
            SnapshotCommand::Gc {
                store,
                retain,
                grace_seconds,
            } => cli::snapshot::gc(
                &cli::open_archive(&store.store)?,
                usize::try_from(retain).unwrap_or(usize::MAX),
                std::time::Duration::from_secs(grace_seconds),
                &mut out,
            ),
        },
        Command::Wal(WalCommand::Inspect(args)) => {
            let opts = cli::wal::InspectOptions {
                verbose: args.verbose,
                key_as: args.key_as,
                value_as: args.value_as,
            };
            #[cfg(feature = "pulsar")]
            if let (Some(url), Some(topic)) = (&args.pulsar_url, &args.topic) {
                return cli::wal::inspect_pulsar(
                    url,
                    topic,
                    args.pulsar_token.clone(),
                    &opts,
                    &mut out,
                );
            }
            match &args.dir {
                Some(dir) => cli::wal::inspect_dir(dir, &opts, &mut out),
                None => Err(CliError::new("give the WAL's segment directory")),
            }
        }
    }?;
    out.flush()
}
