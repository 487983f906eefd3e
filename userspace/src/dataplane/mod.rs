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
//!
//! An endpoint may have an application port ([`AppPort`], see [`Dataplane::connect_port`]):
//! its consumer then copies each of its frames into the port and transmits the port's frames
//! from the queue's TX pool; the worker reaps their completions.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_queue::ArrayQueue;

use crate::abi::{self, Counters};
use crate::xdp::{AttachMode, Classifier, Program, Steering};
pub use crate::xsk::SocketStats;
use crate::xsk::{self, Bound, QueueConfig, QueueUmem, RxFrame};

mod consumer;
mod endpoint;
mod idle;
mod lookup;
pub mod port;
mod port_control;
mod port_io;
mod ports;
mod slots;
mod snapshot;
mod worker;

pub use endpoint::{Consumer, EndpointCounters, EndpointSpec, latency_histogram};
pub use idle::{
    HotLoop, Idle, Mailbox, Sleeper, Source as SleepSource, Waker, Woke, in_hot_loop, pin,
};
pub use port::{AppPort, PortInfo};
pub use ports::{ClaimPolicy, PortCounters, PortSnapshot, TxVerdict, check_tx};
pub use snapshot::{EndpointSnapshot, Snapshot};
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
    pub attached: AttachMode,
    pub bound: Bound,
}

struct Attached {
    spec: EndpointSpec,
    /// Attach order: reports list endpoints in it.
    seq: u64,
    slot: u32,
    counters: Arc<EndpointCounters>,
    consumer: usize,
    /// The endpoint's descriptor ring (user demux).
    ring: Option<Arc<ArrayQueue<RxFrame>>>,
    /// Its sockets' kernel counters (xdp demux), readable from here.
    sockets: Vec<xsk::StatsHandle>,
    claim: ClaimPolicy,
    port: Option<AttachedPort>,
}

/// A connected port, as the control side sees it.
struct AttachedPort {
    info: PortInfo,
    counters: Arc<PortCounters>,
}

struct WorkerHandle {
    thread: Option<JoinHandle<Result<SocketStats>>>,
    /// The queue socket's kernel counters, readable from here.
    socket: xsk::StatsHandle,
    updates: Arc<Mailbox<Arc<worker::SteerTable>>>,
    applied: Arc<AtomicU64>,
}

struct ConsumerHandle {
    thread: Option<JoinHandle<Vec<consumer::FinishedEndpoint>>>,
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
        let steering = match cfg.demux {
            DemuxMode::Xdp => Steering::PerEndpoint,
            DemuxMode::User => Steering::PerQueue,
        };
        let mut classifier = Classifier::load(Program::Classify, steering, cfg.queues)?;
        let attached = classifier.attach(ifindex, &cfg.ifname, cfg.xdp_mode)?;

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
        let worker_wakers = (0..cfg.queues)
            .map(|_| Waker::new())
            .collect::<Result<Vec<_>>>()?;
        let consumer_wakers = (0..threads)
            .map(|_| Waker::new())
            .collect::<Result<Vec<_>>>()?;
        for q in 0..cfg.queues {
            let (umem, mut rings, b) = xsk::open_queue(&cfg.ifname, q, &cfg.queue)?;
            bound = b;
            let tx_frames = rings.take_tx_frames();
            let tx_pool_size = tx_frames.len();
            let tx_pool = Arc::new(ArrayQueue::new(tx_pool_size.max(1)));
            for f in tx_frames {
                let _ = tx_pool.push(f);
            }
            if cfg.demux == DemuxMode::User {
                classifier.set_socket(classifier.xsk_index(0, q), &rings.socket)?;
            }
            let free_q = Arc::new(ArrayQueue::new(cfg.queue.frames as usize));
            let counters = Arc::new(QueueCounters::default());
            let updates = Arc::new(Mailbox::new(16, worker_wakers[q as usize].clone()));
            let applied = Arc::new(AtomicU64::new(0));
            let socket = rings.socket.stats_handle();
            pending_threads.push(worker::Worker {
                queue: q as u16,
                core: cfg.cores[q as usize % cfg.cores.len()],
                umem: umem.clone(),
                rings,
                free: free_q.clone(),
                tx_free: tx_pool.clone(),
                demux: cfg.demux,
                table: Arc::default(),
                updates: updates.clone(),
                consumers: consumer_wakers.clone(),
                applied: applied.clone(),
                counters: counters.clone(),
                stop: stop_workers.clone(),
            });
            workers.push(WorkerHandle {
                thread: None,
                socket,
                updates,
                applied,
            });
            umems.push(umem);
            free.push(free_q);
            tx_free.push(tx_pool.clone());
            tx_pools.push((tx_pool, tx_pool_size));
            queue_counters.push(counters);
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
                    workers: worker_wakers.clone(),
                    tx_free: tx_free.clone(),
                    tx_sockets: Vec::new(),
                    tx_batches: (0..cfg.queues as u16).map(xsk::TxBatch::new).collect(),
                    mtu: mtu as usize,
                    retired: Vec::new(),
                },
                stop: stop_consumers.clone(),
                unwatched: false,
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
        };
        for (handle, w) in dataplane.workers.iter_mut().zip(pending_threads) {
            let name = format!("xmv-worker-q{}", w.queue);
            let idle = w.idle()?;
            handle.thread = Some(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || w.run(idle))
                    .context("spawning a queue worker")?,
            );
        }
        for (t, (handle, c)) in dataplane
            .consumers
            .iter_mut()
            .zip(dataplane_consumers)
            .enumerate()
        {
            let idle = Sleeper::new(handle.commands.waker.clone())?;
            handle.thread = Some(
                std::thread::Builder::new()
                    .name(format!("xmv-consumer-{t}"))
                    .spawn(move || c.run(idle))
                    .context("spawning a consumer thread")?,
            );
        }
        for spec in endpoints {
            dataplane.add_endpoint(spec.clone())?;
        }
        Ok(dataplane)
    }

    /// Start serving an endpoint while running, its frames claimed at once
    /// ([`ClaimPolicy::Always`]): sockets (xdp demux) or ring (user demux) first, the
    /// classifier's claim on its key last, so no claimed frame finds no home.
    pub fn add_endpoint(&mut self, spec: EndpointSpec) -> Result<()> {
        self.add_endpoint_with(spec, ClaimPolicy::Always)
    }

    /// [`Self::add_endpoint`] with a claim policy: with [`ClaimPolicy::WhileConnected`] the
    /// classifier knows the endpoint but leaves its frames to its kernel device until a port
    /// connects ([`Self::connect_port`]).
    pub fn add_endpoint_with(&mut self, spec: EndpointSpec, claim: ClaimPolicy) -> Result<()> {
        validate_endpoints(std::slice::from_ref(&spec))?;
        if self.endpoints.contains_key(&spec.name) {
            bail!("an endpoint named `{}` is already attached", spec.name);
        }
        if let Some(other) = self.endpoints.values().find(|a| a.spec.key() == spec.key()) {
            bail!(
                "endpoint {} has the same VLAN {} and MAC {} as endpoint {}",
                spec.name,
                spec.vid,
                abi::MacDisplay(&spec.mac),
                other.spec.name
            );
        }
        let slot = self.slots.take()?;
        match self.attach_endpoint(&spec, slot, claim) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Undo whatever part was made; the slot was never claimed by the classifier.
                self.clear_sockets(slot);
                self.slots.give_back(slot);
                Err(e.context(format!("adding endpoint {}", spec.name)))
            }
        }
    }

    fn attach_endpoint(
        &mut self,
        spec: &EndpointSpec,
        slot: u32,
        claim: ClaimPolicy,
    ) -> Result<()> {
        let counters: Arc<EndpointCounters> = Arc::default();
        let mut handles = Vec::new();
        let (source, ring) = match self.cfg.demux {
            DemuxMode::Xdp => {
                let mut sockets = Vec::new();
                for (q, umem) in self.umems.iter().enumerate() {
                    let socket = umem.add_socket()?;
                    self.classifier
                        .set_socket(self.classifier.xsk_index(slot, q as u32), &socket)?;
                    handles.push(socket.stats_handle());
                    sockets.push(socket);
                }
                (consumer::Source::Sockets(sockets), None)
            }
            DemuxMode::User => {
                let ring = Arc::new(ArrayQueue::new(self.cfg.endpoint_ring));
                (consumer::Source::Ring(ring.clone()), Some(ring))
            }
        };
        let consumer_index = (0..self.consumers.len())
            .min_by_key(|&i| self.consumers[i].endpoints)
            .expect("at least one consumer thread");
        let tx_queue = slot as usize % self.umems.len();
        let served = consumer::Served {
            slot,
            consumer: Consumer::new(spec, counters.clone()),
            source,
            claim,
            mac: spec.mac,
            tag: (spec.vid != 0).then(|| ports::vlan_tag(spec.vid)),
            tx_queue,
            port: None,
        };
        send(
            &self.consumers[consumer_index].commands,
            consumer::Command::Add(Box::new(served)),
        )?;
        self.consumers[consumer_index].endpoints += 1;
        self.attached_so_far += 1;
        self.endpoints.insert(
            spec.name.clone(),
            Attached {
                spec: spec.clone(),
                seq: self.attached_so_far,
                slot,
                counters,
                consumer: consumer_index,
                ring,
                sockets: handles,
                claim,
                port: None,
            },
        );
        if self.cfg.demux == DemuxMode::User {
            self.publish_tables()?;
        }
        self.classifier
            .insert_key_with(spec.key(), slot, claim == ClaimPolicy::Always)
    }

    /// Stop serving an endpoint while running. Its classifier key goes first; frames
    /// already on their way to it are still counted as its own; then its sockets close and
    /// its slot is free for reuse. Returns its final numbers.
    pub fn remove_endpoint(&mut self, name: &str) -> Result<EndpointResult> {
        let attached = self
            .endpoints
            .remove(name)
            .ok_or_else(|| anyhow!("no endpoint named `{name}` is attached"))?;
        self.classifier.remove_key(&attached.spec.key())?;
        if self.cfg.demux == DemuxMode::User {
            // Workers must stop pushing to its ring before the consumer drains it.
            self.publish_tables()?;
        } else {
            self.clear_sockets(attached.slot);
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let handle = &mut self.consumers[attached.consumer];
        send(
            &handle.commands,
            consumer::Command::Remove {
                slot: attached.slot,
                reply,
            },
        )?;
        handle.endpoints -= 1;
        let mut finished = answer
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the consumer of endpoint {name} did not answer"))?;
        self.slots.give_back(attached.slot);
        drop(finished.port.take());
        Ok(result(&attached, finished))
    }

    /// A copy of an endpoint's latency histogram, taken by its consumer thread.
    pub fn latency_histogram(&self, name: &str) -> Result<hdrhistogram::Histogram<u64>> {
        let attached = self
            .endpoints
            .get(name)
            .ok_or_else(|| anyhow!("no endpoint named `{name}` is attached"))?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        send(
            &self.consumers[attached.consumer].commands,
            consumer::Command::Histogram {
                slot: attached.slot,
                reply,
            },
        )?;
        answer
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the consumer of endpoint {name} did not answer"))
    }

    fn clear_sockets(&mut self, slot: u32) {
        if self.cfg.demux == DemuxMode::Xdp {
            for q in 0..self.cfg.queues {
                let _ = self
                    .classifier
                    .clear_socket(self.classifier.xsk_index(slot, q));
            }
        }
    }

    /// Give every worker a fresh steering table and wait until each has switched to it.
    fn publish_tables(&mut self) -> Result<()> {
        let entries: Vec<&Attached> = self.endpoints.values().collect();
        let table = Arc::new(worker::SteerTable {
            lookup: lookup::EndpointTable::new(entries.iter().map(|a| a.spec.key())),
            rings: entries
                .iter()
                .map(|a| a.ring.clone().expect("user demux ring"))
                .collect(),
            counters: entries.iter().map(|a| a.counters.clone()).collect(),
        });
        self.tables_published += 1;
        for w in &self.workers {
            send(&w.updates, table.clone())?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for w in &self.workers {
            while w.applied.load(Ordering::Acquire) < self.tables_published {
                if Instant::now() > deadline {
                    bail!("a queue worker did not take the new endpoint table");
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// The classifier's kernel events since the last call (see [`Classifier::drain_events`]).
    pub fn drain_kernel_events(&mut self, f: impl FnMut(crate::abi::Event)) -> usize {
        self.classifier.drain_events(f)
    }

    pub fn xdp_counters(&self) -> Result<Counters> {
        self.classifier.counters()
    }

    /// Attached endpoints in the order they were attached.
    fn in_attach_order(&self) -> Vec<&Attached> {
        let mut list: Vec<&Attached> = self.endpoints.values().collect();
        list.sort_by_key(|a| a.seq);
        list
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

    /// Stop the threads (after they drain what is already queued) and collect the results.
    pub fn stop(mut self) -> Result<Finished> {
        let xdp = self.classifier.counters()?;
        self.stop_workers.store(true, Ordering::Release);
        self.wake_workers();
        let mut queue_sockets = Vec::new();
        for w in &mut self.workers {
            let thread = w.thread.take().expect("worker running");
            let stats = thread
                .join()
                .map_err(|_| anyhow!("a worker thread panicked"))??;
            queue_sockets.push(stats);
        }
        self.stop_consumers.store(true, Ordering::Release);
        self.wake_consumers();
        let mut by_slot = std::collections::HashMap::new();
        for c in &mut self.consumers {
            let thread = c.thread.take().expect("consumer running");
            for f in thread
                .join()
                .map_err(|_| anyhow!("a consumer thread panicked"))?
            {
                by_slot.insert(f.slot, f);
            }
        }
        let mut sockets = Vec::new();
        let endpoints = self
            .in_attach_order()
            .into_iter()
            .map(|a| {
                let mut f = by_slot
                    .remove(&a.slot)
                    .expect("every endpoint has a consumer");
                sockets.append(&mut f.sockets);
                drop(f.port.take());
                result(a, f)
            })
            .collect();
        close_in_parallel(sockets);
        let queues = self
            .queues
            .iter()
            .zip(queue_sockets)
            .zip(&self.tx_pools)
            .map(|((q, socket), (pool, size))| QueueSnapshot {
                socket,
                tx_pool_free: pool.len() as u64,
                tx_pool: *size as u64,
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

fn result(a: &Attached, f: consumer::FinishedEndpoint) -> EndpointResult {
    let c = &a.counters;
    EndpointResult {
        spec: a.spec.clone(),
        frames: c.frames.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
        misdelivered: c.misdelivered.load(Ordering::Relaxed),
        untimed: c.untimed.load(Ordering::Relaxed),
        dropped: c.dropped_ring_full.load(Ordering::Relaxed) + f.socket_stats.dropped(),
        dropped_not_connected: c.dropped_not_connected.load(Ordering::Relaxed),
        port: a
            .port
            .as_ref()
            .map(|p| PortSnapshot::read(&p.info, &p.counters)),
        socket_stats: f.socket_stats,
        latency: f.latency,
    }
}

impl Dataplane {
    /// After setting a stop flag: threads blocked in `epoll_wait` see it now.
    fn wake_workers(&self) {
        self.workers.iter().for_each(|w| w.updates.waker.wake());
    }

    fn wake_consumers(&self) {
        self.consumers.iter().for_each(|c| c.commands.waker.wake());
    }
}

/// Push a command to a thread's queue (which wakes it), waiting briefly if it is full
/// (commands are rare).
fn send<T>(queue: &Mailbox<T>, mut item: T) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match queue.push(item) {
            Ok(()) => return Ok(()),
            Err(back) if Instant::now() < deadline => {
                item = back;
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(_) => bail!("a dataplane thread is not taking commands"),
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop_workers.store(true, Ordering::Release);
        self.wake_workers();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        self.stop_consumers.store(true, Ordering::Release);
        self.wake_consumers();
        let mut sockets = Vec::new();
        for c in &mut self.consumers {
            if let Some(Ok(finished)) = c.thread.take().map(|t| t.join()) {
                sockets.extend(finished.into_iter().flat_map(|f| f.sockets));
            }
        }
        close_in_parallel(sockets);
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

fn validate_config(cfg: &DataplaneConfig) -> Result<()> {
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
    if cfg.queues == 0 || cfg.queues > abi::MAX_QUEUES {
        bail!(
            "{} queues: between 1 and {} are supported",
            cfg.queues,
            abi::MAX_QUEUES
        );
    }
    Ok(())
}

fn validate_endpoints(endpoints: &[EndpointSpec]) -> Result<()> {
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
