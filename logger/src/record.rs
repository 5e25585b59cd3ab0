//! The instruction log's record and its JSON-line form.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// One instruction handled, as the hot path hands it to the instruction log. The node name is
/// added by the writer; the record is turned into JSON on the writer thread, not the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionRecord {
    /// When the instruction was handled.
    pub time: SystemTime,
    /// The client that sent it (shared: a connection clones one `Arc` per record).
    pub client_id: Arc<str>,
    /// The client's id for the instruction.
    pub instruction_id: u64,
    /// What was asked: `put`, `append`, `patch`, ...
    pub op: Cow<'static, str>,
    /// The file it applied to (Ferry's `FilePath` holds an `Arc<str>`: cloning it is a
    /// reference-count bump, and no allocation crosses to the writer thread to be freed there).
    pub path: Arc<str>,
    /// The file's revision after the change, if it was applied.
    pub revision: Option<u64>,
    pub outcome: Outcome,
    /// Time from receipt to outcome, in microseconds.
    pub latency_us: u64,
}

/// How an instruction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused or failed, with Ferry's error code (e.g. `revision_conflict`).
    Error(Cow<'static, str>),
}

#[derive(Serialize)]
struct DropNoticeLine<'a> {
    #[serde(serialize_with = "rfc3339_micros")]
    time: SystemTime,
    node: &'a str,
    event: &'static str,
    count: u64,
    reason: &'a str,
}

fn rfc3339_micros<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

impl InstructionRecord {
    /// Appends the record as one JSON line (with `node`) to `out`:
    /// `{"time":"<RFC 3339, µs, UTC>","node":..,"client_id":..,"instruction_id":N,"op":..,
    /// "path":..,"revision":N,"outcome":"ok"|"error","error_code":..,"latency_us":N}`, where
    /// `revision` and `error_code` appear only when there is one.
    ///
    /// Written by hand rather than through serde's derive: this runs once per record on the
    /// writer thread and sets its throughput; strings that need escaping go through serde_json.
    pub fn write_json_line(&self, node: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_time(self.time, out);
        out.extend_from_slice(b"\",\"node\":");
        write_str(node, out);
        out.extend_from_slice(b",\"client_id\":");
        write_str(&self.client_id, out);
        out.extend_from_slice(b",\"instruction_id\":");
        write_u64(self.instruction_id, out);
        out.extend_from_slice(b",\"op\":");
        write_str(&self.op, out);
        out.extend_from_slice(b",\"path\":");
        write_str(&self.path, out);
        if let Some(revision) = self.revision {
            out.extend_from_slice(b",\"revision\":");
            write_u64(revision, out);
        }
        match &self.outcome {
            Outcome::Ok => out.extend_from_slice(b",\"outcome\":\"ok\""),
            Outcome::Error(code) => {
                out.extend_from_slice(b",\"outcome\":\"error\",\"error_code\":");
                write_str(code, out);
            }
        }
        out.extend_from_slice(b",\"latency_us\":");
        write_u64(self.latency_us, out);
        out.extend_from_slice(b"}\n");
    }
}

fn write_u64(value: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A JSON string: copied as is when nothing needs escaping (the common case, checked without
/// branching per byte), escaped by serde_json otherwise.
fn write_str(value: &str, out: &mut Vec<u8>) {
    let needs_escape =
        value.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if needs_escape {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second seen on this thread: records
    /// arrive in bursts within one second, so the calendar arithmetic is done once per second.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `time` as RFC 3339 in UTC with microseconds, e.g. `2026-11-22T00:35:12.123456Z`.
fn write_time(time: SystemTime, out: &mut Vec<u8>) {
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let prefix = SECOND.with(|cell| {
        let (cached_secs, prefix) = cell.get();
        if cached_secs == secs {
            return prefix;
        }
        let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let text = humantime::format_rfc3339_seconds(whole).to_string();
        let mut prefix = [0u8; 19];
        prefix.copy_from_slice(&text.as_bytes()[..19]);
        cell.set((secs, prefix));
        prefix
    });
    out.extend_from_slice(&prefix);
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut rest = micros;
    for slot in digits[1..7].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Appends the instruction log's notice that `count` records were lost, as one JSON line:
/// `{"time":..,"node":..,"event":"records_dropped","count":N,"reason":..}`.
pub(crate) fn write_drop_notice(
    time: SystemTime,
    node: &str,
    count: u64,
    reason: &str,
    out: &mut Vec<u8>,
) {
    let line = DropNoticeLine { time, node, event: "records_dropped", count, reason };
    write_line(&line, out);
}

fn write_line<T: Serialize>(line: &T, out: &mut Vec<u8>) {
    let start = out.len();
    // Serialising plain strings and integers into a Vec cannot fail; if it ever did, drop the
    // partial line rather than corrupt the next one.
    if serde_json::to_writer(&mut *out, line).is_err() {
        out.truncate(start);
        return;
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(outcome: Outcome, revision: Option<u64>) -> InstructionRecord {
        InstructionRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            client_id: Arc::from("client-\"7\""),
            instruction_id: 42,
            op: Cow::Borrowed("put"),
            path: Arc::from("/home/alice/notes.txt"),
            revision,
            outcome,
            latency_us: 125,
        }
    }

    #[test]
    fn ok_record_is_one_json_line_with_every_field() {
        let mut out = Vec::new();
        record(Outcome::Ok, Some(7)).write_json_line("node-a", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"node\":\"node-a\",\
             \"client_id\":\"client-\\\"7\\\"\",\"instruction_id\":42,\"op\":\"put\",\
             \"path\":\"/home/alice/notes.txt\",\"revision\":7,\"outcome\":\"ok\",\
             \"latency_us\":125}\n"
        );
    }

    #[test]
    fn error_record_carries_code_and_no_revision() {
        let mut out = Vec::new();
        record(Outcome::Error(Cow::Borrowed("revision_conflict")), None)
            .write_json_line("n", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["outcome"], "error");
        assert_eq!(v["error_code"], "revision_conflict");
        assert!(v.get("revision").is_none());
    }

    #[test]
    fn strings_needing_escapes_round_trip() {
        let mut r = record(Outcome::Error(Cow::Borrowed("bad\tcode")), None);
        r.path = Arc::from("/a \"quoted\"\\path\n\u{1}é");
        let mut out = Vec::new();
        r.write_json_line("nö\"de", &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], &*r.path);
        assert_eq!(v["node"], "nö\"de");
        assert_eq!(v["error_code"], "bad\tcode");
    }

    #[test]
    fn time_is_right_across_seconds_and_before_the_epoch() {
        let stamp = |t: SystemTime| {
            let mut out = Vec::new();
            write_time(t, &mut out);
            String::from_utf8(out).unwrap()
        };
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_799_999_999);
        assert_eq!(stamp(base + Duration::from_micros(999_999)), "2027-01-15T07:59:59.999999Z");
        assert_eq!(stamp(base + Duration::from_micros(1_000_001)), "2027-01-15T08:00:00.000001Z");
        assert_eq!(stamp(base), "2027-01-15T07:59:59.000000Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(stamp(before), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn drop_notice_states_the_count() {
        let mut out = Vec::new();
        write_drop_notice(SystemTime::UNIX_EPOCH, "n", 1234, "queue_full", &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"], "records_dropped");
        assert_eq!(v["count"], 1234);
        assert_eq!(v["reason"], "queue_full");
        assert_eq!(out.last(), Some(&b'\n'));
    }
}
