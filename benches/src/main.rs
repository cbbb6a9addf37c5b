//! `millpond-bench`: benchmarks that print one JSON line per run.
//!
//! `cargo run --release -p millpond-bench -- state --keys 1000000 --value-bytes 100 --seconds 10`
//! `cargo run --release -p millpond-bench -- wal --sink local --record-bytes 100 --seconds 10`
//! `cargo run --release -p millpond-bench -- recovery --state-bytes 1G --value-bytes 100 --store file`
//! `cargo run --release -p millpond-bench -- e2e --records 10000000 --keys 1000000` (after
//! `eval "$(scripts/services up kafka pulsar s3)"`)

mod compare;
mod e2e;
mod group;
mod peer;
mod plot;
mod recovery;
mod state;
mod steady;
mod util;
mod wal;

use std::time::Instant;

use clap::{Parser, Subcommand};

// mimalloc, as a production job would link it: glibc malloc's fastbin consolidation, triggered
// when redb allocates page buffers among many small frees, puts 50-200 µs stalls into cold
// reads. Millpond and the baselines run on the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "millpond benchmarks; each prints one JSON line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keyed state: read-modify-write and get throughput, hot and cold get latency, RSS,
    /// against a plain Mutex<HashMap> measured in the same run.
    State(state::StateArgs),
    /// Write-ahead log: records/s, MB/s, durable commit latency, against the disk's own
    /// sequential fdatasync bandwidth.
    Wal(wal::WalArgs),
    /// Snapshot and restore: snapshot MB/s and the job's stall while it runs, time to the
    /// first record and to the full restore in a fresh process, against copying the files.
    Recovery(recovery::RecoveryArgs),
    /// The restore half of `recovery`, run by it in a child process.
    #[command(hide = true)]
    RecoveryRestore(recovery::RestoreArgs),
    /// The job of `recovery --steady`, run by it in a child process and killed.
    #[command(hide = true)]
    RecoverySteadyJob(steady::JobArgs),
    /// A restore of `recovery --steady`, run by it in a child process.
    #[command(hide = true)]
    RecoverySteadyRestore(steady::ChildArgs),
    /// End to end: a job reading Kafka into keyed state, its WAL in Pulsar (or local) and
    /// snapshots in S3 (or a directory): records/s, commit latency, RSS, and the time to the
    /// first record after a SIGKILL, with every key's count checked (exactly once).
    E2e(e2e::E2eArgs),
    /// One job process of `e2e`, run by it as a child.
    #[command(hide = true)]
    E2eJob(e2e::JobArgs),
    /// One member of `e2e --group-processes`, run by it as a child.
    #[command(hide = true)]
    E2eGroupJob(group::GroupJobArgs),
    /// The Flink peer harness's workload (benches/flink) on a millpond instance, with the
    /// harness's JSON fields: load, updates, gets, a snapshot while updates run, MapState,
    /// then a restore in a fresh process.
    Peer(peer::PeerArgs),
    /// millpond and Flink's state backends (through benches/flink) on identical workloads:
    /// the case study's table with ratios, and plots.
    Compare(compare::CompareArgs),
    /// The workload half of `peer`, run by it in a child process.
    #[command(hide = true)]
    PeerRun(peer::PeerArgs),
    /// The restore half of `peer`, run by it in a child process.
    #[command(hide = true)]
    PeerRestore(peer::PeerArgs),
}

fn main() {
    // Process start, as near as main gets: `recovery-restore` times its restore from here,
    // `e2e-job` its first record after a restart.
    let started = Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::State(args) => state::run(args),
        Command::Wal(args) => wal::run(args),
        Command::Recovery(args) => recovery::run(args),
        Command::RecoveryRestore(args) => recovery::run_restore(args, started),
        Command::RecoverySteadyJob(args) => steady::run_job(args),
        Command::RecoverySteadyRestore(args) => steady::run_restore(args, started),
        Command::E2e(args) => e2e::run(args),
        Command::E2eJob(args) => e2e::run_job(args, started),
        Command::E2eGroupJob(args) => group::run_member(args),
        Command::Peer(args) => peer::run(args),
        Command::Compare(args) => compare::run(args),
        Command::PeerRun(args) => peer::run_job(args),
        Command::PeerRestore(args) => peer::run_restore(args, started),
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("millpond-bench: {e}");
            std::process::exit(1);
        }
    }
}
