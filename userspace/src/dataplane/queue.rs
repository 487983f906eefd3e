//! One receive queue of the NIC, the unit everything per queue hangs off: its UMEM, its free
//! frames and TX frames, its counters, and who owns its rings.
//!
//! A queue is two halves. [`NicQueue`] is shared (behind an `Arc`) by every thread that
//! touches the queue's frames: it holds the UMEM they are read from, the pools they are given
//! back to, the counters, and the waker of the queue's owner. [`QueueOwner`] is held by
//! exactly one thread: the fill and completion rings and the queue's own socket (the
//! kernel's single-producer/single-consumer rings allow no other arrangement). Its pass hands
//! free frames back to the kernel, reaps transmitted ones and, in `user` demux, steers what
//! the queue's socket received to the endpoints.
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Result;

use super::idle::{Mailbox, Sleeper, Source, Waker};
use super::steer::{self, SteerTable, Steering};
use crate::xsk::{self, BATCH, FramePool, QueueConfig, QueueRings, QueueUmem, SocketStats};

crate::counter_set! {
    /// What a queue did with its frames.
    pub struct QueueCounts (live QueueCounters) in "queue" {
        /// Frames read from the queue's own socket (`user` demux).
        rx: Frames, "RX";
        /// Frames the userspace demux handed to an endpoint's ring.
        steered: Info, "STEERED";
        /// Claimed by XDP but unknown to the userspace demux (an endpoint being removed).
        dropped_unknown: Dropped(reason = "unknown"), "UNKNOWN";
        /// The endpoint's ring was full: dropped and recycled, never waited for.
        dropped_ring_full: Dropped(reason = "ring_full"), "RING-FULL";
        /// Frames read off any socket of this queue, by whoever read them.
        received: Info, "RECEIVED";
        /// UMEM chunks those frames took (more than RECEIVED when frames came as multi-buffer
        /// chains), and those of broken chains.
        chunks: Info, "CHUNKS";
        /// Multi-buffer chains dropped whole, every chunk given back: longer than a frame may
        /// be, missing a chunk the kernel had already handed over, or never ended.
        dropped_broken_chain: Dropped(reason = "broken_chain"), "BROKEN-CHAIN";
        /// Frames handed back to the kernel's fill ring.
        refilled: Info, "REFILLED";
        /// Wake-ups the fill ring asked for after running dry (need_wakeup) and got.
        fill_wakeups: Info, "FILL-WAKEUPS";
        /// Times the owner ran the queue's NAPI itself (busy polling).
        busy_polls: Info, "BUSY-POLLS";
        /// Ports' transmitted UMEM chunks back from the completion ring (a frame sent as a
        /// multi-buffer chain is several).
        tx_completed: Info, "TX-DONE";
    }
}

/// A queue at one moment: its counters, the kernel's counters of its socket, and where its
/// frames are.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    #[serde(flatten)]
    pub counts: QueueCounts,
    /// The kernel's counters for the queue's own socket.
    pub socket: SocketStats,
    /// Receive frames of the queue's UMEM.
    #[serde(default)]
    pub frames: u64,
    /// Of those, in the free pool now (read, waiting for the fill ring).
    #[serde(default)]
    pub frames_free: u64,
    /// Of those, with the kernel: handed to the fill ring and not read back yet (in the fill
    /// ring, the driver's ring or a socket's receive ring).
    #[serde(default)]
    pub frames_in_kernel: u64,
    /// Frames a pool could not take back (lost for good; must be 0).
    #[serde(default)]
    pub frames_lost: u64,
    /// Frames the kernel delivered while they were not its to deliver (a driver handing a
    /// buffer over twice): dropped, not served twice. Must be 0 on a sound driver.
    #[serde(default)]
    pub frames_duplicate: u64,
    /// Frames of the queue's TX pool free now, of `tx_pool` (all of them when idle: none lost).
    #[serde(default)]
    pub tx_pool_free: u64,
    #[serde(default)]
    pub tx_pool: u64,
}

impl QueueSnapshot {
    /// Receive frames neither free nor with the kernel: being served, or waiting in an
    /// endpoint's ring. 0 once the queue is idle, or a frame was lost.
    pub fn frames_elsewhere(&self) -> u64 {
        self.frames
            .saturating_sub(self.frames_free + self.frames_in_kernel)
    }
}

/// A snapshot reads as its counts (`snapshot.refilled`).
impl std::ops::Deref for QueueSnapshot {
    type Target = QueueCounts;
    fn deref(&self) -> &QueueCounts {
        &self.counts
    }
}

/// The shared half of a queue.
pub struct NicQueue {
    pub id: u16,
    pub umem: QueueUmem,
    /// Receive frames read and given back, for the fill ring.
    pub free: FramePool,
    /// Frames for the ports' transmissions; completions come back here.
    pub tx: FramePool,
    pub counters: QueueCounters,
    /// Wakes the thread that owns the queue's rings (frames to refill, TX to reap).
    pub owner: Arc<Waker>,
    /// The queue socket's kernel counters, readable from any thread.
    socket: xsk::StatsHandle,
    /// Frames the kernel got when the queue opened (before any refill).
    initial_fill: u64,
}

impl NicQueue {
    /// Give a frame read from this queue back (any thread), every chunk of it; the owner is
    /// woken once a batch waits, so the fill ring never waits on a few frames.
    #[inline]
    pub fn give_back(&self, frame: xsk::RxFrame) {
        self.umem.release(frame, &self.free);
    }

    /// Count what a read of one of this queue's sockets took.
    #[inline]
    pub fn count_received(&self, got: &xsk::Received) {
        let c = &self.counters;
        if got.frames > 0 {
            c.received.fetch_add(got.frames as u64, Relaxed);
        }
        if got.chunks > 0 {
            c.chunks.fetch_add(got.chunks as u64, Relaxed);
        }
        if got.broken > 0 {
            c.dropped_broken_chain.fetch_add(got.broken as u64, Relaxed);
        }
    }

    /// After a batch was given back: wake the owner if a batch is waiting for it.
    #[inline]
    pub fn after_give_back(&self) {
        if self.free.len() >= BATCH {
            self.owner.wake();
        }
    }

    /// The queue's numbers now (a syscall for the socket's counters).
    pub fn snapshot(&self) -> Result<QueueSnapshot> {
        Ok(self.snapshot_with(self.socket.statistics()?))
    }

    /// The queue's numbers with socket counters read elsewhere (at stop, by the owner).
    pub fn snapshot_with(&self, socket: SocketStats) -> QueueSnapshot {
        let counts = self.counters.read();
        QueueSnapshot {
            counts,
            socket,
            frames: self.free.size() as u64,
            frames_free: self.free.len() as u64,
            frames_in_kernel: (self.initial_fill + counts.refilled).saturating_sub(counts.chunks),
            frames_lost: self.free.lost() + self.tx.lost(),
            frames_duplicate: self.umem.duplicates(),
            tx_pool_free: self.tx.len() as u64,
            tx_pool: self.tx.size() as u64,
        }
    }
}

/// Whom the queue's owner hands frames to: the classifier steers (`xdp` demux, nothing to do)
/// or the owner does (`user` demux).
pub enum QueueDemux {
    Kernel,
    User(Steering),
}

/// The owning half of a queue: its rings, held by one thread.
pub struct QueueOwner {
    pub queue: Arc<NicQueue>,
    rings: QueueRings,
    demux: QueueDemux,
    /// Run the queue's NAPI from the passes (busy polling).
    busy_poll: bool,
}

/// How long the owner blocks while TX frames are out: completions raise no event.
const COMPLETION_WAIT: Duration = Duration::from_millis(1);

/// The longest a thread blocks with nothing that could have been missed: a safety net only
/// (every source of work wakes it), and the bound on any wake-up a bug might lose.
pub const SAFETY_NET: Duration = Duration::from_secs(1);

/// Open queue `id` of `ifname`: its UMEM and first socket, every receive frame handed to the
/// fill ring, a sixteenth set aside for TX. `owner` wakes the thread that will own it; why a
/// zero-copy bind fell back goes to `warnings`.
pub fn open(
    ifname: &str,
    id: u32,
    cfg: &QueueConfig,
    user_demux: Option<Arc<Mailbox<Arc<SteerTable>>>>,
    owner: Arc<Waker>,
    warnings: &mut Vec<String>,
) -> Result<(QueueOwner, crate::modes::Bound)> {
    let (umem, mut rings, bound) = xsk::open_queue(ifname, id, cfg, warnings)?;
    let tx_frames = rings.take_tx_frames();
    let tx = FramePool::new(tx_frames.len(), tx_frames);
    let initial_fill = u64::from(cfg.frames) - tx.size() as u64;
    let queue = Arc::new(NicQueue {
        id: umem.queue(),
        umem,
        free: FramePool::new(initial_fill as usize, []),
        tx,
        counters: QueueCounters::default(),
        owner,
        socket: rings.socket.stats_handle(),
        initial_fill,
    });
    let demux = match user_demux {
        Some(updates) => QueueDemux::User(Steering::new(updates)),
        None => QueueDemux::Kernel,
    };
    Ok((
        QueueOwner {
            queue,
            rings,
            demux,
            busy_poll: false,
        },
        bound,
    ))
}

impl QueueOwner {
    /// The queue socket (`user` demux: where the classifier sends the queue's claimed frames).
    pub fn socket(&self) -> &xsk::RxSocket {
        &self.rings.socket
    }

    /// Have `idle` wake for the queue socket: frames to steer in `user` demux; in zero-copy a
    /// poll on it also kicks a driver that asked for a wake-up.
    pub fn watch(&self, idle: &Sleeper) -> Result<()> {
        idle.watch(self.rings.socket.as_raw_fd(), Source::Socket)
    }

    /// One pass: apply new steering tables, steer up to a few batches (`user` demux), give
    /// every freed frame back to the fill ring, reap TX completions. Steered frames for
    /// endpoints of the calling thread are noted in `touched`. Returns the work done.
    #[inline]
    pub fn pass(&mut self, touched: &mut Vec<u32>) -> usize {
        let q = &*self.queue;
        let mut work = 0;
        if let QueueDemux::User(steering) = &mut self.demux {
            work += steering.pass(&mut self.rings.socket, q, touched);
        }
        // Busy polling: with the socket's ring empty (always so in `xdp` demux, where frames
        // go to the endpoints' sockets), run the queue's NAPI once for the next pass.
        if self.busy_poll && work == 0 {
            self.rings.socket.busy_poll();
            q.counters.busy_polls.fetch_add(1, Relaxed);
        }
        // Everything freed so far, not one batch: a pass of a thread running to completion
        // may have freed many batches (a batch per endpoint), and what waits here is missing
        // from the fill ring.
        let mut refilled = 0;
        loop {
            let n = self.rings.refill(&q.free);
            refilled += n;
            if n < BATCH {
                break;
            }
        }
        if refilled > 0 {
            q.counters.refilled.fetch_add(refilled as u64, Relaxed);
            let wakeups = self.rings.take_fill_wakeups();
            if wakeups > 0 {
                q.counters.fill_wakeups.fetch_add(wakeups, Relaxed);
            }
        }
        let completed = self.rings.reap_completions(&q.tx);
        if completed > 0 {
            q.counters.tx_completed.fetch_add(completed as u64, Relaxed);
        }
        work + refilled + completed
    }

    /// Whether work waits that raises no event of its own: a new table, or a batch of frames
    /// to refill. Checked before blocking.
    pub fn pending(&self) -> bool {
        let table = match &self.demux {
            QueueDemux::User(s) => s.pending(),
            QueueDemux::Kernel => false,
        };
        table || self.queue.free.len() >= BATCH
    }

    /// The longest this queue lets its thread block: completions have no readiness event, so
    /// while TX frames are out it looks again soon.
    pub fn longest_sleep(&self) -> Duration {
        if self.queue.tx.len() < self.queue.tx.size() {
            COMPLETION_WAIT
        } else {
            SAFETY_NET
        }
    }

    /// The NAPI id of the queue (0: none, and busy polling cannot engage).
    pub fn napi_id(&self) -> Result<u32> {
        self.rings.socket.napi_id()
    }

    /// Drive the queue's NAPI from this owner's passes: preferred busy polling on its socket.
    pub fn busy_poll_with(&mut self, busy: crate::nic::BusyPoll) -> Result<()> {
        self.rings
            .socket
            .prefer_busy_poll(crate::nic::busy_poll::SOCKET_BUSY_POLL_US, busy.budget)?;
        self.busy_poll = true;
        Ok(())
    }

    /// The kernel's counters for the queue's own socket, read once the queue is drained; a
    /// chain its socket held unfinished is given back and counted broken.
    pub fn finish(&mut self) -> Result<SocketStats> {
        if self.rings.socket.abandon_chain(&self.queue.free) {
            self.queue.count_received(&xsk::Received {
                broken: 1,
                ..Default::default()
            });
        }
        self.rings.socket.statistics()
    }

    /// Tables applied so far (`user` demux): the control side waits on it.
    pub fn steering(&self) -> Option<&Steering> {
        match &self.demux {
            QueueDemux::User(s) => Some(s),
            QueueDemux::Kernel => None,
        }
    }
}

/// Busy poll every queue of `owners` (`busy`), if each has a NAPI id; a queue without one
/// (veth has none) leaves busy polling off on the whole interface, said in `warnings`.
/// Returns whether it is on.
pub fn busy_poll_all(
    owners: &mut [QueueOwner],
    busy: crate::nic::BusyPoll,
    ifname: &str,
    warnings: &mut Vec<String>,
) -> Result<bool> {
    for owner in owners.iter() {
        if owner.napi_id()? == 0 {
            warnings.push(format!(
                "busy polling asked for, but {ifname} queue {} has no NAPI id (veth has none: no \
                 NAPI instance the kernel could run on a socket's behalf): busy polling is off \
                 on {ifname}",
                owner.queue.id
            ));
            return Ok(false);
        }
    }
    for owner in owners.iter_mut() {
        owner.busy_poll_with(busy)?;
    }
    Ok(true)
}

/// Frames per steering pass at most, and the touched list's room: see [`steer::STEER_BATCHES`].
pub const TOUCHED: usize = steer::STEER_BATCHES * BATCH;
