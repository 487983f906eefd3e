//! One receive queue of the dataplane, opened as a unit: its UMEM and socket, its free-frame
//! queue and TX pool, its counters, and its worker (returned ready to spawn).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;

use anyhow::Result;
use crossbeam_queue::ArrayQueue;

use super::idle::{Mailbox, Waker};
use super::{DataplaneConfig, QueueCounters, SocketStats, worker};
use crate::modes::{Bound, DemuxMode};
use crate::xdp::Classifier;
use crate::xsk::{self, QueueUmem, RxFrame};

/// The dataplane's side of a queue worker.
pub(super) struct WorkerHandle {
    pub(super) thread: Option<JoinHandle<Result<SocketStats>>>,
    /// The queue socket's kernel counters, readable from here.
    pub(super) socket: xsk::StatsHandle,
    pub(super) updates: Arc<Mailbox<Arc<worker::SteerTable>>>,
    pub(super) applied: Arc<AtomicU64>,
}

/// Who wakes the queue's worker (its mailbox's waker) and whom it wakes.
pub(super) struct Wakers {
    pub(super) worker: Arc<Waker>,
    pub(super) consumers: Vec<Arc<Waker>>,
}

/// What the dataplane keeps of an opened queue.
pub(super) struct Opened {
    pub(super) umem: QueueUmem,
    pub(super) bound: Bound,
    /// Frames consumers give back, for the worker's fill ring.
    pub(super) free: Arc<ArrayQueue<RxFrame>>,
    pub(super) tx_pool: Arc<ArrayQueue<RxFrame>>,
    pub(super) tx_pool_size: usize,
    pub(super) counters: Arc<QueueCounters>,
    pub(super) handle: WorkerHandle,
}

/// Open queue `q` of `cfg.ifname` (user demux: and steer the queue's frames to its socket);
/// the worker is built, not started. Why a bind fell back goes to `warnings`.
pub(super) fn open(
    cfg: &DataplaneConfig,
    q: u32,
    classifier: &mut Classifier,
    stop: &Arc<AtomicBool>,
    wakers: Wakers,
    warnings: &mut Vec<String>,
) -> Result<(Opened, worker::Worker)> {
    let (umem, mut rings, bound) = xsk::open_queue(&cfg.ifname, q, &cfg.queue, warnings)?;
    let tx_frames = rings.take_tx_frames();
    let tx_pool_size = tx_frames.len();
    let tx_pool = Arc::new(ArrayQueue::new(tx_pool_size.max(1)));
    for f in tx_frames {
        let _ = tx_pool.push(f);
    }
    if cfg.demux == DemuxMode::User {
        classifier.set_socket(classifier.xsk_index(0, q), &rings.socket)?;
    }
    let free = Arc::new(ArrayQueue::new(cfg.queue.frames as usize));
    let counters = Arc::new(QueueCounters::default());
    let updates = Arc::new(Mailbox::new(16, wakers.worker));
    let applied = Arc::new(AtomicU64::new(0));
    let socket = rings.socket.stats_handle();
    let worker = worker::Worker {
        queue: q as u16,
        core: cfg.cores[q as usize % cfg.cores.len()],
        umem: umem.clone(),
        rings,
        free: free.clone(),
        tx_free: tx_pool.clone(),
        tx_frames: tx_pool_size,
        demux: cfg.demux,
        table: Arc::default(),
        updates: updates.clone(),
        consumers: wakers.consumers,
        applied: applied.clone(),
        counters: counters.clone(),
        stop: stop.clone(),
        touched: None,
    };
    let handle = WorkerHandle {
        thread: None,
        socket,
        updates,
        applied,
    };
    let opened = Opened {
        umem,
        bound,
        free,
        tx_pool,
        tx_pool_size,
        counters,
        handle,
    };
    Ok((opened, worker))
}
