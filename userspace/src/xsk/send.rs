//! Transmission on a queue's shared UMEM, for application ports: frames are copied from the
//! application into frames of the queue's TX pool, submitted on a socket's TX ring, and come
//! back to the pool through the queue's completion ring (reaped by the queue's worker).
use std::io::Write;

use xsk_rs::FrameDesc;

use super::{BATCH, Chunk, FramePool, QueueUmem, RxSocket};

/// Why a frame could not be staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageError {
    /// The queue's TX pool has no free frame (all in flight).
    NoFrame,
    /// The frame (with its tag) does not fit a UMEM frame.
    TooBig,
    /// This batch is full: submit it first.
    BatchFull,
}

/// Up to [`BATCH`] frames staged for one socket's TX ring. Allocates once, when made.
pub struct TxBatch {
    descs: Vec<FrameDesc>,
    queue: u16,
}

impl TxBatch {
    pub fn new(queue: u16) -> Self {
        Self {
            descs: Vec::with_capacity(BATCH),
            queue,
        }
    }

    pub fn len(&self) -> usize {
        self.descs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// Copy `frame` into a frame of `pool` (this batch's queue's TX pool on `umem`), with the
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
        if self.descs.len() >= BATCH {
            return Err(StageError::BatchFull);
        }
        let Some(free) = pool.take() else {
            return Err(StageError::NoFrame);
        };
        let mut desc = free.desc;
        // SAFETY: `desc` was a chunk of this queue's TX pool, moved out of it: no ring and
        // no other party holds it until it is submitted below, so the memory is ours alone.
        let mut data = unsafe { umem.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        let needed = frame.len() + tag.map_or(0, |t| t.len());
        if needed > cursor.buf_len() {
            pool.put(free);
            return Err(StageError::TooBig);
        }
        cursor.set_pos(0);
        // Cannot fail: the room was checked above.
        let written = match tag {
            Some(tag) => cursor
                .write_all(&frame[..12])
                .and_then(|()| cursor.write_all(&tag))
                .and_then(|()| cursor.write_all(&frame[12..])),
            None => cursor.write_all(frame),
        };
        debug_assert!(written.is_ok());
        self.descs.push(desc);
        Ok(())
    }

    /// Put the staged frames on `socket`'s TX ring (the caller kicks it). The caller asked
    /// [`RxSocket::tx_room`] before staging, so the ring takes them all; any it would not
    /// take go back to `pool` and are returned as not sent.
    pub fn submit(&mut self, socket: &mut RxSocket, pool: &FramePool) -> usize {
        if self.descs.is_empty() {
            return 0;
        }
        // SAFETY: every descriptor is a frame of this queue's UMEM that was just written and
        // is held by no ring; once produced, only the completion ring gives it back.
        let sent = unsafe { socket.tx.produce(&self.descs) };
        for desc in self.descs.drain(..).skip(sent) {
            pool.put(Chunk { desc });
        }
        sent
    }
}
