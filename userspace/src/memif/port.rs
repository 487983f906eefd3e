//! The server side of a connected port: the dataplane's [`AppPort`] over the client's rings.
//! S2C ("m2s") carries frames to the client: the client offers empty buffers by moving
//! `head`, the daemon fills them and moves `tail`. C2S ("s2m") carries the client's frames:
//! the client fills buffers and moves `head`, the daemon consumes them and moves `tail`.
//! The daemon keeps its own copy of the indices it owns and never trusts the client's.
//! A frame longer than the client's buffer goes into a chain of them (see `super::chain`).
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use super::chain::{gather, locate};
use super::shm::{DESC_FLAG_NEXT, Desc, RING_FLAG_MASK_INT, Region, Ring};
use super::sock;
use crate::dataplane::port::{for_each_piece, frame_len};
use crate::dataplane::{AppPort, MAX_FRAME, RxRefused, TxFrame};
use crate::xsk::wait::EventFd;

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
        self.fault_waker.set(waker).ok();
    }

    fn set_fault(&self, f: Fault) {
        self.fault
            .compare_exchange(0, f as u8, Ordering::AcqRel, Ordering::Acquire)
            .ok();
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
    /// The client's frame being taken from C2S, copied out of its reach.
    scratch: Box<[u8]>,
    /// The S2C descriptors of the chain being placed (as long as the ring).
    chain: Box<[Desc]>,
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
        let s2c_size = s2c.0.size() as usize;
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
            scratch: vec![0u8; MAX_FRAME].into_boxed_slice(),
            chain: vec![Desc::default(); s2c_size].into_boxed_slice(),
        }
    }

    fn fail(&self, f: Fault) {
        self.shared.set_fault(f);
    }
}

impl ServerPort {
    /// The receive ring, for the control thread to see when the client first offers buffers.
    pub(super) fn s2c_ring(&self) -> Ring {
        self.s2c.clone()
    }
}

impl ServerPort {
    /// Place a frame that does not fit the first offered buffer in a chain of them: every
    /// buffer it needs is checked (and counted) before a byte is written, so a frame is
    /// delivered whole or not at all and no descriptor is touched for a refused one.
    fn push_chain(
        &mut self,
        frame: &[&[u8]],
        strip: bool,
        len: usize,
        first: Desc,
        offered: u16,
    ) -> Result<(), RxRefused> {
        let slot = self.s2c_tail.wrapping_add(self.pending);
        let mut placed = 0usize;
        let mut n = 0u16;
        let mut d = first;
        while placed < len {
            if n == offered {
                // The client's buffers are alike in practice (DPDK, VPP and libmemif size
                // them all the same): judge by the first.
                let ring_holds = self.s2c.size() as usize * first.length as usize;
                return Err(if len > ring_holds {
                    RxRefused::TooBig
                } else {
                    RxRefused::NoBuffer
                });
            }
            if n > 0 {
                d = self.s2c.desc(slot.wrapping_add(n));
            }
            let take = (len - placed).min(d.length as usize);
            if let Err(f) = locate(&self.regions, &d, take as u32) {
                self.fail(f);
                return Err(RxRefused::NotConnected);
            }
            self.chain[n as usize] = Desc {
                flags: DESC_FLAG_NEXT,
                length: take as u32,
                metadata: 0,
                ..d
            };
            placed += take;
            n += 1;
        }
        let chain = &mut self.chain[..n as usize];
        chain[n as usize - 1].flags = 0;
        let regions = &self.regions;
        let (mut i, mut at) = (0usize, 0usize);
        for_each_piece(frame, strip, |mut piece| {
            while !piece.is_empty() {
                let d = &chain[i];
                let room = d.length as usize - at;
                if room == 0 {
                    (i, at) = (i + 1, 0);
                    continue;
                }
                let k = room.min(piece.len());
                // Checked by `locate` above, on this very copy of the descriptor.
                regions[d.region as usize].write(d.offset as u64 + at as u64, &piece[..k]);
                at += k;
                piece = &piece[k..];
            }
        });
        for (k, d) in chain.iter().enumerate() {
            self.s2c.set_desc(slot.wrapping_add(k as u16), *d);
        }
        self.pending += n;
        Ok(())
    }
}

impl AppPort for ServerPort {
    fn rx_push(&mut self, frame: &[&[u8]], strip_tag: bool) -> Result<(), RxRefused> {
        if !self.shared.is_connected() {
            return Err(RxRefused::NotConnected);
        }
        let slot = self.s2c_tail.wrapping_add(self.pending);
        let offered = self.s2c.head().wrapping_sub(slot);
        if offered > self.s2c.size() {
            // Either the client moved head past the ring, or it took buffers back.
            self.fail(Fault::BadIndex);
            return Err(RxRefused::NotConnected);
        }
        if offered == 0 {
            return Err(RxRefused::NoBuffer);
        }
        let total = frame_len(frame);
        let strip = strip_tag && total >= 16;
        let len = if strip { total - 4 } else { total };
        let d = self.s2c.desc(slot);
        if (d.length as usize) < len {
            return self.push_chain(frame, strip, len, d, offered);
        }
        let region = match locate(&self.regions, &d, len as u32) {
            Ok(r) => r,
            Err(f) => {
                self.fail(f);
                return Err(RxRefused::NotConnected);
            }
        };
        let mut at = d.offset as u64;
        for_each_piece(frame, strip, |piece| {
            region.write(at, piece);
            at += piece.len() as u64;
        });
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
        Ok(())
    }

    fn rx_offered(&self) -> usize {
        let slot = self.s2c_tail.wrapping_add(self.pending);
        let offered = self.s2c.head().wrapping_sub(slot);
        // More than the ring holds: a broken client, found out by the next push.
        if offered > self.s2c.size() {
            0
        } else {
            offered as usize
        }
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

    fn tx_drain(&mut self, max: usize, send: &mut dyn FnMut(TxFrame<'_>)) -> usize {
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
        let mut taken = 0;
        while taken < max && slot != head {
            // One frame, copied into our own buffer first so that the checks the dataplane
            // makes hold for the bytes it sends.
            let got = match gather(&self.c2s, &self.regions, slot, head, &mut self.scratch) {
                Ok(got) => got,
                Err(f) => {
                    self.fail(f);
                    return taken;
                }
            };
            slot = slot.wrapping_add(got.slots);
            taken += 1;
            match got.frame {
                Ok(len) => send(TxFrame::Send(&[&self.scratch[..len]])),
                Err(why) => send(TxFrame::Refused(why)),
            }
        }
        if slot != self.c2s_next {
            self.c2s_next = slot;
            self.c2s.set_tail(slot);
        }
        taken
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
