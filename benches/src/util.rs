//! Measuring helpers shared by the benchmarks.

use hdrhistogram::Histogram;

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    status_kb("VmRSS:") * 1024
}

/// Peak resident set size of this process, in bytes (Linux).
pub fn peak_rss_bytes() -> u64 {
    status_kb("VmHWM:") * 1024
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Parses sizes like `1000`, `64K`, `110M`, `2G` (powers of 1024) or `1.5G`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s}"))?;
    if n.is_nan() || n < 0.0 {
        return Err(format!("not a size: {s}"));
    }
    Ok((n * mult as f64) as u64)
}

/// `1 GiB`, `512 MiB`, `1.5 GiB`: sizes given in powers of 1024, shown as given.
pub fn show_bytes_binary(b: u64) -> String {
    let (v, unit) = if b >= 1 << 30 {
        (b as f64 / (1u64 << 30) as f64, "GiB")
    } else {
        (b as f64 / (1u64 << 20) as f64, "MiB")
    };
    format!("{} {unit}", trim_decimals(&format!("{v:.2}")))
}

/// A formatted number without trailing zeros after its decimal point: "1.50" → "1.5",
/// "2.00" → "2", "100" stays.
pub fn trim_decimals(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// The result a benchmark's child process printed: the last line of its stdout that is a JSON
/// object (its progress goes to stderr). An `error` field in it (the Flink harness reports
/// its failures so), a failed exit or no such line is an error naming `what`.
pub fn child_json(
    what: &str,
    output: &std::process::Output,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rfind(|l| l.starts_with('{'));
    let parsed = line.map(serde_json::from_str::<serde_json::Value>);
    if let Some(Ok(serde_json::Value::Object(m))) = &parsed {
        if let Some(e) = m.get("error") {
            return Err(format!("the {what} process failed: {e}"));
        }
    }
    if !output.status.success() {
        return Err(format!("the {what} process failed: {}", output.status));
    }
    match parsed {
        Some(Ok(serde_json::Value::Object(m))) => Ok(m),
        Some(_) => Err(format!(
            "the {what} process printed no JSON object: {}",
            line.unwrap_or_default()
        )),
        None => Err(format!("the {what} process printed no result")),
    }
}

/// The S3 store of the archive's bucket, configured like `Archive::open` does.
pub fn s3_store(bucket: &str) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, String> {
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var_os("AWS_DEFAULT_REGION").is_none() && std::env::var_os("AWS_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    Ok(std::sync::Arc::new(
        builder.build().map_err(|e| e.to_string())?,
    ))
}

/// Deletes every object under `prefix` of `bucket` (the S3 store of [`s3_store`]); how many.
pub fn s3_delete_prefix(bucket: &str, prefix: &str) -> Result<usize, String> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let store = s3_store(bucket)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let p = object_store::path::Path::from(prefix);
        let metas: Vec<_> = store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        for m in &metas {
            store.delete(&m.location).await.map_err(|e| e.to_string())?;
        }
        Ok(metas.len())
    })
}

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// p50, p99 and p99.9 of a histogram, or `None` if it is empty.
pub fn percentiles(h: &Histogram<u64>) -> Option<(u64, u64, u64)> {
    (!h.is_empty()).then(|| {
        (
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
        )
    })
}

/// Writes `3` to drop_caches after a sync: clean page cache for the next timed read. False if
/// not allowed (not root, or a read-only /proc/sys).
pub fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// The 1-minute load average: other work on the machine shows in every figure.
pub fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes free on the filesystem of `path` (`df`), if it can tell.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// `cp -r from to`, then `sync`: the plain copy restores are measured against. Seconds taken.
pub fn copy_dir_synced(from: &std::path::Path, to: &std::path::Path) -> Result<f64, String> {
    let t = std::time::Instant::now();
    let cp = std::process::Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| e.to_string())?;
    let sync = std::process::Command::new("sync")
        .status()
        .map_err(|e| e.to_string())?;
    if !cp.success() || !sync.success() {
        return Err(format!("cp -r or sync of {} failed", from.display()));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Bytes of the files under `dir`, recursively (0 if it does not exist).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The text-like value of key `k` at `version`: an 8-byte little-endian version counter, then
/// text determined by the key, `len` bytes in all. The Flink peer harness's `Measure.value`
/// makes the same bytes for version 0.
pub fn text_value(k: u64, version: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&version.to_le_bytes());
    let mut rng = Rng::new((k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    fill_text(&mut rng, len, out);
}

/// The key indices a benchmark thread cycles through (2^20 of them): uniform from the
/// xorshift64* generator seeded `0x5eed + thread`, or Zipf ranks scattered over the key space
/// so that hot keys are not adjacent. The Flink peer harness draws the same uniform sequence
/// for thread 0.
pub fn key_sequence(keys: u64, zipf: f64, thread: usize) -> Vec<u32> {
    const LEN: usize = 1 << 20;
    if zipf > 0.0 {
        let zipf = rand_distr::Zipf::new(keys as f64, zipf).expect("valid zipf parameters");
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(42 + thread as u64);
        (0..LEN)
            .map(|_| {
                let rank = rand_distr::Distribution::sample(&zipf, &mut rng) as u64 - 1;
                (rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) % keys) as u32
            })
            .collect()
    } else {
        let mut rng = Rng::new(0x5eed + thread as u64);
        (0..LEN).map(|_| rng.below(keys) as u32).collect()
    }
}

/// Percentiles at which latency distributions are reported (`*_latency_percentiles`) and
/// plotted; 0 is the minimum and 100 the maximum. The Flink peer harness uses the same.
pub const PLOTTED_PERCENTILES: [f64; 14] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// `[[percentile, ns], ...]` at [`PLOTTED_PERCENTILES`], for the JSON line.
pub fn latency_percentiles(h: &Histogram<u64>) -> serde_json::Value {
    PLOTTED_PERCENTILES
        .iter()
        .map(|&p| {
            let ns = match p {
                0.0 => h.min(),
                100.0 => h.max(),
                p => h.value_at_percentile(p),
            };
            serde_json::json!([p, ns])
        })
        .collect()
}

/// A small fast PRNG (xorshift64*), so that key choice costs next to nothing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[0, n)`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Words of the text-like values the benchmarks store (compressible like JSON events, not
/// like zeros). The Flink peer harness (benches/flink) generates the same bytes.
const WORDS: [&[u8]; 32] = [
    b"user",
    b"click",
    b"view",
    b"session",
    b"page",
    b"home",
    b"cart",
    b"checkout",
    b"search",
    b"mobile",
    b"desktop",
    b"true",
    b"false",
    b"null",
    b"event",
    b"ts",
    b"id",
    b"country",
    b"de",
    b"us",
    b"fr",
    b"price",
    b"item",
    b"category",
    b"referrer",
    b"campaign",
    b"email",
    b"open",
    b"ok",
    b"error",
    b"type",
    b"value",
];
const SEPARATORS: [u8; 4] = [b' ', b',', b':', b'"'];

/// Appends words, five-digit numbers and separators drawn from `rng` to `out` until it holds
/// `len` bytes (cut to exactly `len`).
pub fn fill_text(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 5];
    while out.len() < len {
        let r = rng.next_u64();
        if r.is_multiple_of(5) {
            let mut x = (r >> 32) % 100_000;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (x % 10) as u8;
                x /= 10;
            }
            out.extend_from_slice(&digits);
        } else {
            out.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()]);
        }
        out.push(SEPARATORS[(r >> 16) as usize % SEPARATORS.len()]);
    }
    out.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("110M").unwrap(), 110 << 20);
        assert_eq!(parse_bytes("1.5K").unwrap(), 1536);
        assert!(parse_bytes("x").is_err());
        assert_eq!(show_bytes_binary(1 << 30), "1 GiB");
        assert_eq!(show_bytes_binary(1536 << 20), "1.5 GiB");
        assert_eq!(show_bytes_binary(108 << 20), "108 MiB");
    }
}
