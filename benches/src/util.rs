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
    }
}
