//! Which of a queue's receive frames the kernel holds: a bit per frame, set when the frame is
//! handed to the fill ring and cleared when a socket of the queue receives it. A frame
//! received while its bit is clear was delivered twice by the kernel — a driver bug (igb in
//! zero-copy, when its fill ring runs dry, re-reads stale descriptors and hands back buffers
//! it already handed over) — and is dropped and counted instead of being served twice and put
//! back twice, which would give the fill ring the same buffer for two descriptors.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(super) struct Ledger {
    /// Bit `i` of word `i / 64`: frame `i` is with the kernel.
    words: Box<[AtomicU64]>,
    frame_size: usize,
    duplicates: AtomicU64,
}

impl Ledger {
    /// A ledger for `frames` frames of `frame_size` bytes, none with the kernel yet.
    pub(super) fn new(frames: usize, frame_size: usize) -> Self {
        Self {
            words: (0..frames.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            frame_size: frame_size.max(1),
            duplicates: AtomicU64::new(0),
        }
    }

    /// The frame at UMEM address `addr` (any address inside it) goes to the kernel.
    #[inline]
    pub(super) fn given(&self, addr: usize) {
        if let Some((word, bit)) = self.position(addr) {
            word.fetch_or(bit, Relaxed);
        }
    }

    /// The frame at `addr` came back from the kernel: true if it was the kernel's, false
    /// (and counted) if the kernel had already handed it over.
    #[inline]
    pub(super) fn taken(&self, addr: usize) -> bool {
        let Some((word, bit)) = self.position(addr) else {
            // Not a frame of this UMEM: the kernel never returns one, but never trust it.
            self.duplicates.fetch_add(1, Relaxed);
            return false;
        };
        if word.fetch_and(!bit, Relaxed) & bit != 0 {
            true
        } else {
            self.duplicates.fetch_add(1, Relaxed);
            false
        }
    }

    /// Frames the kernel delivered while they were not its to deliver.
    pub(super) fn duplicates(&self) -> u64 {
        self.duplicates.load(Relaxed)
    }

    fn position(&self, addr: usize) -> Option<(&AtomicU64, u64)> {
        let frame = addr / self.frame_size;
        Some((self.words.get(frame / 64)?, 1 << (frame % 64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_comes_back_once_per_time_it_was_given() {
        let l = Ledger::new(100, 4096);
        assert!(!l.taken(0), "never given");
        l.given(4096 * 70 + 256);
        assert!(l.taken(4096 * 70 + 300), "any address inside the frame");
        assert!(!l.taken(4096 * 70 + 256), "twice");
        assert!(!l.taken(4096 * 100), "beyond the UMEM");
        assert_eq!(l.duplicates(), 3);
        l.given(4096 * 99);
        assert!(l.taken(4096 * 99));
        assert_eq!(l.duplicates(), 3);
    }
}
