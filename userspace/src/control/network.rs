//! `network create` and `network rm`: validate everything first (flags, then the state, then
//! the kernel), provision, and only then record the network. A failure at any step leaves
//! neither kernel objects nor state behind.
use std::net::IpAddr;
use std::path::Path;

use super::error::{ControlError, During};
use super::model::{HostShim, Network, Subnet, derived_mac};
pub use super::network_plan::{
    MIN_MTU, NetworkCreate, NetworkPlan, OPTIONS, SHIM_AUX, assign_shim_addresses, check_against,
    check_mtu_fits, plan,
};
use super::state::Store;
use super::{provision, random_bytes, unix_now};
use crate::netlink::Netlink;
use crate::rollback::Rollback;

/// Create a network: validate, provision parent and shim, record it.
pub fn create(data_root: &Path, req: &NetworkCreate) -> Result<Network, ControlError> {
    let id: String = random_bytes::<32>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    create_with_id(data_root, req, id)
}

/// [`create`] with the id given (Docker's NetworkID for networks made through the plugin).
pub fn create_with_id(
    data_root: &Path,
    req: &NetworkCreate,
    id: String,
) -> Result<Network, ControlError> {
    let mut plan = plan(req)?;
    let (store, mut state) = Store::lock(data_root)?;
    check_against(&plan, &state)?;
    let shim = if plan.host_shim {
        let addresses = assign_shim_addresses(&mut plan.subnets)?;
        let mac = match addresses.iter().find_map(|a| match a.addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }) {
            Some(v4) => derived_mac(v4),
            None => super::random_mac(),
        };
        Some(HostShim {
            ifname: format!("xmvsh{}", &id[..8]),
            mac,
            addresses,
            routes: plan.subnets.iter().map(Subnet::pool).collect(),
        })
    } else {
        None
    };

    let nl = Netlink::new()?;
    if let Some(shim) = &shim
        && nl.link_by_name(&shim.ifname)?.is_some()
    {
        return Err(ControlError::Conflict(format!(
            "interface `{}` (the host shim's name) already exists: remove it",
            shim.ifname
        )));
    }
    let name = plan.name.clone();
    let nl = &nl;
    let mut unit = ();
    let mut undo = Rollback::new(&mut unit);
    let made = (|| -> Result<Network, ControlError> {
        let parent = provision::ensure_parent(nl, &plan.parent)?;
        if parent.created {
            let index = parent.index;
            undo.on_rollback(super::undo_step(
                format!("the VLAN sub-interface `{}`", plan.parent.name),
                move || nl.del_link(index),
            ));
        }
        if let Some(mtu) = plan.mtu {
            check_mtu_fits(mtu, &plan.parent.name, parent.mtu)?;
        }
        let network = Network {
            id,
            name: plan.name.clone(),
            driver: "macvlan".into(),
            parent: plan.parent.name.clone(),
            link: parent.link.clone(),
            vlan: parent.vlan,
            created_parent: parent.created,
            mode: plan.mode,
            subnets: plan.subnets,
            host_shim: shim,
            dhcp: plan.dhcp,
            mtu: plan.mtu,
            options: plan.options,
            created: unix_now(),
        };
        if let Some(shim) = &network.host_shim {
            provision::create_shim(nl, parent.index, network.mode, network.mtu, shim)?;
            let shim = shim.clone();
            undo.on_rollback(super::undo_step(
                format!("the host shim `{}`", shim.ifname),
                move || provision::remove_shim(nl, &shim),
            ));
        }
        state.networks.push(network.clone());
        store.save(&state)?;
        Ok(network)
    })();
    match made {
        Ok(network) => {
            undo.commit();
            Ok(network)
        }
        Err(e) => {
            drop(undo);
            Err(e.rolled_back(format!("creating network `{name}`")))
        }
    }
}

/// Remove a network that has no endpoints: its shim, its VLAN sub-interface if xmacvlan
/// made it, and its record.
pub fn remove(data_root: &Path, name: &str) -> Result<Network, ControlError> {
    let (store, mut state) = Store::lock(data_root)?;
    let network = state.network(name).cloned().ok_or_else(|| {
        ControlError::NotFound(format!(
            "no such network `{name}`: see `xmacvlan network ls`"
        ))
    })?;
    let attached: Vec<String> = state
        .endpoints_of(&network.name)
        .map(|e| e.name.clone())
        .collect();
    if !attached.is_empty() {
        return Err(ControlError::NetworkInUse {
            network: network.name,
            endpoints: attached,
        });
    }
    let nl = Netlink::new()?;
    if let Some(shim) = &network.host_shim {
        provision::remove_shim(&nl, shim).during(|| "removing the host shim".into())?;
    }
    provision::remove_parent(&nl, &network).during(|| "removing the VLAN sub-interface".into())?;
    state.networks.retain(|n| n.id != network.id);
    store.save(&state)?;
    Ok(network)
}
