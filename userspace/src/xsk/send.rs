//! Transmission on a queue's shared UMEM, for application ports: frames are copied from the
//! application into frames of the queue's TX pool, submitted on a socket's TX ring, and come
//! back to the pool through the queue's completion ring (reaped by the queue's worker). With
//! multi-buffer sockets a frame longer than one chunk goes out as a chain of chunks, every one
//! but the last flagged `XDP_PKT_CONTD`, as the kernel takes it.
use std::io::Write;

use xsk_rs::FrameDesc;

use super::chain::XDP_PKT_CONTD;
use super::{BATCH, Chunk, FramePool, QueueUmem, RxSocket};

/// Why a frame could not be staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageError {
    /// The queue's TX pool has no free frame (all in flight).
    NoFrame,
    /// The frame (with its tag) does not fit a UMEM chunk, or a chain of them where the
    /// sockets are multi-buffer.
    TooBig,
    /// This batch is full: submit it first.
    BatchFull,
}

/// Up to [`BATCH`] chunks of frames staged for one socket's TX ring. Allocates once, when
/// made.
pub struct TxBatch {
    descs: Vec<FrameDesc>,
    /// The frames those chunks make.
    frames: usize,
    queue: u16,
}

impl TxBatch {
    pub fn new(queue: u16) -> Self {
        Self {
            descs: Vec::with_capacity(BATCH),
            frames: 0,
            queue,
        }
    }

    /// Frames staged.
    pub fn len(&self) -> usize {
        self.frames
    }

    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// Copy `frame` into chunks of `pool` (this batch's queue's TX pool on `umem`): one, or a
    /// chain of them where the sockets are multi-buffer ([`QueueUmem::tx_chunks`]), with the
    /// 4 bytes of `tag` inserted after the two MAC addresses when given. The caller checked
    /// that `frame` holds at least the MAC addresses.
    pub fn stage(
        &mut self,
        umem: &QueueUmem,
        pool: &FramePool,
        frame: &[u8],
        tag: Option<[u8; 4]>,
    ) -> Result<(), StageError> {
        debug_assert_eq!(umem.queue, self.queue, "staging on another queue's UMEM");
        debug_assert!(frame.len() >= 12);
        let tag_bytes = tag.unwrap_or_default();
        let pieces: [&[u8]; 3] = match tag {
            Some(_) => [&frame[..12], &tag_bytes, &frame[12..]],
            None => [frame, &[], &[]],
        };
        let needed: usize = pieces.iter().map(|p| p.len()).sum();
        let chunks = umem.tx_chunks(needed).ok_or(StageError::TooBig)?;
        if self.descs.len() + chunks > BATCH {
            return Err(StageError::BatchFull);
        }
        let first = self.descs.len();
        for _ in 0..chunks {
            match pool.take() {
                Some(free) => self.descs.push(free.desc),
                None => {
                    for desc in self.descs.drain(first..) {
                        pool.put(Chunk { desc });
                    }
                    return Err(StageError::NoFrame);
                }
            }
        }
        let mut bytes = pieces.into_iter().filter(|p| !p.is_empty()).peekable();
        let mut rest: &[u8] = &[];
        for (i, desc) in self.descs[first..].iter_mut().enumerate() {
            // SAFETY: `desc` was a chunk of this queue's TX pool, moved out of it: no ring and
            // no other party holds it until it is submitted, so the memory is ours alone.
            let mut data = unsafe { umem.umem.data_mut(desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            let mut room = cursor.buf_len();
            // Fill the chunk from the frame's bytes in order, a piece split where it ends.
            while room > 0 {
                if rest.is_empty() {
                    match bytes.next() {
                        Some(next) => rest = next,
                        None => break,
                    }
                }
                let take = rest.len().min(room);
                // Cannot fail: `take` fits the room left.
                let written = cursor.write_all(&rest[..take]);
                debug_assert!(written.is_ok());
                rest = &rest[take..];
                room -= take;
            }
            let more = i + 1 < chunks;
            desc.set_options(if more { XDP_PKT_CONTD } else { 0 });
        }
        if !rest.is_empty() || bytes.peek().is_some() {
            // Chunks smaller than `tx_chunks` counted on (never so): refused, never cut.
            debug_assert!(false, "the chunks did not hold the frame");
            for desc in self.descs.drain(first..) {
                pool.put(Chunk { desc });
            }
            return Err(StageError::TooBig);
        }
        self.frames += 1;
        Ok(())
    }

    /// Put the staged frames on `socket`'s TX ring (the caller kicks it); returns the frames
    /// put there. The caller asked [`RxSocket::tx_room`] before staging, so the ring takes
    /// them all; it takes all or nothing (libxdp reserves the whole batch), and a batch it
    /// would not take goes back to `pool`, returned as not sent.
    pub fn submit(&mut self, socket: &mut RxSocket, pool: &FramePool) -> usize {
        if self.descs.is_empty() {
            return 0;
        }
        // SAFETY: every descriptor is a chunk of this queue's UMEM that was just written and
        // is held by no ring; once produced, only the completion ring gives it back.
        let sent = unsafe { socket.tx.produce(&self.descs) };
        debug_assert!(
            sent == 0 || sent == self.descs.len(),
            "a chain cut on the ring"
        );
        for desc in self.descs.drain(..).skip(sent) {
            pool.put(Chunk { desc });
        }
        let frames = std::mem::take(&mut self.frames);
        if sent > 0 { frames } else { 0 }
    }
}
