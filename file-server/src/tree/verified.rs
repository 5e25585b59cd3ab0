//! Which pages of one tree file this process has already checksummed.
//!
//! Committed pages never change, so each page's CRC needs checking only once per process;
//! checking it on every touch would make a point read several times slower. The bitmap is
//! lock-free: segments of `AtomicU64` words allocated on first use through `OnceLock`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Pages per segment: one segment covers 1 GiB of file in 32 KiB of bits.
const SEGMENT_PAGES: u64 = 1 << 18;
const WORDS_PER_SEGMENT: usize = (SEGMENT_PAGES / 64) as usize;
/// Segments per file: 4096 GiB. Pages beyond are simply checked on every touch.
const SEGMENTS: usize = 4096;

/// One bit per page: set once the page (or the overflow extent starting at it) passed its
/// checksum.
pub struct VerifiedPages {
    segments: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Default for VerifiedPages {
    fn default() -> Self {
        VerifiedPages { segments: (0..SEGMENTS).map(|_| OnceLock::new()).collect() }
    }
}

impl VerifiedPages {
    fn locate(page: u64) -> Option<(usize, usize, u64)> {
        let segment = usize::try_from(page / SEGMENT_PAGES).ok().filter(|&s| s < SEGMENTS)?;
        let bit = page % SEGMENT_PAGES;
        Some((segment, (bit / 64) as usize, 1u64 << (bit % 64)))
    }

    pub fn is_verified(&self, page: u64) -> bool {
        match Self::locate(page) {
            Some((segment, word, mask)) => self.segments[segment]
                .get()
                .is_some_and(|words| words[word].load(Ordering::Acquire) & mask != 0),
            None => false,
        }
    }

    pub fn mark(&self, page: u64) {
        if let Some((segment, word, mask)) = Self::locate(page) {
            let words = self.segments[segment]
                .get_or_init(|| (0..WORDS_PER_SEGMENT).map(|_| AtomicU64::new(0)).collect());
            words[word].fetch_or(mask, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_per_page_and_out_of_range_pages_stay_unverified() {
        let v = VerifiedPages::default();
        assert!(!v.is_verified(5));
        v.mark(5);
        v.mark(SEGMENT_PAGES + 63);
        assert!(v.is_verified(5));
        assert!(!v.is_verified(4) && !v.is_verified(6));
        assert!(v.is_verified(SEGMENT_PAGES + 63));
        let beyond = SEGMENT_PAGES * SEGMENTS as u64;
        v.mark(beyond);
        assert!(!v.is_verified(beyond));
    }

    #[test]
    fn concurrent_marks_are_all_kept() {
        let v = VerifiedPages::default();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let v = &v;
                s.spawn(move || (0..1000).for_each(|i| v.mark(i * 4 + t)));
            }
        });
        assert!((0..4000).all(|p| v.is_verified(p)));
    }
}
