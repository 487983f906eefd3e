//! Endpoints whose addresses come from outside xmacvlan's IPAM (a CNI IPAM plugin): the
//! network is recorded without subnets; the endpoint's device is made first ([`attach`]: an
//! IPAM plugin such as dhcp needs it to exist), then given the addresses the plugin chose
//! ([`configure`]). The same checks as `network create` / `endpoint create` apply (names,
//! parent, mode, MAC, one network per parent); only the allocation step is left out.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use super::endpoint::{self, EndpointCreate};
use super::error::{ControlError, During};
use super::model::{Cidr, Endpoint, Mode, Network, ParentSpec, check_name};
use super::network::{NetworkPlan, check_against, check_mtu_fits};
use super::state::Store;
use super::{provision, random_bytes, unix_now};
use crate::ether::Mac;
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::rollback::Rollback;

/// The option a network made by [`attach`] carries: who made it (and so removes it with its
/// last endpoint). Never a `network create -o` key, so users cannot forge it.
pub const MADE_BY: &str = "created-by";

/// A network as an external front end describes it.
#[derive(Debug, Clone)]
pub struct ExternalNetwork {
    pub name: String,
    /// `IF` or `IF.VID`.
    pub parent: String,
    pub mode: Mode,
    /// The front end's name, recorded as [`MADE_BY`].
    pub made_by: String,
}

/// One attachment's device.
#[derive(Debug, Clone)]
pub struct ExternalEndpoint {
    pub name: String,
    pub netns: String,
    pub ifname: String,
    /// Default: a random local `02:42:…` MAC (the addresses are not known yet).
    pub mac: Option<String>,
    pub mtu: Option<u32>,
}

/// What the IPAM plugin decided for an attachment.
#[derive(Debug, Clone, Default)]
pub struct ExternalAddresses {
    pub addresses: Vec<Cidr>,
    /// Default-route gateways, one per family at most.
    pub gateways: Vec<IpAddr>,
    /// Other routes: destination and gateway (none: on-link).
    pub routes: Vec<(Cidr, Option<IpAddr>)>,
}

/// Check a network description (name, parent spelling) without touching anything.
pub fn check_network(net: &ExternalNetwork) -> Result<ParentSpec, ControlError> {
    check_name(&net.name, "network")?;
    ParentSpec::parse(&net.parent)
}

/// Record the network if it is new (making a missing `IF.VID`), then the endpoint: its
/// device in its namespace, up, with its MTU and no addresses yet. Nothing is left behind on
/// error.
pub fn attach(
    data_root: &Path,
    net: &ExternalNetwork,
    ep: &ExternalEndpoint,
) -> Result<(Network, Endpoint), ControlError> {
    let parent_spec = check_network(net)?;
    let (store, mut state) = Store::lock(data_root)?;
    let nl = Netlink::new()?;
    let nl = &nl;
    let mut unit = ();
    let mut undo = Rollback::new(&mut unit);
    let result = (|| -> Result<(Network, Endpoint), ControlError> {
        let network = match state.network(&net.name).cloned() {
            Some(existing) => {
                check_same(&existing, net)?;
                existing
            }
            None => {
                let network = new_network(nl, &state, net, &parent_spec)?;
                if network.created_parent {
                    let made = network.clone();
                    undo.on_rollback(super::undo_step(
                        format!("the VLAN sub-interface `{}`", made.parent),
                        move || provision::remove_parent(nl, &made),
                    ));
                }
                state.networks.push(network.clone());
                network
            }
        };
        // The network has no subnets, so planning allocates nothing: it checks the names,
        // the namespace's interface, the MAC and its uniqueness on the network.
        let mut planned = endpoint::plan(
            &EndpointCreate {
                name: ep.name.clone(),
                network: network.name.clone(),
                netns: ep.netns.clone(),
                ifname: ep.ifname.clone(),
                ip: None,
                ip6: None,
                mac: Some(
                    ep.mac
                        .clone()
                        .unwrap_or_else(|| Mac(super::random_mac()).to_string()),
                ),
            },
            &state,
        )?;
        planned.mtu = ep.mtu;
        Netns::open(&planned.netns)?;
        let Some(parent) = nl.link_by_name(&network.parent)? else {
            return Err(ControlError::NotFound(format!(
                "parent `{}` of network `{}` does not exist: check `ip link show` on the host",
                network.parent, network.name
            )));
        };
        if let Some(mtu) = ep.mtu {
            check_mtu_fits(mtu, &network.parent, parent.mtu)?;
        }
        provision::create_endpoint(nl, parent.index, network.mode, &mut planned)?;
        let made = planned.clone();
        undo.on_rollback(super::undo_step(
            format!("the device of `{}`", made.name),
            move || provision::remove_endpoint(&made).map(drop),
        ));
        state.endpoints.push(planned.clone());
        store.save(&state)?;
        Ok((network, planned))
    })();
    match result {
        Ok(made) => {
            undo.commit();
            Ok(made)
        }
        Err(e) => {
            drop(undo);
            Err(e.rolled_back(format!(
                "attaching `{}` to network `{}`",
                ep.ifname, net.name
            )))
        }
    }
}

/// A front end's network, recorded without subnets (its IPAM owns the addresses), with a
/// missing `IF.VID` made.
fn new_network(
    nl: &Netlink,
    state: &super::State,
    net: &ExternalNetwork,
    parent_spec: &ParentSpec,
) -> Result<Network, ControlError> {
    let plan = NetworkPlan {
        name: net.name.clone(),
        parent: parent_spec.clone(),
        mode: net.mode,
        subnets: Vec::new(),
        host_shim: false,
        dhcp: false,
        mtu: None,
        options: BTreeMap::new(),
    };
    check_against(&plan, state)?;
    let parent = provision::ensure_parent(nl, parent_spec)?;
    Ok(Network {
        id: random_bytes::<32>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        name: net.name.clone(),
        driver: "macvlan".into(),
        parent: parent_spec.name.clone(),
        link: parent.link,
        vlan: parent.vlan,
        created_parent: parent.created,
        mode: net.mode,
        subnets: Vec::new(),
        host_shim: None,
        dhcp: false,
        mtu: None,
        options: BTreeMap::from([
            ("parent".into(), parent_spec.name.clone()),
            ("macvlan_mode".into(), net.mode.as_str().into()),
            (MADE_BY.into(), net.made_by.clone()),
        ]),
        created: unix_now(),
    })
}

/// A network of that name exists: it must be the front end's and describe the same thing.
fn check_same(existing: &Network, net: &ExternalNetwork) -> Result<(), ControlError> {
    if existing.options.get(MADE_BY) != Some(&net.made_by) {
        return Err(ControlError::Conflict(format!(
            "network `{}` already exists in xmacvlan's state and was not made by {}: give the \
             CNI network another name, or remove it with `xmacvlan network rm {}`",
            existing.name, net.made_by, existing.name
        )));
    }
    if existing.parent != net.parent || existing.mode != net.mode {
        return Err(ControlError::Conflict(format!(
            "network `{}` already exists with master `{}` and mode {}, not `{}` and {}: every \
             attachment of one network must use the same config",
            existing.name,
            existing.parent,
            existing.mode.as_str(),
            net.parent,
            net.mode.as_str()
        )));
    }
    Ok(())
}

/// Give a device made by [`attach`] its addresses and routes, and record them. A default
/// route of a family the namespace already has (another network's) is left to it, as
/// `endpoint create` does. On error the caller removes the endpoint (device and record).
pub fn configure(
    data_root: &Path,
    name: &str,
    given: &ExternalAddresses,
) -> Result<Endpoint, ControlError> {
    let (store, mut state) = Store::lock(data_root)?;
    let ep = state
        .endpoints
        .iter_mut()
        .find(|e| e.name == name)
        .ok_or_else(|| {
            ControlError::NotFound(format!(
                "endpoint `{name}` is not recorded (removed meanwhile?)"
            ))
        })?;
    let ns = Netns::open(&ep.netns)?;
    let ifname = ep.ifname.clone();
    let installed = ns.within(|| {
        let nl = Netlink::new()?;
        let index = nl.require_link(&ifname)?.index;
        for a in &given.addresses {
            nl.add_address(index, a.addr, a.prefix)
                .during(|| format!("adding the address {a}"))?;
        }
        let mut installed = Vec::new();
        for gw in &given.gateways {
            if nl.routes(gw.is_ipv6())?.iter().any(|r| r.is_default()) {
                continue;
            }
            let any = if gw.is_ipv4() {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u8; 16])
            };
            nl.add_route(any, 0, Some(*gw), index)
                .during(|| format!("adding the default route via {gw}"))?;
            installed.push(*gw);
        }
        for (dst, gw) in &given.routes {
            nl.add_route(dst.network().addr, dst.prefix, *gw, index)
                .during(|| format!("adding the route {dst} via {gw:?}"))?;
        }
        Ok::<_, ControlError>(installed)
    })?;
    ep.addresses = given.addresses.clone();
    ep.gateways = installed;
    let ep = ep.clone();
    store.save(&state)?;
    Ok(ep)
}

/// Remove the network if the front end made it and its last endpoint is gone. A network
/// that still has endpoints (another attachment raced in) stays.
pub fn remove_network_if_unused(
    data_root: &Path,
    name: &str,
    made_by: &str,
) -> Result<bool, ControlError> {
    let state = super::State::load(data_root)?;
    let Some(net) = state.network(name) else {
        return Ok(false);
    };
    if net.options.get(MADE_BY).map(String::as_str) != Some(made_by)
        || state.endpoints_of(&net.name).next().is_some()
    {
        return Ok(false);
    }
    match super::network::remove(data_root, name) {
        Ok(_) => Ok(true),
        Err(ControlError::NetworkInUse { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
