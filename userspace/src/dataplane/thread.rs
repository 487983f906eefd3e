//! A receive thread: it owns the rings of some queues ([`QueueOwner`]) and serves some
//! endpoints ([`Served`]), in one loop, pinned to one core. The layout decides who does what:
//! running to completion, one thread owns every queue and serves every endpoint; split, each
//! queue has a thread of its own and endpoints are spread over the others. Endpoints join and
//! leave through a command queue checked once per loop, never per frame.
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::endpoint::{Lent, Served, Source};
use super::idle::{self, HotLoop, Mailbox, Sleeper, Woke, pin};
use super::queue::{NicQueue, QueueOwner, SAFETY_NET, TOUCHED};
use super::served_port::{CLAIM_POLL, ServedPort};
use super::visits::Visits;
use crate::xsk::{BATCH, RxSocket, SocketStats, TxBatch};

pub(super) enum Command {
    Add(Box<Served>),
    /// Start copying the endpoint's frames into this port (the claim flag is set after).
    Connect {
        slot: u32,
        port: Box<ServedPort>,
        reply: SyncSender<()>,
    },
    /// Stop using the endpoint's port and hand it back (to be closed off this thread).
    Disconnect {
        slot: u32,
        reply: SyncSender<Option<ServedPort>>,
    },
    /// TX sockets on each queue's shared UMEM, for ports of `user` demux endpoints.
    TxSockets(Vec<RxSocket>),
    /// Drain the endpoint, and hand it back with what it still holds.
    Remove {
        slot: u32,
        reply: SyncSender<Finished>,
    },
    /// Copy of the endpoint's latency histogram (for live stats; None without a probe).
    Histogram {
        slot: u32,
        reply: SyncSender<Option<Histogram<u64>>>,
    },
}

/// An endpoint handed back by its thread.
pub(super) struct Finished {
    pub slot: u32,
    pub latency: Option<Histogram<u64>>,
    pub socket_stats: SocketStats,
    /// The endpoint's sockets (`xdp` demux), closed wherever this is dropped: closing one waits
    /// for an RCU grace period, which must not stall the thread serving other endpoints.
    pub sockets: Vec<RxSocket>,
    /// Its port, if one was still connected.
    pub port: Option<ServedPort>,
}

impl Finished {
    fn of(served: Served) -> Self {
        let socket_stats = served.socket_stats();
        Self {
            slot: served.slot,
            latency: served.probe.map(|p| p.latency),
            socket_stats,
            sockets: match served.source {
                Source::Sockets(sockets) => sockets,
                Source::Ring(_) => Vec::new(),
            },
            port: served.port,
        }
    }
}

pub(super) struct ReceiveThread {
    pub name: String,
    pub core: usize,
    /// The queues whose rings this thread owns.
    pub owned: Vec<QueueOwner>,
    pub served: Vec<Served>,
    /// Its waker wakes this thread (commands, stop, frames handed over in memory).
    pub commands: Arc<Mailbox<Command>>,
    /// Every queue of the NIC, by id: the frames this thread reads come from any of them.
    pub queues: Vec<Arc<NicQueue>>,
    /// One TX socket per queue for ports of `user` demux endpoints (given with the first port).
    pub tx_sockets: Vec<RxSocket>,
    pub tx_batches: Vec<TxBatch>,
    /// The NIC's MTU: the longest frame a port may send is 14 + this.
    pub mtu: usize,
    /// Leftover sockets closed off this thread (TX sockets replaced while running).
    pub retired: Vec<RxSocket>,
    pub stop: Arc<AtomicBool>,
    /// A source could not be watched: never block long.
    pub unwatched: bool,
    /// Slots of the endpoints whose ring this thread's steering found empty and filled (room
    /// reserved: [`TOUCHED`]); read by the next serving pass, emptied after it.
    pub touched: Vec<u32>,
    /// Which endpoints a pass visits: with many, only those with work.
    pub visits: Visits,
}

/// What a thread hands back when it stops.
pub(super) struct Stopped {
    pub endpoints: Vec<Finished>,
    /// The kernel's counters of the queue sockets it owned, by queue id.
    pub queues: Vec<(u16, anyhow::Result<SocketStats>)>,
}

impl ReceiveThread {
    pub(super) fn new(
        name: String,
        core: usize,
        commands: Arc<Mailbox<Command>>,
        queues: Vec<Arc<NicQueue>>,
        stop: Arc<AtomicBool>,
        mtu: u32,
        sparse: bool,
    ) -> Self {
        Self {
            name,
            core,
            owned: Vec::new(),
            served: Vec::new(),
            commands,
            tx_batches: queues.iter().map(|q| TxBatch::new(q.id)).collect(),
            queues,
            tx_sockets: Vec::new(),
            mtu: mtu as usize,
            retired: Vec::new(),
            stop,
            unwatched: false,
            touched: Vec::with_capacity(TOUCHED),
            visits: Visits::new(sparse),
        }
    }

    /// Runs until `stop` and no work is left; returns the final numbers of the endpoints
    /// still served. `idle` is woken by `self.commands`' waker and watches the sockets of the
    /// owned queues (made on the control side, so that its failure fails the start).
    pub(super) fn run(mut self, mut idle: Sleeper) -> Stopped {
        pin(self.core, &self.name);
        let mut hot = Some(HotLoop::enter());
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if let Some(command) = self.commands.pop() {
                // Commands allocate (histogram copies, socket teardown): outside the hot loop.
                drop(hot.take());
                self.apply(command, &idle);
                hot = Some(HotLoop::enter());
            }
            let mut work = 0;
            // Steer (user demux), refill, reap; then deliver what was steered in the same pass.
            for owned in &mut self.owned {
                work += owned.pass(&mut self.touched);
            }
            work += self.serve(&mut idle);
            if work > 0 {
                idle.worked();
            } else if stopping && self.commands.is_empty() {
                break;
            } else if idle.spun_out() && self.sleep(&mut idle) == Woke::Pending {
                // Work is waiting that the pass did not visit: look everywhere.
                self.visits.sweep_next();
            }
        }
        drop(hot);
        for served in &mut self.served {
            served.abandon_chains(&self.queues);
        }
        let mut finished: Vec<Finished> = self.served.drain(..).map(Finished::of).collect();
        if let Some(first) = finished.first_mut() {
            first.sockets.append(&mut self.tx_sockets);
            first.sockets.append(&mut self.retired);
        }
        Stopped {
            endpoints: finished,
            queues: self
                .owned
                .iter_mut()
                .map(|o| (o.queue.id, o.finish()))
                .collect(),
        }
    }

    /// One pass over the endpoints: every one of them, or with many only those with work
    /// (`visits`). Returns the frames handled.
    #[inline]
    fn serve(&mut self, idle: &mut Sleeper) -> usize {
        let Self {
            served,
            queues,
            tx_sockets,
            tx_batches,
            mtu,
            touched,
            visits,
            ..
        } = self;
        let mut lent = Lent {
            queues,
            tx_sockets,
            tx_batches,
            mtu: *mtu,
        };
        let mut work = 0;
        if !visits.sparse(served.len()) {
            // A sweep visits every ring anyway.
            touched.clear();
            for s in served.iter_mut() {
                let n = s.pass(&mut lent, true);
                if n >= BATCH {
                    visits.carry(s.slot);
                }
                work += n;
            }
            return work;
        }
        let plan = visits.plan(|f| idle.ready(f), touched.drain(..));
        for &i in &plan {
            let s = &mut served[i as usize];
            let n = s.pass(&mut lent, true);
            if n >= BATCH {
                visits.carry(s.slot);
            }
            work += n;
        }
        visits.done(plan);
        work
    }

    /// Block until something can bring work (see `idle`). Ports are asked to signal their
    /// transmissions only for the sleep, so a busy thread spares their clients the syscall.
    /// Returns how the first wait ended ([`Woke::Pending`]: work is waiting, not slept).
    fn sleep(&mut self, idle: &mut Sleeper) -> Woke {
        let mut ports = false;
        let mut timeout = SAFETY_NET;
        for p in self.served.iter().filter_map(|s| s.port.as_ref()) {
            ports = true;
            if p.port.tx_event().is_none() {
                timeout = UNSIGNALLED_PORT_WAIT;
            }
            if p.awaiting_buffers() {
                // Nothing wakes the thread when a client offers its first buffers.
                timeout = timeout.min(CLAIM_POLL);
            }
        }
        if self.unwatched {
            timeout = UNSIGNALLED_PORT_WAIT;
        }
        for owned in &self.owned {
            timeout = timeout.min(owned.longest_sleep());
        }
        let Self {
            served,
            commands,
            stop,
            tx_sockets,
            owned,
            ..
        } = self;
        let mut pending = || {
            let mut pending = stop.load(Ordering::Acquire) || !commands.is_empty();
            pending |= owned.iter().any(QueueOwner::pending);
            for s in served.iter_mut() {
                let Served {
                    source,
                    port,
                    tx_queue,
                    ..
                } = s;
                if let Source::Ring(ring) = source {
                    pending |= !ring.is_empty();
                }
                if let Some(p) = port.as_mut().filter(|p| p.link.connected.load(Relaxed)) {
                    pending |= p.awaiting_buffers() && p.port.rx_offered() > 0;
                    pending |= p.port.tx_arm(true);
                    // Frames a busy kernel left on the TX ring wait for this thread's kick.
                    let socket = match source {
                        Source::Sockets(sockets) => sockets.get_mut(*tx_queue),
                        Source::Ring(_) => tx_sockets.get_mut(*tx_queue),
                    };
                    pending |= socket.is_some_and(|t| t.tx_pending());
                }
            }
            pending
        };
        // A client without a fence between its head store and its flag load (DPDK's) can
        // miss the arming and skip its kick; its head store is visible long before the grace
        // period ends, so one more look after it catches that frame. Later transmissions see
        // the ring armed. (The safety net bounds anything else.)
        let first = if ports {
            PORT_GRACE.min(timeout)
        } else {
            timeout
        };
        let woke = idle.sleep(first, &mut pending);
        if woke == Woke::TimedOut && ports && first < timeout {
            idle.sleep(timeout, &mut pending);
        }
        for s in served.iter_mut() {
            if let Some(p) = &mut s.port {
                p.port.tx_arm(false);
            }
        }
        woke
    }

    fn apply(&mut self, command: Command, idle: &Sleeper) {
        match command {
            Command::Add(served) => {
                if let Source::Sockets(sockets) = &served.source {
                    for socket in sockets {
                        self.watch(idle, socket.as_raw_fd(), idle::Source::Socket);
                    }
                }
                self.served.push(*served);
                let last = self.served.len() - 1;
                self.visits.added(last, &self.served[last]);
            }
            Command::Remove { slot, reply } => {
                if let Some(i) = self.served.iter().position(|s| s.slot == slot) {
                    let mut served = self.served.swap_remove(i);
                    self.visits.removed(&served, i, self.served.get(i));
                    unwatch(idle, &served);
                    // Its frames already queued are its own: account for them first.
                    served.drain(&self.queues);
                    reply.send(Finished::of(served)).ok();
                }
            }
            Command::Connect { slot, port, reply } => {
                if let Some(i) = self.served.iter().position(|s| s.slot == slot) {
                    if let Some(fd) = port.port.tx_event() {
                        self.watch(idle, fd.as_raw_fd(), idle::Source::EventFd);
                    }
                    self.served[i].port = Some(*port);
                    self.visits.ported(slot, true);
                    reply.send(()).ok();
                }
            }
            Command::Disconnect { slot, reply } => {
                if let Some(s) = self.served.iter_mut().find(|s| s.slot == slot) {
                    if let Some(p) = &mut s.port {
                        if let Some(fd) = p.port.tx_event() {
                            idle.unwatch(fd.as_raw_fd());
                        }
                        p.publish();
                        p.link.connected.store(false, Relaxed);
                        // The control side released the claim before it asked.
                        p.link.claimed.store(false, Relaxed);
                    }
                    self.visits.ported(slot, false);
                    reply.send(s.port.take()).ok();
                }
            }
            Command::TxSockets(sockets) => {
                let old = std::mem::replace(&mut self.tx_sockets, sockets);
                self.retired.extend(old);
            }
            Command::Histogram { slot, reply } => {
                if let Some(s) = self.served.iter().find(|s| s.slot == slot) {
                    reply.send(s.probe.as_ref().map(|p| p.latency.clone())).ok();
                }
            }
        }
    }

    fn watch(&mut self, idle: &Sleeper, fd: std::os::fd::RawFd, source: idle::Source) {
        if let Err(e) = idle.watch(fd, source) {
            crate::logging::warn(format_args!(
                "{}: {e:#}; it naps instead of blocking from now on",
                self.name
            ));
            self.unwatched = true;
            // Epoll cannot say where that source's work is.
            self.visits.disable();
        }
    }
}

/// Stop watching what an endpoint leaving this thread brought.
fn unwatch(idle: &Sleeper, served: &Served) {
    if let Source::Sockets(sockets) = &served.source {
        for socket in sockets {
            idle.unwatch(socket.as_raw_fd());
        }
    }
    if let Some(fd) = served.port.as_ref().and_then(|p| p.port.tx_event()) {
        idle.unwatch(fd.as_fd().as_raw_fd());
    }
}

/// How long a thread serving a port first blocks after arming it (see `ReceiveThread::sleep`).
const PORT_GRACE: Duration = Duration::from_millis(1);

/// The same for a port that gives no signal at all, or a thread that could not watch a
/// source: its frames wait at most this long.
const UNSIGNALLED_PORT_WAIT: Duration = Duration::from_millis(1);
