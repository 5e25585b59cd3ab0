//! Rotation decisions, rotated-file names and retention: pure functions, no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_config::logger::RotationPeriod;

/// The UTC period `time` falls in (days or hours since the epoch); `None` without time rotation.
pub(crate) fn period_of(every: RotationPeriod, time: SystemTime) -> Option<u64> {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match every {
        RotationPeriod::Daily => Some(secs / 86_400),
        RotationPeriod::Hourly => Some(secs / 3_600),
        RotationPeriod::Never => None,
    }
}

/// The name a rotated file gets: `<file_name>.<UTC time, colons as dashes>.<seq, 3 digits>`,
/// e.g. `instructions.log.2026-11-22T01-00-00Z.000`; `seq` separates rotations in one second.
pub(crate) fn rotated_name(file_name: &str, time: SystemTime, seq: u32) -> String {
    let stamp = humantime::format_rfc3339_seconds(time).to_string().replace(':', "-");
    format!("{file_name}.{stamp}.{seq:03}")
}

/// Sort key of a rotated file of `file_name` (with or without `.gz`): oldest sorts first.
/// Other files (the active one, temporaries, other streams) give `None`.
pub(crate) fn rotated_key<'a>(file_name: &str, candidate: &'a str) -> Option<&'a str> {
    let rest = candidate.strip_prefix(file_name)?.strip_prefix('.')?;
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let (stamp, seq) = rest.rsplit_once('.')?;
    let well_formed = stamp.len() == 20
        && stamp.ends_with('Z')
        && stamp.as_bytes()[10] == b'T'
        && seq.len() >= 3
        && seq.bytes().all(|b| b.is_ascii_digit());
    well_formed.then_some(rest)
}

/// Which of `names` (a directory listing) to delete so that at most `keep` rotated files of
/// `file_name` remain; a file and its `.gz` twin (mid-compression) count as one.
pub(crate) fn expired(file_name: &str, names: &[String], keep: usize) -> Vec<String> {
    let mut keyed: Vec<(&str, &String)> =
        names.iter().filter_map(|n| rotated_key(file_name, n).map(|k| (k, n))).collect();
    keyed.sort();
    let mut keys: Vec<&str> = keyed.iter().map(|(k, _)| *k).collect();
    keys.dedup();
    let cut = keys.len().saturating_sub(keep);
    let Some(&newest_expired) = cut.checked_sub(1).and_then(|i| keys.get(i)) else {
        return Vec::new();
    };
    keyed.into_iter().filter(|(k, _)| *k <= newest_expired).map(|(_, n)| n.clone()).collect()
}

/// What to do with a pending buffer given the active file's size and the size limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Write this many bytes (whole lines) into the active file.
    Write(usize),
    /// Rotate first: not even one more line fits.
    RotateFirst,
}

/// Splits `pending` at line ends so that no file grows past `max_bytes` (`0`: no limit). A
/// single line longer than the limit goes alone into an empty file.
pub(crate) fn next_chunk(pending: &[u8], file_len: u64, max_bytes: u64) -> Chunk {
    if max_bytes == 0 {
        return Chunk::Write(pending.len());
    }
    let room = max_bytes.saturating_sub(file_len);
    if pending.len() as u64 <= room {
        return Chunk::Write(pending.len());
    }
    let window = &pending[..room as usize];
    match window.iter().rposition(|&b| b == b'\n') {
        Some(end) => Chunk::Write(end + 1),
        None if file_len > 0 => Chunk::RotateFirst,
        None => Chunk::Write(
            pending.iter().position(|&b| b == b'\n').map_or(pending.len(), |end| end + 1),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn periods_change_at_utc_boundaries() {
        let day = RotationPeriod::Daily;
        let hour = RotationPeriod::Hourly;
        assert_eq!(period_of(day, at(86_399)), Some(0));
        assert_eq!(period_of(day, at(86_400)), Some(1));
        assert_eq!(period_of(hour, at(3_599)), Some(0));
        assert_eq!(period_of(hour, at(3_600)), Some(1));
        assert_eq!(period_of(RotationPeriod::Never, at(1 << 40)), None);
    }

    #[test]
    fn rotated_names_round_trip_and_sort_by_age() {
        let a = rotated_name("x.log", at(1_700_000_000), 0);
        assert_eq!(a, "x.log.2023-11-14T22-13-20Z.000");
        let b = rotated_name("x.log", at(1_700_000_000), 1);
        let c = rotated_name("x.log", at(1_700_000_001), 0);
        let gz = format!("{a}.gz");
        assert!(rotated_key("x.log", &a) < rotated_key("x.log", &b));
        assert!(rotated_key("x.log", &b) < rotated_key("x.log", &c));
        assert_eq!(rotated_key("x.log", &gz), rotated_key("x.log", &a));
        for other in ["x.log", "x.logs.2023-11-14T22-13-20Z.000", "y.log.2023-11-14T22-13-20Z.000"]
        {
            assert_eq!(rotated_key("x.log", other), None, "{other}");
        }
        assert_eq!(rotated_key("x.log", &format!("{a}.gz.tmp")), None);
    }

    #[test]
    fn retention_keeps_the_newest_and_counts_twins_once() {
        let names: Vec<String> = (0..5)
            .map(|i| rotated_name("x.log", at(1_700_000_000 + i), 0))
            .chain([
                format!("{}.gz", rotated_name("x.log", at(1_700_000_000), 0)),
                "x.log".to_owned(),
                "other.log".to_owned(),
            ])
            .collect();
        let mut gone = expired("x.log", &names, 3);
        gone.sort();
        let mut want = vec![
            rotated_name("x.log", at(1_700_000_000), 0),
            format!("{}.gz", rotated_name("x.log", at(1_700_000_000), 0)),
            rotated_name("x.log", at(1_700_000_001), 0),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert!(expired("x.log", &names, 5).is_empty());
    }

    #[test]
    fn chunks_end_at_lines_and_respect_the_limit() {
        let buf = b"aaaa\nbbbb\ncccc\n";
        assert_eq!(next_chunk(buf, 0, 0), Chunk::Write(15));
        assert_eq!(next_chunk(buf, 0, 100), Chunk::Write(15));
        assert_eq!(next_chunk(buf, 0, 12), Chunk::Write(10));
        assert_eq!(next_chunk(buf, 8, 12), Chunk::RotateFirst);
        assert_eq!(next_chunk(buf, 0, 3), Chunk::Write(5));
    }
}
