//! The control path as Docker's network plugin drives it (see `plugin::docker`). Same state,
//! same validations and messages as `xmacvlan network|endpoint`; what differs is Docker's
//! life cycle of an endpoint's link:
//!
//! - CreateEndpoint: the macvlan is made in the host namespace under [`host_ifname`] with the
//!   endpoint's MAC, down and unaddressed, and recorded with `netns` = [`HOST_NETNS`];
//! - Join: Docker moves it into the sandbox (`SandboxKey`), renames it `ethN`, sets its
//!   addresses and the default route: the record is updated to where it will be;
//! - Leave: Docker moves it back to the host under its host name: so is the record;
//! - DeleteEndpoint: the link is deleted wherever it is, and the record goes.
//!
//! Networks and endpoints are named `docker-` + the first 12 digits of Docker's id (the id
//! `docker network ls` shows); the network's `id` is Docker's NetworkID.
use std::net::IpAddr;
use std::path::Path;

use super::endpoint::EndpointCreate;
use super::error::{ControlError, During};
use super::model::{Cidr, Endpoint, Network};
use super::network::{NetworkCreate, SHIM_AUX};
use super::provision::{self, Removal};
use super::state::{State, Store};
use crate::abi::Mac;
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::rollback::Rollback;

/// The namespace an endpoint's link is in while no container holds it: the host's, where
/// the daemon (and dockerd, and the CLI) run.
pub const HOST_NETNS: &str = "/proc/self/ns/net";
/// What Docker prefixes the interface's name with inside the container (`eth0`, `eth1`…).
pub const DST_PREFIX: &str = "eth";

/// Docker's ids are 64 hex digits; anything else is refused before it names a file or link.
pub fn check_id(id: &str, what: &str) -> Result<(), ControlError> {
    if id.len() < 12 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ControlError::Invalid(format!(
            "{what} `{id}` is not a Docker id (12-64 hex digits)"
        )));
    }
    Ok(())
}

/// The xmacvlan name of a network or endpoint Docker made.
pub fn name_of(id: &str) -> String {
    format!("docker-{}", &id[..id.len().min(12)])
}

/// The endpoint's link name in the host namespace (15 bytes, Linux's limit).
pub fn host_ifname(endpoint_id: &str) -> String {
    format!("xmv{}", &endpoint_id[..endpoint_id.len().min(12)])
}

/// CreateNetwork: `xmacvlan network create`'s validation and provisioning with Docker's id.
/// A network already recorded under that id is returned as it is (dockerd replays its
/// networks after a restart).
pub fn create_network(
    data_root: &Path,
    req: &NetworkCreate,
    id: &str,
) -> Result<Network, ControlError> {
    check_id(id, "NetworkID")?;
    if let Some(net) = State::load(data_root)?
        .networks
        .into_iter()
        .find(|n| n.id == id)
    {
        return Ok(net);
    }
    let plan = super::network::plan(req)?;
    if plan.host_shim
        && let Some(s) = plan.subnets.iter().find(|s| s.shim_address().is_none())
    {
        return Err(ControlError::Invalid(format!(
            "-o host_shim=true through Docker needs the shim's address in each subnet: add \
             --aux-address {SHIM_AUX}=IP for {} (an address of it that no container gets: \
             Docker's IPAM keeps aux addresses free, it does not know xmacvlan's own choice; \
             Docker keeps one address per name, so name an IPv6 one {SHIM_AUX}6)",
            s.subnet
        )));
    }
    super::network::create_with_id(data_root, req, id.to_string())
}

/// DeleteNetwork: as `xmacvlan network rm`; an unknown id is already gone. Docker deletes a
/// network only once it has no endpoints on it, so endpoints still recorded are orphans (a
/// DeleteEndpoint that found no daemon): they go first, links included.
pub fn delete_network(data_root: &Path, id: &str) -> Result<Option<Network>, ControlError> {
    check_id(id, "NetworkID")?;
    let Some(net) = network_by_id(&State::load(data_root)?, id).cloned() else {
        return Ok(None);
    };
    for name in orphans(data_root, id)? {
        delete_endpoint_named(data_root, &name)?;
    }
    super::network::remove(data_root, &net.name).map(Some)
}

/// The endpoints still recorded on the Docker network `id` (see [`delete_network`]).
pub fn orphans(data_root: &Path, id: &str) -> Result<Vec<String>, ControlError> {
    let state = State::load(data_root)?;
    let Some(net) = network_by_id(&state, id) else {
        return Ok(Vec::new());
    };
    Ok(state
        .endpoints_of(&net.name)
        .map(|e| e.name.clone())
        .collect())
}

fn network_by_id<'a>(state: &'a State, id: &str) -> Option<&'a Network> {
    state.networks.iter().find(|n| n.id == id)
}

fn no_network(id: &str) -> ControlError {
    ControlError::NotFound(format!(
        "network {id} is not an xmacvlan network (not in the state: was it removed with \
         `xmacvlan network rm`?); remove it with `docker network rm` and create it again"
    ))
}

/// What Docker's IPAM gave the endpoint.
#[derive(Debug, Clone, Default)]
pub struct DockerEndpoint {
    pub network_id: String,
    pub endpoint_id: String,
    pub address: Option<Cidr>,
    pub address6: Option<Cidr>,
    pub mac: Option<Mac>,
}

/// CreateEndpoint: checked by `endpoint create`'s planner (addresses inside the subnets and
/// free, MAC unicast and free), then the macvlan is made in the host namespace and recorded.
/// Docker's addresses are recorded as given, never allocated again. Idempotent per id.
pub fn create_endpoint(
    data_root: &Path,
    req: &DockerEndpoint,
) -> Result<(Endpoint, Network), ControlError> {
    check_id(&req.network_id, "NetworkID")?;
    check_id(&req.endpoint_id, "EndpointID")?;
    let (store, mut state) = Store::lock(data_root)?;
    let net = network_by_id(&state, &req.network_id)
        .cloned()
        .ok_or_else(|| no_network(&req.network_id))?;
    let name = name_of(&req.endpoint_id);
    if let Some(ep) = state.endpoint(&name) {
        return Ok((ep.clone(), net));
    }
    let v4 = |c: &Option<Cidr>| match c.map(|c| c.addr) {
        Some(IpAddr::V4(ip)) => Ok(Some(ip)),
        Some(IpAddr::V6(ip)) => Err(ControlError::Invalid(format!(
            "Interface.Address {ip} is not IPv4"
        ))),
        None => Ok(None),
    };
    let v6 = match req.address6.map(|c| c.addr) {
        Some(IpAddr::V6(ip)) => Some(ip),
        Some(IpAddr::V4(ip)) => {
            return Err(ControlError::Invalid(format!(
                "Interface.AddressIPv6 {ip} is not IPv6"
            )));
        }
        None => None,
    };
    let create = EndpointCreate {
        name,
        network: net.name.clone(),
        netns: HOST_NETNS.into(),
        ifname: host_ifname(&req.endpoint_id),
        ip: v4(&req.address)?,
        ip6: v6,
        mac: req.mac.map(|m| crate::ether::Mac(m).to_string()),
    };
    let mut ep = super::endpoint::plan(&create, &state)?;
    let nl = Netlink::new()?;
    let parent = nl.link_by_name(&net.parent)?.ok_or_else(|| {
        ControlError::NotFound(format!(
            "parent `{}` of network `{}` is gone: recreate it, or remove the network",
            net.parent, net.name
        ))
    })?;
    if nl.link_by_name(&ep.ifname)?.is_some() {
        return Err(ControlError::Conflict(format!(
            "interface `{}` already exists in the host namespace: remove it (a leftover?)",
            ep.ifname
        )));
    }
    let index = nl.add_macvlan(&ep.ifname, parent.index, net.mode.netlink(), Some(ep.mac))?;
    let nl = &nl;
    let mut unit = ();
    let mut undo = Rollback::new(&mut unit);
    undo.on_rollback(super::undo_step(
        format!("the link `{}`", ep.ifname),
        move || nl.del_link(index),
    ));
    if let Some(mtu) = net.mtu {
        nl.set_mtu(index, mtu)
            .during(|| format!("setting `{}`'s MTU to {mtu}", ep.ifname))?;
    }
    if net.dhcp {
        // On its own link with its own MAC, before Docker moves it: the address goes back to
        // Docker in CreateEndpoint's answer (its IPAM, `null`, gave none).
        super::lease::acquire_undoably(&mut ep, &net, &mut undo)?;
    }
    state.endpoints.push(ep.clone());
    store.save(&state).map_err(|e| {
        ControlError::from(e).rolled_back(format!("recording endpoint `{}`", ep.name))
    })?;
    undo.commit();
    Ok((ep, net))
}

fn endpoint_mut<'a>(
    state: &'a mut State,
    endpoint_id: &str,
) -> Result<&'a mut Endpoint, ControlError> {
    let name = name_of(endpoint_id);
    state
        .endpoints
        .iter_mut()
        .find(|e| e.name == name)
        .ok_or_else(|| {
            ControlError::NotFound(format!("endpoint {endpoint_id} is not in xmacvlan's state"))
        })
}

/// Join: the sandbox the link goes to and the name Docker will give it there. Docker makes
/// the sandbox's namespace after Join, so the name is a prediction (`eth0`, or the next `ethN`
/// after the ones there) that [`settle`] corrects once the link has arrived.
pub fn join(
    data_root: &Path,
    endpoint_id: &str,
    sandbox: &str,
) -> Result<(Endpoint, Network), ControlError> {
    check_id(endpoint_id, "EndpointID")?;
    if !sandbox.starts_with('/') || sandbox.len() > 256 || sandbox.split('/').any(|c| c == "..") {
        return Err(ControlError::Invalid(format!(
            "SandboxKey `{sandbox}` is not an absolute path to a network namespace"
        )));
    }
    let (store, mut state) = Store::lock(data_root)?;
    // Not there yet (or a file with no namespace mounted on it yet): count what is recorded.
    let ifname = Netns::open(sandbox)
        .map_err(ControlError::from)
        .and_then(|ns| ns.within(|| next_ifname(&Netlink::new()?)))
        .unwrap_or_else(|_| {
            let here = state
                .endpoints
                .iter()
                .filter(|e| e.netns == sandbox)
                .count();
            format!("{DST_PREFIX}{here}")
        });
    let ep = endpoint_mut(&mut state, endpoint_id)?;
    ep.netns = sandbox.to_string();
    ep.ifname = ifname;
    let ep = ep.clone();
    let net = state.network(&ep.network).cloned().ok_or_else(|| {
        ControlError::NotFound(format!("network `{}` of the endpoint is gone", ep.network))
    })?;
    store.save(&state)?;
    Ok((ep, net))
}

/// One past the highest `ethN` in the calling thread's namespace (`eth0` when none).
fn next_ifname(nl: &Netlink) -> Result<String, ControlError> {
    let next = nl
        .links()?
        .iter()
        .filter_map(|l| l.name.strip_prefix(DST_PREFIX)?.parse::<u32>().ok())
        .max()
        .map_or(0, |n| n + 1);
    Ok(format!("{DST_PREFIX}{next}"))
}

/// Leave: Docker moves the link back to the host under its host name.
pub fn leave(data_root: &Path, endpoint_id: &str) -> Result<Endpoint, ControlError> {
    check_id(endpoint_id, "EndpointID")?;
    let (store, mut state) = Store::lock(data_root)?;
    let ep = endpoint_mut(&mut state, endpoint_id)?;
    ep.netns = HOST_NETNS.into();
    ep.ifname = host_ifname(endpoint_id);
    let ep = ep.clone();
    store.save(&state)?;
    Ok(ep)
}

/// After Join: the name the link really got in the sandbox (found by its MAC), recorded if it
/// differs from the one predicted. Ok(None) while Docker has not moved it yet.
pub fn settle(data_root: &Path, endpoint_id: &str) -> Result<Option<String>, ControlError> {
    let name = name_of(endpoint_id);
    let Some(ep) = State::load(data_root)?.endpoint(&name).cloned() else {
        return Ok(None);
    };
    let Ok(ns) = Netns::open(&ep.netns) else {
        return Ok(None);
    };
    // A sandbox file with no namespace mounted on it yet fails setns: not there yet.
    let Ok(found) = ns.within(|| {
        Ok::<_, ControlError>(
            Netlink::new()?
                .links()?
                .into_iter()
                .find(|l| l.mac == ep.mac && l.kind.as_deref() == Some("macvlan"))
                .map(|l| l.name),
        )
    }) else {
        return Ok(None);
    };
    // Docker moves the link in under its host name, then renames it.
    let found = found.filter(|name| name.starts_with(DST_PREFIX));
    let Some(found) = found else { return Ok(None) };
    if found != ep.ifname {
        let (store, mut state) = Store::lock(data_root)?;
        let rec = endpoint_mut(&mut state, endpoint_id)?;
        if rec.netns == ep.netns {
            rec.ifname = found.clone();
            store.save(&state)?;
        }
    }
    Ok(Some(found))
}

/// DeleteEndpoint: the link is deleted where the record says, else under its host name in
/// the host namespace (Docker moved it back); then the record goes. Unknown ids are gone.
pub fn delete_endpoint(
    data_root: &Path,
    endpoint_id: &str,
) -> Result<Option<Endpoint>, ControlError> {
    check_id(endpoint_id, "EndpointID")?;
    delete_endpoint_named(data_root, &name_of(endpoint_id))
}

fn delete_endpoint_named(data_root: &Path, name: &str) -> Result<Option<Endpoint>, ControlError> {
    let (store, mut state) = Store::lock(data_root)?;
    let Some(ep) = state.endpoint(name).cloned() else {
        return Ok(None);
    };
    // `docker-` + 12 digits → `xmv` + the same 12 digits.
    let at_host = Endpoint {
        netns: HOST_NETNS.into(),
        ifname: host_ifname(name.strip_prefix("docker-").unwrap_or(name)),
        ..ep.clone()
    };
    super::lease::release(&ep, &[&ep, &at_host]);
    for place in [&ep, &at_host] {
        match provision::remove_endpoint(place) {
            Ok(Removal::Deleted) => break,
            Ok(Removal::AlreadyGone) => {}
            Ok(Removal::NotOurs(why)) => tracing::warn!(endpoint = %ep.name, "{why}"),
            // A sandbox Docker tore down can leave its file behind with no namespace on it
            // (setns: EINVAL); the link went with the namespace.
            Err(e) if place.netns != HOST_NETNS => {
                let e = anyhow::Error::from(e);
                tracing::debug!(endpoint = %ep.name, "sandbox gone: {e:#}")
            }
            Err(e) => return Err(e),
        }
    }
    state.endpoints.retain(|e| e.name != name);
    store.save(&state)?;
    Ok(Some(ep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = "0123456789abcdef".repeat(4);
        assert!(check_id(&id, "NetworkID").is_ok());
        assert_eq!(name_of(&id), "docker-0123456789ab");
        assert_eq!(host_ifname(&id), "xmv0123456789ab");
        assert!(host_ifname(&id).len() <= 15);
        for bad in [
            "",
            "abc",
            "../../etc/passwd",
            &"g".repeat(64),
            &"a".repeat(65),
        ] {
            assert!(
                check_id(bad, "EndpointID")
                    .unwrap_err()
                    .to_string()
                    .contains("not a Docker id"),
                "{bad}"
            );
        }
    }
}
