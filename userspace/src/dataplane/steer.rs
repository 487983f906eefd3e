//! The `user` demux: the classifier redirects every claimed frame of a queue into the queue's
//! one socket, and the queue's owner parses each frame's (VLAN, MAC), looks its endpoint up
//! and hands the descriptor (never a copy) to that endpoint's ring, where the thread serving
//! the endpoint picks it up.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};

use crossbeam_queue::ArrayQueue;

use super::endpoint::EndpointCounters;
use super::idle::{Mailbox, Waker};
use super::lookup::EndpointTable;
use super::queue::NicQueue;
use crate::frame::{Class, classify};
use crate::xsk::{BATCH, RxFrame, RxSocket};

/// Batches steered per pass at most: the rest waits for the next pass, after the endpoints
/// were served and the fill ring refilled.
pub(super) const STEER_BATCHES: usize = 4;

/// The user demux's view of the endpoints: replaced whole (never edited in place) when an
/// endpoint joins or leaves, so the owner reads it without locks.
#[derive(Default)]
pub struct SteerTable {
    pub lookup: EndpointTable,
    /// Per entry: the endpoint's slot, ring and counters.
    pub slots: Vec<u32>,
    pub rings: Vec<Arc<ArrayQueue<RxFrame>>>,
    pub counters: Vec<Arc<EndpointCounters>>,
    /// The threads serving those endpoints: woken after a pass steered frames.
    pub servers: Vec<Arc<Waker>>,
}

/// A queue owner's steering state.
pub struct Steering {
    table: Arc<SteerTable>,
    /// New tables from the control side; checked once per pass. Its waker is the owner's.
    updates: Arc<Mailbox<Arc<SteerTable>>>,
    /// Tables applied so far: the control side waits on it before retiring an endpoint.
    pub applied: Arc<AtomicU64>,
}

/// Batch-local counts, published once per batch.
#[derive(Default)]
struct Batch {
    rx: u64,
    steered: u64,
    unknown: u64,
    ring_full: u64,
}

impl Steering {
    pub fn new(updates: Arc<Mailbox<Arc<SteerTable>>>) -> Self {
        Self {
            table: Arc::default(),
            updates,
            applied: Arc::default(),
        }
    }

    pub fn pending(&self) -> bool {
        !self.updates.is_empty()
    }

    /// Apply new tables, then steer batches while they come full (so a serving pass finds a
    /// few frames per endpoint, not one), at most [`STEER_BATCHES`]. Endpoints whose ring this
    /// pass found empty and filled go to `touched` (room reserved by the caller). Returns the
    /// descriptors read (a multi-buffer frame is several).
    #[inline]
    pub fn pass(
        &mut self,
        socket: &mut RxSocket,
        queue: &NicQueue,
        touched: &mut Vec<u32>,
    ) -> usize {
        while let Some(table) = self.updates.pop() {
            // Dropping the old table frees memory but allocates nothing.
            self.table = table;
            self.applied.fetch_add(1, Ordering::Release);
        }
        let mut handled = 0;
        let mut steered = 0;
        for _ in 0..STEER_BATCHES {
            let (n, s) = self.steer_batch(socket, queue, touched);
            handled += n;
            steered += s;
            if n < BATCH {
                break;
            }
        }
        if steered > 0 {
            for server in &self.table.servers {
                server.wake();
            }
        }
        if handled > 0 {
            queue.after_give_back();
        }
        handled
    }

    /// Read one batch from the queue's socket and hand each frame to its endpoint's ring;
    /// returns the frames read and those steered.
    #[inline]
    fn steer_batch(
        &mut self,
        socket: &mut RxSocket,
        queue: &NicQueue,
        touched: &mut Vec<u32>,
    ) -> (usize, u64) {
        let mut batch = Batch::default();
        let table: &SteerTable = &self.table;
        // A multi-buffer frame is steered whole, by the headers in its first chunk.
        let got = socket.recv(&queue.free, |frame, _| {
            batch.rx += 1;
            let slot = match classify(queue.umem.head(&frame)) {
                Class::Unicast(key) => table.lookup.get(&key),
                _ => None,
            };
            let Some(slot) = slot else {
                batch.unknown += 1;
                queue.give_back(frame);
                return;
            };
            let ring = &table.rings[slot as usize];
            let first = ring.is_empty();
            match ring.push(frame) {
                Ok(()) => {
                    batch.steered += 1;
                    if first && touched.len() < touched.capacity() {
                        touched.push(table.slots[slot as usize]);
                    }
                }
                Err(frame) => {
                    batch.ring_full += 1;
                    table.counters[slot as usize]
                        .dropped_ring_full
                        .fetch_add(1, Relaxed);
                    queue.give_back(frame);
                }
            }
        });
        if got.descs > 0 {
            queue.count_received(&got);
            let c = &queue.counters;
            c.rx.fetch_add(batch.rx, Relaxed);
            c.steered.fetch_add(batch.steered, Relaxed);
            c.dropped_unknown.fetch_add(batch.unknown, Relaxed);
            c.dropped_ring_full.fetch_add(batch.ring_full, Relaxed);
        }
        (got.descs, batch.steered)
    }
}
