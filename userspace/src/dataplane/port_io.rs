//! A port's transmissions: one batch of the application's frames, checked, tagged, copied
//! into the queue's TX frames and submitted with one kick.
use crossbeam_queue::ArrayQueue;

use super::port::{MAX_FRAME, TxFrame, contiguous};
use super::ports::{ServedPort, TxVerdict, check_tx};
use crate::abi::Mac;
use crate::xsk::{QueueUmem, RxFrame, RxSocket, StageError, TxBatch};

/// Frames taken from a port per round: what one copy-mode kick transmits (the kernel's
/// generic XDP path sends at most 32 per sendto), so no frame waits for a later kick.
pub const TX_PER_ROUND: usize = 32;

/// Drain up to one round of `p`'s frames onto `socket`; returns the frames taken from the
/// application (sent or dropped by reason). A full TX ring or an empty TX pool takes nothing:
/// the frames wait in the application's ring, its own back-pressure; other endpoints never
/// wait.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn transmit(
    p: &mut ServedPort,
    socket: &mut RxSocket,
    umem: &QueueUmem,
    pool: &ArrayQueue<RxFrame>,
    batch: &mut TxBatch,
    mac: &Mac,
    tag: Option<[u8; 4]>,
    mtu: usize,
) -> usize {
    // No more than the TX ring and the queue's TX pool can take now: what does not fit waits
    // in the application's ring instead of being taken and dropped. (Another consumer thread
    // may take pool frames meanwhile; then the shortfall is a counted `no_frame` drop.)
    let room = socket.tx_room().min(TX_PER_ROUND).min(pool.len());
    if room == 0 {
        if socket.tx_pending() {
            socket.tx_kick();
        }
        return 0;
    }
    let counts = &mut p.batch;
    let joined = &mut p.joined;
    let taken = p.port.tx_drain(room, &mut |item| {
        let TxFrame::Send(segments) = item else {
            counts.bad_chain += 1;
            return;
        };
        // Staging takes one slice: a frame in several segments is joined first.
        let frame = match segments {
            [one] => *one,
            _ => {
                let buf = joined.get_or_insert_with(|| vec![0; MAX_FRAME].into_boxed_slice());
                let Some(frame) = contiguous(segments, buf) else {
                    counts.too_big += 1;
                    return;
                };
                frame
            }
        };
        match check_tx(frame, mac, mtu) {
            TxVerdict::Send => match batch.stage(umem, pool, frame, tag) {
                Ok(()) => {
                    counts.tx_frames += 1;
                    counts.tx_bytes += frame.len() as u64;
                }
                Err(StageError::TooBig) => counts.too_big += 1,
                Err(StageError::NoFrame | StageError::BatchFull) => counts.no_frame += 1,
            },
            TxVerdict::Runt => counts.runt += 1,
            TxVerdict::Tagged => counts.tagged += 1,
            TxVerdict::Spoofed => counts.spoofed += 1,
            TxVerdict::TooBig => counts.too_big += 1,
        }
    });
    if batch.is_empty() {
        if socket.tx_pending() {
            // Frames an earlier kick left (kernel busy): kick again.
            socket.tx_kick();
        }
        return taken;
    }
    let staged = batch.len();
    let sent = batch.submit(socket, pool);
    if sent < staged {
        // Cannot happen (room was checked), but never uncounted.
        let lost = (staged - sent) as u64;
        counts.tx_frames -= lost;
        counts.no_frame += lost;
    }
    taken
}
