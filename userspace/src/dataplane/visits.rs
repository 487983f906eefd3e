//! Passes that visit only endpoints with work. A pass over every endpoint reads every
//! socket's (or endpoint ring's) indexes to find most of them empty: with a thousand
//! endpoints that is a thousand cache lines, and pages, per pass. So once a thread serves
//! [`SPARSE_FROM`] endpoints, a pass visits:
//! - the endpoints whose AF_XDP sockets epoll reports readable (`xdp` demux: one
//!   `epoll_wait(0)` per pass, level-triggered, so a socket left with frames is reported
//!   again);
//! - the endpoints whose rings the worker pass filled (`user` demux running to completion:
//!   the worker records each ring it found empty and pushed to);
//! - the endpoints left with a full batch after their last visit, and every endpoint with a
//!   port (its transmissions raise no event while the thread runs).
//!
//! A full sweep still runs after every command, after every sleep and every
//! [`FULL_SWEEP_EVERY`] passes: a safety net that bounds how long any frame could wait if
//! a hint were ever missed.
use std::os::fd::RawFd;

use super::endpoint::{Served, Source};

/// Endpoints from which a thread visits only those with work (below, a full sweep costs less
/// than the `epoll_wait` that finds them).
pub const SPARSE_FROM: usize = 64;

/// Passes between two full sweeps while sparse.
const FULL_SWEEP_EVERY: u32 = 1024;

const NONE: u32 = u32::MAX;

/// Which endpoints the next pass visits, kept by slot (an endpoint's index in `served`
/// changes when another one leaves).
pub(super) struct Visits {
    /// Whether this thread can learn where the work is: every source watched, and (`user`
    /// demux) the worker passes on this thread.
    enabled: bool,
    /// Slot of the endpoint owning each socket fd (`xdp` demux).
    slot_by_fd: Vec<u32>,
    /// Index in `served` of each slot.
    index_by_slot: Vec<u32>,
    /// Slots with a port: visited every pass.
    ported: Vec<u32>,
    /// Slots that may have frames left after their last visit.
    carry: Vec<u32>,
    /// The plan of the current pass (reused: no allocation per pass).
    plan: Vec<u32>,
    /// The pass that last planned each slot, so a slot named twice is visited once.
    marks: Vec<u32>,
    pass: u32,
    passes_since_sweep: u32,
    sweep_next: bool,
}

impl Visits {
    /// `enabled`: the thread's endpoints are found by epoll (`xdp` demux) or by its own
    /// worker passes (`user` demux running to completion).
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            slot_by_fd: Vec::new(),
            index_by_slot: Vec::new(),
            ported: Vec::new(),
            carry: Vec::new(),
            plan: Vec::new(),
            marks: Vec::new(),
            pass: 0,
            passes_since_sweep: 0,
            sweep_next: true,
        }
    }

    /// A source could not be watched: full sweeps from now on.
    pub(super) fn disable(&mut self) {
        self.enabled = false;
    }

    /// Whether the coming pass visits only endpoints with work (else: every endpoint, and
    /// the hints gathered so far are dropped).
    pub(super) fn sparse(&mut self, endpoints: usize) -> bool {
        let sparse = self.enabled
            && endpoints >= SPARSE_FROM
            && !self.sweep_next
            && self.passes_since_sweep < FULL_SWEEP_EVERY;
        if sparse {
            self.passes_since_sweep += 1;
        } else {
            self.sweep_next = false;
            self.passes_since_sweep = 0;
            self.carry.clear();
        }
        sparse
    }

    /// The next pass sweeps every endpoint (after a sleep, whose wake-up may come from any).
    pub(super) fn sweep_next(&mut self) {
        self.sweep_next = true;
    }

    /// Endpoint `served[index]` joined, the last of `served`. Command-time: may allocate.
    pub(super) fn added(&mut self, index: usize, served: &Served) {
        self.reserve(index + 1);
        set(&mut self.index_by_slot, served.slot as usize, index as u32);
        set(&mut self.marks, served.slot as usize, 0);
        if let Source::Sockets(sockets) = &served.source {
            for s in sockets {
                set(&mut self.slot_by_fd, fd_index(s), served.slot);
            }
        }
        self.sweep_next = true;
    }

    /// Endpoint `removed` left; `moved` took its index (`swap_remove`), if any.
    pub(super) fn removed(&mut self, removed: &Served, index: usize, moved: Option<&Served>) {
        set(&mut self.index_by_slot, removed.slot as usize, NONE);
        if let Source::Sockets(sockets) = &removed.source {
            for s in sockets {
                set(&mut self.slot_by_fd, fd_index(s), NONE);
            }
        }
        if let Some(m) = moved {
            set(&mut self.index_by_slot, m.slot as usize, index as u32);
        }
        self.ported.retain(|&s| s != removed.slot);
        self.sweep_next = true;
    }

    /// Endpoint `slot` got a port (`true`) or lost it.
    pub(super) fn ported(&mut self, slot: u32, has_port: bool) {
        self.ported.retain(|&s| s != slot);
        if has_port {
            self.ported.push(slot);
        }
        self.sweep_next = true;
    }

    /// The indexes in `served` this pass visits, each once: readable sockets from `ready`
    /// (called with a closure for each fd), rings the worker passes filled (`touched`
    /// slots), leftovers and ports. Hand the result back with [`Self::done`].
    pub(super) fn plan(
        &mut self,
        ready: impl FnOnce(&mut dyn FnMut(RawFd)),
        touched: impl Iterator<Item = u32>,
    ) -> Vec<u32> {
        let mut plan = std::mem::take(&mut self.plan);
        plan.clear();
        self.pass = self.pass.wrapping_add(1).max(1);
        let Self {
            slot_by_fd,
            index_by_slot,
            marks,
            pass,
            ..
        } = self;
        let mut visit = |slot: u32| {
            let s = slot as usize;
            if let (Some(&index), Some(mark)) = (index_by_slot.get(s), marks.get_mut(s))
                && index != NONE
                && *mark != *pass
            {
                *mark = *pass;
                // Room for every endpoint once was reserved when they joined.
                if plan.len() < plan.capacity() {
                    plan.push(index);
                }
            }
        };
        ready(&mut |fd| {
            if let Some(&slot) = usize::try_from(fd).ok().and_then(|i| slot_by_fd.get(i)) {
                visit(slot);
            }
        });
        touched.for_each(&mut visit);
        self.carry.drain(..).for_each(&mut visit);
        self.ported.iter().copied().for_each(&mut visit);
        plan
    }

    /// Endpoint `slot` handled a whole batch on its visit: it may have more, so the next
    /// pass visits it again.
    #[inline]
    pub(super) fn carry(&mut self, slot: u32) {
        // Room for every endpoint was reserved when they joined.
        if self.carry.len() < self.carry.capacity() {
            self.carry.push(slot);
        }
    }

    /// The plan back, for the next pass to reuse.
    pub(super) fn done(&mut self, plan: Vec<u32>) {
        self.plan = plan;
    }

    /// Room for a pass's plan and its leftovers: every endpoint once. Command-time: may
    /// allocate.
    fn reserve(&mut self, endpoints: usize) {
        self.plan.reserve(endpoints.saturating_sub(self.plan.len()));
        self.carry
            .reserve(endpoints.saturating_sub(self.carry.len()));
    }
}

fn fd_index(socket: &crate::xsk::RxSocket) -> usize {
    use std::os::fd::AsRawFd;
    socket.as_raw_fd().max(0) as usize
}

/// `v[i] = value`, growing `v` with [`NONE`] as needed.
fn set(v: &mut Vec<u32>, i: usize, value: u32) {
    if v.len() <= i {
        v.resize(i + 1, NONE);
    }
    v[i] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_endpoints_always_sweep_and_many_sweep_after_commands_and_periodically() {
        let mut v = Visits::new(true);
        assert!(!v.sparse(SPARSE_FROM - 1));
        // A fresh thread sweeps first.
        v.sweep_next();
        assert!(!v.sparse(SPARSE_FROM));
        for _ in 0..FULL_SWEEP_EVERY {
            assert!(v.sparse(SPARSE_FROM));
        }
        assert!(!v.sparse(SPARSE_FROM), "the periodic full sweep");
        assert!(v.sparse(SPARSE_FROM));
        v.sweep_next();
        assert!(!v.sparse(SPARSE_FROM));
        let mut off = Visits::new(false);
        off.sweep_next = false;
        assert!(!off.sparse(10 * SPARSE_FROM));
    }

    fn served(slot: u32) -> Served {
        use super::super::{endpoint::EndpointSpec, port::ClaimPolicy};
        let spec = EndpointSpec {
            name: format!("e{slot}"),
            vid: 0,
            mac: [2, 0, 0, 0, 0, slot as u8],
        };
        let ring = std::sync::Arc::new(crossbeam_queue::ArrayQueue::new(1));
        Served::new(
            slot,
            &spec,
            Source::Ring(ring),
            ClaimPolicy::Always,
            0,
            Default::default(),
            false,
        )
    }

    /// Indexes a plan visits, sorted.
    fn planned(v: &mut Visits, touched: &[u32]) -> Vec<u32> {
        let mut plan = v.plan(|_| {}, touched.iter().copied());
        plan.sort_unstable();
        let out = plan.clone();
        v.done(plan);
        out
    }

    #[test]
    fn a_plan_visits_each_hinted_endpoint_once_and_follows_moves() {
        let mut v = Visits::new(true);
        let mut all: Vec<Served> = (10..15).map(served).collect();
        for (i, s) in all.iter().enumerate() {
            v.added(i, s);
        }
        // Slots 10..15 at indexes 0..5. Named twice by the worker, carried, ported: once each.
        v.carry(12);
        v.ported(14, true);
        assert_eq!(planned(&mut v, &[11, 11, 12]), [1, 2, 4]);
        // The carry is spent; the port stays.
        assert_eq!(planned(&mut v, &[]), [4]);
        // Slot 10 (index 0) leaves; the last (slot 14) takes index 0, and is no longer
        // ported once it leaves too.
        let removed = all.swap_remove(0);
        v.removed(&removed, 0, all.first());
        assert_eq!(planned(&mut v, &[10, 14]), [0]);
        let removed = all.swap_remove(0);
        v.removed(&removed, 0, all.first());
        assert_eq!(planned(&mut v, &[]), Vec::<u32>::new());
        // Slot 13 moved to index 0 with it; unknown slots are ignored.
        assert_eq!(planned(&mut v, &[13, 99]), [0]);
    }

    #[test]
    fn set_grows_with_none() {
        let mut v = Vec::new();
        set(&mut v, 3, 7);
        assert_eq!(v, [NONE, NONE, NONE, 7]);
        set(&mut v, 1, 2);
        assert_eq!(v, [NONE, 2, NONE, 7]);
    }
}
