//! Consumer threads: each serves a set of endpoints, reading their sockets (`xdp` demux)
//! or their descriptor rings (`user` demux), and gives every frame back to its queue.
//! Endpoints join and leave through a command queue checked once per loop, never per frame.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

use super::SocketStats;
use super::endpoint::Consumer;
use super::idle::{HotLoop, Idle, pin};
use crate::xsk::{BATCH, QueueUmem, RxFrame, RxSocket};

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
}

pub enum Command {
    Add(Box<Served>),
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
}

pub struct ConsumerThread {
    pub core: usize,
    pub served: Vec<Served>,
    pub commands: Arc<ArrayQueue<Command>>,
    pub umems: Vec<QueueUmem>,
    pub free: Vec<Arc<ArrayQueue<RxFrame>>>,
    pub stop: Arc<AtomicBool>,
}

impl ConsumerThread {
    /// Runs until `stop` and no work is left; returns the final numbers of the endpoints
    /// still served.
    pub fn run(mut self) -> Vec<FinishedEndpoint> {
        pin(self.core, "consumer");
        let mut idle = Idle::default();
        let mut hot = Some(HotLoop::enter());
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if let Some(command) = self.commands.pop() {
                // Commands allocate (histogram copies, socket teardown): outside the hot loop.
                drop(hot.take());
                self.apply(command);
                hot = Some(HotLoop::enter());
            }
            let mut work = 0;
            for served in &mut self.served {
                work += poll(served, &self.umems, &self.free);
            }
            if work > 0 {
                idle.worked();
            } else if stopping && self.commands.is_empty() {
                break;
            } else {
                idle.wait();
            }
        }
        drop(hot);
        self.served.drain(..).map(finish).collect()
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Add(served) => self.served.push(*served),
            Command::Remove { slot, reply } => {
                if let Some(i) = self.served.iter().position(|s| s.slot == slot) {
                    let mut served = self.served.swap_remove(i);
                    // Its frames already queued are its own: account for them first.
                    while poll(&mut served, &self.umems, &self.free) > 0 {}
                    let _ = reply.send(finish(served));
                }
            }
            Command::Histogram { slot, reply } => {
                if let Some(s) = self.served.iter().find(|s| s.slot == slot) {
                    let _ = reply.send(s.consumer.latency.clone());
                }
            }
        }
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
    }
}

/// One batch per source of this endpoint; returns frames handled.
#[inline]
fn poll(served: &mut Served, umems: &[QueueUmem], free: &[Arc<ArrayQueue<RxFrame>>]) -> usize {
    let consumer = &mut served.consumer;
    let mut handled = 0;
    let mut give_back = |frame: RxFrame, now: u64| {
        let q = frame.queue() as usize;
        consumer.on_frame(umems[q].bytes(&frame), now);
        // Cannot fail: each free queue holds its UMEM's whole frame count.
        let _ = free[q].push(frame);
    };
    match &mut served.source {
        Source::Sockets(sockets) => {
            for socket in sockets {
                handled += socket.recv(&mut give_back);
            }
        }
        Source::Ring(ring) => {
            // The clock is read after the first frame is taken: never before its send time.
            let mut now = 0;
            while handled < BATCH {
                let Some(frame) = ring.pop() else { break };
                if handled == 0 {
                    now = crate::sys::monotonic_ns();
                }
                give_back(frame, now);
                handled += 1;
            }
        }
    }
    if handled > 0 {
        consumer.publish();
    }
    handled
}
