//! The `compare` command: millpond and Flink's state backends on identical workloads, one
//! after the other on this machine, and the case study's table with the ratio millpond / peer
//! on every row.
//!
//! millpond runs as `peer` (this binary); each Flink backend runs through the peer harness in
//! `benches/flink` (built with Maven when its jar is missing). Both print the same JSON fields,
//! so the table reads the same field on each side. The raw JSON lines, the table (Markdown)
//! and the plots (SVG) go to `--out`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::plot::{self, Series, Timeline};
use crate::util::{child_json, free_bytes, loadavg_1m, parse_bytes, PLOTTED_PERCENTILES};

/// The Flink backends the harness knows, in the table's order.
const FLINK_BACKENDS: [&str; 3] = ["hashmap", "rocksdb", "forst"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// 1M keys of 100 B (108 MB of state), 1 GiB budget, 3 s phases: a few minutes.
    Small,
    /// The case study's 10 GB: 93M keys of 100 B, 1 GiB budget (a tenth of the state), 10 s
    /// phases. The heap backend cannot hold it (it needs ~2.5× the state as heap) and is
    /// skipped; needs ~55 GB of free disk (checked first) and an hour or more.
    #[value(name = "10g")]
    TenG,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The workload's size.
    #[arg(long, value_enum, default_value = "small")]
    scale: Scale,
    /// Which to run, comma-separated: millpond, hashmap, rocksdb, forst (default: all the
    /// scale runs).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Runs of each; the table shows each field's median.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Override the scale's keys.
    #[arg(long)]
    keys: Option<u64>,
    /// Override the scale's seconds per phase.
    #[arg(long)]
    seconds: Option<f64>,
    /// Override the scale's memory budget (both sides get the same).
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Zipf exponent of key choice; 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Where results, the table and the plots go.
    #[arg(long, default_value = "target/compare")]
    out: PathBuf,
    /// Where the work directories are made (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// millpond takes only the snapshot the timeline asks for, covering every change since
    /// the load (`peer --one-snapshot`; the figures before 2026-12-07). Default: its own
    /// volume and time triggers run, as in a job.
    #[arg(long)]
    one_snapshot: bool,
    /// The Flink peer harness (built with `mvn package` in benches/flink when missing).
    #[arg(long)]
    jar: Option<PathBuf>,
    /// The `java` that runs the harness.
    #[arg(long, default_value = "java")]
    java: String,
}

struct Workload {
    keys: u64,
    seconds: f64,
    memory_budget: u64,
    backends: Vec<String>,
}

impl CompareArgs {
    fn workload(&self) -> Result<Workload, String> {
        let (keys, seconds, budget, all): (u64, f64, u64, &[&str]) = match self.scale {
            Scale::Small => (
                1_000_000,
                3.0,
                1 << 30,
                &["millpond", "hashmap", "rocksdb", "forst"],
            ),
            Scale::TenG => (
                (10_000_000_000 / (8 + self.value_bytes as u64)).min(u32::MAX as u64),
                10.0,
                1 << 30,
                &["millpond", "rocksdb", "forst"],
            ),
        };
        let backends: Vec<String> = if self.only.is_empty() {
            all.iter().map(|s| s.to_string()).collect()
        } else {
            self.only.clone()
        };
        for b in &backends {
            if b != "millpond" && !FLINK_BACKENDS.contains(&b.as_str()) {
                return Err(format!(
                    "--only: unknown {b} (millpond, hashmap, rocksdb, forst)"
                ));
            }
        }
        Ok(Workload {
            keys: self.keys.unwrap_or(keys),
            seconds: self.seconds.unwrap_or(seconds),
            memory_budget: self.memory_budget.unwrap_or(budget),
            backends,
        })
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The workspace root (this crate is `benches/` in it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_owned()
}

/// The harness's jar, built when missing.
fn jar(args: &CompareArgs) -> Result<PathBuf, String> {
    if let Some(j) = &args.jar {
        return Ok(j.clone());
    }
    let root = workspace();
    let jar = root.join("benches/flink/target/millpond-flink-peer.jar");
    if !jar.exists() {
        eprintln!("compare: building the Flink peer harness (mvn package)");
        let status = Command::new("mvn")
            .args(["-q", "-f"])
            .arg(root.join("benches/flink/pom.xml"))
            .args(["package", "-DskipTests"])
            .status()
            .map_err(|e| format!("mvn: {e} (Maven is needed to build benches/flink)"))?;
        if !status.success() || !jar.exists() {
            return Err(format!("mvn package failed ({status})"));
        }
    }
    Ok(jar)
}

fn run_one(args: &CompareArgs, w: &Workload, backend: &str) -> Result<Value, String> {
    let mut cmd = if backend == "millpond" {
        let mut c = Command::new(std::env::current_exe().map_err(err)?);
        c.arg("peer");
        if args.one_snapshot {
            c.arg("--one-snapshot");
        }
        c
    } else {
        let mut c = Command::new(&args.java);
        c.arg("-jar")
            .arg(jar(args)?)
            .args(["state", "--backend", backend, "--no-baseline"]);
        c
    };
    cmd.args(["--keys", &w.keys.to_string()])
        .args(["--value-bytes", &args.value_bytes.to_string()])
        .args(["--seconds", &w.seconds.to_string()])
        .args(["--zipf", &args.zipf.to_string()])
        .args(["--memory-budget", &w.memory_budget.to_string()])
        .args(["--values", "text"])
        .args(["--map-entries", "16"]);
    if let Some(d) = &args.dir {
        cmd.arg("--dir").arg(d);
    }
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{backend}: {e}"))?;
    let v = Value::Object(child_json(backend, &output)?);
    // Every key was loaded: a miss is a wrong answer, not a figure.
    match num(&v, "get_misses") {
        Some(m) if m > 0.0 => Err(format!("{backend}: {m} gets found no value")),
        _ => Ok(v),
    }
}

/// A row of the table: a field read on each side, how to show it, which way is better.
struct Row {
    label: &'static str,
    field: &'static str,
    unit: Unit,
    higher_is_better: bool,
}

#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Megabytes,
    Micros,
    OpsPerSec,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Megabytes => format!("{:.0} MB", v / 1e6),
            Unit::Micros => format!("{:.2} µs", v / 1e3),
            Unit::OpsPerSec if v >= 1e6 => format!("{:.2}M/s", v / 1e6),
            Unit::OpsPerSec => format!("{:.0}k/s", v / 1e3),
        }
    }
}

const ROWS: [Row; 14] = [
    Row {
        label: "restore: first record",
        field: "restore_first_record_seconds",
        unit: Unit::Seconds,
        higher_is_better: false,
    },
    Row {
        label: "restore: every key read",
        field: "restore_full_seconds",
        unit: Unit::Seconds,
        higher_is_better: false,
    },
    Row {
        label: "RSS after the gets",
        field: "rss_bytes",
        unit: Unit::Megabytes,
        higher_is_better: false,
    },
    Row {
        label: "peak RSS",
        field: "peak_rss_bytes_at_end",
        unit: Unit::Megabytes,
        higher_is_better: false,
    },
    Row {
        label: "read p50",
        field: "get_ns_p50",
        unit: Unit::Micros,
        higher_is_better: false,
    },
    Row {
        label: "read p99",
        field: "get_ns_p99",
        unit: Unit::Micros,
        higher_is_better: false,
    },
    Row {
        label: "read p99.9",
        field: "get_ns_p999",
        unit: Unit::Micros,
        higher_is_better: false,
    },
    Row {
        label: "read-modify-write throughput",
        field: "update_ops_per_sec",
        unit: Unit::OpsPerSec,
        higher_is_better: true,
    },
    Row {
        label: "get throughput",
        field: "get_ops_per_sec",
        unit: Unit::OpsPerSec,
        higher_is_better: true,
    },
    Row {
        label: "updates while snapshotting",
        field: "update_ops_per_sec_during_snapshot",
        unit: Unit::OpsPerSec,
        higher_is_better: true,
    },
    Row {
        label: "snapshot / checkpoint time",
        field: "snapshot_seconds",
        unit: Unit::Seconds,
        higher_is_better: false,
    },
    Row {
        label: "snapshot / checkpoint size",
        field: "snapshot_bytes",
        unit: Unit::Megabytes,
        higher_is_better: false,
    },
    Row {
        label: "MapState puts",
        field: "map_put_ops_per_sec",
        unit: Unit::OpsPerSec,
        higher_is_better: true,
    },
    Row {
        label: "MapState get p99",
        field: "map_get_ns_p99",
        unit: Unit::Micros,
        higher_is_better: false,
    },
];

fn num(v: &Value, field: &str) -> Option<f64> {
    v.get(field).and_then(Value::as_f64)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Each backend's runs: the field's median.
fn field_median(runs: &[Value], field: &str) -> Option<f64> {
    median(runs.iter().filter_map(|r| num(r, field)).collect())
}

/// The table in Markdown: a column per backend, and for each peer the ratio millpond / peer,
/// marked ✓ where millpond is ahead.
fn table(results: &[(String, Vec<Value>)]) -> String {
    let millpond = results.iter().find(|(b, _)| b == "millpond");
    let mut head = String::from("| |");
    let mut rule = String::from("|---|");
    for (b, _) in results {
        head += &format!(" {b} |");
        rule += "---:|";
        if b != "millpond" && millpond.is_some() {
            head += &format!(" millpond / {b} |");
            rule += "---:|";
        }
    }
    let mut out = format!("{head}\n{rule}\n");
    for row in &ROWS {
        out += &format!("| {} |", row.label);
        let mine = millpond.and_then(|(_, runs)| field_median(runs, row.field));
        for (b, runs) in results {
            let v = field_median(runs, row.field);
            out += &format!(" {} |", v.map_or("–".into(), |v| row.unit.show(v)));
            if b != "millpond" && millpond.is_some() {
                out += &match (mine, v) {
                    (Some(m), Some(p)) if p > 0.0 => {
                        let r = m / p;
                        let ahead = if row.higher_is_better {
                            r > 1.0
                        } else {
                            r < 1.0
                        };
                        format!(" {}{} |", ratio(r), if ahead { " ✓" } else { "" })
                    }
                    _ => " – |".into(),
                };
            }
        }
        out += "\n";
    }
    out
}

fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        format!("{r:.3}×")
    }
}

/// The targets, each checked on the medians: (target, met?, the figure).
fn targets(results: &[(String, Vec<Value>)]) -> Vec<(String, Option<bool>, String)> {
    let get = |b: &str, f: &str| {
        results
            .iter()
            .find(|(n, _)| n == b)
            .and_then(|(_, runs)| field_median(runs, f))
    };
    let check = |name: &str, peer: &str, field: &str, want: f64, higher: bool| match (
        get("millpond", field),
        get(peer, field),
    ) {
        (Some(m), Some(p)) if p > 0.0 => {
            let r = m / p;
            let met = if higher { r >= want } else { r <= want };
            (name.to_string(), Some(met), ratio(r))
        }
        _ => (name.to_string(), None, "not measured".into()),
    };
    let mut t = vec![
        check(
            "throughput ≥ 2 × hashmap",
            "hashmap",
            "update_ops_per_sec",
            2.0,
            true,
        ),
        check(
            "throughput ≥ 10 × rocksdb",
            "rocksdb",
            "update_ops_per_sec",
            10.0,
            true,
        ),
        check(
            "read p99 ≤ 1/10 of rocksdb's",
            "rocksdb",
            "get_ns_p99",
            0.1,
            false,
        ),
    ];
    for peer in FLINK_BACKENDS {
        t.push(check(
            &format!("RSS ≤ 1/3 of {peer}'s"),
            peer,
            "rss_bytes",
            1.0 / 3.0,
            false,
        ));
    }
    t.push(check(
        "restore to first record ≥ 10 × faster than rocksdb",
        "rocksdb",
        "restore_first_record_seconds",
        0.1,
        false,
    ));
    t
}

/// The plots; `workload` (keys, budget) goes into every title.
fn plots(
    out: &Path,
    workload: &str,
    results: &[(String, Vec<Value>)],
) -> Result<Vec<PathBuf>, String> {
    let first = |runs: &[Value]| runs.first().cloned().unwrap_or(Value::Null);
    let percentile_series = |field: &str| -> Vec<Series> {
        results
            .iter()
            .filter_map(|(b, runs)| {
                let points: Vec<(f64, f64)> = first(runs)
                    .get(field)?
                    .as_array()?
                    .iter()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect();
                (points.len() == PLOTTED_PERCENTILES.len()).then(|| Series {
                    name: b.clone(),
                    points,
                })
            })
            .collect()
    };
    let mut written = Vec::new();
    for (file, title, field) in [
        (
            "get-latency.svg",
            "Value state get latency",
            "get_latency_percentiles",
        ),
        (
            "restored-get-latency.svg",
            "Get latency right after a restore",
            "restored_get_latency_percentiles",
        ),
        (
            "map-get-latency.svg",
            "MapState get latency",
            "map_get_latency_percentiles",
        ),
    ] {
        let series = percentile_series(field);
        if !series.is_empty() {
            let path = out.join(file);
            plot::latency_percentiles(&path, &format!("{title}, {workload}"), &series)?;
            written.push(path);
        }
    }
    let timelines: Vec<Timeline> = results
        .iter()
        .filter_map(|(b, runs)| {
            let r = first(runs);
            let ops = r
                .get("timeline_ops")?
                .as_array()?
                .iter()
                .map(|v| v.as_u64().unwrap_or(0))
                .collect();
            Some(Timeline {
                name: b.clone(),
                bucket_ms: num(&r, "timeline_bucket_ms")? as u64,
                ops,
                snapshot: Some((
                    num(&r, "timeline_snapshot_start_s")?,
                    num(&r, "timeline_snapshot_end_s")?,
                )),
            })
        })
        .collect();
    if !timelines.is_empty() {
        let path = out.join("throughput-during-snapshot.svg");
        plot::throughput_timeline(
            &path,
            &format!("Updates/s, a snapshot requested a quarter in, {workload}"),
            &timelines,
            true, // log scale: RocksDB's ~100k/s next to millions
        )?;
        written.push(path);
    }
    Ok(written)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_bytes": mem_kb * 1024,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

pub fn run(args: CompareArgs) -> Result<String, String> {
    let w = args.workload()?;
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    std::fs::create_dir_all(&args.out).map_err(err)?;
    let started = Instant::now();
    let load = loadavg_1m();
    if load.is_some_and(|l| l > 0.5) {
        eprintln!(
            "compare: the 1-minute load average is {:.2}: other work on this machine shows in \
             every figure",
            load.unwrap_or(0.0)
        );
    }
    // The largest run needs the most disk: millpond's WAL, store and archive at once.
    let state_bytes = w.keys * (args.value_bytes as u64 + 8);
    let needed = (state_bytes as f64 * crate::recovery::DISK_PER_STATE_BYTE) as u64;
    let work_dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    if let Some(free) = free_bytes(&work_dir) {
        if free < needed {
            return Err(format!(
                "{} has {} GB free; this workload needs about {} GB (--dir elsewhere, or fewer \
                 --keys)",
                work_dir.display(),
                free / 1_000_000_000,
                needed.div_ceil(1_000_000_000)
            ));
        }
    }
    if w.backends.iter().any(|b| b != "millpond") {
        jar(&args)?; // built once, before anything is timed
    }
    let mut results: Vec<(String, Vec<Value>)> =
        w.backends.iter().map(|b| (b.clone(), Vec::new())).collect();
    let mut raw = String::new();
    // Runs interleave backends, so that a slow spell on the machine is spread over all.
    for run in 0..args.runs {
        for (backend, runs) in results.iter_mut() {
            eprintln!(
                "compare: run {}/{} of {backend} ({} keys, {} s phases)",
                run + 1,
                args.runs,
                w.keys,
                w.seconds
            );
            let v = run_one(&args, &w, backend)?;
            raw += &v.to_string();
            raw += "\n";
            runs.push(v);
        }
    }
    std::fs::write(args.out.join("results.jsonl"), &raw).map_err(err)?;
    let workload = format!(
        "{}M keys, {} budget",
        w.keys as f64 / 1e6,
        crate::util::show_bytes_binary(w.memory_budget)
    );
    let written = plots(&args.out, &workload, &results)?;

    let mut report = format!(
        "{} keys × {} B values (text), {} budget, {} s phases, zipf {}, {} run(s) each, medians; \
         ratio = millpond / peer, ✓ = millpond ahead\n\n",
        w.keys,
        args.value_bytes,
        crate::util::show_bytes_binary(w.memory_budget),
        w.seconds,
        args.zipf,
        args.runs
    );
    report += &table(&results);
    report += "\nTargets:\n\n";
    for (name, met, figure) in targets(&results) {
        report += &match met {
            Some(true) => format!("- {name}: {figure} — met\n"),
            Some(false) => format!("- {name}: {figure} — MISSED\n"),
            None => format!("- {name}: not measured\n"),
        };
    }
    report += &format!(
        "\nmachine: {}\nload average (1 min) at start {:?}, at end {:?}; {:.0} s in all\n",
        machine(),
        load,
        loadavg_1m(),
        started.elapsed().as_secs_f64()
    );
    report += "plots:";
    for p in &written {
        report += &format!(" {}", p.display());
    }
    report += "\n";
    std::fs::write(args.out.join("table.md"), &report).map_err(err)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(update: f64, p99: f64) -> Vec<Value> {
        vec![json!({"update_ops_per_sec": update, "get_ns_p99": p99})]
    }

    #[test]
    fn ratios_mark_who_is_ahead() {
        let results = vec![
            ("millpond".to_string(), side(2_000_000.0, 1000.0)),
            ("rocksdb".to_string(), side(100_000.0, 20_000.0)),
        ];
        let t = table(&results);
        let throughput = t.lines().find(|l| l.contains("read-modify-write")).unwrap();
        assert!(throughput.contains("20× ✓"), "{throughput}");
        let p99 = t.lines().find(|l| l.contains("read p99 |")).unwrap();
        assert!(p99.contains("0.050× ✓"), "{p99}");
        let targets = targets(&results);
        assert_eq!(targets[1].1, Some(true));
        assert_eq!(targets[2].1, Some(true));
        assert_eq!(targets[0].1, None);
    }

    #[test]
    fn medians_of_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
