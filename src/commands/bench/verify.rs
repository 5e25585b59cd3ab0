//! The bench's checks, as pure functions: the content of each write (which carries its sequence
//! number and send time), the order of the revisions one watcher received for one file, and
//! whether the acknowledged writes of one file are in the store.

use serde::Serialize;

/// `{seq:012}.{ts_us:013}.`: the start of every write's content.
pub const HEADER_BYTES: usize = SEQ_DIGITS + 1 + TS_DIGITS + 1;
const SEQ_DIGITS: usize = 12;
const TS_DIGITS: usize = 13;

/// How each write changes its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    /// Replace the file: only the last acknowledged write can be read back.
    Put,
    /// Append to the file: every acknowledged write is read back at its revision's offset.
    Append,
}

impl WriteOp {
    pub fn name(self) -> &'static str {
        match self {
            WriteOp::Put => "put",
            WriteOp::Append => "append",
        }
    }
}

/// The letters a content's fill cycles through, twice over, so that any 26 consecutive ones
/// are one slice.
const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";

/// The content of write number `seq`, scheduled `ts_us` microseconds after the run's start:
/// exactly `size` bytes (at least [`HEADER_BYTES`]) of ASCII that needs no JSON escaping.
pub fn content(seq: u64, ts_us: u64, size: usize) -> String {
    let mut text = String::with_capacity(size.max(HEADER_BYTES));
    push_content(&mut text, seq, ts_us, size);
    text
}

/// Appends [`content`]`(seq, ts_us, size)` to `text`, where a request is being written: the
/// generator makes one per write, and filling it a character at a time was a twentieth of
/// its CPU at 20,000 writes/s.
pub fn push_content(text: &mut String, seq: u64, ts_us: u64, size: usize) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(text, "{seq:0SEQ_DIGITS$}.{ts_us:0TS_DIGITS$}.");
    let mut at = HEADER_BYTES;
    while at < size {
        let letter = (seq as usize + at) % 26;
        let run = (size - at).min(26);
        text.push_str(&LETTERS[letter..letter + run]);
        at += run;
    }
}

/// The sequence number and scheduled time in a content made by [`content`]. Read by position:
/// a fan-out watcher reads a million a second, and splitting at the dots and `str::parse` were
/// a twelfth of the generator's CPU there.
pub fn parse_header(content: &str) -> Option<(u64, u64)> {
    let header = content.as_bytes().get(..HEADER_BYTES)?;
    let (seq, rest) = header.split_at(SEQ_DIGITS);
    let (ts, end) = rest.get(1..)?.split_at(TS_DIGITS);
    if rest[0] != b'.' || end != b"." {
        return None;
    }
    Some((decimal(seq)?, decimal(ts)?))
}

/// The number `digits` (ASCII, at most 19 of them) spell; `None` if any is not a digit.
fn decimal(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
}

/// What one subscription's stream of revisions looked like. Any count but `received` is a
/// failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamCheck {
    /// Change events received.
    pub received: u64,
    /// Revisions after the subscription, up to the file's final one, never received.
    pub missing: u64,
    /// Events for a revision already received.
    pub duplicates: u64,
    /// Events for a revision lower than one received before it (received for the first time).
    pub reorders: u64,
    /// Events for a revision at or before the subscription's, or after the file's final one
    /// when every write of the file was answered before it was read back.
    pub unexpected: u64,
    /// Streams that went past the revision read back from a file some of whose writes were
    /// unanswered at the drain deadline: those writes were applied after the read-back. Not a
    /// failure by itself (the unanswered writes are).
    pub past_read_back: u64,
}

impl StreamCheck {
    pub fn add(&mut self, other: &StreamCheck) {
        self.received += other.received;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.reorders += other.reorders;
        self.unexpected += other.unexpected;
        self.past_read_back += other.past_read_back;
    }
}

/// Follows the revisions of one file as one subscription receives them, in constant memory
/// while they arrive in order.
#[derive(Debug, Clone)]
pub struct RevisionSequence {
    /// The file's revision when the subscription was made.
    base: u64,
    /// One above the highest revision received.
    next: u64,
    /// Revisions skipped over, as half-open ranges, not received since.
    holes: Vec<(u64, u64)>,
    check: StreamCheck,
}

impl RevisionSequence {
    /// A subscription answered with the file's revision `base`: the first event expected is
    /// `base + 1`.
    pub fn new(base: u64) -> RevisionSequence {
        RevisionSequence { base, next: base + 1, holes: Vec::new(), check: StreamCheck::default() }
    }

    pub fn observe(&mut self, rev: u64) {
        self.check.received += 1;
        if rev <= self.base {
            self.check.unexpected += 1;
        } else if rev >= self.next {
            if rev > self.next {
                self.holes.push((self.next, rev));
            }
            self.next = rev + 1;
        } else if let Some(i) = self.holes.iter().position(|&(a, b)| a <= rev && rev < b) {
            self.check.reorders += 1;
            let (a, b) = self.holes[i];
            self.holes.swap_remove(i);
            if a < rev {
                self.holes.push((a, rev));
            }
            if rev + 1 < b {
                self.holes.push((rev + 1, b));
            }
        } else {
            self.check.duplicates += 1;
        }
    }

    /// The highest revision received (the base when none was).
    pub fn highest(&self) -> u64 {
        self.next - 1
    }

    /// The verdict once the file was read back at revision `last.rev`.
    pub fn finish(&self, last: ReadBack) -> StreamCheck {
        let mut check = self.check;
        check.missing = self.holes.iter().map(|&(a, b)| b - a).sum::<u64>()
            + (last.rev + 1).saturating_sub(self.next);
        if self.highest() > last.rev {
            if last.settled {
                check.unexpected += 1;
            } else {
                check.past_read_back += 1;
            }
        }
        check
    }
}

/// A file's revision when it was read back after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBack {
    pub rev: u64,
    /// Every write of the file was answered before the read-back, so no later revision can
    /// exist. Writes still unanswered at the drain deadline may be applied after it.
    pub settled: bool,
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub rev: u64,
    pub seq: u64,
    pub ts_us: u64,
}

/// What reading one file back found. Any count but `acked` is a failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileCheck {
    pub acked: u64,
    /// Acknowledged writes not in the store: the store's revision is below theirs, or (append)
    /// their bytes are not at their revision's offset.
    pub lost: u64,
    /// (put) The store is at the last acknowledged revision with other content.
    pub wrong_content: u64,
    /// Two acknowledgements with the same revision.
    pub duplicate_revs: u64,
    /// The store has revisions no acknowledged write explains, with every write answered.
    pub unexplained_revs: u64,
}

impl FileCheck {
    pub fn add(&mut self, other: &FileCheck) {
        self.acked += other.acked;
        self.lost += other.lost;
        self.wrong_content += other.wrong_content;
        self.duplicate_revs += other.duplicate_revs;
        self.unexplained_revs += other.unexplained_revs;
    }
}

/// Checks the writes acknowledged for one fresh file (revision 0 before the run) against what
/// the store holds (`None`: not found). `uncertain` counts writes whose outcome is unknown (no
/// answer, or `unavailable`/`internal`): they may have been applied, so extra revisions are
/// then not a failure.
pub fn check_file(
    op: WriteOp,
    size: usize,
    acked: &mut [Acked],
    uncertain: u64,
    stored: Option<(u64, &[u8])>,
) -> FileCheck {
    acked.sort_unstable_by_key(|a| a.rev);
    let mut check = FileCheck { acked: acked.len() as u64, ..FileCheck::default() };
    check.duplicate_revs = acked.windows(2).filter(|w| w[0].rev == w[1].rev).count() as u64;
    let (stored_rev, bytes) = stored.unwrap_or((0, &[]));
    let last_acked = acked.last().map_or(0, |a| a.rev);
    if uncertain == 0 && stored_rev > last_acked {
        check.unexplained_revs = stored_rev - last_acked;
    }
    match op {
        WriteOp::Put => {
            check.lost = acked.iter().filter(|a| a.rev > stored_rev).count() as u64;
            if let Some(last) = acked.last().filter(|a| a.rev == stored_rev) {
                if bytes != content(last.seq, last.ts_us, size).as_bytes() {
                    check.wrong_content = 1;
                }
            }
        }
        WriteOp::Append => {
            // Revision r appended bytes [(r-1)*size, r*size): only appends write these files.
            check.lost = acked
                .iter()
                .filter(|a| {
                    let start = (a.rev.saturating_sub(1) as usize).saturating_mul(size);
                    let record = bytes.get(start..start.saturating_add(size));
                    a.rev == 0 || record != Some(content(a.seq, a.ts_us, size).as_bytes())
                })
                .count() as u64;
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(base: u64, revs: &[u64], final_rev: u64) -> StreamCheck {
        let mut sequence = RevisionSequence::new(base);
        revs.iter().for_each(|&r| sequence.observe(r));
        sequence.finish(ReadBack { rev: final_rev, settled: true })
    }

    #[test]
    fn an_in_order_stream_is_clean() {
        let check = stream(3, &[4, 5, 6, 7], 7);
        assert_eq!(check, StreamCheck { received: 4, ..StreamCheck::default() });
    }

    #[test]
    fn a_gap_is_missing_revisions() {
        assert_eq!(stream(0, &[1, 2, 5, 6], 6).missing, 2);
        // Events that stop before the file's last revision miss the rest.
        assert_eq!(stream(0, &[1, 2], 5).missing, 3);
        assert_eq!(stream(0, &[], 4).missing, 4);
        assert_eq!(
            stream(0, &[1, 3], 3),
            StreamCheck { received: 2, missing: 1, ..StreamCheck::default() }
        );
    }

    #[test]
    fn a_repeated_revision_is_a_duplicate() {
        let check = stream(0, &[1, 2, 2, 3, 1], 3);
        assert_eq!(
            (check.duplicates, check.missing, check.reorders, check.unexpected),
            (2, 0, 0, 0)
        );
    }

    #[test]
    fn a_late_revision_is_a_reorder_not_a_gap() {
        let check = stream(0, &[1, 3, 2, 4], 4);
        assert_eq!((check.reorders, check.missing, check.duplicates), (1, 0, 0));
        // A reordered revision received twice is also a duplicate.
        let check = stream(0, &[2, 1, 1], 2);
        assert_eq!((check.reorders, check.duplicates), (1, 1));
        // A hole filled in the middle leaves both ends missing.
        let check = stream(0, &[5, 3], 5);
        assert_eq!((check.reorders, check.missing), (1, 3));
    }

    #[test]
    fn revisions_outside_the_subscription_are_unexpected() {
        assert_eq!(stream(5, &[5, 6], 6).unexpected, 1);
        assert_eq!(stream(0, &[1, 2, 3], 2).unexpected, 1);
    }

    #[test]
    fn revisions_past_an_unsettled_read_back_come_from_unanswered_writes() {
        // The fan-out run of 2026-11-22 02:3x: the writer's acks starved, 10,000 writes were
        // unanswered at the drain deadline and applied after the files were read back, so
        // watchers that kept reading saw revisions past the "final" one.
        let mut sequence = RevisionSequence::new(0);
        (1..=7).for_each(|r| sequence.observe(r));
        let unsettled = sequence.finish(ReadBack { rev: 5, settled: false });
        assert_eq!(
            unsettled,
            StreamCheck { received: 7, past_read_back: 1, ..StreamCheck::default() }
        );
        // With every write answered, the same stream is a real anomaly.
        assert_eq!(sequence.finish(ReadBack { rev: 5, settled: true }).unexpected, 1);
        // A gap is missing whether or not the read-back was settled.
        let mut gappy = RevisionSequence::new(0);
        [1, 3].iter().for_each(|&r| gappy.observe(r));
        assert_eq!(gappy.finish(ReadBack { rev: 3, settled: false }).missing, 1);
    }

    #[test]
    fn contents_carry_their_header_and_size() {
        let text = content(42, 1_234_567, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_header(&text), Some((42, 1_234_567)));
        assert_eq!(content(42, 1_234_567, HEADER_BYTES).len(), HEADER_BYTES);
        // The fill: byte i is letter (seq + i) mod 26, across several turns of the alphabet.
        for (seq, size) in [(0, 100), (25, 27 + 26), (7, 500)] {
            let text = content(seq, 0, size);
            assert_eq!(text.len(), size);
            for (i, byte) in text.bytes().enumerate().skip(HEADER_BYTES) {
                assert_eq!(byte, b'a' + ((seq as usize + i) % 26) as u8, "seq {seq} byte {i}");
            }
        }
        let mut frame = String::from("prefix:");
        push_content(&mut frame, 42, 1_234_567, 64);
        assert_eq!(frame, format!("prefix:{}", content(42, 1_234_567, 64)));
        assert_ne!(content(1, 0, 40), content(2, 0, 40));
        assert_eq!(parse_header("not a header at all, really no"), None);
        assert_eq!(parse_header("short"), None);
        let at_most = content(999_999_999_999, 9_999_999_999_999, HEADER_BYTES);
        assert_eq!(parse_header(&at_most), Some((999_999_999_999, 9_999_999_999_999)));
        // One byte off in each place the header is checked.
        let good = content(42, 1_234_567, 40);
        for (at, byte) in [(0, b'x'), (11, b'.'), (12, b'0'), (25, b'-'), (26, b'a')] {
            let mut bad = good.clone().into_bytes();
            bad[at] = byte;
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(parse_header(&bad), None, "{bad:?}");
        }
    }

    fn acked(revs: &[u64]) -> Vec<Acked> {
        revs.iter().map(|&rev| Acked { rev, seq: rev * 10, ts_us: rev }).collect()
    }

    #[test]
    fn put_checks_the_last_acknowledged_write() {
        let last = content(30, 3, 40);
        let check =
            check_file(WriteOp::Put, 40, &mut acked(&[2, 1, 3]), 0, Some((3, last.as_bytes())));
        assert_eq!(check, FileCheck { acked: 3, ..FileCheck::default() });
        let behind = check_file(WriteOp::Put, 40, &mut acked(&[1, 2, 3]), 0, Some((1, b"x")));
        assert_eq!(behind.lost, 2);
        let missing = check_file(WriteOp::Put, 40, &mut acked(&[1]), 0, None);
        assert_eq!(missing.lost, 1);
        let other = content(99, 3, 40);
        let wrong = check_file(WriteOp::Put, 40, &mut acked(&[3]), 0, Some((3, other.as_bytes())));
        assert_eq!(wrong.wrong_content, 1);
        let dup = check_file(WriteOp::Put, 40, &mut acked(&[1, 1]), 0, Some((1, b"")));
        assert_eq!(dup.duplicate_revs, 1);
    }

    #[test]
    fn extra_revisions_fail_only_when_every_write_was_answered() {
        let last = content(20, 2, 40);
        let extra = Some((3, last.as_bytes()));
        assert_eq!(check_file(WriteOp::Put, 40, &mut acked(&[1, 2]), 0, extra).unexplained_revs, 1);
        let uncertain = check_file(WriteOp::Put, 40, &mut acked(&[1, 2]), 1, extra);
        assert_eq!(uncertain, FileCheck { acked: 2, ..FileCheck::default() });
    }

    #[test]
    fn append_checks_every_write_at_its_offset() {
        let writes = acked(&[1, 2, 3]);
        let file: String = writes.iter().map(|a| content(a.seq, a.ts_us, 30)).collect();
        let ok =
            check_file(WriteOp::Append, 30, &mut writes.clone(), 0, Some((3, file.as_bytes())));
        assert_eq!(ok, FileCheck { acked: 3, ..FileCheck::default() });
        // The second record damaged, and the file one record short.
        let mut damaged = file.clone().into_bytes();
        damaged[35] ^= 1;
        let bad = check_file(WriteOp::Append, 30, &mut writes.clone(), 0, Some((3, &damaged)));
        assert_eq!(bad.lost, 1);
        let short = check_file(
            WriteOp::Append,
            30,
            &mut writes.clone(),
            0,
            Some((2, &file.as_bytes()[..60])),
        );
        assert_eq!(short.lost, 1);
    }
}
