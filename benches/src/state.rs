//! The `state` benchmark: value-state read-modify-write and gets, against a plain
//! `Mutex<HashMap<Vec<u8>, Vec<u8>>>` on the same keys in the same run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use millpond_state::{
    thread_cold_reads, BytesCodec, NullSink, Store, StoreSettings, U64Codec, ValueState,
    ValueStateDescriptor,
};
use millpond_wal::{
    CommitDurability, LocalSegmentSink, SegmentSettings, SourceOffset, Wal, WalSettings,
};
use serde_json::json;

use crate::util::{histogram, key_sequence, parse_bytes, peak_rss_bytes, percentiles, rss_bytes};

#[derive(Args, Debug)]
pub struct StateArgs {
    /// Number of distinct keys (8-byte big-endian integers).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Seconds per measured phase (update, get, baseline).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Memory budget (e.g. 110M, 2G). Default: 1 GiB, or enough to hold every key resident.
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Zipf exponent for key choice; 0 = uniform.
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Seconds of the read-modify-write phase (default: --seconds). 0 skips it, so that gets
    /// run with no dirty entries to spill.
    #[arg(long)]
    update_seconds: Option<f64>,
    /// Bytes of the budget for the cold tier's page cache (default: the store's, a tenth).
    #[arg(long, value_parser = parse_bytes)]
    cold_cache: Option<u64>,
    /// Threads doing operations.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where change capture goes: `none` (NullSink) or `local` (the WAL on local segments,
    /// with an asynchronous commit marker every 10,000 updates).
    #[arg(long, default_value = "none")]
    wal: String,
    /// Keep the state directory here instead of a temporary one.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Key indices each thread cycles through: drawn once, shared by millpond and the baseline.
fn key_sequences(args: &StateArgs) -> Vec<Arc<Vec<u32>>> {
    (0..args.threads)
        .map(|t| Arc::new(key_sequence(args.keys, args.zipf, t)))
        .collect()
}

#[inline]
fn bump(v: &mut [u8]) {
    let n = u64::from_le_bytes(v[..8].try_into().unwrap());
    v[..8].copy_from_slice(&(n + 1).to_le_bytes());
}

/// Runs `op` on every thread for `seconds`, over its key sequence; returns total ops/s.
fn timed<F>(threads: usize, seconds: f64, seqs: &[Arc<Vec<u32>>], op: F) -> f64
where
    F: Fn(u64) + Sync,
{
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seq = &seqs[t];
                let op = &op;
                s.spawn(move || {
                    let mut n = 0u64;
                    let t0 = Instant::now();
                    'outer: loop {
                        for chunk in seq.chunks(1024) {
                            for &k in chunk {
                                op(k as u64);
                            }
                            n += chunk.len() as u64;
                            if t0.elapsed() >= deadline {
                                break 'outer;
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

pub fn run(args: StateArgs) -> Result<String, String> {
    if args.keys == 0 || args.keys > u32::MAX as u64 || args.value_bytes < 8 || args.threads == 0 {
        return Err("need 1 <= keys <= 2^32-1, value-bytes >= 8, threads >= 1".into());
    }
    let state_bytes = args.keys * (8 + args.value_bytes as u64);
    let budget = args.memory_budget.unwrap_or(1 << 30) as usize;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let seqs = key_sequences(&args);

    let wal = match args.wal.as_str() {
        "none" => None,
        "local" => {
            let sink = LocalSegmentSink::open(dir.join("wal"), SegmentSettings::default())
                .map_err(|e| e.to_string())?;
            let settings = WalSettings {
                commit_durability: CommitDurability::Async,
                ..WalSettings::default()
            };
            Some(Arc::new(Wal::start(sink, 1, settings)))
        }
        other => return Err(format!("--wal must be none or local, not {other}")),
    };
    let builder = Store::builder(dir.join("state")).settings(StoreSettings {
        memory_budget_bytes: budget,
        cold_cache_bytes: args.cold_cache.map(|b| b as usize),
        ..StoreSettings::default()
    });
    let builder = match &wal {
        Some(w) => builder.change_sink_arc(w.clone()),
        None => builder.change_sink(NullSink),
    };
    let store = builder.open().map_err(|e| e.to_string())?;
    let commits = std::sync::atomic::AtomicU64::new(0);
    let ops = std::sync::atomic::AtomicU64::new(0);
    let commit_every = || {
        if let Some(w) = &wal {
            if ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000 == 9_999 {
                let c = commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _durable = w
                    .commit(&[SourceOffset {
                        topic: "bench".into(),
                        partition: 0,
                        next_offset: c as i64,
                    }])
                    .expect("commit");
            }
        }
    };
    let state: ValueState<u64, Vec<u8>> = store
        .value_state(ValueStateDescriptor::new("bench", U64Codec, BytesCodec))
        .map_err(|e| e.to_string())?;

    // Load every key once, in order.
    let value = vec![0u8; args.value_bytes];
    let t0 = Instant::now();
    for k in 0..args.keys {
        state.update(&k, &value).map_err(|e| e.to_string())?;
    }
    store.flush().map_err(|e| e.to_string())?;
    let load_seconds = t0.elapsed().as_secs_f64();

    let vb = args.value_bytes;
    let update_seconds = args.update_seconds.unwrap_or(args.seconds);
    let update_ops = if update_seconds <= 0.0 {
        0.0
    } else {
        timed(args.threads, update_seconds, &seqs, |k| {
            state
                .update_with(&k, |v| {
                    let mut v = v.unwrap_or_else(|| vec![0; vb]);
                    bump(&mut v);
                    Some(v)
                })
                .expect("update");
            commit_every();
        })
    };

    // Gets, timed one by one, split by whether they read the cold tier.
    let deadline = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let (hot, cold, gets) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let seq = &seqs[t];
                let state = &state;
                s.spawn(move || {
                    let (mut hot, mut cold) = (histogram(), histogram());
                    let mut n = 0u64;
                    let t0 = Instant::now();
                    'outer: loop {
                        for chunk in seq.chunks(1024) {
                            for &k in chunk {
                                let before = thread_cold_reads();
                                let t = Instant::now();
                                let v = state.get(&(k as u64)).expect("get");
                                let ns = t.elapsed().as_nanos() as u64;
                                std::hint::black_box(v);
                                let h = if thread_cold_reads() == before {
                                    &mut hot
                                } else {
                                    &mut cold
                                };
                                h.record(ns.max(1)).expect("in range");
                            }
                            n += chunk.len() as u64;
                            if t0.elapsed() >= deadline {
                                break 'outer;
                            }
                        }
                    }
                    (hot, cold, n)
                })
            })
            .collect();
        let (mut hot, mut cold, mut n) = (histogram(), histogram(), 0);
        for h in handles {
            let (a, b, c) = h.join().unwrap();
            hot.add(a).unwrap();
            cold.add(b).unwrap();
            n += c;
        }
        (hot, cold, n)
    });
    let get_ops = gets as f64 / start.elapsed().as_secs_f64();
    let stats = store.stats();
    let rss = rss_bytes();
    let peak_rss = peak_rss_bytes();
    let wal_stats = wal.as_ref().map(|w| w.stats());
    drop(state);
    store.close().map_err(|e| e.to_string())?;
    drop(store);
    if let Some(w) = wal {
        w.close().map_err(|e| e.to_string())?;
    }

    // The baseline, after millpond's RSS was taken: a plain locked HashMap, same keys, same op.
    let map: Mutex<HashMap<Vec<u8>, Vec<u8>>> = Mutex::new(HashMap::new());
    {
        let mut m = map.lock().unwrap();
        for k in 0..args.keys {
            m.insert(k.to_be_bytes().to_vec(), value.clone());
        }
    }
    let baseline_ops = timed(args.threads, args.seconds, &seqs, |k| {
        let key = k.to_be_bytes();
        let mut m = map.lock().unwrap();
        let mut v = m.get(&key[..]).cloned().unwrap_or_else(|| vec![0; vb]);
        bump(&mut v);
        match m.get_mut(&key[..]) {
            Some(slot) => *slot = v,
            None => {
                m.insert(key.to_vec(), v);
            }
        }
    });

    // The baseline's get latency, timed the same way: what memory alone costs on this machine.
    let mut base_get = histogram();
    {
        let t0 = Instant::now();
        'outer: loop {
            for chunk in seqs[0].chunks(1024) {
                for &k in chunk {
                    let key = (k as u64).to_be_bytes();
                    let t = Instant::now();
                    let v = map.lock().unwrap().get(&key[..]).cloned();
                    let ns = t.elapsed().as_nanos() as u64;
                    std::hint::black_box(v);
                    base_get.record(ns.max(1)).expect("in range");
                }
                if t0.elapsed() >= deadline {
                    break 'outer;
                }
            }
        }
    }
    let (bp50, bp99, bp999) = percentiles(&base_get).unzip3();
    let (hp50, hp99, hp999) = percentiles(&hot).unzip3();
    let (cp50, cp99, cp999) = percentiles(&cold).unzip3();
    Ok(json!({
        "bench": "state",
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "threads": args.threads,
        "zipf": args.zipf,
        "seconds_per_phase": args.seconds,
        "state_bytes": state_bytes,
        "memory_budget_bytes": budget,
        "load_seconds": load_seconds,
        "update_ops_per_sec": update_ops.round(),
        "get_ops_per_sec": get_ops.round(),
        "hot_gets": hot.len(),
        "hot_get_ns_p50": hp50,
        "hot_get_ns_p99": hp99,
        "hot_get_ns_p999": hp999,
        "cold_gets": cold.len(),
        "cold_get_ns_p50": cp50,
        "cold_get_ns_p99": cp99,
        "cold_get_ns_p999": cp999,
        "rss_bytes": rss,
        "peak_rss_bytes": peak_rss,
        "rss_limit_bytes": budget as u64 + budget as u64 / 10 + (64 << 20),
        "wal": args.wal,
        "wal_bytes_written": wal_stats.map(|s| s.bytes_written),
        "wal_batches_written": wal_stats.map(|s| s.batches_written),
        "hot_entries": stats.hot_entries,
        "hot_bytes": stats.hot_bytes,
        "evictions": stats.evictions,
        "baseline_update_ops_per_sec": baseline_ops.round(),
        "update_vs_baseline": (update_ops / baseline_ops * 1000.0).round() / 1000.0,
        "baseline_get_ns_p50": bp50,
        "baseline_get_ns_p99": bp99,
        "baseline_get_ns_p999": bp999,
    })
    .to_string())
}

trait Unzip3 {
    fn unzip3(self) -> (Option<u64>, Option<u64>, Option<u64>);
}

impl Unzip3 for Option<(u64, u64, u64)> {
    fn unzip3(self) -> (Option<u64>, Option<u64>, Option<u64>) {
        match self {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        }
    }
}
