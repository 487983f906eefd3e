//! The receive dataplane on one NIC: per-queue workers that own the fill rings, consumer
//! threads that serve endpoints, and the two fast demux modes.
//!
//! `xdp` demux: the classifier redirects each claimed frame into the endpoint's own socket
//! on the queue it arrived on; consumers read those sockets.
//! `user` demux: the classifier redirects claimed frames into one socket per queue; the
//! queue's worker parses (VLAN, MAC), looks the endpoint up and hands the descriptor (never
//! a copy) to that endpoint's ring; consumers read the rings.
//! Either way consumers give frames back through the queue's lock-free free-frame queue,
//! and only the queue's worker touches its fill ring.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use crossbeam_queue::ArrayQueue;

use crate::abi::{self, Counters};
use crate::xdp::{AttachMode, Classifier, Program, Steering};
use crate::xsk::{self, Bound, QueueConfig, RxFrame, RxSocket};

mod consumer;
mod endpoint;
mod idle;
mod lookup;
mod worker;

pub use endpoint::{Consumer, EndpointCounters, EndpointSpec, latency_histogram};
pub use idle::{HotLoop, in_hot_loop};
pub use worker::{QueueCounters, QueueSnapshot};

/// `--demux`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DemuxMode {
    /// The XDP program steers frames into per-endpoint AF_XDP sockets (kernel demux).
    Xdp,
    /// Pinned workers demux in userspace from one socket per queue (zero-copy handoff).
    User,
}

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub ifname: String,
    pub queues: u32,
    pub demux: DemuxMode,
    pub xdp_mode: AttachMode,
    pub queue: QueueConfig,
    /// Cores for the queue workers (round-robin) and the consumer threads.
    pub cores: Vec<usize>,
    /// Consumer threads; endpoints are spread over them.
    pub consumer_threads: usize,
    /// Capacity of each endpoint's descriptor ring (user demux).
    pub endpoint_ring: usize,
}

/// A running dataplane. Dropping it stops the threads, closes the sockets and detaches XDP.
pub struct Dataplane {
    classifier: Classifier,
    endpoints: Vec<(EndpointSpec, Arc<EndpointCounters>)>,
    queues: Vec<Arc<QueueCounters>>,
    /// Workers stop first (the user demux hands them its last frames), then consumers.
    stop_workers: Arc<AtomicBool>,
    stop_consumers: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Result<SocketStats>>>,
    consumers: Vec<JoinHandle<consumer::Finished>>,
    pub attached: AttachMode,
    pub bound: Bound,
}

/// What the dataplane reports when stopped.
#[derive(Debug)]
pub struct Finished {
    pub endpoints: Vec<EndpointResult>,
    pub queues: Vec<worker::QueueSnapshot>,
    pub xdp: Counters,
}

#[derive(Debug)]
pub struct EndpointResult {
    pub spec: EndpointSpec,
    pub frames: u64,
    pub bytes: u64,
    pub misdelivered: u64,
    pub untimed: u64,
    /// Userspace ring full (user demux) + the kernel's drops on the endpoint's sockets.
    pub dropped: u64,
    pub socket_stats: SocketStats,
    pub latency: hdrhistogram::Histogram<u64>,
}

/// Sum of the kernel's `XDP_STATISTICS` over sockets.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SocketStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_invalid_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl SocketStats {
    pub fn add(&mut self, s: &xsk::XdpStatistics) {
        self.rx_dropped += s.rx_dropped();
        self.rx_invalid_descs += s.rx_invalid_descs();
        self.rx_ring_full += s.rx_ring_full();
        self.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs();
        self.tx_invalid_descs += s.tx_invalid_descs();
        self.tx_ring_empty_descs += s.tx_ring_empty_descs();
    }

    /// Frames the kernel redirected to the socket but could not place in it.
    pub fn dropped(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }
}

impl Dataplane {
    /// Attach the classifier to `cfg.ifname` (calling thread's namespace), open the sockets
    /// and start the threads. On error everything made so far is released.
    pub fn start(cfg: &DataplaneConfig, endpoints: &[EndpointSpec]) -> Result<Self> {
        validate(cfg, endpoints)?;
        let ifindex = crate::sys::if_index(&cfg.ifname).with_context(|| {
            format!("no interface named `{}` (check `ip link show`)", cfg.ifname)
        })?;
        crate::sys::raise_rlimit(libc::RLIMIT_NOFILE, 1 << 20);
        let steering = match cfg.demux {
            DemuxMode::Xdp => Steering::PerEndpoint,
            DemuxMode::User => Steering::PerQueue,
        };
        let mut classifier = Classifier::load(Program::Classify, steering, cfg.queues)?;
        let attached = classifier.attach(ifindex, &cfg.ifname, cfg.xdp_mode)?;

        let endpoints: Vec<(EndpointSpec, Arc<EndpointCounters>)> = endpoints
            .iter()
            .map(|e| (e.clone(), Arc::default()))
            .collect();
        let rings: Vec<Arc<ArrayQueue<RxFrame>>> = match cfg.demux {
            DemuxMode::User => endpoints
                .iter()
                .map(|_| Arc::new(ArrayQueue::new(cfg.endpoint_ring)))
                .collect(),
            DemuxMode::Xdp => Vec::new(),
        };

        // Per queue: UMEM, the worker's rings, and (xdp demux) one socket per endpoint.
        let mut umems = Vec::new();
        let mut queue_rings = Vec::new();
        let mut endpoint_sockets: Vec<Vec<RxSocket>> =
            endpoints.iter().map(|_| Vec::new()).collect();
        let mut bound = Bound::Copy;
        for q in 0..cfg.queues {
            let (umem, qr, b) = xsk::open_queue(&cfg.ifname, q, &cfg.queue)?;
            bound = b;
            match cfg.demux {
                DemuxMode::User => classifier.set_socket(classifier.xsk_index(0, q), &qr.socket)?,
                DemuxMode::Xdp => {
                    for (slot, sockets) in endpoint_sockets.iter_mut().enumerate() {
                        let socket = umem.add_socket()?;
                        classifier.set_socket(classifier.xsk_index(slot as u32, q), &socket)?;
                        sockets.push(socket);
                    }
                }
            }
            umems.push(umem);
            queue_rings.push(qr);
        }
        // Claim the endpoints' frames only once their sockets are in place.
        for (slot, (spec, _)) in endpoints.iter().enumerate() {
            classifier.insert_key(spec.key(), slot as u32)?;
        }

        let frames_per_queue = cfg.queue.frames as usize;
        let free: Vec<Arc<ArrayQueue<RxFrame>>> = (0..cfg.queues)
            .map(|_| Arc::new(ArrayQueue::new(frames_per_queue)))
            .collect();
        let stop_workers = Arc::new(AtomicBool::new(false));
        let stop_consumers = Arc::new(AtomicBool::new(false));
        let lookup = Arc::new(lookup::EndpointTable::new(
            endpoints.iter().map(|(spec, _)| spec.key()),
        ));

        let mut dataplane = Self {
            classifier,
            endpoints: endpoints.clone(),
            queues: Vec::new(),
            stop_workers: stop_workers.clone(),
            stop_consumers: stop_consumers.clone(),
            workers: Vec::new(),
            consumers: Vec::new(),
            attached,
            bound,
        };

        for (q, rings_of_queue) in queue_rings.into_iter().enumerate() {
            let counters = Arc::new(QueueCounters::default());
            dataplane.queues.push(counters.clone());
            let w = worker::Worker {
                queue: q as u16,
                core: cfg.cores[q % cfg.cores.len()],
                umem: umems[q].clone(),
                rings: rings_of_queue,
                free: free[q].clone(),
                demux: cfg.demux,
                lookup: lookup.clone(),
                endpoint_rings: rings.clone(),
                endpoint_counters: endpoints.iter().map(|(_, c)| c.clone()).collect(),
                counters,
                stop: stop_workers.clone(),
            };
            dataplane.workers.push(
                std::thread::Builder::new()
                    .name(format!("xmv-worker-q{q}"))
                    .spawn(move || w.run())
                    .context("spawning a queue worker")?,
            );
        }

        // Spread endpoints over consumer threads.
        let threads = cfg.consumer_threads.clamp(1, endpoints.len().max(1));
        let mut groups: Vec<Vec<consumer::Served>> = (0..threads).map(|_| Vec::new()).collect();
        let mut sockets_iter = endpoint_sockets.into_iter();
        for (i, (spec, counters)) in endpoints.iter().enumerate() {
            let source = match cfg.demux {
                DemuxMode::Xdp => {
                    consumer::Source::Sockets(sockets_iter.next().unwrap_or_default())
                }
                DemuxMode::User => consumer::Source::Ring(rings[i].clone()),
            };
            groups[i % threads].push(consumer::Served {
                consumer: Consumer::new(spec, counters.clone()),
                source,
            });
        }
        for (t, served) in groups.into_iter().enumerate() {
            let c = consumer::ConsumerThread {
                core: cfg.cores[t % cfg.cores.len()],
                served,
                umems: umems.clone(),
                free: free.clone(),
                stop: stop_consumers.clone(),
            };
            dataplane.consumers.push(
                std::thread::Builder::new()
                    .name(format!("xmv-consumer-{t}"))
                    .spawn(move || c.run())
                    .context("spawning a consumer thread")?,
            );
        }
        Ok(dataplane)
    }

    pub fn xdp_counters(&self) -> Result<Counters> {
        self.classifier.counters()
    }

    pub fn endpoint_counters(&self) -> &[(EndpointSpec, Arc<EndpointCounters>)] {
        &self.endpoints
    }

    pub fn queue_counters(&self) -> &[Arc<QueueCounters>] {
        &self.queues
    }

    /// Stop the threads (after they drain what is already queued) and collect the results.
    pub fn stop(mut self) -> Result<Finished> {
        let xdp = self.classifier.counters()?;
        self.stop_workers.store(true, Ordering::Release);
        let mut queue_sockets = Vec::new();
        for handle in self.workers.drain(..) {
            let stats = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            queue_sockets.push(stats);
        }
        self.stop_consumers.store(true, Ordering::Release);
        let mut finished_consumers = Vec::new();
        for handle in self.consumers.drain(..) {
            finished_consumers.push(
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a consumer thread panicked"))?,
            );
        }
        let mut by_name: std::collections::HashMap<String, consumer::FinishedEndpoint> =
            finished_consumers
                .into_iter()
                .flat_map(|f| f.endpoints)
                .map(|e| (e.name.clone(), e))
                .collect();
        let endpoints = self
            .endpoints
            .iter()
            .map(|(spec, c)| {
                let f = by_name
                    .remove(&spec.name)
                    .expect("every endpoint has a consumer");
                let ring_full = c.dropped_ring_full.load(Ordering::Relaxed);
                EndpointResult {
                    spec: spec.clone(),
                    frames: c.frames.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    misdelivered: c.misdelivered.load(Ordering::Relaxed),
                    untimed: c.untimed.load(Ordering::Relaxed),
                    dropped: ring_full + f.socket_stats.dropped(),
                    socket_stats: f.socket_stats,
                    latency: f.latency,
                }
            })
            .collect();
        let queues = self
            .queues
            .iter()
            .zip(queue_sockets)
            .map(|(q, socket)| QueueSnapshot {
                socket,
                ..q.snapshot()
            })
            .collect();
        Ok(Finished {
            endpoints,
            queues,
            xdp,
        })
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop_workers.store(true, Ordering::Release);
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        self.stop_consumers.store(true, Ordering::Release);
        for h in self.consumers.drain(..) {
            let _ = h.join();
        }
    }
}

fn validate(cfg: &DataplaneConfig, endpoints: &[EndpointSpec]) -> Result<()> {
    if cfg.cores.is_empty() {
        bail!("no cores given for the dataplane threads");
    }
    let available = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    if let Some(bad) = cfg.cores.iter().find(|&&c| c >= available) {
        bail!(
            "core {bad} does not exist (this machine has cores 0-{})",
            available - 1
        );
    }
    if endpoints.len() > abi::MAX_SLOTS as usize {
        bail!(
            "{} endpoints: at most {} are supported",
            endpoints.len(),
            abi::MAX_SLOTS
        );
    }
    let mut seen = std::collections::HashSet::new();
    for e in endpoints {
        if e.vid > 4094 {
            bail!("endpoint {}: VLAN id {} out of range 0-4094", e.name, e.vid);
        }
        if e.mac[0] & 1 != 0 {
            bail!(
                "endpoint {}: {} is a multicast MAC; endpoints need unicast MACs",
                e.name,
                abi::MacDisplay(&e.mac)
            );
        }
        if !seen.insert(e.key()) {
            bail!(
                "endpoint {}: another endpoint already has VLAN {} and MAC {}",
                e.name,
                e.vid,
                abi::MacDisplay(&e.mac)
            );
        }
    }
    Ok(())
}

/// Default cores for the receive threads: all but core 0 (left to the system and, in the
/// lab, the generator), or core 0 on a single-core machine.
pub fn default_cores() -> Vec<usize> {
    let n = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    if n > 1 { (1..n).collect() } else { vec![0] }
}
