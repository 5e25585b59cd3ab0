//! When a batch's logs may share one `syncfs` ([`crate::store::WalGroupSync::Filesystem`]).
//!
//! A `syncfs` waits for every dirty page of the file system, not only the logs': beside a bulk
//! writer (a copy, a backup, another database) one took 0.2-0.9 s on this project's machine
//! where a log's own `fdatasync` took milliseconds. So the logs are synced one by one instead
//! while the machine holds much dirty data (`/proc/meminfo`, sampled at most every
//! [`DIRTY_SAMPLE_EVERY`]; Ferry's own peak load keeps it under 100 KiB), and for a while after
//! a slow `syncfs`, a while that doubles with each slow one in a row and shrinks back once they
//! are quick again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A `syncfs` slower than this had other writers' data to flush.
pub const SLOW_SYNC: Duration = Duration::from_millis(50);
/// How long the gate stays closed after the first slow sync.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest it stays closed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Dirty or in-writeback bytes on the machine over which a `syncfs` is not tried.
pub const DIRTY_LIMIT: u64 = 16 << 20;
/// How long a sample of the dirty bytes is trusted.
pub const DIRTY_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Where the dirty bytes come from: `None` when unknown.
pub type DirtyBytes = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// See the module documentation.
pub struct FilesystemSyncGate {
    dirty_bytes: DirtyBytes,
    state: Mutex<GateState>,
}

struct GateState {
    closed_until: Option<Instant>,
    backoff: Duration,
    /// The last sample of the dirty bytes and when it was taken.
    dirty: Option<(Instant, Option<u64>)>,
}

impl FilesystemSyncGate {
    pub fn new(dirty_bytes: DirtyBytes) -> FilesystemSyncGate {
        FilesystemSyncGate {
            dirty_bytes,
            state: Mutex::new(GateState {
                closed_until: None,
                backoff: FIRST_BACKOFF,
                dirty: None,
            }),
        }
    }

    /// Whether a `syncfs` may be used at `now`.
    pub fn is_open(&self, now: Instant) -> bool {
        self.is_open_beside(now, 0)
    }

    /// Whether a `syncfs` may be used at `now` by a caller that has just written `own_bytes`
    /// itself: those are not other writers' data, the sync must write them anyway. Batches of
    /// 1,000 files of 16 KiB into the trees closed the gate on their own pages, and their 32
    /// `fdatasync`s one after another ran at 0.63-0.86x the files/s of two `syncfs`.
    pub fn is_open_beside(&self, now: Instant, own_bytes: u64) -> bool {
        let mut state = self.state.lock();
        if state.closed_until.is_some_and(|until| now < until) {
            return false;
        }
        let dirty = match state.dirty {
            Some((at, dirty)) if now.saturating_duration_since(at) < DIRTY_SAMPLE_EVERY => dirty,
            _ => {
                let dirty = (self.dirty_bytes)();
                state.dirty = Some((now, dirty));
                dirty
            }
        };
        dirty.is_none_or(|bytes| bytes.saturating_sub(own_bytes) <= DIRTY_LIMIT)
    }

    /// Notes a `syncfs` that wrote the caller's own data ([`FilesystemSyncGate::is_open_beside`]):
    /// how long it took says nothing of other writers, and the last sample of the dirty bytes
    /// still counts what it made clean.
    pub fn synced_own(&self) {
        self.state.lock().dirty = None;
    }

    /// Records how long a `syncfs` that ended at `now` took. Returns the time the gate is now
    /// closed for, if this sync closed it.
    pub fn record(&self, took: Duration, now: Instant) -> Option<Duration> {
        let mut state = self.state.lock();
        if took > SLOW_SYNC {
            let closed_for = state.backoff;
            state.closed_until = Some(now + closed_for);
            state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
            Some(closed_for)
        } else {
            state.backoff = (state.backoff / 2).max(FIRST_BACKOFF);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    fn clean() -> FilesystemSyncGate {
        FilesystemSyncGate::new(Box::new(|| Some(0)))
    }

    /// A gate whose dirty bytes are the first counter (starting at `dirty`); the second counts
    /// the samples taken.
    fn sampling(dirty: u64) -> (FilesystemSyncGate, Arc<AtomicU64>, Arc<AtomicU64>) {
        let dirty = Arc::new(AtomicU64::new(dirty));
        let samples = Arc::new(AtomicU64::new(0));
        let gate = FilesystemSyncGate::new(Box::new({
            let (dirty, samples) = (dirty.clone(), samples.clone());
            move || {
                samples.fetch_add(1, Ordering::SeqCst);
                Some(dirty.load(Ordering::SeqCst))
            }
        }));
        (gate, dirty, samples)
    }

    const QUICK: Duration = Duration::from_micros(300);
    const SLOW: Duration = Duration::from_millis(400);

    #[test]
    fn quick_syncs_keep_the_gate_open() {
        let gate = clean();
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(gate.is_open(t0 + Duration::from_millis(i)));
            assert_eq!(gate.record(QUICK, t0 + Duration::from_millis(i)), None);
        }
    }

    #[test]
    fn a_slow_sync_closes_the_gate_for_a_backoff_that_doubles_while_they_stay_slow() {
        let gate = clean();
        let t0 = Instant::now();
        assert_eq!(gate.record(SLOW, t0), Some(FIRST_BACKOFF));
        assert!(!gate.is_open(t0 + FIRST_BACKOFF / 2));
        let t1 = t0 + FIRST_BACKOFF;
        assert!(gate.is_open(t1));
        assert_eq!(gate.record(SLOW, t1), Some(FIRST_BACKOFF * 2));
        assert!(!gate.is_open(t1 + FIRST_BACKOFF));
        let mut t = t1 + FIRST_BACKOFF * 2;
        for _ in 0..20 {
            let closed_for = gate.record(SLOW, t).unwrap();
            assert!(closed_for <= MAX_BACKOFF);
            t += closed_for;
        }
        assert_eq!(gate.record(SLOW, t), Some(MAX_BACKOFF));
    }

    #[test]
    fn quick_syncs_shrink_the_backoff_back() {
        let gate = clean();
        let t0 = Instant::now();
        gate.record(SLOW, t0);
        gate.record(SLOW, t0 + FIRST_BACKOFF);
        let t = t0 + FIRST_BACKOFF * 3;
        assert!(gate.is_open(t));
        for _ in 0..3 {
            assert_eq!(gate.record(QUICK, t), None);
        }
        assert_eq!(gate.record(SLOW, t), Some(FIRST_BACKOFF), "back to the first backoff");
    }

    #[test]
    fn much_dirty_data_closes_the_gate_until_a_later_sample_finds_it_gone() {
        let (gate, dirty, samples) = sampling(DIRTY_LIMIT + 1);
        let t0 = Instant::now();
        assert!(!gate.is_open(t0));
        dirty.store(4096, Ordering::SeqCst);
        assert!(!gate.is_open(t0 + DIRTY_SAMPLE_EVERY / 2), "the sample is still trusted");
        assert_eq!(samples.load(Ordering::SeqCst), 1);
        assert!(gate.is_open(t0 + DIRTY_SAMPLE_EVERY));
        assert_eq!(samples.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_callers_own_bytes_do_not_close_the_gate_and_their_sync_forgets_the_sample() {
        let own = 64 << 20;
        let (gate, dirty, samples) = sampling(DIRTY_LIMIT + own);
        let t0 = Instant::now();
        assert!(gate.is_open_beside(t0, own));
        assert!(!gate.is_open_beside(t0, own - 1), "one byte more of others' data");
        assert!(!gate.is_open(t0));
        // The sync made the caller's bytes clean: the next check samples again at once.
        dirty.store(4096, Ordering::SeqCst);
        gate.synced_own();
        assert!(gate.is_open(t0 + DIRTY_SAMPLE_EVERY / 2));
        assert_eq!(samples.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unknown_dirty_bytes_leave_the_gate_to_the_sync_times() {
        let gate = FilesystemSyncGate::new(Box::new(|| None));
        let t0 = Instant::now();
        assert!(gate.is_open(t0));
        gate.record(SLOW, t0);
        assert!(!gate.is_open(t0 + FIRST_BACKOFF / 2));
    }
}
