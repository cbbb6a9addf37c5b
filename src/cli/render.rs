//! Showing bytes, times, sizes and tables to people and to JSON readers.
//!
//! Names come from files and archives that anyone may have written (a topic, a state name, a
//! snapshot id, a file path). Printed raw, a name holding `\x1b[…` recolours or retitles the
//! terminal, or moves the cursor to fake output, and one holding `\n` fakes a line. So every
//! name printed as text goes through [`escape`], every whole line through [`terminal_safe`]
//! (the last guard, in `Out` and on stderr), and JSON through [`json`] / [`json_pretty`].

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL and C1: they end
/// lines, move the cursor, start escape sequences) and the invisible format characters that
/// reorder or hide text (bidirectional overrides and isolates, zero-width characters, line and
/// paragraph separators, the byte-order mark).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Appends the escape of `c`: `\n`, `\r`, `\t`, other C0 controls as `\xHH`, the rest as
/// `\uHHHH` (the form JSON also reads, so a line that is JSON stays JSON).
fn push_escape(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if u32::from(c) < 0x20 => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        // Every unsafe character is in the Basic Multilingual Plane: four digits suffice.
        c => {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
    }
}

/// `s` escaped with `escape_this`, borrowed when nothing needs it (the usual case).
fn escape_with(s: &str, escape_this: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&escape_this) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' && escape_this(c) {
            out.push_str("\\\\");
        } else if escape_this(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A name from a file or an archive, safe to print as text: every [`is_unsafe`] character
/// escaped (`\n`, `\x1b`, `\u202e`) and a backslash doubled, so that the output is
/// unambiguous (`\x1b` in the output is always an escape, never four characters of the
/// name). Printable Unicode is kept as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\\' || is_unsafe(c))
}

/// A whole line or message, safe for a terminal: [`is_unsafe`] characters escaped except
/// newline and tab; backslashes kept (names in it may be [`escape`]d already, and must not
/// be escaped twice). The last guard for text that was assembled elsewhere.
pub fn terminal_safe(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| is_unsafe(c) && !matches!(c, '\n' | '\t'))
}

/// `v` as one line of JSON. serde_json escapes quotes, backslashes and C0 controls in strings
/// but writes DEL, C1 controls and format characters raw: these become `\uHHHH` too (the
/// same string to a JSON reader).
pub fn json(v: &Value) -> String {
    json_safe(v.to_string())
}

/// `v` as indented JSON over several lines, escaped as [`json`].
pub fn json_pretty(v: &Value) -> String {
    json_safe(serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()))
}

/// serde_json's output with the unsafe characters it leaves raw escaped. They can only be
/// inside strings (JSON's own syntax is ASCII), where `\uHHHH` means the same character; a
/// raw newline is the pretty printer's, never a string's.
fn json_safe(text: String) -> String {
    match escape_with(&text, |c| is_unsafe(c) && c != '\n') {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

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

/// `bytes` for a person: a quoted string (JSON escapes, [`json`]'s), a number, or `0x…` hex.
pub fn show(bytes: &[u8], how: Render) -> String {
    match render(bytes, how) {
        (v, Encoding::Hex) => format!("0x{}", v.as_str().unwrap_or_default()),
        (v, _) => json(&v),
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

    /// Adds a row (as many cells as columns). Cells are text as it comes (names included):
    /// the table [`escape`]s them.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|c| escape(c).into_owned()).collect());
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
    fn names_are_escaped_for_the_terminal() {
        assert_eq!(escape("in"), "in");
        assert!(matches!(escape("in"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[31mred\nb"), "a\\x1b[31mred\\nb");
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("del\u{7f} csi\u{9b}"), "del\\u007f csi\\u009b");
        assert_eq!(escape("rtl\u{202e}txt"), "rtl\\u202etxt");
        // Printable Unicode, combining marks and emoji included, is kept.
        assert_eq!(escape("Zürich e\u{301} 東京 🦀"), "Zürich e\u{301} 東京 🦀");

        assert_eq!(terminal_safe("a\\x1b\x1b]0;t\x07"), "a\\x1b\\x1b]0;t\\x07");
        assert_eq!(terminal_safe("line\nnext\tcol"), "line\nnext\tcol");
    }

    #[test]
    fn json_escapes_what_serde_json_leaves_raw() {
        let v = serde_json::json!({"t": "a\u{1b}b\u{7f}c\u{9b}d\u{202e}e\nf\\g é"});
        let text = json(&v);
        assert_eq!(text, r#"{"t":"a\u001bb\u007fc\u009bd\u202ee\nf\\g é"}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        let pretty = json_pretty(&v);
        assert!(
            pretty.contains('\n') && !pretty.contains('\u{9b}'),
            "{pretty}"
        );
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), v);
    }

    #[test]
    fn sizes() {
        assert_eq!(size(10), "10 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
