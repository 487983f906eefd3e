//! The receive dataplane on one NIC: per-queue workers that own the fill rings, consumer
//! threads that serve endpoints, and the two fast demux modes.
//!
//! `xdp` demux: the classifier redirects each claimed frame into the endpoint's own socket
//! on the queue it arrived on; consumers read those sockets.
//! `user` demux: the classifier redirects claimed frames into one socket per queue; the
//! queue's worker parses (VLAN, MAC), looks the endpoint up and hands the descriptor (never
//! a copy) to that endpoint's ring; consumers read the rings.
//! Either way consumers give frames back through the queue's lock-free free-frame queue,
//! and only the queue's worker touches its fill ring. With [`Threads::RunToCompletion`] the workers
//! are not threads: the one consumer thread runs their passes in its own loop.
//!
//! An endpoint may have an application port ([`AppPort`], see [`Dataplane::connect_port`]):
//! its consumer then copies each of its frames into the port and transmits the port's frames
//! from the queue's TX pool; the worker reaps their completions.
//!
//! This file is the facade ([`Dataplane::start`] and what callers read); `queue.rs` opens a
//! queue with its worker; endpoints join and leave in `registry.rs`, ports in
//! `port_control.rs`, commands to the threads go through `commands.rs`, and `shutdown.rs` is
//! the one stop sequence of `stop` and `Drop`.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_queue::ArrayQueue;

use crate::abi::{self, Counters};
use crate::modes::{Bound, DemuxMode, Threads, XdpMode};
use crate::xdp::{Classifier, Program};
pub use crate::xsk::SocketStats;
use crate::xsk::{self, QueueConfig, QueueUmem, RxFrame};

mod commands;
mod consumer;
mod endpoint;
mod idle;
mod lookup;
pub mod port;
mod port_control;
mod port_io;
mod ports;
mod queue;
mod registry;
mod shutdown;
mod slots;
mod snapshot;
mod visits;
mod worker;

pub use consumer::{Consumer, latency_histogram};
pub use endpoint::{EndpointCounters, EndpointSpec};
pub use idle::{
    HotLoop, IdlePolicy, Mailbox, SPIN, Sleeper, Source as SleepSource, Waker, Woke, in_hot_loop,
    pin,
};
pub use port::{AppPort, MAX_FRAME, PortInfo, RxRefused, TxFrame, TxRefused};
pub use ports::{ClaimPolicy, PortCounters, PortSnapshot, TxVerdict, check_tx};
use queue::WorkerHandle;
use registry::{Attached, steering, validate_config, validate_endpoints};
pub use snapshot::{EndpointSnapshot, Snapshot};
pub use visits::SPARSE_FROM;
pub use worker::{QueueCounters, QueueSnapshot};

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub ifname: String,
    pub queues: u32,
    pub demux: DemuxMode,
    pub xdp_mode: XdpMode,
    pub queue: QueueConfig,
    /// Cores for the queue workers (round-robin) and the consumer threads.
    pub cores: Vec<usize>,
    /// Consumer threads; endpoints are spread over them.
    pub consumer_threads: usize,
    /// Capacity of each endpoint's descriptor ring (user demux).
    pub endpoint_ring: usize,
    /// How queue workers and consumers idle ([`IdlePolicy::default`]: poll [`SPIN`], then
    /// block, read at once).
    pub idle: IdlePolicy,
    /// [`Threads::RunToCompletion`] (needs `consumer_threads` 1): one thread owns every
    /// queue's fill and completion rings, steers (user demux) and serves every endpoint in
    /// one loop, on one core. [`Threads::Split`]: each queue has its own worker thread beside
    /// the consumers.
    pub threads: Threads,
}

/// A running dataplane. Endpoints can join and leave while it runs. Dropping it stops the
/// threads, closes the sockets and detaches XDP.
pub struct Dataplane {
    cfg: DataplaneConfig,
    classifier: Classifier,
    umems: Vec<QueueUmem>,
    endpoints: BTreeMap<String, Attached>,
    slots: slots::Slots,
    queues: Vec<Arc<QueueCounters>>,
    /// Each queue's TX pool and its size.
    tx_pools: Vec<(Arc<ArrayQueue<RxFrame>>, usize)>,
    workers: Vec<WorkerHandle>,
    consumers: Vec<ConsumerHandle>,
    /// Workers stop first (the user demux hands them its last frames), then consumers.
    stop_workers: Arc<AtomicBool>,
    stop_consumers: Arc<AtomicBool>,
    /// Tables published to each worker so far (user demux).
    tables_published: u64,
    attached_so_far: u64,
    /// The NIC's MTU when started (ports may send 14 + this bytes).
    mtu: u32,
    pub attached: XdpMode,
    pub bound: Bound,
    /// Fallbacks taken while starting (`auto` modes that settled for less), for the caller
    /// to log or print: the library prints nothing itself.
    pub warnings: Vec<String>,
}

struct ConsumerHandle {
    thread: Option<JoinHandle<consumer::Stopped>>,
    commands: Arc<Mailbox<consumer::Command>>,
    endpoints: usize,
    /// Whether it has its TX sockets (`user` demux: given with its first port).
    has_tx_sockets: bool,
}

/// What the dataplane reports when stopped.
#[derive(Debug)]
pub struct Finished {
    pub endpoints: Vec<EndpointResult>,
    pub queues: Vec<QueueSnapshot>,
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
    /// Part of `frames`: they reached an endpoint claimed only while connected, with no port.
    pub dropped_not_connected: u64,
    /// The port still connected when the endpoint was removed or the dataplane stopped.
    pub port: Option<PortSnapshot>,
    pub socket_stats: SocketStats,
    pub latency: hdrhistogram::Histogram<u64>,
}

impl Dataplane {
    /// Attach the classifier to `cfg.ifname` (calling thread's namespace), open the queues,
    /// start the threads and add `endpoints`. On error everything made so far is released.
    pub fn start(cfg: &DataplaneConfig, endpoints: &[EndpointSpec]) -> Result<Self> {
        validate_config(cfg)?;
        validate_endpoints(endpoints)?;
        let ifindex = crate::sys::if_index(&cfg.ifname).with_context(|| {
            format!("no interface named `{}` (check `ip link show`)", cfg.ifname)
        })?;
        crate::sys::raise_rlimit(libc::RLIMIT_NOFILE, 1 << 20);
        let mtu = crate::netlink::Netlink::new()
            .and_then(|nl| nl.require_link(&cfg.ifname))
            .map(|l| l.mtu)
            .with_context(|| format!("reading the MTU of {}", cfg.ifname))?;
        let mut classifier = Classifier::load(Program::Classify, steering(cfg.demux)?, cfg.queues)?;
        let mut warnings = Vec::new();
        let attached = classifier.attach(ifindex, &cfg.ifname, cfg.xdp_mode, &mut warnings)?;

        let stop_workers = Arc::new(AtomicBool::new(false));
        let stop_consumers = Arc::new(AtomicBool::new(false));
        let mut umems = Vec::new();
        let mut free = Vec::new();
        let mut tx_free = Vec::new();
        let mut tx_pools = Vec::new();
        let mut queue_counters = Vec::new();
        let mut workers = Vec::new();
        let mut bound = Bound::Copy;
        let mut pending_threads = Vec::new();
        // Every thread's waker first: workers wake consumers and consumers wake workers.
        let threads = cfg.consumer_threads.max(1);
        let one_thread = cfg.threads == Threads::RunToCompletion;
        let consumer_wakers = (0..threads)
            .map(|_| Waker::new())
            .collect::<Result<Vec<_>>>()?;
        // Run to completion: what would wake a queue's worker wakes the one thread instead.
        let worker_wakers = (0..cfg.queues)
            .map(|_| match one_thread {
                true => Ok(consumer_wakers[0].clone()),
                false => Waker::new(),
            })
            .collect::<Result<Vec<_>>>()?;
        for q in 0..cfg.queues {
            let wakers = queue::Wakers {
                worker: worker_wakers[q as usize].clone(),
                consumers: match one_thread {
                    true => Vec::new(),
                    false => consumer_wakers.clone(),
                },
            };
            let (opened, worker) = queue::open(
                cfg,
                q,
                &mut classifier,
                &stop_workers,
                wakers,
                &mut warnings,
            )?;
            bound = opened.bound;
            pending_threads.push(worker);
            workers.push(opened.handle);
            umems.push(opened.umem);
            free.push(opened.free);
            tx_free.push(opened.tx_pool.clone());
            tx_pools.push((opened.tx_pool, opened.tx_pool_size));
            queue_counters.push(opened.counters);
        }
        let mut consumers = Vec::new();
        let mut dataplane_consumers = Vec::new();
        for (t, waker) in consumer_wakers.iter().enumerate() {
            let commands = Arc::new(Mailbox::new(64, waker.clone()));
            dataplane_consumers.push(consumer::ConsumerThread {
                core: cfg.cores[t % cfg.cores.len()],
                served: Vec::new(),
                commands: commands.clone(),
                queues: consumer::Queues {
                    umems: umems.clone(),
                    free: free.clone(),
                    workers: match one_thread {
                        true => Vec::new(),
                        false => worker_wakers.clone(),
                    },
                    tx_free: tx_free.clone(),
                    tx_sockets: Vec::new(),
                    tx_batches: (0..cfg.queues as u16).map(xsk::TxBatch::new).collect(),
                    mtu: mtu as usize,
                    retired: Vec::new(),
                },
                stop: stop_consumers.clone(),
                unwatched: false,
                workers: Vec::new(),
                // Epoll finds the xdp demux's ready sockets; the user demux's filled rings are
                // known only to a worker pass on the same thread.
                visits: visits::Visits::new(cfg.demux == DemuxMode::Xdp || one_thread),
            });
            consumers.push(ConsumerHandle {
                thread: None,
                commands,
                endpoints: 0,
                has_tx_sockets: false,
            });
        }
        let mut dataplane = Self {
            cfg: cfg.clone(),
            classifier,
            umems,
            endpoints: BTreeMap::new(),
            slots: slots::Slots::new(abi::MAX_SLOTS),
            queues: queue_counters,
            tx_pools,
            workers,
            consumers,
            stop_workers,
            stop_consumers,
            tables_published: 0,
            attached_so_far: 0,
            mtu,
            attached,
            bound,
            warnings,
        };
        // Each thread says it runs: by then it carries its name, so whoever looks for the
        // dataplane's threads by name (pinning, renicing, tests) finds all of them.
        let (running, started) = std::sync::mpsc::channel::<()>();
        let mut spawned = 0;
        if one_thread {
            let mut inline = std::mem::take(&mut pending_threads);
            if cfg.demux == DemuxMode::User {
                for w in &mut inline {
                    w.touched = Some(Vec::with_capacity(worker::STEER_BATCHES * xsk::BATCH));
                }
            }
            dataplane_consumers[0].workers = inline;
        }
        for (handle, w) in dataplane.workers.iter_mut().zip(pending_threads) {
            let name = format!("xmv-worker-q{}", w.queue);
            let idle = w.idle()?.with_policy(cfg.idle);
            let running = running.clone();
            handle.thread = Some(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        let _ = running.send(());
                        w.run(idle)
                    })
                    .context("spawning a queue worker")?,
            );
            spawned += 1;
        }
        for (t, (handle, c)) in dataplane
            .consumers
            .iter_mut()
            .zip(dataplane_consumers)
            .enumerate()
        {
            let idle = Sleeper::new(handle.commands.waker.clone())?.with_policy(cfg.idle);
            for w in &c.workers {
                w.watch(&idle)?;
            }
            let running = running.clone();
            handle.thread = Some(
                std::thread::Builder::new()
                    .name(format!("xmv-consumer-{t}"))
                    .spawn(move || {
                        let _ = running.send(());
                        c.run(idle)
                    })
                    .context("spawning a consumer thread")?,
            );
            spawned += 1;
        }
        for _ in 0..spawned {
            started
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow::anyhow!("a dataplane thread did not start within 10 s"))?;
        }
        for spec in endpoints {
            dataplane.add_endpoint(spec.clone())?;
        }
        Ok(dataplane)
    }

    /// The classifier's kernel events since the last call (see [`Classifier::drain_events`]).
    pub fn drain_kernel_events(&mut self, f: impl FnMut(crate::abi::Event)) -> usize {
        self.classifier.drain_events(f)
    }

    pub fn xdp_counters(&self) -> Result<Counters> {
        self.classifier.counters()
    }

    /// Live counters of every attached endpoint, in attach order.
    pub fn endpoint_counters(&self) -> Vec<(EndpointSpec, Arc<EndpointCounters>)> {
        self.in_attach_order()
            .into_iter()
            .map(|a| (a.spec.clone(), a.counters.clone()))
            .collect()
    }

    pub fn queue_counters(&self) -> &[Arc<QueueCounters>] {
        &self.queues
    }

    /// Everything countable, read now while the dataplane runs (a few syscalls per socket:
    /// for stats commands, not for hot loops).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let endpoints = self
            .in_attach_order()
            .into_iter()
            .map(|a| {
                let mut socket = SocketStats::default();
                for h in &a.sockets {
                    socket.add(&h.statistics()?);
                }
                let mut e = snapshot::EndpointSnapshot::read(&a.spec, &a.counters, socket);
                e.claim = a.claim;
                e.port = a
                    .port
                    .as_ref()
                    .map(|p| PortSnapshot::read(&p.info, &p.counters));
                Ok(e)
            })
            .collect::<Result<Vec<_>>>()?;
        let queues = self
            .queues
            .iter()
            .zip(&self.workers)
            .zip(&self.tx_pools)
            .map(|((q, w), (pool, size))| {
                Ok(QueueSnapshot {
                    socket: w.socket.statistics()?,
                    tx_pool_free: pool.len() as u64,
                    tx_pool: *size as u64,
                    ..q.snapshot()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            interface: self.cfg.ifname.clone(),
            demux: self.cfg.demux,
            xdp_mode: self.attached,
            bind: self.bound,
            xdp: self.classifier.counters()?,
            queues,
            endpoints,
        })
    }

    /// Attached endpoints, in attach order.
    pub fn endpoints(&self) -> Vec<EndpointSpec> {
        self.in_attach_order()
            .into_iter()
            .map(|a| a.spec.clone())
            .collect()
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// The NIC's MTU when the dataplane started: a port may send frames of 14 + this bytes.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }
}

/// Drop `items` from several threads at once. Closing an AF_XDP or AF_PACKET socket waits for
/// an RCU grace period (~13 ms on the 2-core VM): one by one, 1020 endpoints' sockets took
/// ~13 s to close; from parallel threads the waits overlap (~1 s).
pub fn close_in_parallel<T: Send>(mut items: Vec<T>) {
    const PER_THREAD: usize = 32;
    std::thread::scope(|s| {
        while !items.is_empty() {
            let chunk: Vec<T> = items.drain(..PER_THREAD.min(items.len())).collect();
            s.spawn(move || drop(chunk));
        }
    });
}

/// Default cores for the receive threads: all but core 0 (left to the system and, in the
/// lab, the generator), or core 0 on a single-core machine.
pub fn default_cores() -> Vec<usize> {
    let n = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    if n > 1 { (1..n).collect() } else { vec![0] }
}
