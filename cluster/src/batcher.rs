//! `Batcher`: when a partition's waiting instructions travel, as a pure state machine (the
//! ingress's publisher owns the I/O; see [`crate::amqp_queue`]).
//!
//! The rule is Nagle's, per partition: a partition with no message awaiting its publisher
//! confirm sends what waits at once; while `in_flight_per_partition` of its messages are
//! unconfirmed, new instructions wait and go together when a confirm frees a slot. A batch that
//! reaches `max_bytes` or `max_items` goes without waiting for its partition (it gains nothing
//! by waiting), but never past `in_flight_total` unconfirmed messages: a full batch that cannot
//! go stops the intake ([`Batcher::accepting`]), so that a broker that falls behind turns into
//! `busy` at `submit` instead of unbounded memory.
//!
//! The idea: the broker's cost is per message, and a fixed linger either adds its delay to every
//! instruction at low load or is too short to batch at high load, while the confirm's round
//! trip grows with the broker's load. `linger` still applies: a partition under its in-flight
//! limit waits that long for company.
//!
//! Measured (2026-12-06, 2 cores, quorum queues, the `ferry bench` load on one partition):
//! send-on-confirm (1 in flight, no linger) batched about as well as a 2 ms linger with
//! pipelined publishes but gave a 20-50% higher ack p50, and RabbitMQ used more CPU at 3k/s:
//! a quorum queue confirms after its WAL fsync, so waiting for each confirm serializes a
//! partition's messages behind that fsync and one message per partition goes into each of
//! the broker's WAL batches. The defaults (`cluster.linger_us = 2000`,
//! `cluster.in_flight_per_partition = 64`) therefore keep the timer; the rule stays for brokers
//! whose confirms are cheap.

use std::time::{Duration, Instant};

/// How a [`Batcher`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// A batch this heavy goes without waiting for its partition's confirms.
    pub max_bytes: usize,
    /// Or one holding this many items.
    pub max_items: usize,
    /// Unconfirmed messages of one partition before its instructions wait for a confirm.
    pub in_flight_per_partition: usize,
    /// Unconfirmed messages over all partitions: nothing more is sent until a confirm.
    pub in_flight_total: usize,
    /// How long a batch with nothing of its partition in flight waits for company (zero: not
    /// at all).
    pub linger: Duration,
}

struct Slot<T> {
    items: Vec<T>,
    bytes: usize,
    /// When the oldest waiting item came.
    since: Option<Instant>,
    in_flight: usize,
}

impl<T> Slot<T> {
    fn is_full(&self, limits: &BatchLimits) -> bool {
        self.bytes >= limits.max_bytes || self.items.len() >= limits.max_items
    }
}

/// Per-partition batches and their unconfirmed messages. See the module documentation.
pub struct Batcher<T> {
    limits: BatchLimits,
    slots: Vec<Slot<T>>,
    in_flight: usize,
    /// Where the next scan for a ready batch starts, so that no partition is always first when
    /// `in_flight_total` is what limits.
    cursor: usize,
}

impl<T> Batcher<T> {
    pub fn new(partitions: u32, limits: BatchLimits) -> Batcher<T> {
        let limits = BatchLimits {
            max_items: limits.max_items.max(1),
            in_flight_per_partition: limits.in_flight_per_partition.max(1),
            in_flight_total: limits.in_flight_total.max(1),
            ..limits
        };
        let slots = (0..partitions.max(1))
            .map(|_| Slot { items: Vec::new(), bytes: 0, since: None, in_flight: 0 })
            .collect();
        Batcher { limits, slots, in_flight: 0, cursor: 0 }
    }

    /// Adds an item of `weight` bytes to `partition`'s batch (an out-of-range partition is a
    /// caller's bug: it panics).
    pub fn push(&mut self, partition: u32, item: T, weight: usize, now: Instant) {
        let slot = &mut self.slots[partition as usize];
        slot.items.push(item);
        slot.bytes += weight;
        slot.since.get_or_insert(now);
    }

    /// Whether the caller may push more: not while a full batch waits for a free in-flight
    /// slot, so that a batch never grows past its limits.
    pub fn accepting(&self) -> bool {
        !self.slots.iter().any(|s| s.is_full(&self.limits))
    }

    /// The next batch to send now, counted in flight until [`Batcher::settled`].
    pub fn next_ready(&mut self, now: Instant) -> Option<(u32, Vec<T>)> {
        if self.in_flight >= self.limits.in_flight_total {
            return None;
        }
        let n = self.slots.len();
        let found = (0..n).map(|i| (self.cursor + i) % n).find(|&p| {
            let slot = &self.slots[p];
            !slot.items.is_empty()
                && (slot.is_full(&self.limits)
                    || (slot.in_flight < self.limits.in_flight_per_partition
                        && slot.since.is_some_and(|t| t + self.limits.linger <= now)))
        })?;
        self.cursor = (found + 1) % n;
        let slot = &mut self.slots[found];
        slot.in_flight += 1;
        slot.bytes = 0;
        slot.since = None;
        self.in_flight += 1;
        Some((found as u32, std::mem::take(&mut slot.items)))
    }

    /// A message of `partition` was confirmed, refused or lost: its slot is free again.
    pub fn settled(&mut self, partition: u32) {
        let slot = &mut self.slots[partition as usize];
        debug_assert!(slot.in_flight > 0, "settled a partition with nothing in flight");
        slot.in_flight = slot.in_flight.saturating_sub(1);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// When a waiting batch becomes ready by its linger alone, if one will: the caller wakes
    /// then (confirms and new items are its other wake-ups).
    pub fn next_due(&self) -> Option<Instant> {
        if self.limits.linger.is_zero() || self.in_flight >= self.limits.in_flight_total {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| s.in_flight < self.limits.in_flight_per_partition)
            .filter_map(|s| s.since)
            .min()
            .map(|t| t + self.limits.linger)
    }

    /// Messages sent and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits {
            max_bytes: 1000,
            max_items: 4,
            in_flight_per_partition: 1,
            in_flight_total: 8,
            linger: Duration::ZERO,
        }
    }

    fn drain(b: &mut Batcher<u32>, now: Instant) -> Vec<(u32, Vec<u32>)> {
        std::iter::from_fn(|| b.next_ready(now)).collect()
    }

    #[test]
    fn an_idle_partition_sends_at_once_and_a_busy_one_waits_for_its_confirm() {
        let now = Instant::now();
        let mut b = Batcher::new(2, limits());
        b.push(0, 1, 10, now);
        assert_eq!(drain(&mut b, now), [(0, vec![1])]);
        // Partition 0 is in flight: its next items wait; partition 1 is idle and goes.
        b.push(0, 2, 10, now);
        b.push(0, 3, 10, now);
        b.push(1, 4, 10, now);
        assert_eq!(drain(&mut b, now), [(1, vec![4])]);
        assert_eq!(b.in_flight(), 2);
        b.settled(0);
        assert_eq!(drain(&mut b, now), [(0, vec![2, 3])]);
        assert_eq!(b.in_flight(), 2);
    }

    #[test]
    fn a_full_batch_goes_without_waiting_for_its_partition() {
        let now = Instant::now();
        let mut b = Batcher::new(1, limits());
        b.push(0, 0, 10, now);
        assert_eq!(drain(&mut b, now).len(), 1);
        for i in 1..=3 {
            b.push(0, i, 10, now);
        }
        assert!(b.accepting());
        assert_eq!(drain(&mut b, now), []);
        b.push(0, 4, 10, now);
        assert!(!b.accepting(), "a full batch stops the intake until it is sent");
        assert_eq!(drain(&mut b, now), [(0, vec![1, 2, 3, 4])]);
        assert!(b.accepting());
        // By weight too.
        b.push(0, 5, 1000, now);
        assert_eq!(drain(&mut b, now), [(0, vec![5])]);
        assert_eq!(b.in_flight(), 3);
    }

    #[test]
    fn the_total_in_flight_limit_holds_full_batches_and_stops_the_intake() {
        let now = Instant::now();
        let mut b = Batcher::new(3, BatchLimits { in_flight_total: 2, ..limits() });
        for p in 0..3 {
            b.push(p, p, 10, now);
        }
        assert_eq!(drain(&mut b, now), [(0, vec![0]), (1, vec![1])]);
        for i in 10..14 {
            b.push(0, i, 10, now);
        }
        assert!(!b.accepting());
        assert_eq!(drain(&mut b, now), []);
        b.settled(1);
        // The scan starts after the last partition served: 2 before the full 0.
        assert_eq!(drain(&mut b, now), [(2, vec![2])]);
        b.settled(2);
        assert_eq!(drain(&mut b, now), [(0, vec![10, 11, 12, 13])]);
        assert!(b.accepting());
    }

    #[test]
    fn a_small_number_in_flight_per_partition_is_allowed() {
        let now = Instant::now();
        let mut b = Batcher::new(1, BatchLimits { in_flight_per_partition: 2, ..limits() });
        b.push(0, 1, 10, now);
        assert_eq!(drain(&mut b, now), [(0, vec![1])]);
        b.push(0, 2, 10, now);
        assert_eq!(drain(&mut b, now), [(0, vec![2])]);
        b.push(0, 3, 10, now);
        assert_eq!(drain(&mut b, now), []);
        b.settled(0);
        assert_eq!(drain(&mut b, now), [(0, vec![3])]);
    }

    #[test]
    fn with_a_linger_an_idle_partition_waits_for_company_until_it_is_due() {
        let start = Instant::now();
        let linger = Duration::from_millis(2);
        let mut b = Batcher::new(2, BatchLimits { linger, ..limits() });
        assert_eq!(b.next_due(), None);
        b.push(1, 1, 10, start);
        b.push(1, 2, 10, start + Duration::from_millis(1));
        assert_eq!(b.next_due(), Some(start + linger));
        assert_eq!(drain(&mut b, start + Duration::from_millis(1)), []);
        assert_eq!(drain(&mut b, start + linger), [(1, vec![1, 2])]);
        // In flight: no timer for it, the confirm is what it waits for.
        b.push(1, 3, 10, start + linger);
        assert_eq!(b.next_due(), None);
        b.settled(1);
        assert_eq!(b.next_due(), Some(start + linger * 2));
    }
}
