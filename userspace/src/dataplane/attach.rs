//! Endpoints and their ports joining and leaving a running dataplane. Each join is a
//! transaction ([`Rollback`]): every step registers its undo, so a step that fails leaves no
//! slot, socket, thread entry, table entry or classifier key behind.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use crossbeam_queue::ArrayQueue;

use super::commands::{Unanswered, ask, send};
use super::endpoint::{Served, Source};
use super::error::DataplaneError;
use super::port::{AppPort, ClaimPolicy, PortInfo};
use super::served_port::{Claim, PortLink, PortSnapshot, ServedPort};
use super::snapshot::EndpointSnapshot;
use super::steer::SteerTable;
use super::thread::{Command, Finished};
use super::{
    Dataplane, DataplaneConfig, EndpointCounters, EndpointResult, EndpointSpec, Layout, lookup,
};
use crate::abi;
use crate::ether::{Mac, VlanId};
use crate::modes::Demux;
use crate::rollback::Rollback;
use crate::xsk::{self, RxFrame, SocketStats};

/// An endpoint as the registry keeps it: what it was given, where it is served, its counters.
pub(super) struct Attached {
    pub(super) spec: EndpointSpec,
    /// Attach order: reports list endpoints in it.
    pub(super) seq: u64,
    pub(super) slot: u32,
    pub(super) counters: Arc<EndpointCounters>,
    /// Index of the thread serving it.
    pub(super) thread: usize,
    /// The queue its port's frames leave through.
    pub(super) tx_queue: usize,
    /// The endpoint's descriptor ring (`user` demux).
    pub(super) ring: Option<Arc<ArrayQueue<RxFrame>>>,
    /// Its sockets' kernel counters (`xdp` demux), readable from here.
    pub(super) sockets: Vec<xsk::StatsHandle>,
    pub(super) claim: ClaimPolicy,
    pub(super) port: Option<AttachedPort>,
}

/// A connected port, as the control side sees it.
pub(super) struct AttachedPort {
    pub(super) info: PortInfo,
    pub(super) link: Arc<PortLink>,
}

impl Attached {
    pub(super) fn snapshot(&self) -> Result<EndpointSnapshot> {
        let mut socket = SocketStats::default();
        for h in &self.sockets {
            socket.add(&h.statistics()?);
        }
        Ok(EndpointSnapshot {
            name: self.spec.name.clone(),
            vid: self.spec.vid,
            mac: Mac(self.spec.mac).to_string(),
            counts: self.counters.read(),
            socket,
            tx_queue: self.tx_queue as u16,
            claim: self.claim,
            port: self.port_snapshot(),
        })
    }

    fn port_snapshot(&self) -> Option<PortSnapshot> {
        let p = self.port.as_ref()?;
        Some(PortSnapshot::read(&p.info, &p.link))
    }

    /// Its final numbers, from what its thread handed back.
    pub(super) fn result(&self, f: Finished) -> EndpointResult {
        let counts = self.counters.read();
        EndpointResult {
            spec: self.spec.clone(),
            counts,
            dropped: counts.dropped_ring_full + f.socket_stats.dropped(),
            port: self.port_snapshot(),
            socket_stats: f.socket_stats,
            latency: f.latency.unwrap_or_else(super::latency_histogram),
        }
    }
}

impl Dataplane {
    /// Start serving an endpoint while running, its frames claimed at once
    /// ([`ClaimPolicy::Always`]).
    pub fn add_endpoint(&mut self, spec: EndpointSpec) -> Result<(), DataplaneError> {
        self.add_endpoint_with(spec, ClaimPolicy::Always)
    }

    /// [`Self::add_endpoint`] with a claim policy: with [`ClaimPolicy::WhileConnected`] the
    /// classifier knows the endpoint but leaves its frames to its kernel device until a port
    /// connects ([`Self::connect_port`]). Sockets (or ring) first, the classifier's claim on
    /// its key last, so no claimed frame finds no home; a failed step undoes those before it.
    pub fn add_endpoint_with(
        &mut self,
        spec: EndpointSpec,
        claim: ClaimPolicy,
    ) -> Result<(), DataplaneError> {
        validate_endpoints(std::slice::from_ref(&spec))?;
        if self.endpoints.contains_key(&spec.name) {
            return Err(DataplaneError::AlreadyAttached(spec.name));
        }
        if let Some(other) = self.endpoints.values().find(|a| a.spec.key() == spec.key()) {
            return Err(DataplaneError::Endpoint(format!(
                "endpoint {} has the same VLAN {} and MAC {} as endpoint {}",
                spec.name,
                spec.vid,
                Mac(spec.mac),
                other.spec.name
            )));
        }
        let name = spec.name.clone();
        self.attach_endpoint(spec, claim)
            .map_err(DataplaneError::step(format!("adding endpoint {name}")))
    }

    fn attach_endpoint(&mut self, spec: EndpointSpec, claim: ClaimPolicy) -> Result<()> {
        let mut dp = Rollback::new(self);
        // Its frames must get past the NIC to XDP: tag kept, MAC and VLAN id let through.
        let (mac, vid) = (spec.mac, spec.vid);
        dp.nic.admit(mac, vid)?;
        dp.on_rollback(move |dp| dp.nic.release(mac, vid));
        let slot = dp.slots.take()?;
        dp.on_rollback(move |dp| dp.slots.give_back(slot));

        let counters: Arc<EndpointCounters> = Arc::default();
        let mut handles = Vec::new();
        let (source, ring) = match dp.cfg.demux {
            Demux::Xdp => {
                let mut sockets = Vec::new();
                for q in 0..dp.queues.len() {
                    let socket = dp.queues[q].umem.add_socket()?;
                    let index = dp.classifier.xsk_index(slot, q as u32);
                    let max_len = dp.queues[q].umem.max_rx_frame();
                    dp.classifier.set_socket(index, &socket, max_len)?;
                    dp.on_rollback(move |dp| {
                        undo(
                            dp.classifier.clear_socket(index),
                            "clearing an XSKMAP entry",
                        )
                    });
                    handles.push(socket.stats_handle());
                    sockets.push(socket);
                }
                (Source::Sockets(sockets), None)
            }
            Demux::User => {
                let ring = Arc::new(ArrayQueue::new(dp.cfg.endpoint_ring));
                (Source::Ring(ring.clone()), Some(ring))
            }
        };

        let thread = dp.least_busy_serving_thread();
        let tx_queue = slot as usize % dp.queues.len();
        let served = Served::new(
            slot,
            &spec,
            source,
            claim,
            tx_queue,
            counters.clone(),
            dp.cfg.probe,
        );
        send(&dp.threads[thread].commands, Command::Add(Box::new(served)))?;
        dp.threads[thread].endpoints += 1;
        dp.on_rollback(move |dp| {
            dp.threads[thread].endpoints -= 1;
            let back = ask(
                &dp.threads[thread].commands,
                |reply| Command::Remove { slot, reply },
                || format!("the thread serving endpoint slot {slot} did not give it back"),
            );
            // Its sockets close here, off the serving thread.
            undo(back.map(drop), "taking a half-attached endpoint back");
        });

        dp.attached_so_far += 1;
        let seq = dp.attached_so_far;
        let name = spec.name.clone();
        let key = spec.key();
        dp.endpoints.insert(
            spec.name.clone(),
            Attached {
                spec,
                seq,
                slot,
                counters,
                thread,
                tx_queue,
                ring,
                sockets: handles,
                claim,
                port: None,
            },
        );
        // Out of the registry, and (user demux) out of the owners' tables before its serving
        // thread drains it: the undo steps run in reverse.
        dp.on_rollback(move |dp| {
            dp.endpoints.remove(&name);
            if dp.cfg.demux == Demux::User {
                undo(dp.publish_tables(), "withdrawing a steering table entry");
            }
        });
        if dp.cfg.demux == Demux::User {
            dp.publish_tables()?;
        }

        // Last, the classifier's claim: from here on frames may be redirected to it. (It sets
        // the slot's claim flag before the key: undone whatever step of it failed.)
        dp.on_rollback(move |dp| undo(dp.classifier.set_claimed(slot, false), "a claim flag"));
        dp.classifier
            .insert_key_with(key, slot, claim == ClaimPolicy::Always)?;
        dp.commit();
        Ok(())
    }

    /// The serving thread with the fewest endpoints.
    fn least_busy_serving_thread(&self) -> usize {
        (0..self.threads.len())
            .filter(|&t| self.threads[t].serves)
            .min_by_key(|&t| self.threads[t].endpoints)
            .expect("at least one serving thread")
    }

    /// Stop serving an endpoint while running. Its classifier key goes first; frames
    /// already on their way to it are still counted as its own; then its sockets close and
    /// its slot is free for reuse. Returns its final numbers.
    pub fn remove_endpoint(&mut self, name: &str) -> Result<EndpointResult, DataplaneError> {
        let attached = self
            .endpoints
            .remove(name)
            .ok_or_else(|| DataplaneError::NotAttached(name.to_string()))?;
        self.classifier
            .remove_key(&attached.spec.key())
            .map_err(DataplaneError::step(format!("removing endpoint {name}")))?;
        if self.cfg.demux == Demux::User {
            // Owners must stop pushing to its ring before its thread drains it.
            self.publish_tables()
                .map_err(DataplaneError::step(format!("removing endpoint {name}")))?;
        } else {
            self.clear_sockets(attached.slot);
            // A frame redirected just before is still being flushed into its socket by a
            // NAPI poll: let every poll finish, so the last drain counts it.
            crate::sys::synchronize_rcu();
        }
        let handle = &mut self.threads[attached.thread];
        let finished = ask(
            &handle.commands,
            |reply| Command::Remove {
                slot: attached.slot,
                reply,
            },
            || format!("the thread serving endpoint {name} did not answer"),
        );
        // It left the registry above, whatever its thread says.
        handle.endpoints -= 1;
        let mut finished = finished?;
        self.slots.give_back(attached.slot);
        self.nic.release(attached.spec.mac, attached.spec.vid);
        drop(finished.port.take());
        Ok(attached.result(finished))
    }

    /// A copy of an endpoint's latency histogram, taken by its serving thread (empty without
    /// the probe).
    pub fn latency_histogram(
        &self,
        name: &str,
    ) -> Result<hdrhistogram::Histogram<u64>, DataplaneError> {
        let attached = self
            .endpoints
            .get(name)
            .ok_or_else(|| DataplaneError::NotAttached(name.to_string()))?;
        let latency = ask(
            &self.threads[attached.thread].commands,
            |reply| Command::Histogram {
                slot: attached.slot,
                reply,
            },
            || format!("the thread serving endpoint {name} did not answer"),
        )?;
        Ok(latency.unwrap_or_else(super::latency_histogram))
    }

    fn clear_sockets(&mut self, slot: u32) {
        if self.cfg.demux == Demux::Xdp {
            for q in 0..self.cfg.queues {
                let index = self.classifier.xsk_index(slot, q);
                undo(
                    self.classifier.clear_socket(index),
                    "clearing an XSKMAP entry",
                );
            }
        }
    }

    /// Give every queue owner a fresh steering table and wait until each has switched to it.
    fn publish_tables(&mut self) -> Result<()> {
        let entries: Vec<&Attached> = self.endpoints.values().collect();
        let table = Arc::new(SteerTable {
            lookup: lookup::EndpointTable::new(entries.iter().map(|a| a.spec.key())),
            slots: entries.iter().map(|a| a.slot).collect(),
            rings: entries
                .iter()
                .map(|a| a.ring.clone().expect("user demux ring"))
                .collect(),
            counters: entries.iter().map(|a| a.counters.clone()).collect(),
            servers: self
                .threads
                .iter()
                .filter(|t| t.serves)
                .map(|t| t.commands.waker.clone())
                .collect(),
        });
        self.tables_published += 1;
        for s in &self.steering {
            send(&s.updates, table.clone())?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for s in &self.steering {
            while s.applied.load(Ordering::Acquire) < self.tables_published {
                if Instant::now() > deadline {
                    bail!("a queue's owner did not take the new endpoint table");
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

    /// Hand endpoint `name`'s traffic to an application port: from now on its thread copies
    /// each of its frames into `port` (tag stripped) and transmits what the port sends (tag
    /// inserted). An endpoint claimed only while connected is claimed from here on.
    pub fn connect_port(
        &mut self,
        name: &str,
        port: Box<dyn AppPort>,
        info: PortInfo,
    ) -> Result<(), DataplaneError> {
        let attached = self
            .endpoints
            .get(name)
            .ok_or_else(|| DataplaneError::NotAttached(name.to_string()))?;
        if let Some(p) = &attached.port {
            return Err(DataplaneError::Port(format!(
                "endpoint {name} already has a port connected (client `{}`, pid {}); \
                 disconnect it first",
                p.info.client, p.info.pid
            )));
        }
        let (slot, claim, thread) = (attached.slot, attached.claim, attached.thread);
        if self.cfg.demux == Demux::User && !self.threads[thread].has_tx_sockets {
            let sockets = self
                .queues
                .iter()
                .map(|q| q.umem.add_socket())
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(DataplaneError::step(
                    "opening TX sockets for the serving thread",
                ))?;
            send(&self.threads[thread].commands, Command::TxSockets(sockets))?;
            self.threads[thread].has_tx_sockets = true;
        }
        let link: Arc<PortLink> = Arc::default();
        // Claimed only while connected: the serving thread claims the endpoint once the
        // client offers receive buffers, not now (it may not have offered any yet).
        let claim = match claim {
            ClaimPolicy::WhileConnected => {
                let switch = self
                    .classifier
                    .claim_switch()
                    .map_err(DataplaneError::step(format!(
                        "connecting a port to endpoint {name}"
                    )))?;
                Some(Claim::new(switch, slot))
            }
            ClaimPolicy::Always => None,
        };
        ask(
            &self.threads[thread].commands,
            |reply| Command::Connect {
                slot,
                port: Box::new(ServedPort::new(port, link.clone(), claim)),
                reply,
            },
            || format!("the thread serving endpoint {name} did not take the port"),
        )?;
        self.endpoints.get_mut(name).expect("looked up above").port =
            Some(AttachedPort { info, link });
        Ok(())
    }

    /// Take endpoint `name`'s port away: an endpoint claimed only while connected goes back to
    /// its kernel device first (frames already on their way count as `not_connected`); then the
    /// thread stops using the port, which is closed here. Returns its final numbers.
    pub fn disconnect_port(&mut self, name: &str) -> Result<PortSnapshot, DataplaneError> {
        let attached = self
            .endpoints
            .get(name)
            .ok_or_else(|| DataplaneError::NotAttached(name.to_string()))?;
        if attached.port.is_none() {
            return Err(DataplaneError::Port(format!(
                "endpoint {name} has no port connected"
            )));
        }
        let (slot, claim, thread) = (attached.slot, attached.claim, attached.thread);
        if claim == ClaimPolicy::WhileConnected {
            self.classifier
                .set_claimed(slot, false)
                .map_err(DataplaneError::step(format!(
                    "giving endpoint {name}'s frames back to its kernel device"
                )))?;
        }
        let port = self.take_port(thread, slot);
        let p = self
            .endpoints
            .get_mut(name)
            .expect("looked up above")
            .port
            .take()
            .expect("checked above");
        // Closing the port (unmapping the client's memory) happens here, off the hot loop.
        drop(port?);
        Ok(PortSnapshot::read(&p.info, &p.link))
    }

    /// Ports whose application went away (the serving thread saw `is_connected()` false):
    /// disconnect each (its endpoint back to the kernel) and return their final numbers. The
    /// daemon calls this every loop; cheap when nothing changed (an atomic load per port).
    pub fn reap_disconnected(&mut self) -> Vec<(String, Result<PortSnapshot, DataplaneError>)> {
        let gone: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, a)| {
                a.port
                    .as_ref()
                    .is_some_and(|p| !p.link.connected.load(Ordering::Relaxed))
            })
            .map(|(name, _)| name.clone())
            .collect();
        gone.into_iter()
            .map(|name| {
                let r = self.disconnect_port(&name);
                (name, r)
            })
            .collect()
    }

    /// The port of endpoint `name`, if one is connected: who, since when, its counters.
    pub fn port(&self, name: &str) -> Option<PortSnapshot> {
        self.endpoints.get(name)?.port_snapshot()
    }

    /// The live counters of endpoint `name`'s connected port (cheap to read as often as a
    /// paced generator needs).
    pub fn port_link(&self, name: &str) -> Option<Arc<PortLink>> {
        Some(self.endpoints.get(name)?.port.as_ref()?.link.clone())
    }

    /// Ask a thread for the port of `slot` back.
    fn take_port(&self, thread: usize, slot: u32) -> Result<Option<ServedPort>, Unanswered> {
        ask(
            &self.threads[thread].commands,
            |reply| Command::Disconnect { slot, reply },
            || format!("the thread serving endpoint slot {slot} did not give its port back"),
        )
    }
}

/// An undo step that failed: the kernel or a thread refused to take something back. Said in
/// the log (nothing else can be done about it); the original error is what the caller sees.
fn undo<E: Into<anyhow::Error>>(result: Result<(), E>, what: &str) {
    if let Err(e) = result {
        let e: anyhow::Error = e.into();
        crate::logging::warn(format_args!("undoing a failed attach: {what}: {e:#}"));
    }
}

pub(super) fn validate_config(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    if cfg.cores.is_empty() {
        return Err(DataplaneError::Config(
            "no cores given for the dataplane threads".into(),
        ));
    }
    let available = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    if let Some(bad) = cfg.cores.iter().find(|&&c| c >= available) {
        return Err(DataplaneError::Config(format!(
            "core {bad} does not exist (this machine has cores 0-{})",
            available - 1
        )));
    }
    if let Layout::Split { serving: 0 } = cfg.layout {
        return Err(DataplaneError::Config(
            "a split layout needs at least one serving thread".into(),
        ));
    }
    if cfg.queues == 0 || cfg.queues > abi::MAX_QUEUES {
        return Err(DataplaneError::Config(format!(
            "{} queues: between 1 and {} are supported",
            cfg.queues,
            abi::MAX_QUEUES
        )));
    }
    Ok(())
}

pub(super) fn validate_endpoints(endpoints: &[EndpointSpec]) -> Result<(), DataplaneError> {
    if endpoints.len() > abi::MAX_SLOTS as usize {
        return Err(DataplaneError::Endpoint(format!(
            "{} endpoints: at most {} are supported",
            endpoints.len(),
            abi::MAX_SLOTS
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for e in endpoints {
        if e.vid > VlanId::MAX {
            return Err(DataplaneError::Endpoint(format!(
                "endpoint {}: VLAN id {} out of range 0-{} (0: untagged)",
                e.name,
                e.vid,
                VlanId::MAX
            )));
        }
        if e.mac[0] & 1 != 0 {
            return Err(DataplaneError::Endpoint(format!(
                "endpoint {}: {} is a multicast MAC; endpoints need unicast MACs",
                e.name,
                Mac(e.mac)
            )));
        }
        if !seen.insert(e.key()) {
            return Err(DataplaneError::Endpoint(format!(
                "endpoint {}: another endpoint already has VLAN {} and MAC {}",
                e.name,
                e.vid,
                Mac(e.mac)
            )));
        }
    }
    Ok(())
}
