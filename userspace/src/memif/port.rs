//! The server side of a connected port: the dataplane's [`AppPort`] over the client's rings.
//! S2C ("m2s") carries frames to the client: the client offers empty buffers by moving
//! `head`, the daemon fills them and moves `tail`. C2S ("s2m") carries the client's frames:
//! the client fills buffers and moves `head`, the daemon consumes them and moves `tail`.
//! The daemon keeps its own copy of the indices it owns and never trusts the client's.
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::shm::{DESC_FLAG_NEXT, Desc, RING_FLAG_MASK_INT, Region, Ring};
use super::sock;
use crate::dataplane::AppPort;
use crate::xsk::wait::EventFd;

/// The longest frame taken from a client (jumbo frame plus tag); longer chains are dropped
/// and counted in [`PortShared::tx_too_long`].
pub const MAX_TX_FRAME: usize = 9238;

/// Why the daemon cut a connected client off (set once by the dataplane thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// The client moved an index further than the ring is long.
    BadIndex = 1,
    /// A descriptor named a region the client never added.
    BadRegion = 2,
    /// A descriptor's offset and length reach outside its region.
    OutsideRegion = 3,
}

impl Fault {
    fn from_u8(v: u8) -> Fault {
        match v {
            1 => Fault::BadIndex,
            2 => Fault::BadRegion,
            3 => Fault::OutsideRegion,
            _ => Fault::None,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Fault::None => "no fault",
            Fault::BadIndex => "ring index moved past the ring's size",
            Fault::BadRegion => "descriptor names a region that was never added",
            Fault::OutsideRegion => "descriptor points outside its region",
        }
    }
}

/// What the control thread and the dataplane thread share about one port.
#[derive(Debug, Default)]
pub struct PortShared {
    connected: AtomicBool,
    fault: AtomicU8,
    /// Written on a fault, so the control thread cuts the client off at once.
    fault_waker: OnceLock<Arc<EventFd>>,
    /// Client frames longer than [`MAX_TX_FRAME`] (dropped).
    pub tx_too_long: AtomicU64,
}

impl PortShared {
    pub fn new() -> Arc<PortShared> {
        let s = PortShared::default();
        s.connected.store(true, Ordering::Release);
        Arc::new(s)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The control thread saw the client go (hangup, DISCONNECT).
    pub fn close(&self) {
        self.connected.store(false, Ordering::Release);
    }

    pub fn fault(&self) -> Fault {
        Fault::from_u8(self.fault.load(Ordering::Acquire))
    }

    /// Have a fault write `waker` (the control thread's).
    pub fn wake_on_fault(&self, waker: Arc<EventFd>) {
        let _ = self.fault_waker.set(waker);
    }

    fn set_fault(&self, f: Fault) {
        let _ = self
            .fault
            .compare_exchange(0, f as u8, Ordering::AcqRel, Ordering::Acquire);
        self.close();
        if let Some(waker) = self.fault_waker.get() {
            waker.signal();
        }
    }
}

pub struct ServerPort {
    s2c: Ring,
    c2s: Ring,
    regions: Vec<Arc<Region>>,
    /// The S2C ring's eventfd: written after a flush unless the client masked interrupts.
    s2c_kick: OwnedFd,
    /// Written by the client after it queues frames, while the daemon unmasks C2S
    /// interrupts (only when the serving thread is about to block).
    c2s_kick: OwnedFd,
    /// Next S2C slot to publish (our tail) and how many are filled but not yet published.
    s2c_tail: u16,
    pending: u16,
    /// Next C2S slot to consume.
    c2s_next: u16,
    shared: Arc<PortShared>,
    scratch: Box<[u8]>,
}

impl ServerPort {
    pub(super) fn new(
        s2c: (Ring, OwnedFd),
        c2s: (Ring, OwnedFd),
        regions: Vec<Arc<Region>>,
        shared: Arc<PortShared>,
    ) -> ServerPort {
        // As DPDK's server does at connect: both rings start at 0, and the daemon polls the
        // C2S ring, so the client need not write its eventfd (until `tx_arm`).
        for r in [&s2c.0, &c2s.0] {
            r.set_head(0);
            r.set_tail(0);
        }
        c2s.0.set_flags(RING_FLAG_MASK_INT);
        ServerPort {
            s2c: s2c.0,
            c2s: c2s.0,
            regions,
            s2c_kick: s2c.1,
            c2s_kick: c2s.1,
            s2c_tail: 0,
            pending: 0,
            c2s_next: 0,
            shared,
            scratch: vec![0u8; MAX_TX_FRAME].into_boxed_slice(),
        }
    }

    fn fail(&self, f: Fault) {
        self.shared.set_fault(f);
    }
}

/// The region holding a descriptor's `len` bytes, or the fault the descriptor commits.
fn locate<'a>(regions: &'a [Arc<Region>], d: &Desc, len: u32) -> Result<&'a Region, Fault> {
    let region = regions.get(d.region as usize).ok_or(Fault::BadRegion)?;
    if !region.contains(d.offset as u64, len as u64) {
        return Err(Fault::OutsideRegion);
    }
    Ok(region)
}

impl ServerPort {
    /// The receive ring, for the control thread to see when the client first offers buffers.
    pub(super) fn s2c_ring(&self) -> Ring {
        self.s2c.clone()
    }
}

impl AppPort for ServerPort {
    fn rx_push(&mut self, frame: &[u8], strip_tag: bool) -> bool {
        if !self.shared.is_connected() {
            return false;
        }
        let slot = self.s2c_tail.wrapping_add(self.pending);
        let offered = self.s2c.head().wrapping_sub(slot);
        if offered > self.s2c.size() {
            // Either the client moved head past the ring, or it took buffers back.
            self.fail(Fault::BadIndex);
            return false;
        }
        if offered == 0 {
            return false;
        }
        let strip = strip_tag && frame.len() >= 16;
        let len = if strip { frame.len() - 4 } else { frame.len() };
        let d = self.s2c.desc(slot);
        if (d.length as usize) < len {
            return false;
        }
        let region = match locate(&self.regions, &d, len as u32) {
            Ok(r) => r,
            Err(f) => {
                self.fail(f);
                return false;
            }
        };
        let at = d.offset as u64;
        if strip {
            region.write(at, &frame[..12]);
            region.write(at + 12, &frame[16..]);
        } else {
            region.write(at, frame);
        }
        self.s2c.set_desc(
            slot,
            Desc {
                flags: 0,
                length: len as u32,
                metadata: 0,
                ..d
            },
        );
        self.pending += 1;
        true
    }

    fn rx_flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.s2c_tail = self.s2c_tail.wrapping_add(self.pending);
        self.pending = 0;
        self.s2c.set_tail(self.s2c_tail);
        if self.s2c.flags() & RING_FLAG_MASK_INT == 0 {
            sock::kick(self.s2c_kick.as_fd());
        }
    }

    fn tx_drain(&mut self, max: usize, send: &mut dyn FnMut(&[u8])) -> usize {
        if !self.shared.is_connected() {
            return 0;
        }
        let head = self.c2s.head();
        let queued = head.wrapping_sub(self.c2s_next);
        if queued > self.c2s.size() {
            self.fail(Fault::BadIndex);
            return 0;
        }
        let mut slot = self.c2s_next;
        let mut sent = 0;
        while sent < max && slot != head {
            // One frame: a descriptor, or a chain of them, copied into our own buffer first
            // so that the checks the dataplane makes hold for the bytes it sends.
            let start = slot;
            let mut len = 0usize;
            let mut too_long = false;
            loop {
                if slot == head {
                    // The chain's end is not published yet: take it next time, whole.
                    slot = start;
                    break;
                }
                let d = self.c2s.desc(slot);
                slot = slot.wrapping_add(1);
                let region = match locate(&self.regions, &d, d.length) {
                    Ok(r) => r,
                    Err(f) => {
                        self.fail(f);
                        return sent;
                    }
                };
                let n = d.length as usize;
                if len + n > self.scratch.len() {
                    too_long = true;
                } else if !too_long {
                    region.read(d.offset as u64, &mut self.scratch[len..len + n]);
                    len += n;
                }
                if d.flags & DESC_FLAG_NEXT == 0 {
                    break;
                }
            }
            if slot == start {
                break;
            }
            if too_long {
                self.shared.tx_too_long.fetch_add(1, Ordering::Relaxed);
            } else {
                send(&self.scratch[..len]);
                sent += 1;
            }
        }
        if slot != self.c2s_next {
            self.c2s_next = slot;
            self.c2s.set_tail(slot);
        }
        sent
    }

    fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    fn tx_event(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.c2s_kick.as_fd())
    }

    fn tx_arm(&mut self, armed: bool) -> bool {
        self.c2s
            .set_flags(if armed { 0 } else { RING_FLAG_MASK_INT });
        if !armed {
            return false;
        }
        // The client stores head, then loads the flags; we store the flags, then load head.
        // With a full fence here (and one on the client's side) one of us sees the other.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.c2s.head() != self.c2s_next
    }
}
