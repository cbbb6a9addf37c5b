//! The names of the archive's objects, made and recognised in one place (docs/snapshot.md,
//! "Layout in the archive").
//!
//! Recognising is strict: a name counts only if formatting what it parses gives the same name
//! back, and only as a direct child of its folder. Garbage collection deletes nothing else, so
//! a `manifests/backup/` copy, a sequence with 21 digits or a file someone put in `data/` is
//! never parsed as the archive's, let alone deleted.

/// Folder of the manifests.
pub(crate) const MANIFESTS: &str = "manifests";
/// Folder of the data files.
pub(crate) const DATA: &str = "data";
/// Folder of the pending-snapshot markers.
pub(crate) const PENDING: &str = "pending";

/// `manifests/<sequence, 20 digits>.mpm`.
pub(crate) fn manifest_path(sequence: u64) -> String {
    format!("{MANIFESTS}/{}", manifest_name(sequence))
}

fn manifest_name(sequence: u64) -> String {
    format!("{sequence:020}.mpm")
}

/// The sequence of manifest file name `name` (the last part of its path), if it is exactly
/// `<20 digits>.mpm`.
pub(crate) fn parse_manifest_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".mpm")?;
    let sequence = parse_digits(digits, 20)?;
    (manifest_name(sequence) == name).then_some(sequence)
}

/// A snapshot id: its sequence, then 64 random bits, so that ids never repeat even when
/// two writers race for one sequence.
pub(crate) fn new_id(sequence: u64) -> String {
    format_id(sequence, rand::random::<u64>())
}

fn format_id(sequence: u64, random: u64) -> String {
    format!("{sequence:020}-{random:016x}")
}

/// The sequence of snapshot id `id`, if it is exactly `<20 digits>-<16 lowercase hex>`.
pub(crate) fn parse_id(id: &str) -> Option<u64> {
    let (digits, hex) = id.split_once('-')?;
    let sequence = parse_digits(digits, 20)?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let random = u64::from_str_radix(hex, 16).ok()?;
    (format_id(sequence, random) == id).then_some(sequence)
}

/// The path of data file `n` of snapshot `id`: `data/<id>-<n, at least 5 digits>.mpdf`.
pub(crate) fn data_path(id: &str, n: usize) -> String {
    format!("{DATA}/{}", data_name(id, n))
}

fn data_name(id: &str, n: usize) -> String {
    format!("{id}-{n:05}.mpdf")
}

/// The snapshot id in data file name `name`, if it is exactly what [`data_path`] makes.
pub(crate) fn parse_data_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".mpdf")?;
    let (id, n) = stem.rsplit_once('-')?;
    parse_id(id)?;
    let n: usize = parse_digits(n, 0)?.try_into().ok()?;
    (data_name(id, n) == name).then_some(id)
}

/// `pending/<snapshot id>.mpp`.
pub(crate) fn marker_path(id: &str) -> String {
    format!("{PENDING}/{id}.mpp")
}

/// The snapshot id in marker file name `name`, if it is exactly `<snapshot id>.mpp`.
pub(crate) fn parse_marker_name(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".mpp")?;
    parse_id(id)?;
    Some(id)
}

/// `s` as a decimal number, if it is only ASCII digits (exactly `width` of them, when
/// `width` is not 0) and fits a u64.
fn parse_digits(s: &str, width: usize) -> Option<u64> {
    if s.is_empty() || (width != 0 && s.len() != width) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_are_exactly_twenty_digits() {
        assert_eq!(manifest_path(7), "manifests/00000000000000000007.mpm");
        assert_eq!(parse_manifest_name("00000000000000000007.mpm"), Some(7));
        for stray in [
            "000000000000000000007.mpm", // 21 digits
            "0000000000000000007.mpm",   // 19
            "7.mpm",
            "x.mpm",
            "+0000000000000000007.mpm",
            "00000000000000000007.mpm.bak",
            "00000000000000000007.MPM",
            "99999999999999999999.mpm", // above u64::MAX
            ".mpm",
        ] {
            assert_eq!(parse_manifest_name(stray), None, "{stray}");
        }
        assert_eq!(
            parse_manifest_name(&manifest_name(u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn data_names_are_exactly_what_the_writer_makes() {
        let id = new_id(3);
        assert_eq!(parse_id(&id), Some(3));
        let path = data_path(&id, 4);
        let name = path.strip_prefix("data/").unwrap();
        assert_eq!(parse_data_name(name), Some(id.as_str()));
        let big = data_path(&id, 123_456);
        assert_eq!(
            parse_data_name(big.strip_prefix("data/").unwrap()),
            Some(id.as_str())
        );
        for stray in [
            format!("{id}-4.mpdf"),       // fewer than 5 digits
            format!("{id}-000004.mpdf"),  // a leading zero too many
            format!("{id}-00004.mpdf.1"), // another suffix
            format!("{id}.mpdf"),
            format!("x{id}-00004.mpdf"),
            format!("{}-00004.mpdf", id.to_uppercase()),
            "00000000000000000003-0123-00004.mpdf".to_owned(),
        ] {
            assert_eq!(parse_data_name(&stray), None, "{stray}");
        }
    }

    #[test]
    fn marker_names_carry_a_strict_id() {
        let id = new_id(9);
        let path = marker_path(&id);
        assert_eq!(
            parse_marker_name(path.strip_prefix("pending/").unwrap()),
            Some(id.as_str())
        );
        assert_eq!(parse_marker_name(&format!("{id}.mpp.tmp")), None);
        assert_eq!(parse_marker_name("00000000000000000009.mpp"), None);
    }
}
