//! Counts words over a generated stream with millpond's keyed state, on the embedded default
//! (a local directory, no services), with a memory budget small enough that state spills to
//! the redb cold tier, and checks every count against a plain map.
//!
//! `cargo run --release --example word_count`

use std::collections::HashMap;
use std::time::Instant;

use millpond::state::{Store, StoreSettings, StringCodec, U64Codec, ValueStateDescriptor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::builder(dir.path())
        .settings(StoreSettings {
            // Small on purpose: the 200k distinct words do not fit, so some live on disk.
            memory_budget_bytes: 16 << 20,
            ..StoreSettings::default()
        })
        .open()?;
    let counts = store.value_state(ValueStateDescriptor::new(
        "word-counts",
        StringCodec,
        U64Codec,
    ))?;

    // A deterministic stream of 2M words over a 200k-word vocabulary, skewed like text.
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    for _ in 0..2_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let rank = (x % 1000) * (x % 200) + (x >> 40) % 200; // many rare words, some common ones
        let word = format!("w{}", rank % 200_000);
        counts.update_with(&word, |n| Some(n.unwrap_or(0) + 1))?;
        *expected.entry(word).or_default() += 1;
    }
    let elapsed = start.elapsed();

    for (word, n) in &expected {
        let got = counts.get(word)?;
        if got != Some(*n) {
            return Err(format!("count of {word}: expected {n}, got {got:?}").into());
        }
    }
    let stats = store.stats();
    println!(
        "counted 2000000 words ({} distinct) in {:.2?}; every count exact",
        expected.len(),
        elapsed
    );
    println!(
        "hot tier: {} entries, {} KiB; evicted {}; cold reads {}",
        stats.hot_entries,
        stats.hot_bytes / 1024,
        stats.evictions,
        stats.cold_reads
    );
    let mut top: Vec<_> = expected.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (word, n) in top.iter().take(3) {
        println!("  {word}: {n}");
    }
    store.close()?;
    Ok(())
}
