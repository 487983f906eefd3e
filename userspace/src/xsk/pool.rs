//! A queue's pool of free UMEM frames: where frames wait between being read (or transmitted)
//! and going back to the kernel. Every frame handed to [`FramePool::put`] is kept or, if the
//! pool were ever full (a frame put twice: a bug), counted as lost — never dropped unseen,
//! because in zero-copy a frame that does not come back is a receive buffer gone for good.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_queue::ArrayQueue;

use super::Chunk;

/// A lock-free pool holding up to the frames it was made for.
pub struct FramePool {
    frames: ArrayQueue<Chunk>,
    size: usize,
    lost: AtomicU64,
}

impl FramePool {
    /// A pool for `size` frames, holding `initial` of them now.
    pub fn new(size: usize, initial: impl IntoIterator<Item = Chunk>) -> Self {
        let pool = Self {
            frames: ArrayQueue::new(size.max(1)),
            size,
            lost: AtomicU64::new(0),
        };
        for frame in initial {
            pool.put(frame);
        }
        pool
    }

    /// Give a frame back (one chunk: a multi-buffer frame goes back chunk by chunk, by
    /// `QueueUmem::release`). Cannot fail for a frame of this pool's queue that was taken out
    /// once; were it ever to, the frame is counted in [`Self::lost`].
    #[inline]
    pub fn put(&self, frame: Chunk) {
        if self.frames.push(frame).is_err() {
            self.lost.fetch_add(1, Relaxed);
            debug_assert!(
                false,
                "a frame pool overflowed: a frame was given back twice"
            );
        }
    }

    #[inline]
    pub fn take(&self) -> Option<Chunk> {
        self.frames.pop()
    }

    /// Frames in the pool now.
    #[inline]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames the pool was made for.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Frames the pool could not take (must stay 0).
    pub fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}
