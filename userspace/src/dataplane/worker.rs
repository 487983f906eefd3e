//! A queue's worker: the only owner of the queue's fill ring. It returns freed frames to
//! the kernel and, in `user` demux, reads the queue's socket and hands each frame's
//! descriptor to its endpoint's ring.
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Result;
use crossbeam_queue::ArrayQueue;

use super::endpoint::EndpointCounters;
use super::idle::{HotLoop, Mailbox, Sleeper, Source, Waker, pin};
use super::lookup::EndpointTable;
use super::{DemuxMode, SocketStats};
use crate::frame::{Class, classify};
use crate::xsk::{BATCH, QueueRings, QueueUmem, RxFrame};

/// Per-queue counters (user demux steering and frame recycling).
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames read from the queue's own socket (user demux).
    pub rx: AtomicU64,
    /// Frames handed to an endpoint ring.
    pub steered: AtomicU64,
    /// Claimed by XDP but unknown to the userspace table (endpoint being removed).
    pub dropped_unknown: AtomicU64,
    /// Endpoint ring full: dropped and recycled, never waited for.
    pub dropped_ring_full: AtomicU64,
    /// Frames handed back to the fill ring.
    pub refilled: AtomicU64,
    /// Ports' transmitted frames back from the completion ring.
    pub tx_completed: AtomicU64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// The kernel's counters for the queue's own socket (filled in when stopped).
    pub socket: SocketStats,
    pub rx: u64,
    pub steered: u64,
    pub dropped_unknown: u64,
    pub dropped_ring_full: u64,
    pub refilled: u64,
    #[serde(default)]
    pub tx_completed: u64,
    /// Frames of the queue's TX pool free now, of `tx_pool` (all of them when idle: none lost).
    #[serde(default)]
    pub tx_pool_free: u64,
    #[serde(default)]
    pub tx_pool: u64,
}

impl QueueCounters {
    pub fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            socket: SocketStats::default(),
            rx: self.rx.load(Relaxed),
            steered: self.steered.load(Relaxed),
            dropped_unknown: self.dropped_unknown.load(Relaxed),
            dropped_ring_full: self.dropped_ring_full.load(Relaxed),
            refilled: self.refilled.load(Relaxed),
            tx_completed: self.tx_completed.load(Relaxed),
            tx_pool_free: 0,
            tx_pool: 0,
        }
    }
}

/// The user demux's view of the endpoints: replaced whole (never edited in place) when an
/// endpoint joins or leaves, so the worker reads it without locks.
#[derive(Default)]
pub struct SteerTable {
    pub lookup: EndpointTable,
    /// Each entry's endpoint slot.
    pub slots: Vec<u32>,
    pub rings: Vec<Arc<ArrayQueue<RxFrame>>>,
    pub counters: Vec<Arc<EndpointCounters>>,
}

/// The longest a thread blocks with nothing that could have been missed: a safety net only
/// (every source of work wakes it), and the bound on any wake-up a bug might lose.
pub const SAFETY_NET: Duration = Duration::from_secs(1);

/// Batches a worker steers per pass at most (user demux): the rest waits for the next pass,
/// after the endpoints were served and the fill ring refilled.
pub(super) const STEER_BATCHES: usize = 4;

/// How long the worker blocks while TX frames are out: completions raise no event.
const COMPLETION_WAIT: Duration = Duration::from_millis(1);

pub struct Worker {
    pub queue: u16,
    pub core: usize,
    pub umem: QueueUmem,
    pub rings: QueueRings,
    pub free: Arc<ArrayQueue<RxFrame>>,
    /// The queue's TX frames: ports' transmissions complete back into it.
    pub tx_free: Arc<ArrayQueue<RxFrame>>,
    /// The TX pool's full size: fewer in it means completions are still to come.
    pub tx_frames: usize,
    pub demux: DemuxMode,
    pub table: Arc<SteerTable>,
    /// New tables from the control side; checked once per loop. Its waker wakes this worker.
    pub updates: Arc<Mailbox<Arc<SteerTable>>>,
    /// The consumer threads' wakers: woken after frames were handed to endpoint rings (none
    /// when the consumer runs this worker itself).
    pub consumers: Vec<Arc<Waker>>,
    /// Tables applied so far: the control side waits on it before retiring an endpoint.
    pub applied: Arc<AtomicU64>,
    pub counters: Arc<QueueCounters>,
    pub stop: Arc<AtomicBool>,
    /// Running to completion in user demux: the slots of the endpoint rings this pass found
    /// empty and pushed to, for the consumer's next pass (room for [`STEER_BATCHES`] full
    /// batches, reserved; drained by the consumer after every pass). None: not recorded.
    pub touched: Option<Vec<u32>>,
}

/// Batch-local counts, published once per batch.
#[derive(Default)]
struct Batch {
    rx: u64,
    steered: u64,
    unknown: u64,
    ring_full: u64,
}

impl Worker {
    /// The worker's idle state, made on the control side so that a failure fails the start:
    /// woken by its mailbox, and by its queue socket ([`Self::watch`]).
    pub fn idle(&self) -> Result<Sleeper> {
        let idle = Sleeper::new(self.updates.waker.clone())?;
        self.watch(&idle)?;
        Ok(idle)
    }

    /// Have `idle` wake for the queue socket: frames to steer in user demux; in zero-copy
    /// mode a poll on it also kicks a driver that asked for a wake-up.
    pub fn watch(&self, idle: &Sleeper) -> Result<()> {
        idle.watch(self.rings.socket.as_raw_fd(), Source::Socket)
    }

    /// Runs until `stop`, then drains its socket once more; returns the kernel's counters for
    /// the queue's own socket (drops before the userspace demux, e.g. fill ring empty).
    /// `idle` is woken by `self.updates`' waker and watches the queue socket ([`Self::idle`]).
    pub fn run(mut self, mut idle: Sleeper) -> Result<SocketStats> {
        pin(self.core, &format!("queue {} worker", self.queue));
        let hot = HotLoop::enter();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if self.pass() > 0 {
                idle.worked();
            } else if stopping {
                drop(hot);
                return self.finish();
            } else if idle.spun_out() {
                let timeout = self.longest_sleep();
                let stop = &self.stop;
                idle.sleep(timeout, || stop.load(Ordering::Acquire) || self.pending());
            }
        }
    }

    /// One pass over the queue: apply new steering tables, steer a batch (user demux), give
    /// freed frames back to the fill ring, reap TX completions. Returns the work done. A
    /// thread that runs to completion calls this between its endpoint passes.
    #[inline]
    pub fn pass(&mut self) -> usize {
        while let Some(table) = self.updates.pop() {
            // Dropping the old table frees memory but allocates nothing.
            self.table = table;
            self.applied.fetch_add(1, Ordering::Release);
        }
        let mut work = 0;
        if self.demux == DemuxMode::User {
            // Several batches while they come full, so that a consumer pass (the same thread's
            // next step, when running to completion) finds a few frames per endpoint, not one.
            let mut steered = 0;
            for _ in 0..STEER_BATCHES {
                let n = self.steer_batch();
                steered += n;
                if n < BATCH {
                    break;
                }
            }
            if steered > 0 {
                for c in &self.consumers {
                    c.wake();
                }
            }
            work += steered;
        }
        // Everything freed so far, not one batch: a pass of a thread running to completion
        // may have freed many batches (a batch per endpoint), and what waits here is missing
        // from the fill ring.
        let mut refilled = 0;
        loop {
            let n = self.rings.refill(&self.free);
            refilled += n;
            if n < BATCH {
                break;
            }
        }
        if refilled > 0 {
            self.counters.refilled.fetch_add(refilled as u64, Relaxed);
        }
        work += refilled;
        let completed = self.rings.reap_completions(&self.tx_free);
        if completed > 0 {
            self.counters
                .tx_completed
                .fetch_add(completed as u64, Relaxed);
        }
        work + completed
    }

    /// Whether work waits that raises no event of its own: a new table, or a batch of frames
    /// to refill. Checked before blocking.
    pub fn pending(&self) -> bool {
        !self.updates.is_empty() || self.free.len() >= BATCH
    }

    /// The longest this queue lets its thread block: completions have no readiness event, so
    /// while TX frames are out it looks again soon.
    pub fn longest_sleep(&self) -> Duration {
        if self.tx_free.len() < self.tx_frames {
            COMPLETION_WAIT
        } else {
            SAFETY_NET
        }
    }

    /// The kernel's counters for the queue's own socket, read once the queue is drained.
    pub fn finish(&self) -> Result<SocketStats> {
        let mut stats = SocketStats::default();
        stats.add(&self.rings.socket.statistics()?);
        Ok(stats)
    }

    /// Read one batch from the queue's socket and hand each frame to its endpoint's ring.
    #[inline]
    fn steer_batch(&mut self) -> usize {
        let mut batch = Batch::default();
        let Self {
            umem,
            rings,
            free,
            table,
            touched,
            ..
        } = self;
        let table: &SteerTable = table;
        let n = rings.socket.recv(|frame, _| {
            batch.rx += 1;
            let slot = match classify(umem.bytes(&frame)) {
                Class::Unicast(key) => table.lookup.get(&key),
                _ => None,
            };
            let Some(slot) = slot else {
                batch.unknown += 1;
                let _ = free.push(frame);
                return;
            };
            let ring = &table.rings[slot as usize];
            let first = touched.is_some() && ring.is_empty();
            match ring.push(frame) {
                Ok(()) => {
                    batch.steered += 1;
                    if let Some(t) = touched.as_mut().filter(|t| first && t.len() < t.capacity()) {
                        t.push(table.slots[slot as usize]);
                    }
                }
                Err(frame) => {
                    batch.ring_full += 1;
                    table.counters[slot as usize]
                        .dropped_ring_full
                        .fetch_add(1, Relaxed);
                    let _ = free.push(frame);
                }
            }
        });
        if n > 0 {
            let c = &self.counters;
            c.rx.fetch_add(batch.rx, Relaxed);
            c.steered.fetch_add(batch.steered, Relaxed);
            c.dropped_unknown.fetch_add(batch.unknown, Relaxed);
            c.dropped_ring_full.fetch_add(batch.ring_full, Relaxed);
        }
        n
    }
}
