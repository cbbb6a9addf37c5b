//! A running instance's local disk stays bounded (docs/state.md, "Cold tier rotation"): after
//! each snapshot the store reads the snapshot's runs from `{data_dir}/base/`, which holds
//! exactly the files of the latest manifest, and its redb cold tier keeps only what was
//! evicted since about the last snapshot (an active and at most one sealed file), not every
//! entry evicted since the process started. Reads stay exact throughout, on a fresh instance
//! and on one restored from its snapshot.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use millpond::state::{BytesCodec, StoreSettings, StringCodec, ValueState, ValueStateDescriptor};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 40_000;
const VALUE_BYTES: usize = 200;
/// Keys changed between two snapshots: a twentieth of the state.
const CHANGED_PER_ROUND: u64 = 2_000;

fn open(dir: &Path) -> (Millpond, ValueState<String, Vec<u8>>) {
    let opening = Millpond::builder(dir)
        .settings(Settings {
            store: StoreSettings {
                // A quarter of the state or less: most of it lives below the hot tier.
                memory_budget_bytes: 4 << 20,
                ..StoreSettings::default()
            },
            snapshot_after_changes: u64::MAX,
            snapshot_after_wal_bytes: u64::MAX,
            snapshot_interval_max: None,
            compaction: None,
            ..Settings::default()
        })
        .open()
        .unwrap();
    let state = opening
        .store()
        .value_state(ValueStateDescriptor::new("values", StringCodec, BytesCodec))
        .unwrap();
    (opening.recover().unwrap(), state)
}

fn key(k: u64) -> String {
    format!("key-{k}")
}

fn value(k: u64, version: u64) -> Vec<u8> {
    let mut v = vec![(k % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&version.to_le_bytes());
    v
}

fn names(dir: &Path, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

fn cold_files(dir: &Path) -> BTreeSet<String> {
    names(&dir.join("state"), |n| {
        n.starts_with("cold") && n.ends_with(".redb")
    })
}

fn cold_bytes(dir: &Path) -> u64 {
    cold_files(dir)
        .iter()
        .map(|n| std::fs::metadata(dir.join("state").join(n)).map_or(0, |m| m.len()))
        .sum()
}

/// Waits until the snapshot thread has installed `manifest_files` below the store: `base/`
/// holds exactly them.
fn wait_installed(dir: &Path, manifest_files: &BTreeSet<String>) {
    let started = Instant::now();
    loop {
        let local = names(&dir.join("base"), |_| true);
        if &local == manifest_files {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "base/ holds {local:?}, not the latest manifest's {manifest_files:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(state: &ValueState<String, Vec<u8>>, model: &HashMap<u64, u64>, when: &str) {
    for k in 0..KEYS {
        let expected = model.get(&k).map(|&v| value(k, v));
        assert_eq!(state.get(&key(k)).unwrap(), expected, "{when}: key {k}");
    }
}

/// The model of the state and what drives the changes.
struct Workload {
    model: HashMap<u64, u64>,
    rng: StdRng,
    offset: i64,
    /// What the cold tier held after the initial load.
    everything: u64,
}

/// Runs `rounds` of changes, each committed and snapshotted, checking the disk and the
/// state after each.
fn rounds(
    dir: &Path,
    job: &Millpond,
    state: &ValueState<String, Vec<u8>>,
    w: &mut Workload,
    rounds: usize,
) {
    let mut generations = BTreeSet::new();
    for round in 0..rounds {
        for _ in 0..CHANGED_PER_ROUND {
            let k = w.rng.random_range(0..KEYS);
            if w.rng.random_range(0..20) == 0 {
                state.clear(&key(k)).unwrap();
                w.model.remove(&k);
            } else {
                let version = w.model.get(&k).map_or(1, |v| v + 1);
                state.update(&key(k), &value(k, version)).unwrap();
                w.model.insert(k, version);
            }
        }
        w.offset += CHANGED_PER_ROUND as i64;
        job.commit(&[SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: w.offset,
        }])
        .unwrap()
        .wait()
        .unwrap();
        let report = job.snapshot_now().unwrap().expect("changes to snapshot");
        let files: BTreeSet<String> = report
            .manifest
            .files()
            .map(|f| f.path.rsplit('/').next().unwrap().to_owned())
            .collect();
        wait_installed(dir, &files);
        let cold = cold_files(dir);
        assert!(cold.len() <= 2, "round {round}: cold files {cold:?}");
        generations.extend(cold);
        check(state, &w.model, &format!("round {round}"));
        if round >= 2 {
            // Two snapshot intervals of evictions, far below what the load left there.
            let bytes = cold_bytes(dir);
            assert!(
                bytes < w.everything / 3,
                "round {round}: the cold tier holds {bytes} bytes; the load left {}",
                w.everything
            );
        }
    }
    assert!(
        generations.len() > rounds / 2,
        "the cold tier rotated: {generations:?}"
    );
}

#[test]
fn the_cold_tier_stays_small_and_reads_stay_exact_across_snapshots_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (job, state) = open(dir);
    let mut model = HashMap::new();
    for k in 0..KEYS {
        state.update(&key(k), &value(k, 0)).unwrap();
        model.insert(k, 0);
    }
    // Without rotation the cold tier would keep all of this for the life of the process.
    job.store().flush().unwrap();
    let mut w = Workload {
        model,
        rng: StdRng::seed_from_u64(0x00c0_1d7e_e5ee_d001),
        offset: 0,
        everything: cold_bytes(dir),
    };
    rounds(dir, &job, &state, &mut w, 6);
    job.close().unwrap();

    // Restored over its snapshot, on the same directory: the runs are local already.
    let (job, state) = open(dir);
    assert_eq!(job.recovery().replayed, 0);
    check(&state, &w.model, "restored");
    rounds(dir, &job, &state, &mut w, 4);
    job.close().unwrap();
}
