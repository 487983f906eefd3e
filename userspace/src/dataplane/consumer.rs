//! Consumer threads: each serves a set of endpoints, reading their sockets (`xdp` demux)
//! or their descriptor rings (`user` demux), and gives every frame back to its queue.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    pub consumer: Consumer,
    pub source: Source,
}

pub struct ConsumerThread {
    pub core: usize,
    pub served: Vec<Served>,
    pub umems: Vec<QueueUmem>,
    pub free: Vec<Arc<ArrayQueue<RxFrame>>>,
    pub stop: Arc<AtomicBool>,
}

pub struct FinishedEndpoint {
    pub name: String,
    pub latency: Histogram<u64>,
    pub socket_stats: SocketStats,
}

pub struct Finished {
    pub endpoints: Vec<FinishedEndpoint>,
}

impl ConsumerThread {
    pub fn run(mut self) -> Finished {
        pin(self.core, "consumer");
        let mut idle = Idle::default();
        let hot = HotLoop::enter();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let mut work = 0;
            for served in &mut self.served {
                work += poll(served, &self.umems, &self.free);
            }
            if work > 0 {
                idle.worked();
            } else if stopping {
                break;
            } else {
                idle.wait();
            }
        }
        drop(hot);
        Finished {
            endpoints: self
                .served
                .into_iter()
                .map(|s| {
                    let mut socket_stats = SocketStats::default();
                    if let Source::Sockets(sockets) = &s.source {
                        for socket in sockets {
                            if let Ok(st) = socket.statistics() {
                                socket_stats.add(&st);
                            }
                        }
                    }
                    FinishedEndpoint {
                        name: s.consumer.name().to_string(),
                        latency: s.consumer.latency,
                        socket_stats,
                    }
                })
                .collect(),
        }
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
