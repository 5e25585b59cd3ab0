//! Acknowledgement latency second by second of a load run, by the second each write was due.
//! A p99 over a whole run cannot tell a steady queue from a few stalls (periodic work on the
//! server, a starved generator); the seconds can.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// An acknowledgement slower than this counts as slow in its second (the peak preset's goal).
pub const SLOW_ACK_US: u64 = 10_000;

/// One second of the run, warm-up included.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadSecond {
    /// Seconds since the run started (the warm-up comes first).
    pub second: usize,
    /// Writes due in this second and acknowledged `ok`.
    pub acked: u64,
    pub mean_ms: f64,
    /// Of `acked`, those answered after more than [`SLOW_ACK_US`].
    pub slow: u64,
    pub max_ms: f64,
}

#[derive(Default)]
struct Second {
    acked: AtomicU64,
    total_us: AtomicU64,
    slow: AtomicU64,
    max_us: AtomicU64,
}

/// Shared by every connection of a run; recording is a few relaxed atomic operations.
pub struct Timeline {
    seconds: Vec<Second>,
}

impl Timeline {
    /// A timeline of `seconds` seconds; writes due later are counted in the last one.
    pub fn new(seconds: usize) -> Timeline {
        Timeline { seconds: (0..seconds.max(1)).map(|_| Second::default()).collect() }
    }

    /// Records a write due `due_us` after the start, acknowledged after `latency_us`.
    pub fn record(&self, due_us: u64, latency_us: u64) {
        let index = ((due_us / 1_000_000) as usize).min(self.seconds.len() - 1);
        let second = &self.seconds[index];
        second.acked.fetch_add(1, Ordering::Relaxed);
        second.total_us.fetch_add(latency_us, Ordering::Relaxed);
        if latency_us > SLOW_ACK_US {
            second.slow.fetch_add(1, Ordering::Relaxed);
        }
        second.max_us.fetch_max(latency_us, Ordering::Relaxed);
    }

    /// Every second up to the last one with an acknowledged write.
    pub fn seconds(&self) -> Vec<LoadSecond> {
        let mut out: Vec<LoadSecond> = self
            .seconds
            .iter()
            .enumerate()
            .map(|(second, s)| {
                let acked = s.acked.load(Ordering::Relaxed);
                let total_us = s.total_us.load(Ordering::Relaxed);
                LoadSecond {
                    second,
                    acked,
                    mean_ms: if acked == 0 { 0.0 } else { total_us as f64 / acked as f64 / 1e3 },
                    slow: s.slow.load(Ordering::Relaxed),
                    max_ms: s.max_us.load(Ordering::Relaxed) as f64 / 1e3,
                }
            })
            .collect();
        while out.last().is_some_and(|s| s.acked == 0) {
            out.pop();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_counted_in_the_second_they_were_due() {
        let timeline = Timeline::new(3);
        timeline.record(100, 2_000);
        timeline.record(999_999, 30_000);
        timeline.record(1_000_000, 4_000);
        timeline.record(9_000_000, 1_000);
        let seconds = timeline.seconds();
        assert_eq!(seconds.len(), 3);
        assert_eq!(
            seconds[0],
            LoadSecond { second: 0, acked: 2, mean_ms: 16.0, slow: 1, max_ms: 30.0 }
        );
        assert_eq!((seconds[1].acked, seconds[1].slow, seconds[1].max_ms), (1, 0, 4.0));
        assert_eq!((seconds[2].second, seconds[2].acked), (2, 1));
    }

    #[test]
    fn quiet_seconds_at_the_end_are_left_out_and_inner_ones_kept() {
        let timeline = Timeline::new(5);
        timeline.record(2_500_000, 1_000);
        let seconds = timeline.seconds();
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].acked, 0);
        assert_eq!(seconds[0].mean_ms, 0.0);
        assert_eq!(seconds[2].acked, 1);
    }
}
