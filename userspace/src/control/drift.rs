//! State versus kernel: what xmacvlan recorded that the kernel no longer has (a device
//! deleted or replaced behind its back, a lost address or route). Reported by `inspect` and
//! at dataplane startup; never repaired silently.
use std::net::IpAddr;

use serde::Serialize;

use super::error::ControlError;
use super::model::{Endpoint, Network, Owner};
use super::provision::read_endpoint;
use super::state::State;
use crate::ether::Mac;
use crate::netlink::Netlink;
use crate::netns::Netns;

/// One difference, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// `network NAME` or `endpoint NAME`.
    pub subject: String,
    pub problem: String,
}

/// Differences for a network's host-side objects, read in the calling thread's namespace.
pub fn network(nl: &Netlink, net: &Network) -> Result<Vec<Drift>, ControlError> {
    let subject = format!("network {}", net.name);
    let mut found = Vec::new();
    let mut report = |problem: String| {
        found.push(Drift {
            subject: subject.clone(),
            problem,
        })
    };
    if nl.link_by_name(&net.parent)?.is_none() {
        report(format!(
            "parent `{}` is missing{}: endpoints cannot be created; recreate it or `xmacvlan network rm {}`",
            net.parent,
            if net.created_parent {
                " (xmacvlan had created it)"
            } else {
                ""
            },
            net.name
        ));
    }
    if let Some(shim) = &net.host_shim {
        match nl.link_by_name(&shim.ifname)? {
            None => report(format!(
                "host shim `{}` is missing: the host cannot reach the endpoints; recreate the network",
                shim.ifname
            )),
            Some(link) if link.mac != shim.mac || link.kind.as_deref() != Some("macvlan") => {
                report(format!(
                    "`{}` is not the host shim xmacvlan made (MAC {}, expected {})",
                    shim.ifname,
                    Mac(link.mac),
                    Mac(shim.mac)
                ))
            }
            Some(link) if !link.up => report(format!("host shim `{}` is down", shim.ifname)),
            Some(_) => {}
        }
    }
    Ok(found)
}

/// Differences for one endpoint, read inside its namespace; `owner`: who removes it.
pub fn endpoint(ep: &Endpoint, owner: Owner) -> Result<Vec<Drift>, ControlError> {
    let subject = format!("endpoint {}", ep.name);
    let fix = format!("{} clears the record", owner.removal(&ep.name));
    let problem = |p: String| Drift {
        subject: subject.clone(),
        problem: p,
    };
    if Netns::open(&ep.netns).is_err() {
        return Ok(vec![problem(format!(
            "namespace `{}` is gone (and the device with it); {fix}",
            ep.netns
        ))]);
    }
    let Some(dev) = read_endpoint(ep)? else {
        return Ok(vec![problem(format!(
            "device `{}` is missing from namespace `{}` (deleted behind xmacvlan's back); {fix}",
            ep.ifname, ep.netns
        ))]);
    };
    let mut found = Vec::new();
    if dev.link.kind.as_deref() != Some("macvlan") || dev.link.mac != ep.mac {
        found.push(problem(format!(
            "`{}` in namespace `{}` is not the endpoint's macvlan (kind {}, MAC {}; expected macvlan {})",
            ep.ifname,
            ep.netns,
            dev.link.kind.as_deref().unwrap_or("none"),
            Mac(dev.link.mac),
            Mac(ep.mac)
        )));
        return Ok(found);
    }
    if !dev.link.up {
        found.push(problem(format!("`{}` is down", ep.ifname)));
    }
    for addr in &ep.addresses {
        if !dev.addresses.contains(&(addr.addr, addr.prefix)) {
            found.push(problem(format!(
                "address {addr} is missing from `{}`",
                ep.ifname
            )));
        }
    }
    for gw in &ep.gateways {
        if !dev
            .routes
            .iter()
            .any(|r| r.is_default() && r.gateway == Some(*gw))
        {
            let family = if matches!(gw, IpAddr::V4(_)) {
                ""
            } else {
                "-6 "
            };
            found.push(problem(format!(
                "default route via {gw} is missing (`ip {family}route` in namespace `{}`)",
                ep.netns
            )));
        }
    }
    Ok(found)
}

/// Every difference between the state and the kernel (networks read in the calling thread's
/// namespace, which must be the one they were created in).
pub fn check(state: &State) -> Result<Vec<Drift>, ControlError> {
    let nl = Netlink::new()?;
    let mut all = Vec::new();
    for net in &state.networks {
        all.extend(network(&nl, net)?);
    }
    for ep in &state.endpoints {
        let owner = state
            .network(&ep.network)
            .map_or(Owner::Cli, Network::owner);
        all.extend(endpoint(ep, owner)?);
    }
    Ok(all)
}
