//! The receive dataplane on one NIC. The path of a frame, one file a step:
//!
//! 1. `ebpf/classifier.bpf.c` keys it by (VLAN, MAC) and redirects it into an AF_XDP socket
//!    of the queue it arrived on: the endpoint's own (`xdp` demux) or the queue's one socket,
//!    whose owner then steers it to the endpoint's ring (`user` demux, [`steer`]);
//! 2. [`queue`]: every queue's frames live in its UMEM and come back to its pools; one thread
//!    owns its rings and refills the kernel;
//! 3. [`endpoint`]: the endpoint's pass takes its frames and hands each to its port;
//! 4. [`port`]: the port counts it and copies it into the application's memory
//!    (`crate::memif::port`), and checks and tags what the application sends.
//!
//! [`thread`] runs those passes: running to completion, one thread owns every queue and
//! serves every endpoint; split, each queue has its own thread beside the serving threads.
//! Endpoints and ports join and leave while it runs ([`attach`]), each a transaction that
//! leaves nothing behind when a step fails. This file starts and reads a dataplane;
//! `shutdown.rs` stops it.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::abi::{self, Counters};
use crate::modes::{Bound, Demux, XdpMode};
use crate::xdp::{Classifier, Program, Steering};
use crate::xsk;

mod attach;
mod commands;
pub mod endpoint;
mod error;
mod idle;
mod lookup;
mod options;
pub mod port;
pub mod probe;
pub mod queue;
mod served_port;
mod shutdown;
mod slots;
mod snapshot;
mod steer;
mod thread;
mod visits;

pub use endpoint::{EndpointCounters, EndpointCounts, EndpointSpec};
pub use error::{DataplaneError, Result};
pub use idle::{
    HotLoop, IdlePolicy, Mailbox, SPIN, Sleeper, Source as SleepSource, Waker, Woke, in_hot_loop,
    pin,
};
pub use options::{DataplaneConfig, Layout};
pub use port::{AppPort, ClaimPolicy, MAX_FRAME, PortInfo, RxRefused, TxFrame, TxRefused};
pub use probe::{Probe, latency_histogram};
pub use queue::{QueueCounts, QueueSnapshot};
pub use served_port::{PortCounters, PortCounts, PortLink, PortSnapshot, TxVerdict, check_tx};
pub use snapshot::{EndpointSnapshot, Snapshot};
pub use visits::SPARSE_FROM;
pub use xsk::SocketStats;

use attach::Attached;
use idle::Mailbox as ThreadMailbox;
use queue::NicQueue;
use steer::SteerTable;
use thread::{Command, ReceiveThread};

/// A running dataplane. Endpoints can join and leave while it runs. Dropping it stops the
/// threads, closes the sockets and detaches XDP.
pub struct Dataplane {
    cfg: DataplaneConfig,
    classifier: Classifier,
    queues: Vec<Arc<NicQueue>>,
    /// Each queue's steering updates and how many its owner applied (`user` demux).
    steering: Vec<SteerHandle>,
    threads: Vec<ThreadHandle>,
    endpoints: BTreeMap<String, Attached>,
    slots: slots::Slots,
    /// Tables published to each queue owner so far (`user` demux).
    tables_published: u64,
    attached_so_far: u64,
    /// The NIC's MTU when started (ports may send 14 + this bytes).
    mtu: u32,
    pub attached: XdpMode,
    pub bound: Bound,
    /// Whether the sockets receive frames longer than a UMEM chunk as chains (`XDP_USE_SG`).
    multi_buffer: bool,
    /// Busy polling in effect (None: off, or asked for where the NIC cannot).
    pub busy_poll: Option<crate::nic::BusyPoll>,
    /// Fallbacks taken while starting (`auto` modes that settled for less), for the caller
    /// to log or print: the library prints nothing itself.
    pub warnings: Vec<String>,
    /// What this dataplane changed on the NIC; undone when it is dropped, after everything
    /// above (XDP detached, sockets closed): keep it the last field.
    nic: crate::nic::NicChanges,
}

struct SteerHandle {
    updates: Arc<ThreadMailbox<Arc<SteerTable>>>,
    applied: Arc<std::sync::atomic::AtomicU64>,
}

struct ThreadHandle {
    join: Option<JoinHandle<thread::Stopped>>,
    commands: Arc<ThreadMailbox<Command>>,
    stop: Arc<AtomicBool>,
    /// Whether it serves endpoints (else it only owns queues, and stops first).
    serves: bool,
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
    pub counts: EndpointCounts,
    /// Userspace ring full (`user` demux) + the kernel's drops on the endpoint's sockets.
    pub dropped: u64,
    /// The port still connected when the endpoint was removed or the dataplane stopped.
    pub port: Option<PortSnapshot>,
    pub socket_stats: SocketStats,
    /// The probe's latency histogram (empty without the probe).
    pub latency: hdrhistogram::Histogram<u64>,
}

/// An endpoint's result reads as its counts (`result.frames`).
impl std::ops::Deref for EndpointResult {
    type Target = EndpointCounts;
    fn deref(&self) -> &EndpointCounts {
        &self.counts
    }
}

/// How the classifier steers claimed frames for a fast-path demux mode.
pub fn steering(demux: Demux) -> Steering {
    match demux {
        Demux::Xdp => Steering::PerEndpoint,
        Demux::User => Steering::PerQueue,
    }
}

impl Dataplane {
    /// Attach the classifier to `cfg.ifname` (calling thread's namespace), open the queues,
    /// start the threads and add `endpoints`. On error everything made so far is released.
    pub fn start(cfg: &DataplaneConfig, endpoints: &[EndpointSpec]) -> Result<Self> {
        attach::validate_config(cfg)?;
        attach::validate_endpoints(endpoints)?;
        let ifindex = crate::sys::if_index(&cfg.ifname)
            .ok_or_else(|| DataplaneError::NoInterface(cfg.ifname.clone()))?;
        let mut warnings = Vec::new();
        let classifier = (|| {
            let mut c = Classifier::load(Program::Classify, steering(cfg.demux), cfg.queues)?;
            c.attach_with(ifindex, &cfg.ifname, &cfg.attach_options(), &mut warnings)?;
            anyhow::Ok(c)
        })()
        .map_err(DataplaneError::step(format!(
            "attaching the classifier to {}",
            cfg.ifname
        )))?;
        let mut dataplane = Self::start_with(cfg, classifier, endpoints)?;
        let later = std::mem::replace(&mut dataplane.warnings, warnings);
        dataplane.warnings.extend(later);
        Ok(dataplane)
    }

    /// [`Self::start`] with a classifier the caller loaded and attached to `cfg.ifname` (the
    /// daemon's, pinned to outlive it: [`Classifier::attach_persistent`]).
    pub fn start_with(
        cfg: &DataplaneConfig,
        classifier: Classifier,
        endpoints: &[EndpointSpec],
    ) -> Result<Self> {
        attach::validate_config(cfg)?;
        attach::validate_endpoints(endpoints)?;
        let mut cfg = cfg.clone();
        let mut warnings = Vec::new();
        if let Some(ifindex) = crate::sys::if_index(&cfg.ifname) {
            // The kernel's own answer (6.3+); an older one, or a failed query, leaves `auto`
            // to try.
            let features = crate::netlink::xdp_features(ifindex).ok().flatten();
            cfg.settle_bind(features.as_ref(), &mut warnings)?;
        }
        let mut dataplane = Self::assemble(&cfg, classifier).map_err(DataplaneError::step(
            format!("starting the dataplane on {}", cfg.ifname),
        ))?;
        warnings.append(&mut dataplane.warnings);
        dataplane.warnings = warnings;
        for spec in endpoints {
            dataplane.add_endpoint(spec.clone())?;
        }
        Ok(dataplane)
    }

    /// Open the queues and start the threads, no endpoint yet.
    fn assemble(cfg: &DataplaneConfig, mut classifier: Classifier) -> anyhow::Result<Self> {
        let Some((ifindex, attached)) = classifier.attached() else {
            anyhow::bail!("the classifier for {} is not attached", cfg.ifname);
        };
        // Nothing changes on the NIC until an endpoint or busy polling needs it.
        let mut nic = crate::nic::NicChanges::new(&cfg.ifname, ifindex)?;
        crate::sys::raise_rlimit(libc::RLIMIT_NOFILE, 1 << 20);
        let mtu = crate::netlink::Netlink::new()
            .and_then(|nl| nl.require_link(&cfg.ifname))
            .map(|l| l.mtu)
            .with_context(|| format!("reading the MTU of {}", cfg.ifname))?;
        let mut warnings = Vec::new();

        // The threads first: each queue's owner is woken through its thread's mailbox.
        let owner_of = |q: u32| match cfg.layout {
            Layout::RunToCompletion => 0,
            Layout::Split { .. } => q as usize,
        };
        let serving: Vec<usize> = match cfg.layout {
            Layout::RunToCompletion => vec![0],
            Layout::Split { serving } => {
                (cfg.queues as usize..cfg.queues as usize + serving.max(1)).collect()
            }
        };
        let thread_count = match cfg.layout {
            Layout::RunToCompletion => 1,
            Layout::Split { serving } => cfg.queues as usize + serving.max(1),
        };
        let stop_owners = Arc::new(AtomicBool::new(false));
        let stop_servers = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..thread_count {
            let serves = serving.contains(&t);
            threads.push(ThreadHandle {
                join: None,
                commands: Arc::new(ThreadMailbox::new(64, Waker::new()?)),
                stop: if serves {
                    stop_servers.clone()
                } else {
                    stop_owners.clone()
                },
                serves,
                endpoints: 0,
                has_tx_sockets: false,
            });
        }
        let mut owners = Vec::new();
        let mut steering = Vec::new();
        let mut bound = Bound::Copy;
        let mut multi_buffer = true;
        for q in 0..cfg.queues {
            let waker = threads[owner_of(q)].commands.waker.clone();
            let user_demux =
                (cfg.demux == Demux::User).then(|| Arc::new(ThreadMailbox::new(16, waker.clone())));
            let (owner, b) = queue::open(
                &cfg.ifname,
                q,
                &cfg.queue,
                user_demux.clone(),
                waker,
                &mut warnings,
            )?;
            bound = b;
            multi_buffer &= owner.queue.umem.multi_buffer();
            if cfg.demux == Demux::User {
                classifier.set_socket(
                    classifier.xsk_index(0, q),
                    owner.socket(),
                    owner.queue.umem.max_rx_frame(),
                )?;
            }
            if let (Some(updates), Some(s)) = (user_demux, owner.steering()) {
                steering.push(SteerHandle {
                    updates,
                    applied: s.applied.clone(),
                });
            }
            owners.push(owner);
        }
        let mut busy_poll = None;
        if let Some(busy) = cfg.busy_poll
            && queue::busy_poll_all(&mut owners, busy, &cfg.ifname, &mut warnings)?
        {
            nic.defer_interrupts()?;
            busy_poll = Some(busy);
        }
        let queues: Vec<Arc<NicQueue>> = owners.iter().map(|o| o.queue.clone()).collect();
        // A serving thread can learn where its work is from epoll (`xdp` demux), or from its
        // own steering (`user` demux running to completion).
        let sparse = cfg.demux == Demux::Xdp || cfg.layout == Layout::RunToCompletion;
        let mut bodies: Vec<ReceiveThread> = threads
            .iter()
            .enumerate()
            .map(|(t, h)| {
                // Queue q's own thread takes core q; serving thread c core c (round-robin).
                let (name, index) = match serving.iter().position(|&s| s == t) {
                    Some(c) => (format!("xmv-consumer-{c}"), c),
                    None => (format!("xmv-worker-q{t}"), t),
                };
                ReceiveThread::new(
                    name,
                    cfg.cores[index % cfg.cores.len()],
                    h.commands.clone(),
                    queues.clone(),
                    h.stop.clone(),
                    mtu,
                    h.serves && sparse,
                )
            })
            .collect();
        for (q, owner) in owners.into_iter().enumerate() {
            bodies[owner_of(q as u32)].owned.push(owner);
        }
        let mut dataplane = Self {
            cfg: cfg.clone(),
            classifier,
            queues,
            steering,
            threads,
            endpoints: BTreeMap::new(),
            slots: slots::Slots::new(abi::MAX_SLOTS),
            tables_published: 0,
            attached_so_far: 0,
            mtu,
            attached,
            bound,
            multi_buffer,
            busy_poll,
            warnings,
            nic,
        };
        // Each thread says it runs: by then it carries its name, so whoever looks for the
        // dataplane's threads by name (pinning, renicing, tests) finds all of them.
        let (running, started) = std::sync::mpsc::channel::<()>();
        let spawned = bodies.len();
        for (handle, body) in dataplane.threads.iter_mut().zip(bodies) {
            let mut policy = cfg.idle;
            if busy_poll.is_some() && !body.owned.is_empty() {
                // A thread that busy polls keeps polling a while after its last frame, or
                // its queues' interrupts come back (see crate::nic::busy_poll).
                policy.spin = policy.spin.max(crate::nic::busy_poll::KEEP_POLLING);
            }
            let idle = Sleeper::new(handle.commands.waker.clone())?.with_policy(policy);
            for owned in &body.owned {
                owned.watch(&idle)?;
            }
            let running = running.clone();
            handle.join = Some(
                std::thread::Builder::new()
                    .name(body.name.clone())
                    .spawn(move || {
                        running.send(()).ok();
                        body.run(idle)
                    })
                    .context("spawning a dataplane thread")?,
            );
        }
        for _ in 0..spawned {
            started
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow::anyhow!("a dataplane thread did not start within 10 s"))?;
        }
        Ok(dataplane)
    }

    /// The classifier's kernel events since the last call (see [`Classifier::drain_events`]).
    pub fn drain_kernel_events(&mut self, f: impl FnMut(crate::abi::Event)) -> usize {
        self.classifier.drain_events(f)
    }

    pub fn xdp_counters(&self) -> Result<Counters> {
        self.classifier
            .counters()
            .map_err(DataplaneError::step("reading the classifier's counters"))
    }

    /// Stop claiming every endpoint's frames and wait until frames redirected before are in
    /// their sockets: from here on the endpoints' kernel devices get their traffic, and a
    /// [`Self::stop`] hands the last claimed frames to the ports still connected. The daemon
    /// does this before it stops (the classifier may outlive it).
    pub fn release_claims(&mut self) -> Result<u32> {
        let released = self
            .classifier
            .unclaim_all()
            .map_err(DataplaneError::step("releasing the endpoints' claims"))?;
        crate::sys::synchronize_rcu();
        Ok(released)
    }

    /// The classifier, for its owner's lifecycle decisions (see [`Classifier::set_release`]).
    pub fn classifier_mut(&mut self) -> &mut Classifier {
        &mut self.classifier
    }

    /// Live counters of every attached endpoint, in attach order.
    pub fn endpoint_counters(&self) -> Vec<(EndpointSpec, Arc<EndpointCounters>)> {
        self.in_attach_order()
            .into_iter()
            .map(|a| (a.spec.clone(), a.counters.clone()))
            .collect()
    }

    /// Everything countable, read now while the dataplane runs (a few syscalls per socket:
    /// for stats commands, not for hot loops).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let read = || {
            let endpoints = self
                .in_attach_order()
                .into_iter()
                .map(Attached::snapshot)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let queues = self
                .queues
                .iter()
                .map(|q| q.snapshot())
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok(Snapshot {
                interface: self.cfg.ifname.clone(),
                demux: self.cfg.demux,
                xdp_mode: self.attached,
                bind: self.bound,
                multi_buffer: self.multi_buffer,
                xdp: self.classifier.counters()?,
                queues,
                endpoints,
            })
        };
        read().map_err(DataplaneError::step(format!(
            "reading the counters of {}",
            self.cfg.ifname
        )))
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
