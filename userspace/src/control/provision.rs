//! The kernel side: parent (and VLAN sub-interface), host shim and endpoint devices, made and
//! removed over rtnetlink. Every `create_*` either completes or removes what it made before
//! returning its error. Everything here works in the calling thread's network namespace
//! ("the host"), except endpoint devices, which live in their own namespace.
use std::net::IpAddr;

use super::error::{ControlError, During};
use super::model::{Endpoint, HostShim, Mode, Network, ParentSpec};
use crate::ether::Mac;
use crate::netlink::{Link, Netlink, Route};
use crate::netns::Netns;

/// The parent as found or made: where macvlans attach, and what it carries.
#[derive(Debug)]
pub struct Parent {
    pub index: u32,
    /// The trunk link (the parent itself when untagged).
    pub link: String,
    pub vlan: u16,
    /// True when this call created the VLAN sub-interface.
    pub created: bool,
    /// The largest MTU a macvlan on it can have.
    pub mtu: u32,
}

/// Find the parent; for a missing `IF.VID`, create the VLAN sub-interface on `IF` (up).
/// An existing link is used as it is, as Docker does, and its VLAN id read from the kernel.
pub fn ensure_parent(nl: &Netlink, spec: &ParentSpec) -> Result<Parent, ControlError> {
    if let Some(link) = nl.link_by_name(&spec.name)? {
        return existing_parent(nl, link);
    }
    let Some((trunk, vid)) = &spec.vlan else {
        return Err(ControlError::NotFound(format!(
            "parent interface `{}` does not exist: check `ip link show`, or give -o parent=IF.VID \
             to have a VLAN sub-interface created on IF",
            spec.name
        )));
    };
    let trunk_link = nl.link_by_name(trunk)?.ok_or_else(|| {
        ControlError::NotFound(format!(
            "parent interface `{trunk}` (the trunk of -o parent={}) does not exist: check `ip link show`",
            spec.name
        ))
    })?;
    let index = nl.add_vlan(&spec.name, trunk_link.index, *vid)?;
    if let Err(e) = nl.set_up(index) {
        nl.del_link(index).ok();
        return Err(e.into());
    }
    Ok(Parent {
        index,
        link: trunk.clone(),
        vlan: *vid,
        created: true,
        // A new VLAN device takes its trunk's MTU.
        mtu: trunk_link.mtu,
    })
}

fn existing_parent(nl: &Netlink, link: Link) -> Result<Parent, ControlError> {
    if link.loopback {
        return Err(ControlError::Invalid(format!(
            "parent interface `{}` is the loopback device: macvlans need an Ethernet parent \
             (a NIC, bond, veth or VLAN sub-interface): give another -o parent",
            link.name
        )));
    }
    if link.kind.as_deref() == Some("vlan") {
        let trunk = link
            .parent_index
            .and_then(|i| nl.link_by_index(i).ok().flatten())
            .map(|l| l.name)
            .unwrap_or_else(|| link.name.clone());
        return Ok(Parent {
            index: link.index,
            link: trunk,
            vlan: link.vlan_id.unwrap_or(0),
            created: false,
            mtu: link.mtu,
        });
    }
    Ok(Parent {
        index: link.index,
        link: link.name,
        vlan: 0,
        created: false,
        mtu: link.mtu,
    })
}

/// Delete the VLAN sub-interface if xmacvlan made it and it still is a VLAN device.
pub fn remove_parent(nl: &Netlink, net: &Network) -> Result<(), ControlError> {
    if !net.created_parent {
        return Ok(());
    }
    match nl.link_by_name(&net.parent)? {
        Some(link) if link.kind.as_deref() == Some("vlan") => Ok(nl.del_link(link.index)?),
        _ => Ok(()),
    }
}

/// The host shim: a macvlan beside the endpoints', with the host's addresses and routes to
/// the ranges the endpoints live in, at the network's MTU.
pub fn create_shim(
    nl: &Netlink,
    parent: u32,
    mode: Mode,
    mtu: Option<u32>,
    shim: &HostShim,
) -> Result<(), ControlError> {
    let index = nl
        .add_macvlan(&shim.ifname, parent, mode.netlink(), Some(shim.mac))
        .during(|| "creating the host shim".into())?;
    let configure = || -> Result<(), ControlError> {
        if let Some(mtu) = mtu {
            nl.set_mtu(index, mtu)
                .during(|| format!("setting the host shim's MTU to {mtu}"))?;
        }
        nl.set_up(index)?;
        for addr in &shim.addresses {
            nl.add_address(index, addr.addr, addr.prefix)?;
        }
        for route in &shim.routes {
            nl.add_route(route.network().addr, route.prefix, None, index)?;
        }
        Ok(())
    };
    configure().inspect_err(|_| {
        nl.del_link(index).ok();
    })
}

/// Delete the shim if it is still the macvlan xmacvlan made (same MAC).
pub fn remove_shim(nl: &Netlink, shim: &HostShim) -> Result<(), ControlError> {
    match nl.link_by_name(&shim.ifname)? {
        Some(link) if link.kind.as_deref() == Some("macvlan") && link.mac == shim.mac => {
            Ok(nl.del_link(link.index)?)
        }
        _ => Ok(()),
    }
}

/// The endpoint's macvlan: created straight into its namespace under its final name, then
/// up, addresses, default routes. On error the device is deleted again.
///
/// A namespace that already has a default route of a family (another network's endpoint
/// got there first) keeps it, as in Docker, where one network provides the default gateway:
/// that gateway is dropped from `ep.gateways`, so the record says which routes are ours.
pub fn create_endpoint(
    nl: &Netlink,
    parent: u32,
    mode: Mode,
    ep: &mut Endpoint,
) -> Result<(), ControlError> {
    let ns = Netns::open(&ep.netns)?;
    let taken =
        ns.within(|| Ok::<_, ControlError>(Netlink::new()?.link_by_name(&ep.ifname)?.is_some()))?;
    if taken {
        return Err(ControlError::Conflict(format!(
            "namespace `{}` already has an interface named `{}`: choose another --ifname",
            ep.netns, ep.ifname
        )));
    }
    nl.add_macvlan_in(
        &ep.ifname,
        parent,
        mode.netlink(),
        Some(ep.mac),
        &ns.file()?,
    )?;
    let (ifname, netns) = (ep.ifname.clone(), ep.netns.clone());
    ns.within(|| {
        let nl = Netlink::new()?;
        let index = nl.require_link(&ep.ifname)?.index;
        let mut configure = || -> Result<(), ControlError> {
            if let Some(mtu) = ep.mtu {
                nl.set_mtu(index, mtu)
                    .during(|| format!("setting the MTU to {mtu}"))?;
            }
            nl.set_up(index)?;
            for addr in &ep.addresses {
                nl.add_address(index, addr.addr, addr.prefix)?;
            }
            let mut installed = Vec::new();
            for gw in &ep.gateways {
                if nl.routes(gw.is_ipv6())?.iter().any(|r| r.is_default()) {
                    continue;
                }
                let any = if gw.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                };
                nl.add_route(any, 0, Some(*gw), index)?;
                installed.push(*gw);
            }
            ep.gateways = installed;
            Ok(())
        };
        configure()
    })
    .during(|| format!("configuring `{ifname}` in namespace `{netns}`"))
    .inspect_err(|_| {
        // Whatever step failed, the device goes again (only if it is still ours).
        remove_endpoint(ep).ok();
    })
}

/// What `endpoint rm` found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Deleted,
    /// Namespace or device already gone: nothing to delete.
    AlreadyGone,
    /// A device of that name exists but is not the one xmacvlan made: left alone.
    NotOurs(String),
}

pub fn remove_endpoint(ep: &Endpoint) -> Result<Removal, ControlError> {
    let Ok(ns) = Netns::open(&ep.netns) else {
        return Ok(Removal::AlreadyGone);
    };
    ns.within(|| {
        let nl = Netlink::new()?;
        match nl.link_by_name(&ep.ifname)? {
            None => Ok(Removal::AlreadyGone),
            Some(link) if link.kind.as_deref() == Some("macvlan") && link.mac == ep.mac => {
                nl.del_link(link.index)?;
                Ok(Removal::Deleted)
            }
            Some(link) => Ok(Removal::NotOurs(format!(
                "`{}` in namespace `{}` is a {} with MAC {}, not the endpoint's macvlan: left in place",
                ep.ifname,
                ep.netns,
                link.kind.as_deref().unwrap_or("device"),
                Mac(link.mac)
            ))),
        }
    })
}

/// An endpoint's device as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub link: Link,
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<Route>,
}

/// Read the endpoint's device back; `Ok(None)` when it (or its namespace) is gone.
pub fn read_endpoint(ep: &Endpoint) -> Result<Option<Device>, ControlError> {
    let Ok(ns) = Netns::open(&ep.netns) else {
        return Ok(None);
    };
    ns.within(|| {
        let nl = Netlink::new()?;
        let Some(link) = nl.link_by_name(&ep.ifname)? else {
            return Ok(None);
        };
        Ok(Some(Device {
            addresses: nl.addresses(link.index)?,
            routes: nl.routes_of(link.index)?,
            link,
        }))
    })
}
