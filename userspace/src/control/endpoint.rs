//! `endpoint create` and `endpoint rm`: one container's macvlan, with its addresses from IPAM.
//! The state lock is held from allocation to the write, so concurrent creates never get the
//! same address; the device is made before the record and removed again if recording fails.
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::error::ControlError;
use super::model::{Cidr, Endpoint, Network, check_ifname, check_mac, check_name, derived_mac};
use super::provision::{self, Removal};
use super::state::{State, Store};
use super::{ipam, unix_now};
use crate::ether::Mac;
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::rollback::Rollback;

/// `endpoint create` as typed.
#[derive(Debug, Clone)]
pub struct EndpointCreate {
    pub name: String,
    pub network: String,
    /// A name under /run/netns or a path such as /proc/PID/ns/net.
    pub netns: String,
    pub ifname: String,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub mac: Option<String>,
}

/// Work out the endpoint record: names, addresses (IPAM), MAC. Pure: state in, record out.
pub fn plan(req: &EndpointCreate, state: &State) -> Result<Endpoint, ControlError> {
    check_name(&req.name, "endpoint")?;
    check_ifname(&req.ifname, "--ifname")?;
    if let Some(other) = state.endpoint(&req.name) {
        return Err(ControlError::Conflict(format!(
            "an endpoint named `{}` already exists (on network `{}`): choose another name or remove it first",
            req.name, other.network
        )));
    }
    let net = state.network(&req.network).ok_or_else(|| {
        ControlError::NotFound(format!(
            "no such network `{}`: see `xmacvlan network ls`",
            req.network
        ))
    })?;
    if let Some(other) = state
        .endpoints
        .iter()
        .find(|e| e.netns == req.netns && e.ifname == req.ifname)
    {
        return Err(ControlError::Conflict(format!(
            "endpoint `{}` already uses `{}` in namespace `{}`: choose another --ifname",
            other.name, req.ifname, req.netns
        )));
    }
    if net.dhcp && (req.ip.is_some() || req.ip6.is_some()) {
        return Err(ControlError::Invalid(format!(
            "network `{}` leases its addresses from the DHCP server on its segment: drop --ip and --ip6",
            net.name
        )));
    }
    let used: HashSet<IpAddr> = state
        .endpoints_of(&net.name)
        .flat_map(|e| e.addresses.iter().map(|a| a.addr))
        .collect();
    let mut addresses = Vec::new();
    let mut gateways = Vec::new();
    for (v4, requested) in [
        (true, req.ip.map(IpAddr::V4)),
        (false, req.ip6.map(IpAddr::V6)),
    ] {
        let family = if v4 { "IPv4" } else { "IPv6" };
        let mut subnets = net
            .subnets
            .iter()
            .filter(|s| s.subnet.is_ipv4() == v4)
            .peekable();
        if subnets.peek().is_none() {
            if let Some(ip) = requested {
                return Err(ControlError::Invalid(format!(
                    "network `{}` has no {family} subnet, so {ip} cannot be assigned: drop --{} or add an {family} --subnet to the network",
                    net.name,
                    if v4 { "ip" } else { "ip6" }
                )));
            }
            continue;
        }
        let (subnet, ip) = match requested {
            Some(ip) => {
                let subnet = net
                    .subnets
                    .iter()
                    .find(|s| s.subnet.contains_ip(ip))
                    .ok_or_else(|| {
                        ControlError::Invalid(format!(
                            "address {ip} is outside every {family} subnet of network `{}`: pick one inside {}",
                            net.name,
                            net.subnets
                                .iter()
                                .filter(|s| s.subnet.is_ipv4() == v4)
                                .map(|s| s.subnet.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                if let Some(owner) = state
                    .endpoints_of(&net.name)
                    .find(|e| e.addresses.iter().any(|a| a.addr == ip))
                {
                    return Err(ControlError::Conflict(format!(
                        "address {ip} is already in use on this network, by endpoint `{}`: pick another one or omit it to have one allocated",
                        owner.name
                    )));
                }
                ipam::check_requested(subnet, ip, &used)?;
                (subnet, ip)
            }
            None => subnets
                .find_map(|s| ipam::allocate(s, &used).map(|ip| (s, ip)))
                .ok_or_else(|| ControlError::NoFreeAddress {
                    family,
                    network: net.name.clone(),
                })?,
        };
        addresses.push(Cidr::new(ip, subnet.subnet.prefix));
        gateways.push(subnet.gateway);
    }
    let mac = match &req.mac {
        Some(text) => {
            let mac = text.parse::<Mac>()?.0;
            check_mac(&mac)?;
            mac
        }
        None => match addresses.iter().find_map(|a| match a.addr {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }) {
            Some(v4) => derived_mac(v4),
            None => super::random_mac(),
        },
    };
    check_mac_free(net, state, &mac)?;
    Ok(Endpoint {
        name: req.name.clone(),
        network: net.name.clone(),
        vlan: net.vlan,
        mac,
        addresses,
        gateways,
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
        created: unix_now(),
        mtu: net.mtu,
        lease: None,
    })
}

fn check_mac_free(net: &Network, state: &State, mac: &crate::abi::Mac) -> Result<(), ControlError> {
    if let Some(other) = state.endpoints_of(&net.name).find(|e| e.mac == *mac) {
        return Err(ControlError::Conflict(format!(
            "MAC address {} is already used by endpoint `{}` on network `{}`: choose another --mac-address or omit it",
            Mac(*mac),
            other.name,
            net.name
        )));
    }
    if net.host_shim.as_ref().is_some_and(|s| s.mac == *mac) {
        return Err(ControlError::Conflict(format!(
            "MAC address {} is the host shim's on network `{}`: choose another --mac-address or omit it",
            Mac(*mac),
            net.name
        )));
    }
    Ok(())
}

/// Create an endpoint: plan, make the device in its namespace, lease its address on a `dhcp`
/// network, record it. A failure at any step undoes the steps before it.
pub fn create(data_root: &Path, req: &EndpointCreate) -> Result<Endpoint, ControlError> {
    let (store, mut state) = Store::lock(data_root)?;
    let mut ep = plan(req, &state)?;
    Netns::open(&ep.netns)?;
    let net = state
        .network(&ep.network)
        .cloned()
        .expect("plan checked the network");
    let nl = Netlink::new()?;
    let Some(parent) = nl.link_by_name(&net.parent)? else {
        return Err(ControlError::NotFound(format!(
            "parent `{}` of network `{}` is gone (deleted behind xmacvlan's back?): recreate it, \
             or remove the network with `xmacvlan network rm {}`",
            net.parent, net.name, net.name
        )));
    };
    provision::create_endpoint(&nl, parent.index, net.mode, &mut ep)?;
    let mut unit = ();
    let mut undo = Rollback::new(&mut unit);
    let made = ep.clone();
    undo.on_rollback(super::undo_step(
        format!("the device of endpoint `{}`", ep.name),
        move || provision::remove_endpoint(&made).map(drop),
    ));
    if net.dhcp {
        super::lease::acquire_undoably(&mut ep, &net, &mut undo)?;
        super::lease::configure(&mut ep)?;
    }
    state.endpoints.push(ep.clone());
    store.save(&state).map_err(|e| {
        ControlError::from(e).rolled_back(format!("recording endpoint `{}`", ep.name))
    })?;
    undo.commit();
    Ok(ep)
}

/// What `endpoint rm` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// No such endpoint: nothing to do (removing twice succeeds, like CNI DEL).
    Unknown,
    Endpoint(Box<Endpoint>, Removal),
}

/// Remove an endpoint's device (if it is still ours) and its record, giving its DHCP lease
/// back first (through the device). Idempotent.
pub fn remove(data_root: &Path, name: &str) -> Result<Removed, ControlError> {
    let (store, mut state) = Store::lock(data_root)?;
    let Some(ep) = state.endpoint(name).cloned() else {
        return Ok(Removed::Unknown);
    };
    super::lease::release(&ep, &[&ep]);
    let removal = provision::remove_endpoint(&ep)?;
    state.endpoints.retain(|e| e.name != ep.name);
    store.save(&state)?;
    Ok(Removed::Endpoint(Box::new(ep), removal))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::control::model::{HostShim, Mode, Subnet};

    fn state() -> State {
        let subnet = |s: &str, gw: &str, range: Option<&str>| Subnet {
            subnet: s.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            ip_range: range.map(|r| r.parse().unwrap()),
            aux_addresses: BTreeMap::new(),
        };
        let mut st = State::default();
        st.networks.push(Network {
            id: "a".repeat(64),
            name: "net".into(),
            driver: "macvlan".into(),
            parent: "v0.7".into(),
            link: "v0".into(),
            vlan: 7,
            created_parent: true,
            mode: Mode::Bridge,
            subnets: vec![
                subnet("198.18.0.0/24", "198.18.0.1", Some("198.18.0.4/31")),
                subnet("2001:db8:1::/64", "2001:db8:1::1", None),
            ],
            host_shim: Some(HostShim {
                ifname: "xmvshaaaaaaaa".into(),
                mac: [2, 0x42, 198, 18, 0, 254],
                addresses: vec![],
                routes: vec![],
            }),
            dhcp: false,
            mtu: Some(9000),
            options: BTreeMap::new(),
            created: 0,
        });
        st
    }

    fn req(name: &str) -> EndpointCreate {
        EndpointCreate {
            name: name.into(),
            network: "net".into(),
            netns: format!("ns-{name}"),
            ifname: "eth0".into(),
            ip: None,
            ip6: None,
            mac: None,
        }
    }

    #[test]
    fn allocates_both_families_derives_the_mac_and_copies_the_vlan() {
        let st = state();
        let ep = plan(&req("a"), &st).unwrap();
        assert_eq!(
            ep.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["198.18.0.4/24", "2001:db8:1::2/64"]
        );
        assert_eq!(
            ep.gateways
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["198.18.0.1", "2001:db8:1::1"]
        );
        assert_eq!(ep.mac, [0x02, 0x42, 198, 18, 0, 4]);
        assert_eq!(ep.vlan, 7);
        assert_eq!(ep.spec().vid, 7);
        assert_eq!(ep.mtu, Some(9000), "the network's MTU, for the fast path");
    }

    #[test]
    fn a_dhcp_network_allocates_nothing_and_refuses_addresses() {
        let mut st = state();
        st.networks[0].subnets.clear();
        st.networks[0].dhcp = true;
        let ep = plan(&req("a"), &st).unwrap();
        assert!(ep.addresses.is_empty() && ep.gateways.is_empty() && ep.lease.is_none());
        assert_eq!(
            ep.mac[..2],
            [0x02, 0x42],
            "a MAC chosen before asking the server"
        );
        let mut r = req("b");
        r.ip = Some(Ipv4Addr::new(198, 18, 0, 9));
        assert!(
            plan(&r, &st)
                .unwrap_err()
                .to_string()
                .contains("drop --ip and --ip6")
        );
    }

    #[test]
    fn exhaustion_then_reuse() {
        let mut st = state();
        for n in ["a", "b"] {
            let ep = plan(&req(n), &st).unwrap();
            st.endpoints.push(ep);
        }
        let e = plan(&req("c"), &st).unwrap_err();
        assert!(matches!(e, ControlError::NoFreeAddress { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("no free IPv4 address left on network `net`"),
            "{e}"
        );
        st.endpoints.retain(|e| e.name != "a");
        let again = plan(&req("c"), &st).unwrap();
        assert_eq!(again.addresses[0].to_string(), "198.18.0.4/24");
    }

    #[test]
    fn request_errors() {
        let plan = |r: &EndpointCreate, st: &State| plan(r, st).map_err(|e| e.to_string());
        let mut st = state();
        st.endpoints.push(plan(&req("a"), &st).unwrap());
        assert!(plan(&req("a"), &st).unwrap_err().contains("already exists"));
        let mut r = req("b");
        r.network = "nope".into();
        assert!(
            plan(&r, &st)
                .unwrap_err()
                .contains("no such network `nope`")
        );
        let mut r = req("b");
        r.mac = Some("02:42:c6:12:00:04".into());
        assert!(
            plan(&r, &st)
                .unwrap_err()
                .contains("already used by endpoint `a`")
        );
        r.mac = Some("02:42:c6:12:00:fe".into());
        assert!(plan(&r, &st).unwrap_err().contains("host shim"));
        r.mac = Some("01:00:5e:00:00:01".into());
        assert!(plan(&r, &st).unwrap_err().contains("multicast"));
        r.mac = Some("zz".into());
        assert!(plan(&r, &st).unwrap_err().contains("six hex bytes"));
        let mut r = req("b");
        r.ip = Some(Ipv4Addr::new(198, 19, 0, 9));
        assert!(
            plan(&r, &st)
                .unwrap_err()
                .contains("outside every IPv4 subnet")
        );
        r.ip = Some(Ipv4Addr::new(198, 18, 0, 4));
        let taken = plan(&r, &st).unwrap_err();
        assert!(
            taken.contains("already in use on this network, by endpoint `a`"),
            "{taken}"
        );
        r.ip = Some(Ipv4Addr::new(198, 18, 0, 1));
        assert!(plan(&r, &st).unwrap_err().contains("gateway"));
        // Inside the subnet but outside the ip-range: allowed, as in Docker.
        r.ip = Some(Ipv4Addr::new(198, 18, 0, 77));
        assert_eq!(plan(&r, &st).unwrap().mac, [2, 0x42, 198, 18, 0, 77]);
        let mut r = req("b");
        r.netns = "ns-a".into();
        assert!(
            plan(&r, &st)
                .unwrap_err()
                .contains("choose another --ifname")
        );
        r.ifname = "a-name-far-too-long".into();
        assert!(plan(&r, &st).unwrap_err().contains("1-15"));
        st.networks[0].subnets.truncate(1);
        let mut r = req("b");
        r.ip6 = Some("2001:db8:1::9".parse().unwrap());
        assert!(plan(&r, &st).unwrap_err().contains("has no IPv6 subnet"));
    }

    /// What a caller decides on (the CNI plugin's error code) is the variant, not the text.
    #[test]
    fn request_errors_say_which_kind_they_are() {
        let mut st = state();
        st.endpoints.push(plan(&req("a"), &st).unwrap());
        let refused = |r: &EndpointCreate| plan(r, &st).unwrap_err();
        assert!(matches!(refused(&req("a")), ControlError::Conflict(_)));
        let mut r = req("b");
        r.network = "nope".into();
        assert!(matches!(refused(&r), ControlError::NotFound(_)));
        let mut r = req("b");
        r.mac = Some("zz".into());
        assert!(matches!(refused(&r), ControlError::Invalid(_)));
        r.mac = Some("02:42:c6:12:00:04".into());
        assert!(matches!(refused(&r), ControlError::Conflict(_)));
        let mut r = req("b");
        r.ip = Some(Ipv4Addr::new(198, 18, 0, 4));
        assert!(matches!(refused(&r), ControlError::Conflict(_)));
        r.ip = Some(Ipv4Addr::new(198, 18, 0, 1));
        assert!(
            matches!(refused(&r), ControlError::Invalid(_)),
            "the gateway"
        );
    }

    #[test]
    fn ipv6_only_network_gets_a_random_local_mac() {
        let mut st = state();
        st.networks[0].subnets.remove(0);
        let ep = plan(&req("a"), &st).unwrap();
        assert_eq!(ep.addresses.len(), 1);
        assert_eq!(ep.mac[0], 0x02, "locally administered unicast");
    }
}
