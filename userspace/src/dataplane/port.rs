//! The application side of an endpoint: a port (a memif connection, see `crate::memif`) that
//! the dataplane copies received frames into and takes the application's frames from.
//!
//! The one dataplane thread that serves the endpoint is the only caller once the port is
//! handed over: no method blocks, allocates, or makes more than one syscall per batch.
//! Everything the client controls (ring indices, descriptors, lengths) is read once and
//! checked by the implementation; a misbehaving client can only hurt its own port.
//!
//! A frame crosses this interface as its segments, in order: one slice for most frames,
//! several where it spans buffers (a multi-buffer AF_XDP frame's UMEM chunks, a chained memif
//! frame). Passing `std::slice::from_ref(&bytes)` costs nothing, so a one-segment frame costs
//! what a plain slice did.
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The longest frame a port carries: a 9216-byte jumbo MTU, its Ethernet header, an 802.1Q
/// tag and room for an FCS. Longer chains from an application are refused.
pub const MAX_FRAME: usize = 9238;

/// Why a port did not take a received frame; the dataplane counts each reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxRefused {
    /// The application has too few free buffers for the whole frame now (its ring is full,
    /// or nearly): the frame is dropped whole, never cut.
    NoBuffer,
    /// The frame is longer than the application's whole receive ring holds, chained: it
    /// can never take it (its buffers are too small for this frame).
    TooBig,
    /// The application is gone (it left, or was cut off for breaking the protocol).
    NotConnected,
}

/// Why a port refused a frame the application queued for transmission. The frame is taken
/// from the application (its buffers go back) and counted, and the port stays up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxRefused {
    /// A chain of descriptors still says "next" at the last descriptor the application
    /// published: its end is missing (every known client publishes whole chains).
    Unterminated,
    /// A chain longer than [`MAX_FRAME`] bytes.
    TooLong,
}

/// One item from [`AppPort::tx_drain`].
#[derive(Debug, Clone, Copy)]
pub enum TxFrame<'a> {
    /// A frame to send, as its segments. The bytes are the port's own copy: the application
    /// cannot change them while the callback runs.
    Send(&'a [&'a [u8]]),
    /// A frame the port refused; the dataplane counts it.
    Refused(TxRefused),
}

/// A connected application's port, as the dataplane drives it.
pub trait AppPort: Send {
    /// Copy one received frame (its segments, in order) into the application's next free
    /// receive buffers: one buffer, or a chain of them when it does not fit one. With
    /// `strip_tag`, frame bytes 12..16 (the endpoint's 802.1Q tag) are left out, so the
    /// application sees the frame as a macvlan device on the VLAN sub-interface would show
    /// it. A frame is delivered whole or not at all. Frames become visible at
    /// [`Self::rx_flush`].
    fn rx_push(&mut self, frame: &[&[u8]], strip_tag: bool) -> Result<(), RxRefused>;

    /// Receive buffers the application offers now. An endpoint claimed only while connected
    /// has its frames claimed only while its application offers buffers (a client that has
    /// connected but not yet offered any, or stopped refilling, gets none: its frames go to
    /// its kernel device meanwhile). A port with no such notion offers room always.
    fn rx_offered(&self) -> usize {
        usize::MAX
    }

    /// Publish every frame pushed since the last flush: one store of the ring index and, if
    /// the application asked for interrupts, at most one eventfd write.
    fn rx_flush(&mut self);

    /// Hand up to `max` frames the application queued for transmission to `send`, oldest
    /// first (refused ones as [`TxFrame::Refused`]), then give their buffers back to the
    /// application. `send` copies the bytes out before it returns. Returns how many frames
    /// were taken from the application, refused ones included.
    fn tx_drain(&mut self, max: usize, send: &mut dyn FnMut(TxFrame<'_>)) -> usize;

    /// False once the application disconnected or broke the protocol: the dataplane then
    /// detaches the port, and the endpoint's frames go to its kernel device again.
    fn is_connected(&self) -> bool;

    /// The eventfd the application writes after queueing frames for transmission while the
    /// port is armed ([`Self::tx_arm`]); the serving thread blocks on it. None: the port
    /// gives no signal, and the thread then sleeps at most a millisecond while it is
    /// connected.
    fn tx_event(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// Ask the application to signal its next transmission (`armed`, before the serving
    /// thread blocks) or not to (while the thread polls anyway). When arming, returns whether
    /// frames are already queued: then the thread must not block. Shared memory only.
    fn tx_arm(&mut self, armed: bool) -> bool {
        let _ = armed;
        false
    }
}

/// A frame's length: the sum of its segments.
#[inline]
pub fn frame_len(frame: &[&[u8]]) -> usize {
    match frame {
        [one] => one.len(),
        _ => frame.iter().map(|s| s.len()).sum(),
    }
}

/// Hand `piece` the frame's bytes in order, as contiguous pieces, leaving out bytes 12..16
/// when `strip_tag` (a frame shorter than 16 bytes is passed whole).
#[inline]
pub fn for_each_piece(frame: &[&[u8]], strip_tag: bool, mut piece: impl FnMut(&[u8])) {
    const TAG: std::ops::Range<usize> = 12..16;
    let strip = strip_tag && frame_len(frame) >= TAG.end;
    let mut at = 0;
    for seg in frame {
        let (start, end) = (at, at + seg.len());
        at = end;
        if !strip || end <= TAG.start || start >= TAG.end {
            if !seg.is_empty() {
                piece(seg);
            }
            continue;
        }
        // This segment overlaps the tag: what lies before it, then what lies after it.
        let before = TAG.start.saturating_sub(start);
        let after = TAG.end.saturating_sub(start).min(seg.len());
        if before > 0 {
            piece(&seg[..before]);
        }
        if after < seg.len() {
            piece(&seg[after..]);
        }
    }
}

/// The frame as one slice: its only segment, or its segments copied into `buf` (None when
/// they do not fit it).
#[inline]
pub fn contiguous<'a>(frame: &[&'a [u8]], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    if let [one] = frame {
        return Some(one);
    }
    let len = frame_len(frame);
    let out = buf.get_mut(..len)?;
    let mut at = 0;
    for seg in frame {
        out[at..at + seg.len()].copy_from_slice(seg);
        at += seg.len();
    }
    Some(out)
}

/// When the classifier claims an endpoint's frames for the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimPolicy {
    /// From the moment the endpoint is added; the dataplane itself counts (and, with the
    /// probe, times) its frames (the lab, the benchmark, `xmacvlan run`).
    #[default]
    Always,
    /// Only while an application port is connected; otherwise its frames go to its kernel
    /// macvlan device, as with Docker's driver.
    WhileConnected,
}

/// Who is attached to a port, for `stats` and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// The name the client gave in its memif INIT message.
    pub client: String,
    /// The client's pid (from `SO_PEERCRED`).
    pub pid: u32,
    pub connected_at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(frame: &[&[u8]], strip: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for_each_piece(frame, strip, |p| {
            assert!(!p.is_empty(), "no empty pieces");
            out.extend_from_slice(p)
        });
        out
    }

    #[test]
    fn pieces_leave_the_tag_out_wherever_the_segments_split() {
        let frame: Vec<u8> = (0..40).collect();
        let mut want = frame.clone();
        want.drain(12..16);
        for a in 0..=frame.len() {
            for b in a..=frame.len() {
                let segs = [&frame[..a], &frame[a..b], &frame[b..]];
                assert_eq!(pieces(&segs, true), want, "split at {a}, {b}");
                assert_eq!(pieces(&segs, false), frame, "split at {a}, {b}");
            }
        }
        let short: Vec<u8> = (0..15).collect();
        assert_eq!(pieces(&[&short[..7], &short[7..]], true), short);
    }

    #[test]
    fn contiguous_borrows_one_segment_and_copies_several() {
        let frame: Vec<u8> = (0..100).collect();
        let mut buf = [0u8; 64];
        let one = contiguous(&[&frame[..]], &mut buf).unwrap();
        assert_eq!(one.as_ptr(), frame.as_ptr(), "one segment is not copied");
        assert_eq!(
            contiguous(&[&frame[..30], &frame[30..60]], &mut buf).unwrap(),
            &frame[..60]
        );
        assert!(contiguous(&[&frame[..50], &frame[50..]], &mut buf).is_none());
        assert_eq!(frame_len(&[&frame[..50], &frame[50..]]), 100);
    }
}
