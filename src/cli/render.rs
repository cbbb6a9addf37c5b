//! Showing bytes, times, sizes and tables to people and to JSON readers.

use serde_json::Value;

/// How to show encoded bytes (keys, user keys, values). Whatever is asked, bytes that do not
/// fit it are shown as hex, and the output says which rendering each field got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Render {
    /// UTF-8 text if the bytes are valid UTF-8 without control characters, else hex.
    Auto,
    /// UTF-8 text if valid (control characters included), else hex.
    Utf8,
    /// Lowercase hex, always.
    Hex,
    /// A big-endian u64 (8 bytes, as `U64Codec` writes), else hex.
    U64,
    /// A big-endian i64 (8 bytes, as `I64Codec` writes), else hex.
    I64,
    /// A big-endian u32 (4 bytes, as `U32Codec` writes), else hex.
    U32,
    /// A big-endian i32 (4 bytes, as `I32Codec` writes), else hex.
    I32,
}

/// How a field was rendered: the value of its `*_encoding` field in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON string holding the text.
    Utf8,
    /// A JSON string of lowercase hex digits.
    Hex,
    /// A JSON number: big-endian u64.
    U64,
    /// A JSON number: big-endian i64.
    I64,
    /// A JSON number: big-endian u32.
    U32,
    /// A JSON number: big-endian i32.
    I32,
}

impl Encoding {
    /// Its name in output.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf8",
            Encoding::Hex => "hex",
            Encoding::U64 => "u64",
            Encoding::I64 => "i64",
            Encoding::U32 => "u32",
            Encoding::I32 => "i32",
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn printable(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n'))
}

/// `bytes` as a JSON value, rendered as `how` asks if they fit it, else as hex.
pub fn render(bytes: &[u8], how: Render) -> (Value, Encoding) {
    let as_hex = || (Value::String(hex(bytes)), Encoding::Hex);
    let b8 = <[u8; 8]>::try_from(bytes).ok();
    let b4 = <[u8; 4]>::try_from(bytes).ok();
    match how {
        Render::Hex => as_hex(),
        Render::Auto | Render::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) if how == Render::Utf8 || printable(s) => {
                (Value::String(s.to_owned()), Encoding::Utf8)
            }
            _ => as_hex(),
        },
        Render::U64 => b8.map_or_else(as_hex, |b| (u64::from_be_bytes(b).into(), Encoding::U64)),
        Render::I64 => b8.map_or_else(as_hex, |b| (i64::from_be_bytes(b).into(), Encoding::I64)),
        Render::U32 => b4.map_or_else(as_hex, |b| (u32::from_be_bytes(b).into(), Encoding::U32)),
        Render::I32 => b4.map_or_else(as_hex, |b| (i32::from_be_bytes(b).into(), Encoding::I32)),
    }
}

/// `bytes` for a person: a quoted string (JSON escapes), a number, or `0x…` hex.
pub fn show(bytes: &[u8], how: Render) -> String {
    match render(bytes, how) {
        (v, Encoding::Hex) => format!("0x{}", v.as_str().unwrap_or_default()),
        (v, _) => v.to_string(),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC (`2026-01-31T12:00:00.000Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A size for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A plain text table: a header row and rows, columns padded to fit; the columns in
/// `right` are right-aligned (numbers).
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a column named with a leading `>` is right-aligned (the
    /// `>` is not shown).
    pub fn new(columns: &[&'static str]) -> Self {
        Table {
            header: columns.iter().map(|c| c.trim_start_matches('>')).collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines of the table, each indented by `indent`.
    pub fn lines(&self, indent: &str) -> Vec<String> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .zip(&self.right)
                    .map(|((cell, w), right)| {
                        if *right {
                            format!("{cell:>w$}")
                        } else {
                            format!("{cell:<w$}")
                        }
                    })
                    .collect();
                format!("{indent}{}", cells.join("  ").trim_end())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn bytes_render_as_asked_or_as_hex() {
        assert_eq!(render(b"key-1", Render::Auto).1, Encoding::Utf8);
        assert_eq!(
            render(&[0, 0, 0, 0, 0, 0, 0, 5], Render::Auto).1,
            Encoding::Hex
        );
        assert_eq!(
            render(&[0, 0, 0, 0, 0, 0, 0, 5], Render::U64),
            (Value::from(5u64), Encoding::U64)
        );
        assert_eq!(render(&[1, 2, 3], Render::U64).1, Encoding::Hex);
        assert_eq!(show(&[0xab, 0x01], Render::Auto), "0xab01");
        assert_eq!(show(b"a\"b", Render::Auto), "\"a\\\"b\"");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
