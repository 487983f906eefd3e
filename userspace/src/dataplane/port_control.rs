//! Connecting and disconnecting application ports while the dataplane runs: the control
//! side of `AppPort` (the consumer threads do the I/O, see `consumer` and `port_io`).
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};

use super::commands::{ask, send};
use super::ports::{self, ClaimPolicy, PortCounters, PortSnapshot};
use super::registry::AttachedPort;
use super::{AppPort, Dataplane, DemuxMode, PortInfo, consumer};
use crate::xsk::QueueUmem;

impl Dataplane {
    /// Hand endpoint `name`'s traffic to an application port: from now on its consumer copies
    /// each of its frames into `port` (tag stripped) and transmits what the port sends (tag
    /// inserted). An endpoint claimed only while connected is claimed from here on.
    pub fn connect_port(
        &mut self,
        name: &str,
        port: Box<dyn AppPort>,
        info: PortInfo,
    ) -> Result<()> {
        let attached = self
            .endpoints
            .get(name)
            .ok_or_else(|| anyhow!("no endpoint named `{name}` is attached"))?;
        if let Some(p) = &attached.port {
            bail!(
                "endpoint {name} already has a port connected (client `{}`, pid {}); \
                 disconnect it first",
                p.info.client,
                p.info.pid
            );
        }
        let (slot, claim, consumer_index) = (attached.slot, attached.claim, attached.consumer);
        if self.cfg.demux == DemuxMode::User && !self.consumers[consumer_index].has_tx_sockets {
            let sockets = self
                .umems
                .iter()
                .map(QueueUmem::add_socket)
                .collect::<Result<Vec<_>>>()
                .context("opening TX sockets for the consumer thread")?;
            send(
                &self.consumers[consumer_index].commands,
                consumer::Command::TxSockets(sockets),
            )?;
            self.consumers[consumer_index].has_tx_sockets = true;
        }
        let counters: Arc<PortCounters> = Arc::default();
        ask(
            &self.consumers[consumer_index].commands,
            |reply| consumer::Command::Connect {
                slot,
                port: Box::new(ports::ServedPort::new(port, counters.clone())),
                reply,
            },
            || format!("the consumer of endpoint {name} did not take the port"),
        )?;
        if claim == ClaimPolicy::WhileConnected
            && let Err(e) = self.classifier.set_claimed(slot, true)
        {
            let _ = self.take_port(consumer_index, slot);
            return Err(e.context(format!("connecting a port to endpoint {name}")));
        }
        self.endpoints.get_mut(name).expect("looked up above").port =
            Some(AttachedPort { info, counters });
        Ok(())
    }

    /// Take endpoint `name`'s port away: an endpoint claimed only while connected goes back to
    /// its kernel device first (frames already on their way count as `not_connected`); then the
    /// consumer stops using the port, which is closed here. Returns its final numbers.
    pub fn disconnect_port(&mut self, name: &str) -> Result<PortSnapshot> {
        let attached = self
            .endpoints
            .get(name)
            .ok_or_else(|| anyhow!("no endpoint named `{name}` is attached"))?;
        if attached.port.is_none() {
            bail!("endpoint {name} has no port connected");
        }
        let (slot, claim, consumer_index) = (attached.slot, attached.claim, attached.consumer);
        if claim == ClaimPolicy::WhileConnected {
            self.classifier.set_claimed(slot, false)?;
        }
        let port = self.take_port(consumer_index, slot);
        let p = self
            .endpoints
            .get_mut(name)
            .expect("looked up above")
            .port
            .take()
            .expect("checked above");
        // Closing the port (unmapping the client's memory) happens here, off the hot loop.
        drop(port?);
        Ok(PortSnapshot::read(&p.info, &p.counters))
    }

    /// Ports whose application went away (the serving thread saw `is_connected()` false):
    /// disconnect each (its endpoint back to the kernel) and return their final numbers. The
    /// daemon calls this every loop; cheap when nothing changed (an atomic load per port).
    pub fn reap_disconnected(&mut self) -> Vec<(String, Result<PortSnapshot>)> {
        let gone: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, a)| {
                a.port
                    .as_ref()
                    .is_some_and(|p| !p.counters.live.load(Ordering::Relaxed))
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
        let p = self.endpoints.get(name)?.port.as_ref()?;
        Some(PortSnapshot::read(&p.info, &p.counters))
    }

    /// The live counters of endpoint `name`'s connected port (cheap to read as often as a
    /// paced generator needs).
    pub fn port_counters(&self, name: &str) -> Option<Arc<PortCounters>> {
        Some(self.endpoints.get(name)?.port.as_ref()?.counters.clone())
    }

    /// Ask a consumer for the port of `slot` back.
    fn take_port(&self, consumer_index: usize, slot: u32) -> Result<Option<ports::ServedPort>> {
        ask(
            &self.consumers[consumer_index].commands,
            |reply| consumer::Command::Disconnect { slot, reply },
            || format!("the consumer of endpoint slot {slot} did not give its port back"),
        )
    }
}
