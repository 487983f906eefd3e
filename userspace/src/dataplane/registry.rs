//! The endpoint registry of a running dataplane: slots, validation, the classifier's keys and
//! XSKMAP entries, and the steering tables published to the workers (user demux).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use crossbeam_queue::ArrayQueue;

use super::commands::{ask, send};
use super::{
    ClaimPolicy, Consumer, Dataplane, DataplaneConfig, EndpointCounters, EndpointResult,
    EndpointSpec, PortCounters, PortInfo, PortSnapshot, consumer, lookup, ports, worker,
};
use crate::abi;
use crate::ether::{Mac, VlanId};
use crate::modes::{DemuxMode, Threads};
use crate::xdp::Steering;
use crate::xsk::{self, RxFrame};

/// An endpoint as the registry keeps it: what it was given, where it is served, its counters.
pub(super) struct Attached {
    pub(super) spec: EndpointSpec,
    /// Attach order: reports list endpoints in it.
    pub(super) seq: u64,
    pub(super) slot: u32,
    pub(super) counters: Arc<EndpointCounters>,
    pub(super) consumer: usize,
    /// The endpoint's descriptor ring (user demux).
    pub(super) ring: Option<Arc<ArrayQueue<RxFrame>>>,
    /// Its sockets' kernel counters (xdp demux), readable from here.
    pub(super) sockets: Vec<xsk::StatsHandle>,
    pub(super) claim: ClaimPolicy,
    pub(super) port: Option<AttachedPort>,
}

/// A connected port, as the control side sees it.
pub(super) struct AttachedPort {
    pub(super) info: PortInfo,
    pub(super) counters: Arc<PortCounters>,
}

impl Dataplane {
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
                Mac(spec.mac),
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
        let (source, ring) = match self.classifier.steering() {
            Steering::PerEndpoint => {
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
            Steering::PerQueue => {
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
            // A frame redirected just before is still being flushed into its socket by a
            // NAPI poll: let every poll finish, so the consumer's last drain counts it.
            crate::sys::synchronize_rcu();
        }
        let handle = &mut self.consumers[attached.consumer];
        let finished = ask(
            &handle.commands,
            |reply| consumer::Command::Remove {
                slot: attached.slot,
                reply,
            },
            || format!("the consumer of endpoint {name} did not answer"),
        );
        // It left the registry above, whatever its consumer says.
        handle.endpoints -= 1;
        let mut finished = finished?;
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
        ask(
            &self.consumers[attached.consumer].commands,
            |reply| consumer::Command::Histogram {
                slot: attached.slot,
                reply,
            },
            || format!("the consumer of endpoint {name} did not answer"),
        )
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
            slots: entries.iter().map(|a| a.slot).collect(),
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

    /// Attached endpoints in the order they were attached.
    pub(super) fn in_attach_order(&self) -> Vec<&Attached> {
        let mut list: Vec<&Attached> = self.endpoints.values().collect();
        list.sort_by_key(|a| a.seq);
        list
    }
}

pub(super) fn result(a: &Attached, f: consumer::FinishedEndpoint) -> EndpointResult {
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

/// How the classifier steers for a demux mode; `kernel` has no dataplane to run.
pub(super) fn steering(demux: DemuxMode) -> Result<Steering> {
    match demux {
        DemuxMode::Xdp => Ok(Steering::PerEndpoint),
        DemuxMode::User => Ok(Steering::PerQueue),
        DemuxMode::Kernel => bail!(
            "demux mode `kernel` runs no dataplane (frames stay on the macvlan devices): \
             use `xdp` or `user`"
        ),
    }
}

pub(super) fn validate_config(cfg: &DataplaneConfig) -> Result<()> {
    steering(cfg.demux)?;
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
    if cfg.threads == Threads::RunToCompletion && cfg.consumer_threads > 1 {
        bail!(
            "receive threads `run-to-completion` put every queue and endpoint on one thread, \
             but {} consumer threads were asked for: give one core, or use `split`",
            cfg.consumer_threads
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

pub(super) fn validate_endpoints(endpoints: &[EndpointSpec]) -> Result<()> {
    if endpoints.len() > abi::MAX_SLOTS as usize {
        bail!(
            "{} endpoints: at most {} are supported",
            endpoints.len(),
            abi::MAX_SLOTS
        );
    }
    let mut seen = std::collections::HashSet::new();
    for e in endpoints {
        if e.vid > VlanId::MAX {
            bail!(
                "endpoint {}: VLAN id {} out of range 0-{} (0: untagged)",
                e.name,
                e.vid,
                VlanId::MAX
            );
        }
        if e.mac[0] & 1 != 0 {
            bail!(
                "endpoint {}: {} is a multicast MAC; endpoints need unicast MACs",
                e.name,
                Mac(e.mac)
            );
        }
        if !seen.insert(e.key()) {
            bail!(
                "endpoint {}: another endpoint already has VLAN {} and MAC {}",
                e.name,
                e.vid,
                Mac(e.mac)
            );
        }
    }
    Ok(())
}
