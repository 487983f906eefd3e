//! The control path's side of DHCP (see [`crate::dhcp`]): an endpoint of a `dhcp` network
//! leases its address when it is created, on its own link with its own MAC, and gives it
//! back when it is removed. The daemon extends the leases in between (`daemon::leases`).
use std::net::IpAddr;

use super::error::{ControlError, During};
use super::model::{Cidr, Endpoint, Network};
use crate::dhcp::{self, Lease};

/// The control path reads a lease as the address it gives the endpoint (the DHCP client sits
/// below the control path and does not know its types).
impl Lease {
    pub fn cidr(&self) -> Cidr {
        Cidr::new(self.address.into(), self.prefix)
    }
}
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::rollback::Rollback;

/// The segment a network's endpoints are on, as messages name it.
pub fn segment(net: &Network) -> String {
    if net.vlan == 0 {
        format!("parent `{}` (network `{}`)", net.parent, net.name)
    } else {
        format!(
            "parent `{}`, VLAN {} (network `{}`)",
            net.parent, net.vlan, net.name
        )
    }
}

/// The endpoint's link as the DHCP client needs it, from its record.
pub fn link(ep: &Endpoint, segment: String) -> dhcp::Link {
    dhcp::Link {
        netns: ep.netns.clone(),
        ifname: ep.ifname.clone(),
        mac: ep.mac,
        host_name: ep.name.clone(),
        segment,
    }
}

/// [`acquire`] as a step of a create: the lease is released again if a later step fails.
pub fn acquire_undoably(
    ep: &mut Endpoint,
    net: &Network,
    undo: &mut Rollback<'_, ()>,
) -> Result<(), ControlError> {
    acquire(ep, net)?;
    let leased = ep.clone();
    undo.on_rollback(super::undo_step(
        format!("the DHCP lease of endpoint `{}`", ep.name),
        move || {
            release(&leased, &[&leased]);
            Ok::<(), ControlError>(())
        },
    ));
    Ok(())
}

/// Lease an address for a new endpoint (its device exists, in the namespace its record
/// names); the record gets the lease, its address and its router as gateway.
fn acquire(ep: &mut Endpoint, net: &Network) -> Result<Lease, ControlError> {
    let lease = dhcp::acquire(&link(ep, segment(net)), dhcp::ACQUIRE_TIMEOUT, None)
        .during(|| format!("leasing an address for endpoint `{}`", ep.name))?;
    tracing::info!(
        endpoint = %ep.name,
        address = %lease.cidr(),
        server = %lease.server,
        lease_s = lease.lease_s,
        "DHCP lease granted"
    );
    ep.addresses = vec![lease.cidr()];
    ep.gateways = lease
        .routers
        .first()
        .map(|r| IpAddr::V4(*r))
        .into_iter()
        .collect();
    ep.lease = Some(lease.clone());
    Ok(lease)
}

/// Give the lease of a removed endpoint back, from wherever its link is now. Best effort:
/// the server takes the address back at expiry anyway; a failure is logged.
pub fn release(ep: &Endpoint, places: &[&Endpoint]) {
    let Some(lease) = &ep.lease else { return };
    let mut last = None;
    for place in places {
        match dhcp::release(&link(place, String::new()), lease) {
            Ok(()) => {
                tracing::info!(endpoint = %ep.name, address = %lease.address, server = %lease.server, "DHCP lease released");
                return;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        let e = anyhow::Error::from(e);
        tracing::warn!(
            endpoint = %ep.name,
            "releasing the DHCP lease of {}: {e:#}; the server takes it back when it expires",
            lease.address
        );
    }
}

/// Give the endpoint's device (in its namespace) the leased address and, unless the
/// namespace already has one, a default route via the lease's router. `ep.gateways` keeps
/// only the route installed.
pub fn configure(ep: &mut Endpoint) -> Result<(), ControlError> {
    let Some(lease) = ep.lease.clone() else {
        return Ok(());
    };
    let address: Cidr = lease.cidr();
    let ns = Netns::open(&ep.netns)?;
    let ifname = ep.ifname.clone();
    let installed = ns.within(|| {
        let nl = Netlink::new()?;
        let index = nl.require_link(&ifname)?.index;
        nl.add_address(index, address.addr, address.prefix)
            .during(|| format!("adding the leased address {address} to `{ifname}`"))?;
        let Some(router) = lease.routers.first() else {
            return Ok(None);
        };
        if nl.routes(false)?.iter().any(|r| r.is_default()) {
            return Ok(None);
        }
        nl.add_route(IpAddr::from([0u8; 4]), 0, Some(IpAddr::V4(*router)), index)
            .during(|| format!("adding the default route via {router}"))?;
        Ok::<_, ControlError>(Some(IpAddr::V4(*router)))
    })?;
    ep.gateways = installed.into_iter().collect();
    Ok(())
}
