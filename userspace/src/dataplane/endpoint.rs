//! An endpoint on the fast path, and its pass: take the frames waiting for it (its sockets in
//! `xdp` demux, its ring in `user` demux), hand each to its port (or count it), give every
//! frame back to its queue, then transmit what its port queued. The thread serving it calls
//! [`Served::pass`]; this is the middle of a frame's way from the NIC to an application.
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::port::ClaimPolicy;
use super::probe::{Probe, ProbeCounts};
use super::queue::NicQueue;
use super::served_port::{self, ServedPort};
use crate::abi::{Key, Mac};
use crate::xsk::{BATCH, MAX_CHAIN, Received, RxFrame, RxSocket, SocketStats, TxBatch};

/// An endpoint the fast path serves: a container's (VLAN, MAC).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    /// 802.1Q VLAN id, 0 = untagged.
    pub vid: u16,
    #[serde(with = "crate::ether::mac_text")]
    pub mac: Mac,
}

impl EndpointSpec {
    pub fn key(&self) -> Key {
        Key {
            vid: self.vid,
            mac: self.mac,
        }
    }
}

crate::counter_set! {
    /// What reached an endpoint.
    pub struct EndpointCounts (live EndpointCounters) in "endpoint" {
        /// Frames delivered to the endpoint (read from its sockets or its ring).
        frames: Frames, "FRAMES";
        /// Bytes of those frames.
        bytes: Bytes, "BYTES";
        /// Frames the userspace demux could not queue: the endpoint's ring was full.
        dropped_ring_full: Dropped(reason = "ring_full"), "RING-FULL";
        /// Frames of an endpoint claimed only while a port is connected that reached it with no
        /// port (already on their way when the port went).
        dropped_not_connected: Dropped(reason = "not_connected"), "NOT-CONN";
        /// Frames whose (VLAN, destination MAC) is not the endpoint's (latency probe; must be 0).
        misdelivered: Info, "MISDLV";
        /// Frames without the generator's timestamp (latency probe: no sample).
        untimed: Info, "UNTIMED";
    }
}

/// Where an endpoint's frames wait for it.
pub enum Source {
    /// `xdp` demux: the endpoint's own socket on each queue (index = queue).
    Sockets(Vec<RxSocket>),
    /// `user` demux: the endpoint's descriptor ring, fed by the queue owners.
    Ring(Arc<ArrayQueue<RxFrame>>),
}

/// An endpoint as the thread serving it holds it.
pub struct Served {
    pub slot: u32,
    pub source: Source,
    pub claim: ClaimPolicy,
    pub mac: Mac,
    /// The endpoint's 802.1Q tag (None when untagged): stripped on receive, inserted on send.
    pub tag: Option<[u8; 4]>,
    /// The queue whose UMEM and TX ring carry the port's transmissions.
    pub tx_queue: usize,
    pub port: Option<ServedPort>,
    pub counters: Arc<EndpointCounters>,
    /// Counts of the batch being served, published once per batch.
    batch: EndpointCounts,
    pub probe: Option<Probe>,
}

/// What a serving thread lends an endpoint's pass: every queue, and its TX staging.
pub struct Lent<'a> {
    pub queues: &'a [Arc<NicQueue>],
    /// The thread's TX sockets, one per queue (`user` demux; the `xdp` demux transmits on
    /// the endpoint's own sockets).
    pub tx_sockets: &'a mut [RxSocket],
    pub tx_batches: &'a mut [TxBatch],
    /// The longest frame a port may send.
    pub mtu: usize,
}

impl Served {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: u32,
        spec: &EndpointSpec,
        source: Source,
        claim: ClaimPolicy,
        tx_queue: usize,
        counters: Arc<EndpointCounters>,
        probe: bool,
    ) -> Self {
        Self {
            slot,
            source,
            claim,
            mac: spec.mac,
            tag: (spec.vid != 0).then(|| served_port::vlan_tag(spec.vid)),
            tx_queue,
            port: None,
            counters,
            batch: EndpointCounts::default(),
            probe: probe.then(|| Probe::new(spec.key())),
        }
    }

    /// One batch per source of this endpoint and, when `transmit`, one round of its port's
    /// transmissions; returns the frames handled.
    #[inline]
    pub fn pass(&mut self, lent: &mut Lent, transmit: bool) -> usize {
        let live = self.port.as_mut().is_some_and(ServedPort::check_live);
        if let Some(p) = self.port.as_mut() {
            p.follow_client(live);
        }
        let mut handled = self.receive(lent.queues, live);
        if let Some(p) = self.port.as_mut() {
            if transmit && live {
                let socket = match &mut self.source {
                    Source::Sockets(sockets) => sockets.get_mut(self.tx_queue),
                    Source::Ring(_) => lent.tx_sockets.get_mut(self.tx_queue),
                };
                if let Some(socket) = socket {
                    let queue = &lent.queues[self.tx_queue];
                    let sent = served_port::transmit(
                        p,
                        socket,
                        queue,
                        &mut lent.tx_batches[self.tx_queue],
                        &self.mac,
                        self.tag,
                        lent.mtu,
                    );
                    if sent > 0 {
                        // Its completions are the queue owner's to reap.
                        queue.owner.wake();
                    }
                    handled += sent;
                }
            }
            p.publish();
        }
        handled
    }

    /// Take what waits in the endpoint's sources, deliver it, give the frames back.
    #[inline]
    fn receive(&mut self, queues: &[Arc<NicQueue>], live: bool) -> usize {
        let Self {
            source,
            claim,
            tag,
            port,
            batch,
            probe,
            ..
        } = self;
        let mut probe_counts = ProbeCounts::default();
        let mut pushed = false;
        let mut deliver = |frame: RxFrame, now: u64| {
            let queue = &queues[frame.queue() as usize];
            // A multi-buffer frame is its chunks' bytes in order; the headers and the probe's
            // payload are in the first.
            let mut segments: [&[u8]; MAX_CHAIN] = [&[]; MAX_CHAIN];
            let n = queue.umem.segments(&frame, &mut segments);
            let segments = &segments[..n];
            batch.frames += 1;
            batch.bytes += frame.len() as u64;
            if let Some(probe) = probe.as_mut() {
                probe.observe(queue.umem.head(&frame), now, &mut probe_counts);
            }
            match port.as_mut() {
                Some(p) if live => pushed |= p.push(segments, tag.is_some()),
                Some(p) => p.batch.drop_not_connected += 1,
                None if *claim == ClaimPolicy::WhileConnected => batch.dropped_not_connected += 1,
                // Claimed with no port: the dataplane itself is the endpoint's consumer.
                None => {}
            }
            queue.give_back(frame);
        };
        let mut handled = 0;
        match source {
            Source::Sockets(sockets) => {
                for socket in sockets.iter_mut() {
                    let queue = &queues[socket.queue() as usize];
                    let got = socket.recv(&queue.free, &mut deliver);
                    if got.descs > 0 {
                        queue.count_received(&got);
                        queue.after_give_back();
                    }
                    // Work even when only part of a chain came: its rest is in the ring.
                    handled += got.frames.max(usize::from(got.descs > 0));
                }
            }
            Source::Ring(ring) => {
                // Only frames already queued when the clock is read: none was sent after it
                // (a frame pushed during the batch would look sent in the future, untimed).
                let queued = ring.len().min(BATCH);
                if queued > 0 {
                    let now = crate::sys::monotonic_ns();
                    while handled < queued {
                        // This thread is the ring's only consumer: the counted frames are there.
                        let Some(frame) = ring.pop() else { break };
                        deliver(frame, now);
                        handled += 1;
                    }
                    for queue in queues {
                        queue.after_give_back();
                    }
                }
            }
        }
        if handled > 0 {
            batch.misdelivered += probe_counts.misdelivered;
            batch.untimed += probe_counts.untimed;
            self.counters.publish(batch);
        }
        if pushed && let Some(p) = self.port.as_mut() {
            p.port.rx_flush();
        }
        handled
    }

    /// Take everything still waiting (the endpoint is leaving), without transmitting.
    pub fn drain(&mut self, queues: &[Arc<NicQueue>]) {
        let live = self.port.as_mut().is_some_and(ServedPort::check_live);
        while self.receive(queues, live) > 0 {}
        self.abandon_chains(queues);
        if let Some(p) = self.port.as_mut() {
            p.publish();
        }
    }

    /// Give back the chains its sockets hold unfinished (they are closing): each a broken
    /// frame of its queue.
    pub fn abandon_chains(&mut self, queues: &[Arc<NicQueue>]) {
        if let Source::Sockets(sockets) = &mut self.source {
            for socket in sockets.iter_mut() {
                let queue = &queues[socket.queue() as usize];
                if socket.abandon_chain(&queue.free) {
                    queue.count_received(&Received {
                        broken: 1,
                        ..Received::default()
                    });
                }
            }
        }
    }

    /// The kernel's counters of the endpoint's sockets (`xdp` demux), summed.
    pub fn socket_stats(&self) -> SocketStats {
        let mut stats = SocketStats::default();
        if let Source::Sockets(sockets) = &self.source {
            for socket in sockets {
                if let Ok(s) = socket.statistics() {
                    stats.add(&s);
                }
            }
        }
        stats
    }
}
