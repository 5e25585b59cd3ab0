//! Rounds of one shared sync, led by whoever waits first: group commit across logs.
//!
//! Many threads each apply one change (to any partition) and wait for it to be durable. If
//! each syncs its own partition's log, a sync covers the one or two changes its log gathered
//! meanwhile: from 64 threads over 16 partitions this machine made 1.3-1.5 changes durable per
//! `fdatasync`, and the threads' sleeps and wake-ups, not the disk, bounded the rate
//! (`BENCHMARKS.md`). Here a caller that has appended its change joins the next round: the
//! first to find no round running leads it (one sync of every log, see
//! [`crate::store::Store::apply`]); the others sleep until it ends. A round covers every change
//! appended before it began, so a caller needs the first round that starts after its append.
//!
//! Waiters for the next round sleep apart from those of the running one (two condition
//! variables, by the round's parity): a round's end wakes the callers it covered and one
//! caller of the next round, to lead it, not everyone.

use parking_lot::{Condvar, Mutex};

/// See the module documentation.
#[derive(Default)]
pub struct SyncRounds {
    state: Mutex<Rounds>,
    /// Waiters for round `n` sleep on `ended[n % 2]`.
    ended: [Condvar; 2],
}

#[derive(Default)]
struct Rounds {
    /// Rounds begun; round `n` is the `n`-th (from 1).
    started: u64,
    /// Rounds ended; while `ended < started`, round `started` runs.
    ended: u64,
}

impl SyncRounds {
    /// Returns once a round that began after this call has ended, leading it with `sync` if
    /// none runs. What the caller appended before calling is then covered by that round's sync
    /// (if the sync succeeded: the caller checks that itself).
    pub fn join(&self, sync: impl FnOnce()) {
        let mut st = self.state.lock();
        // A running round may have taken its logs' records before this caller appended: only
        // the one after it surely covers them.
        let target = st.started + 1;
        loop {
            if st.ended >= target {
                return;
            }
            if st.ended == st.started {
                // No round runs: this caller leads round `target`, the next to start.
                st.started = target;
                drop(st);
                // The round ends even if `sync` panics: no waiter sleeps forever.
                let _end = EndRound { rounds: self, round: target };
                sync();
                return;
            }
            self.ended[(target % 2) as usize].wait(&mut st);
        }
    }

    /// Ends round `round`: wakes the callers it covered and one caller of the next, to lead.
    fn end(&self, round: u64) {
        self.state.lock().ended = round;
        self.ended[(round % 2) as usize].notify_all();
        self.ended[((round + 1) % 2) as usize].notify_one();
    }
}

struct EndRound<'a> {
    rounds: &'a SyncRounds,
    round: u64,
}

impl Drop for EndRound<'_> {
    fn drop(&mut self) {
        self.rounds.end(self.round);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;

    #[test]
    fn a_lone_caller_leads_its_own_round() {
        let rounds = SyncRounds::default();
        let mut led = 0;
        rounds.join(|| led += 1);
        rounds.join(|| led += 1);
        assert_eq!(led, 2);
    }

    /// Each caller "appends" (takes the next number) before joining; a round's sync records the
    /// highest number appended when it began. Every caller must return only after a round that
    /// covers its number has ended.
    #[test]
    fn every_caller_returns_after_a_round_that_covers_it() {
        const THREADS: usize = 16;
        const EACH: u64 = 500;
        let rounds = Arc::new(SyncRounds::default());
        let appended = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (rounds, appended, durable, start) =
                    (rounds.clone(), appended.clone(), durable.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..EACH {
                        let mine = appended.fetch_add(1, Ordering::SeqCst) + 1;
                        rounds.join(|| {
                            let covered = appended.load(Ordering::SeqCst);
                            std::thread::yield_now();
                            durable.fetch_max(covered, Ordering::SeqCst);
                        });
                        assert!(durable.load(Ordering::SeqCst) >= mine, "returned uncovered");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(durable.load(Ordering::SeqCst), THREADS as u64 * EACH);
    }

    #[test]
    fn a_round_whose_sync_panics_still_ends() {
        let rounds = Arc::new(SyncRounds::default());
        let r = rounds.clone();
        let panicked = std::thread::spawn(move || r.join(|| panic!("sync failed"))).join();
        assert!(panicked.is_err());
        let mut led = false;
        rounds.join(|| led = true);
        assert!(led, "the next caller leads a new round");
    }
}
