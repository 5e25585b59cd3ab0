//! The machine's floor for a cached read: the rate of lookups that each make two dependent
//! random memory reads (a table slot, then the record it points to) over as many bytes as the
//! cached files take. No cache of records can beat it once the files outgrow the CPU caches,
//! so it tells a slow cache from a slow machine.

use std::time::Instant;

/// The floor's name in the result table.
pub const NAME: &str = "memory floor (2 dependent reads)";

/// Bytes a cached file takes besides its content: the record, its table slot, the content's
/// shared header and the allocator's rounding, roughly.
pub const OVERHEAD_PER_FILE: usize = 256;

/// One cache line; the chase reads the first word of each.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Line {
    next: usize,
}

/// Lookups per second, each two dependent reads, over `bytes` of memory in random order.
pub fn two_dependent_reads_per_s(bytes: usize, lookups: usize, seed: u64) -> f64 {
    let lines = (bytes / std::mem::size_of::<Line>()).max(2);
    let mut order: Vec<usize> = (0..lines).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut order);
    let mut chain = vec![Line { next: 0 }; lines];
    // One cycle through every line, in shuffled order, so that no step is predictable.
    for (i, &from) in order.iter().enumerate() {
        chain[from].next = order[(i + 1) % lines];
    }
    let mut at = order[0];
    let start = Instant::now();
    for _ in 0..lookups * 2 {
        at = chain[at].next;
    }
    let elapsed = start.elapsed();
    std::hint::black_box(at);
    lookups as f64 / elapsed.as_secs_f64()
}
