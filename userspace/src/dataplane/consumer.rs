//! Consumer threads: each serves a set of endpoints, reading their sockets (`xdp` demux)
//! or their descriptor rings (`user` demux), and gives every frame back to its queue.
//! Endpoints join and leave through a command queue checked once per loop, never per frame.
//! An endpoint with a connected application port gets each frame copied into the port, and
//! the port's frames transmitted (see `port_io`). The per-frame work of one endpoint
//! (counts, misdelivery check, latency) is its [`Consumer`], which the kernel baseline uses
//! too. Running to completion, the one consumer thread also runs the queues' worker passes.
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

use super::SocketStats;
use super::endpoint::{EndpointCounters, EndpointSpec};
use super::idle::{self, HotLoop, Mailbox, Sleeper, Waker, Woke, pin};
use super::port::RxRefused;
use super::ports::{ClaimPolicy, ServedPort};
use super::visits::Visits;
use super::worker::Worker;
use crate::abi::{Key, Mac};
use crate::frame;
use crate::xsk::{BATCH, QueueUmem, RxFrame, RxSocket, TxBatch};

pub enum Source {
    /// The endpoint's own socket on each queue (index = queue).
    Sockets(Vec<RxSocket>),
    /// The endpoint's descriptor ring, fed by the queue workers.
    Ring(Arc<ArrayQueue<RxFrame>>),
}

pub struct Served {
    pub slot: u32,
    pub consumer: Consumer,
    pub source: Source,
    pub claim: ClaimPolicy,
    pub mac: Mac,
    /// The endpoint's 802.1Q tag (None when untagged): stripped on receive, inserted on send.
    pub tag: Option<[u8; 4]>,
    /// The queue whose UMEM and TX ring carry the port's transmissions.
    pub tx_queue: usize,
    pub port: Option<ServedPort>,
}

pub enum Command {
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
    /// Drain the endpoint, close its sockets, and report its final numbers.
    Remove {
        slot: u32,
        reply: SyncSender<FinishedEndpoint>,
    },
    /// Copy of the endpoint's latency histogram (for live stats).
    Histogram {
        slot: u32,
        reply: SyncSender<Histogram<u64>>,
    },
}

pub struct FinishedEndpoint {
    pub slot: u32,
    pub latency: Histogram<u64>,
    pub socket_stats: SocketStats,
    /// The endpoint's sockets (xdp demux), closed wherever this is dropped: closing one waits
    /// for an RCU grace period, which must not stall the consumer serving other endpoints.
    pub sockets: Vec<RxSocket>,
    /// Its port, if one was still connected.
    pub port: Option<ServedPort>,
}

pub struct ConsumerThread {
    pub core: usize,
    pub served: Vec<Served>,
    /// Its waker wakes this thread (commands, stop, frames on its endpoints' rings).
    pub commands: Arc<Mailbox<Command>>,
    pub queues: Queues,
    pub stop: Arc<AtomicBool>,
    /// A source could not be watched: never block long.
    pub unwatched: bool,
    /// The queues' workers, when this thread runs to completion: it owns their fill rings
    /// and runs their passes between its endpoint passes (no worker threads, no wake-ups
    /// between threads on one core). Empty otherwise.
    pub workers: Vec<Worker>,
    /// Which endpoints a pass visits: with many, only those with work.
    pub visits: Visits,
}

/// What a consumer thread hands back when it stops.
pub struct Stopped {
    pub endpoints: Vec<FinishedEndpoint>,
    /// The queue sockets' counters of the workers it ran itself, in queue order.
    pub queues: Vec<anyhow::Result<SocketStats>>,
}

/// What a consumer needs of every queue: its UMEM, its free-frame pools, TX staging.
pub struct Queues {
    pub umems: Vec<QueueUmem>,
    pub free: Vec<Arc<ArrayQueue<RxFrame>>>,
    /// Each queue's worker thread: woken when frames it should refill or reap are waiting.
    /// Empty when this thread runs the workers itself.
    pub workers: Vec<Arc<Waker>>,
    /// The TX free-frame pool of each queue (its completions come back there).
    pub tx_free: Vec<Arc<ArrayQueue<RxFrame>>>,
    /// This thread's TX sockets, one per queue (`user` demux; given with the first port).
    pub tx_sockets: Vec<RxSocket>,
    pub tx_batches: Vec<TxBatch>,
    /// The NIC's MTU: the longest frame a port may send is 14 + this.
    pub mtu: usize,
    /// Leftover sockets closed off this thread (TX sockets replaced while running).
    pub retired: Vec<RxSocket>,
}

impl ConsumerThread {
    /// Runs until `stop` and no work is left; returns the final numbers of the endpoints
    /// still served.
    /// `idle` is woken by `self.commands`' waker (made on the control side, so that its
    /// failure fails the start; it also watches the queue sockets of `self.workers`).
    pub fn run(mut self, mut idle: Sleeper) -> Stopped {
        pin(self.core, "consumer");
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
            // User demux: steer a batch, then deliver it in the same pass.
            for w in &mut self.workers {
                work += w.pass();
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
        let mut finished: Vec<FinishedEndpoint> = self.served.drain(..).map(finish).collect();
        if let Some(first) = finished.first_mut() {
            first.sockets.append(&mut self.queues.tx_sockets);
            first.sockets.append(&mut self.queues.retired);
        }
        Stopped {
            endpoints: finished,
            queues: self.workers.iter().map(Worker::finish).collect(),
        }
    }

    /// One pass over the endpoints: every one of them, or with many only those with work
    /// (`visits`). Returns the frames handled.
    #[inline]
    fn serve(&mut self, idle: &mut Sleeper) -> usize {
        let Self {
            served,
            queues,
            workers,
            visits,
            ..
        } = self;
        let touched = workers
            .iter_mut()
            .filter_map(|w| w.touched.as_mut())
            .flat_map(|t| t.drain(..));
        let mut work = 0;
        if !visits.sparse(served.len()) {
            // A sweep visits every ring anyway.
            touched.for_each(drop);
            for s in served.iter_mut() {
                let n = poll(s, queues, true);
                if n >= BATCH {
                    visits.carry(s.slot);
                }
                work += n;
            }
            return work;
        }
        let plan = visits.plan(|f| idle.ready(f), touched);
        for &i in &plan {
            let s = &mut served[i as usize];
            let n = poll(s, queues, true);
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
        let mut timeout = super::worker::SAFETY_NET;
        for p in self.served.iter().filter_map(|s| s.port.as_ref()) {
            ports = true;
            if p.port.tx_event().is_none() {
                timeout = UNSIGNALLED_PORT_WAIT;
            }
        }
        if self.unwatched {
            timeout = UNSIGNALLED_PORT_WAIT;
        }
        for w in &self.workers {
            timeout = timeout.min(w.longest_sleep());
        }
        let Self {
            served,
            commands,
            stop,
            queues,
            workers,
            ..
        } = self;
        let mut pending = || {
            let mut pending = stop.load(Ordering::Acquire) || !commands.is_empty();
            pending |= workers.iter().any(Worker::pending);
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
                if let Some(p) = port.as_mut().filter(|p| p.counters.live.load(Relaxed)) {
                    pending |= p.port.tx_arm(true);
                    // Frames a busy kernel left on the TX ring wait for this thread's kick.
                    let socket = match source {
                        Source::Sockets(sockets) => sockets.get_mut(*tx_queue),
                        Source::Ring(_) => queues.tx_sockets.get_mut(*tx_queue),
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
                    while poll(&mut served, &mut self.queues, false) > 0 {}
                    let _ = reply.send(finish(served));
                }
            }
            Command::Connect { slot, port, reply } => {
                if let Some(i) = self.served.iter().position(|s| s.slot == slot) {
                    if let Some(fd) = port.port.tx_event() {
                        self.watch(idle, fd.as_raw_fd(), idle::Source::EventFd);
                    }
                    self.served[i].port = Some(*port);
                    self.visits.ported(slot, true);
                    let _ = reply.send(());
                }
            }
            Command::Disconnect { slot, reply } => {
                if let Some(s) = self.served.iter_mut().find(|s| s.slot == slot) {
                    if let Some(p) = &mut s.port {
                        if let Some(fd) = p.port.tx_event() {
                            idle.unwatch(fd.as_raw_fd());
                        }
                        p.publish();
                        p.counters.live.store(false, Relaxed);
                    }
                    self.visits.ported(slot, false);
                    let _ = reply.send(s.port.take());
                }
            }
            Command::TxSockets(sockets) => {
                let old = std::mem::replace(&mut self.queues.tx_sockets, sockets);
                self.queues.retired.extend(old);
            }
            Command::Histogram { slot, reply } => {
                if let Some(s) = self.served.iter().find(|s| s.slot == slot) {
                    let _ = reply.send(s.consumer.latency.clone());
                }
            }
        }
    }
}

impl ConsumerThread {
    fn watch(&mut self, idle: &Sleeper, fd: std::os::fd::RawFd, source: idle::Source) {
        if let Err(e) = idle.watch(fd, source) {
            crate::logging::warn(format_args!(
                "consumer thread: {e:#}; it naps instead of blocking from now on"
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

/// How long a thread serving a port first blocks after arming it (see `ConsumerThread::sleep`).
const PORT_GRACE: Duration = Duration::from_millis(1);

/// The same for a port that gives no signal at all, or a thread that could not watch a
/// source: its frames wait at most this long.
const UNSIGNALLED_PORT_WAIT: Duration = Duration::from_millis(1);

/// Wake queue `q`'s worker once a batch of frames waits for its fill ring (it blocks until
/// then; the fill ring holds thousands, so a few frames can wait).
#[inline]
fn wake_refill(q: usize, free: &[Arc<ArrayQueue<RxFrame>>], workers: &[Arc<Waker>]) {
    if let Some(worker) = workers.get(q)
        && free[q].len() >= BATCH
    {
        worker.wake();
    }
}

fn finish(served: Served) -> FinishedEndpoint {
    let mut socket_stats = SocketStats::default();
    let sockets = match served.source {
        Source::Sockets(sockets) => sockets,
        Source::Ring(_) => Vec::new(),
    };
    for socket in &sockets {
        if let Ok(st) = socket.statistics() {
            socket_stats.add(&st);
        }
    }
    FinishedEndpoint {
        slot: served.slot,
        latency: served.consumer.latency,
        socket_stats,
        sockets,
        port: served.port,
    }
}

/// One batch per source of this endpoint, and one of its port's transmissions when `transmit`;
/// returns frames handled.
#[inline]
fn poll(served: &mut Served, queues: &mut Queues, transmit: bool) -> usize {
    let Served {
        consumer,
        source,
        claim,
        tag,
        port,
        mac,
        tx_queue,
        ..
    } = served;
    let live = port.as_mut().is_some_and(ServedPort::check_live);
    let strip = tag.is_some();
    let mut unclaimed = 0u64;
    let mut pushed = false;
    let mut handled = 0;
    let Queues { umems, free, .. } = queues;
    let mut give_back = |frame: RxFrame, now: u64| {
        let q = frame.queue() as usize;
        let bytes = umems[q].bytes(&frame);
        consumer.on_frame(bytes, now);
        match port.as_mut() {
            Some(p) if live => {
                // Strip only a tag the frame carries (a NIC may have taken it off already).
                let tagged = strip
                    && bytes.len() >= 16
                    && u16::from_be_bytes([bytes[12], bytes[13]]) == crate::frame::TPID_8021Q;
                match p.port.rx_push(std::slice::from_ref(&bytes), tagged) {
                    Ok(()) => {
                        pushed = true;
                        p.batch.rx_frames += 1;
                        p.batch.rx_bytes += (bytes.len() - if tagged { 4 } else { 0 }) as u64;
                    }
                    Err(RxRefused::NoBuffer) => p.batch.ring_full += 1,
                    Err(RxRefused::TooBig) => p.batch.rx_too_big += 1,
                    Err(RxRefused::NotConnected) => p.batch.not_connected += 1,
                }
            }
            Some(p) => p.batch.not_connected += 1,
            None if *claim == ClaimPolicy::WhileConnected => unclaimed += 1,
            None => {}
        }
        // Cannot fail: each free queue holds its UMEM's whole frame count.
        let _ = free[q].push(frame);
    };
    match source {
        Source::Sockets(sockets) => {
            for socket in sockets.iter_mut() {
                let n = socket.recv(&mut give_back);
                if n > 0 {
                    wake_refill(socket.queue() as usize, free, &queues.workers);
                }
                handled += n;
            }
        }
        Source::Ring(ring) => {
            // Only frames already queued when the clock is read: none was sent after it (a
            // frame the worker pushes during the batch would look sent in the future, untimed).
            let queued = ring.len().min(BATCH);
            if queued > 0 {
                let now = crate::sys::monotonic_ns();
                while handled < queued {
                    // This thread is the ring's only consumer: the counted frames are there.
                    let Some(frame) = ring.pop() else { break };
                    give_back(frame, now);
                    handled += 1;
                }
                for q in 0..free.len() {
                    wake_refill(q, free, &queues.workers);
                }
            }
        }
    }
    if handled > 0 {
        consumer.publish();
        if unclaimed > 0 {
            consumer
                .counters
                .dropped_not_connected
                .fetch_add(unclaimed, Relaxed);
        }
    }
    if let Some(p) = port.as_mut() {
        if pushed {
            p.port.rx_flush();
        }
        if live && transmit {
            let socket = match source {
                Source::Sockets(sockets) => sockets.get_mut(*tx_queue),
                Source::Ring(_) => queues.tx_sockets.get_mut(*tx_queue),
            };
            if let Some(socket) = socket {
                let sent = super::port_io::transmit(
                    p,
                    socket,
                    &queues.umems[*tx_queue],
                    &queues.tx_free[*tx_queue],
                    &mut queues.tx_batches[*tx_queue],
                    mac,
                    *tag,
                    queues.mtu,
                );
                if sent > 0
                    && let Some(worker) = queues.workers.get(*tx_queue)
                {
                    // Its completions are the worker's to reap.
                    worker.wake();
                }
                handled += sent;
            }
        }
        p.publish();
    }
    handled
}

/// Nanosecond latency histogram: 1 ns to 60 s, 2 significant digits (values within 1%).
/// Every endpoint has one and the daemon keeps two more for its intervals: at 3 digits each
/// would take 221 KB, at 2 they take 30 KB, which is what a thousand endpoints can afford.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("static bounds are valid")
}

/// Per-frame work of an endpoint. Counts accumulate locally and are published once per
/// batch, so the per-frame path touches no shared cache line.
pub struct Consumer {
    name: String,
    key: Key,
    pub counters: Arc<EndpointCounters>,
    pub latency: Histogram<u64>,
    batch: LocalCounts,
}

#[derive(Default)]
struct LocalCounts {
    frames: u64,
    bytes: u64,
    misdelivered: u64,
    untimed: u64,
}

impl Consumer {
    pub fn new(spec: &EndpointSpec, counters: Arc<EndpointCounters>) -> Self {
        Self {
            name: spec.name.clone(),
            key: spec.key(),
            counters,
            latency: latency_histogram(),
            batch: LocalCounts::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Account for one frame; `now_ns` is read once per batch by the caller.
    #[inline]
    pub fn on_frame(&mut self, bytes: &[u8], now_ns: u64) {
        self.batch.frames += 1;
        self.batch.bytes += bytes.len() as u64;
        let payload = frame::read_payload(bytes);
        if !self.is_mine(bytes, payload.as_ref()) {
            self.batch.misdelivered += 1;
        }
        match payload {
            Some(p) if p.tx_ns != 0 && now_ns >= p.tx_ns => {
                // Saturates at the histogram's top instead of failing.
                self.latency.saturating_record((now_ns - p.tx_ns).max(1));
            }
            _ => self.batch.untimed += 1,
        }
    }

    /// The frame's destination MAC and VLAN must be ours. A tag on the frame is checked
    /// directly; the kernel path strips tags, so there the payload's intended VLAN is used.
    #[inline]
    fn is_mine(&self, bytes: &[u8], payload: Option<&frame::Payload>) -> bool {
        if bytes.len() < frame::ETH_HLEN || bytes[..6] != self.key.mac {
            return false;
        }
        let tagged = u16::from_be_bytes([bytes[12], bytes[13]]) == frame::TPID_8021Q;
        let frame_vid = if tagged && bytes.len() >= 16 {
            Some(u16::from_be_bytes([bytes[14], bytes[15]]) & 0x0fff)
        } else {
            None
        };
        match (frame_vid, payload) {
            (Some(vid), _) => vid == self.key.vid,
            (None, Some(p)) => p.vid == self.key.vid,
            (None, None) => self.key.vid == 0,
        }
    }

    /// Publish the batch's counts.
    #[inline]
    pub fn publish(&mut self) {
        let b = std::mem::take(&mut self.batch);
        if b.frames == 0 {
            return;
        }
        self.counters.frames.fetch_add(b.frames, Relaxed);
        self.counters.bytes.fetch_add(b.bytes, Relaxed);
        self.counters
            .misdelivered
            .fetch_add(b.misdelivered, Relaxed);
        self.counters.untimed.fetch_add(b.untimed, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vid: u16) -> EndpointSpec {
        EndpointSpec {
            name: "c1".into(),
            vid,
            mac: [2, 0, 0, 0, 0, 1],
        }
    }

    fn frame_to(vid: Option<u16>, mac: Mac, tx_ns: u64) -> Vec<u8> {
        let mut f = frame::sample_frame(mac, vid, 0);
        let at = frame::payload_offset(&f).unwrap();
        frame::patch_payload(&mut f, at, 0, tx_ns);
        f
    }

    #[test]
    fn counts_and_times_own_frames() {
        let mut c = Consumer::new(&spec(100), Default::default());
        c.on_frame(&frame_to(Some(100), [2, 0, 0, 0, 0, 1], 1_000), 1_500);
        c.on_frame(&frame_to(Some(100), [2, 0, 0, 0, 0, 1], 1_000), 3_000);
        c.publish();
        assert_eq!(c.counters.frames.load(Relaxed), 2);
        assert_eq!(c.counters.bytes.load(Relaxed), 128);
        assert_eq!(c.counters.misdelivered.load(Relaxed), 0);
        assert_eq!(c.latency.len(), 2);
        // Two significant digits: values come back within 1%.
        assert!(c.latency.min().abs_diff(500) <= 5, "{}", c.latency.min());
        assert!(c.latency.max().abs_diff(2_000) <= 20, "{}", c.latency.max());
    }

    #[test]
    fn flags_foreign_vlan_or_mac() {
        let mut c = Consumer::new(&spec(100), Default::default());
        c.on_frame(&frame_to(Some(200), [2, 0, 0, 0, 0, 1], 1), 2);
        c.on_frame(&frame_to(Some(100), [2, 0, 0, 0, 0, 2], 1), 2);
        c.on_frame(&frame_to(None, [2, 0, 0, 0, 0, 1], 1), 2); // untagged, payload says vid 0
        c.on_frame(&[0u8; 10], 2);
        c.publish();
        assert_eq!(c.counters.misdelivered.load(Relaxed), 4);
        assert_eq!(c.counters.untimed.load(Relaxed), 1);
    }

    #[test]
    fn stripped_tag_checked_against_payload() {
        let mut c = Consumer::new(&spec(100), Default::default());
        let mut f = frame_to(Some(100), [2, 0, 0, 0, 0, 1], 5);
        f.drain(12..16); // what a VLAN device hands to the macvlan above it
        c.on_frame(&f, 10);
        c.publish();
        assert_eq!(c.counters.misdelivered.load(Relaxed), 0);
        assert_eq!(c.latency.len(), 1);
    }
}
