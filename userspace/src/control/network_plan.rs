//! `network create`'s flags, checked before anything is touched: the driver options, the
//! subnets and what must lie inside them, and the plan's fit with the networks that exist.
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::ControlError;
use super::model::{Cidr, Mode, ParentSpec, Subnet, check_name, ip_to_u128, u128_to_ip};
use super::state::State;

/// `network create` as typed (Docker's flags); nothing is interpreted yet.
#[derive(Debug, Clone, Default)]
pub struct NetworkCreate {
    pub name: String,
    pub driver: String,
    pub subnets: Vec<String>,
    pub gateways: Vec<String>,
    pub ip_ranges: Vec<String>,
    /// `NAME=IP`.
    pub aux_addresses: Vec<String>,
    /// `-o KEY=VALUE`.
    pub options: Vec<String>,
    pub host_shim: bool,
    /// `--dhcp` (the same as `-o dhcp=true`).
    pub dhcp: bool,
}

/// The `-o` keys a macvlan network accepts.
pub const OPTIONS: &[&str] = &["parent", "macvlan_mode", "host_shim", "dhcp", "mtu"];
/// The smallest MTU IPv4 allows (RFC 791); IPv6 needs [`MIN_MTU_IPV6`].
pub const MIN_MTU: u32 = 68;
pub const MIN_MTU_IPV6: u32 = 1280;
pub use super::model::SHIM_AUX;

/// A network checked against its flags alone.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    pub name: String,
    pub parent: ParentSpec,
    pub mode: Mode,
    pub subnets: Vec<Subnet>,
    pub host_shim: bool,
    pub dhcp: bool,
    pub mtu: Option<u32>,
    pub options: BTreeMap<String, String>,
}

/// Check the flags: driver, `-o` options, subnets and what must lie inside them.
pub fn plan(req: &NetworkCreate) -> Result<NetworkPlan, ControlError> {
    check_name(&req.name, "network")?;
    if req.driver != "macvlan" {
        return Err(ControlError::Invalid(format!(
            "unsupported driver `{}`: xmacvlan only provides `-d macvlan`",
            req.driver
        )));
    }
    let mut options = BTreeMap::new();
    for opt in &req.options {
        let (key, value) = opt.split_once('=').ok_or_else(|| {
            ControlError::Invalid(format!(
                "`-o {opt}` is not KEY=VALUE: write e.g. -o parent=eth0"
            ))
        })?;
        if !OPTIONS.contains(&key) {
            return Err(ControlError::Invalid(format!(
                "unknown option `-o {key}`: macvlan networks accept -o {}",
                OPTIONS.join(", -o ")
            )));
        }
        if options.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ControlError::Invalid(format!(
                "`-o {key}` is given twice: keep one"
            )));
        }
    }
    let parent = options.get("parent").ok_or_else(|| {
        ControlError::Invalid(
            "-o parent=IF is required: name the host interface the macvlans attach to (IF.VID for a VLAN)"
                .to_string(),
        )
    })?;
    let parent = ParentSpec::parse(parent)?;
    let mode = options
        .get("macvlan_mode")
        .map_or(Ok(Mode::Bridge), |m| m.parse::<Mode>())?;
    let host_shim = req.host_shim || flag(&options, "host_shim")?;
    let dhcp = req.dhcp || flag(&options, "dhcp")?;
    if host_shim && mode == Mode::Passthru {
        return Err(ControlError::Invalid(
            "--host-shim needs a second macvlan on the parent, which macvlan_mode=passthru forbids: \
             use bridge mode or drop --host-shim"
                .into(),
        ));
    }
    let subnets = if dhcp {
        check_dhcp(req, host_shim)?;
        Vec::new()
    } else {
        plan_subnets(req)?
    };
    let mtu = options
        .get("mtu")
        .map(|m| parse_mtu(m, subnets.iter().any(|s| !s.subnet.is_ipv4())))
        .transpose()?;
    Ok(NetworkPlan {
        name: req.name.clone(),
        parent,
        mode,
        subnets,
        host_shim,
        dhcp,
        mtu,
        options,
    })
}

/// A boolean `-o KEY=true|false` (absent: false).
fn flag(options: &BTreeMap<String, String>, key: &str) -> Result<bool, ControlError> {
    match options.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ControlError::Invalid(format!(
            "`-o {key}={other}`: use true or false"
        ))),
    }
}

/// On a DHCP network the server owns the addresses: xmacvlan's subnets would hand out
/// addresses of their own.
fn check_dhcp(req: &NetworkCreate, host_shim: bool) -> Result<(), ControlError> {
    if !(req.subnets.is_empty()
        && req.gateways.is_empty()
        && req.ip_ranges.is_empty()
        && req.aux_addresses.is_empty())
    {
        return Err(ControlError::Invalid(
            "-o dhcp=true: the segment's DHCP server hands out the addresses, so the network takes \
             no --subnet, --gateway, --ip-range or --aux-address (with Docker: \
             `docker network create --ipam-driver null -o dhcp=true …`)"
                .into(),
        ));
    }
    if host_shim {
        return Err(ControlError::Invalid(
            "-o dhcp=true with a host shim is not supported: the shim needs a subnet and an \
             address of its own; create the network without host_shim"
                .into(),
        ));
    }
    Ok(())
}

/// `-o mtu=N`: a number a link can carry (the parent's MTU is checked when it is found).
pub fn parse_mtu(text: &str, ipv6: bool) -> Result<u32, ControlError> {
    let mtu: u32 = text.parse().map_err(|_| {
        ControlError::Invalid(format!(
            "`-o mtu={text}` is not a number: give the MTU in bytes, e.g. -o mtu=9000"
        ))
    })?;
    let min = if ipv6 { MIN_MTU_IPV6 } else { MIN_MTU };
    if !(min..=65535).contains(&mtu) {
        return Err(ControlError::Invalid(format!(
            "`-o mtu={mtu}` is out of range: use {min}-65535{}",
            if ipv6 {
                " (IPv6 needs at least 1280)"
            } else {
                ""
            }
        )));
    }
    Ok(mtu)
}

/// A macvlan cannot be larger than its parent: say which is which and what to change.
pub fn check_mtu_fits(mtu: u32, parent: &str, parent_mtu: u32) -> Result<(), ControlError> {
    if mtu > parent_mtu {
        return Err(ControlError::Conflict(format!(
            "MTU {mtu} is larger than parent `{parent}`'s MTU {parent_mtu}: a macvlan cannot \
             exceed its parent; raise the parent's (`ip link set {parent} mtu {mtu}`) or give \
             a smaller MTU"
        )));
    }
    Ok(())
}

fn parse_all(values: &[String], what: &str) -> Result<Vec<Cidr>, ControlError> {
    values
        .iter()
        .map(|v| {
            v.parse::<Cidr>()
                .map_err(|e| ControlError::Invalid(format!("{what} {e}")))
        })
        .collect()
}

/// Docker's matching: every gateway, range and aux address belongs to the subnet containing it.
fn plan_subnets(req: &NetworkCreate) -> Result<Vec<Subnet>, ControlError> {
    if req.subnets.is_empty() {
        return Err(ControlError::Invalid(
            "at least one --subnet is required (e.g. --subnet 198.18.0.0/24)".into(),
        ));
    }
    let cidrs = parse_all(&req.subnets, "--subnet")?;
    for (i, c) in cidrs.iter().enumerate() {
        if c.network() != *c {
            return Err(ControlError::Invalid(format!(
                "--subnet {c} has host bits set: write it as {}",
                c.network()
            )));
        }
        let max = if c.is_ipv4() { 30 } else { 126 };
        if c.prefix > max {
            return Err(ControlError::Invalid(format!(
                "--subnet {c} is too small for a gateway and an endpoint: use /{max} or shorter"
            )));
        }
        if let Some(other) = cidrs[..i].iter().find(|o| o.overlaps(c)) {
            return Err(ControlError::Invalid(format!(
                "--subnet {c} overlaps --subnet {other}: give disjoint subnets"
            )));
        }
    }
    let subnet_of = |ip: IpAddr, what: &str| -> Result<usize, ControlError> {
        cidrs.iter().position(|c| c.contains_ip(ip)).ok_or_else(|| {
            ControlError::Invalid(format!(
                "{what} {ip} is outside every --subnet ({}): pick an address inside its subnet",
                list(&cidrs)
            ))
        })
    };
    let mut gateways: Vec<Option<IpAddr>> = vec![None; cidrs.len()];
    for gw in &req.gateways {
        let ip: IpAddr = gw
            .parse()
            .map_err(|_| ControlError::Invalid(format!("--gateway `{gw}` is not an IP address")))?;
        let i = subnet_of(ip, "--gateway")?;
        let c = cidrs[i];
        if ip_to_u128(ip) == c.first() || (c.is_ipv4() && ip_to_u128(ip) == c.last()) {
            return Err(ControlError::Invalid(format!(
                "--gateway {ip} is the network or broadcast address of {c}: pick a host address"
            )));
        }
        if gateways[i].replace(ip).is_some() {
            return Err(ControlError::Invalid(format!(
                "subnet {c} has more than one --gateway: keep one"
            )));
        }
    }
    let mut ranges: Vec<Option<Cidr>> = vec![None; cidrs.len()];
    for range in parse_all(&req.ip_ranges, "--ip-range")? {
        let i = cidrs.iter().position(|c| c.contains(&range)).ok_or_else(|| {
            ControlError::Invalid(format!(
                "--ip-range {range} is outside every --subnet ({}): give a range inside its subnet",
                list(&cidrs)
            ))
        })?;
        if range.network() != range {
            return Err(ControlError::Invalid(format!(
                "--ip-range {range} has host bits set: write it as {}",
                range.network()
            )));
        }
        if ranges[i].replace(range).is_some() {
            return Err(ControlError::Invalid(format!(
                "subnet {} has more than one --ip-range: keep one",
                cidrs[i]
            )));
        }
    }
    let mut aux: Vec<BTreeMap<String, IpAddr>> = vec![BTreeMap::new(); cidrs.len()];
    for entry in &req.aux_addresses {
        let (name, ip) = entry.split_once('=').ok_or_else(|| {
            ControlError::Invalid(format!(
                "--aux-address `{entry}` is not NAME=IP: write e.g. router=198.18.0.254"
            ))
        })?;
        let ip: IpAddr = ip.parse().map_err(|_| {
            ControlError::Invalid(format!(
                "--aux-address `{entry}`: `{ip}` is not an IP address"
            ))
        })?;
        let i = subnet_of(ip, "--aux-address")?;
        if aux[i].insert(name.to_string(), ip).is_some() {
            return Err(ControlError::Invalid(format!(
                "--aux-address name `{name}` is used twice in subnet {}",
                cidrs[i]
            )));
        }
    }
    Ok(cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| Subnet {
            subnet: *c,
            // Docker's default: the first host address.
            gateway: gateways[i].unwrap_or_else(|| u128_to_ip(c.first() + 1, c.is_ipv4())),
            ip_range: ranges[i],
            aux_addresses: std::mem::take(&mut aux[i]),
        })
        .collect())
}

fn list(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a plan against the networks that already exist.
pub fn check_against(plan: &NetworkPlan, state: &State) -> Result<(), ControlError> {
    if state.networks.iter().any(|n| n.name == plan.name) {
        return Err(ControlError::Conflict(format!(
            "a network named `{}` already exists: choose another name or remove it first",
            plan.name
        )));
    }
    if let Some(other) = state.networks.iter().find(|n| n.parent == plan.parent.name) {
        return Err(ControlError::Conflict(format!(
            "network `{}` already uses parent interface `{}`: one macvlan network per parent \
             (use another parent, or a VLAN of it such as {}.10)",
            other.name, plan.parent.name, plan.parent.name
        )));
    }
    for s in &plan.subnets {
        for n in &state.networks {
            if let Some(o) = n.subnets.iter().find(|o| o.subnet.overlaps(&s.subnet)) {
                return Err(ControlError::Conflict(format!(
                    "--subnet {} overlaps subnet {} of network `{}`: pick a disjoint subnet",
                    s.subnet, o.subnet, n.name
                )));
            }
        }
    }
    Ok(())
}

/// The shim's address in each subnet: its `host_shim` aux address, else the highest free host
/// address outside the ip-range (recorded as that aux address so IPAM never hands it out).
pub fn assign_shim_addresses(subnets: &mut [Subnet]) -> Result<Vec<Cidr>, ControlError> {
    let mut addresses = Vec::new();
    for s in subnets.iter_mut() {
        let ip = match s.shim_address() {
            Some(ip) => ip,
            None => {
                let taken: HashSet<IpAddr> = s.aux_addresses.values().copied().collect();
                let v4 = s.subnet.is_ipv4();
                let top = s.subnet.last() - u128::from(v4);
                let ip = (s.subnet.first() + 1..=top)
                    .rev()
                    .map(|v| u128_to_ip(v, v4))
                    .take(65536)
                    .find(|ip| {
                        *ip != s.gateway
                            && !taken.contains(ip)
                            && !s.ip_range.is_some_and(|r| r.contains_ip(*ip))
                    })
                    .ok_or_else(|| {
                        ControlError::Invalid(format!(
                            "no address left in {} for the host shim outside --ip-range: \
                             give one with --aux-address {SHIM_AUX}=IP",
                            s.subnet
                        ))
                    })?;
                s.aux_addresses.insert(SHIM_AUX.into(), ip);
                ip
            }
        };
        addresses.push(Cidr::new(ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::Network;

    fn req(subnets: &[&str]) -> NetworkCreate {
        NetworkCreate {
            name: "n1".into(),
            driver: "macvlan".into(),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            options: vec!["parent=v0".into()],
            ..Default::default()
        }
    }

    /// A refused plan's message: every flag error is `Invalid`.
    fn err(r: &NetworkCreate) -> String {
        match plan(r).unwrap_err() {
            ControlError::Invalid(e) => e,
            other => panic!("not Invalid: {other:?}"),
        }
    }

    #[test]
    fn docker_defaults() {
        let p = plan(&req(&["198.18.0.0/24", "2001:db8:1::/64"])).unwrap();
        assert_eq!(p.mode, Mode::Bridge);
        assert_eq!(p.parent.vlan, None);
        assert_eq!(
            p.subnets[0].gateway,
            "198.18.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.subnets[1].gateway,
            "2001:db8:1::1".parse::<IpAddr>().unwrap()
        );
        assert!(!p.host_shim);
    }

    #[test]
    fn gateways_ranges_and_aux_go_to_the_subnet_containing_them() {
        let mut r = req(&["198.18.0.0/24", "2001:db8:1::/64"]);
        r.gateways = vec!["2001:db8:1::fe".into(), "198.18.0.254".into()];
        r.ip_ranges = vec!["198.18.0.128/25".into()];
        r.aux_addresses = vec!["router=198.18.0.253".into(), "dns=2001:db8:1::53".into()];
        r.options.push("macvlan_mode=vepa".into());
        r.options.push("host_shim=true".into());
        let p = plan(&r).unwrap();
        assert_eq!(p.subnets[0].gateway.to_string(), "198.18.0.254");
        assert_eq!(p.subnets[1].gateway.to_string(), "2001:db8:1::fe");
        assert_eq!(
            p.subnets[0].ip_range.unwrap().to_string(),
            "198.18.0.128/25"
        );
        assert_eq!(p.subnets[1].ip_range, None);
        assert_eq!(
            p.subnets[0].aux_addresses["router"].to_string(),
            "198.18.0.253"
        );
        assert_eq!(
            p.subnets[1].aux_addresses["dns"].to_string(),
            "2001:db8:1::53"
        );
        assert_eq!(p.mode, Mode::Vepa);
        assert!(p.host_shim);
    }

    #[test]
    fn every_flag_error_is_named() {
        let mut r = req(&["198.18.0.0/24"]);
        r.gateways = vec!["198.19.0.1".into()];
        assert!(err(&r).contains("--gateway 198.19.0.1 is outside every --subnet"));
        r.gateways = vec!["198.18.0.255".into()];
        assert!(err(&r).contains("broadcast"));

        let mut r = req(&["198.18.0.0/24"]);
        r.ip_ranges = vec!["198.18.1.0/25".into()];
        assert!(err(&r).contains("--ip-range 198.18.1.0/25 is outside every --subnet"));

        let mut r = req(&["198.18.0.0/24"]);
        r.options = vec!["parent=v0".into(), "vlan=9".into()];
        let e = err(&r);
        assert!(
            e.contains("unknown option `-o vlan`") && e.contains("-o mtu"),
            "{e}"
        );

        let mut r = req(&["198.18.0.0/24"]);
        r.options = vec![];
        assert!(err(&r).contains("-o parent=IF is required"));
        r.options = vec!["parent=v0.4095".into()];
        assert!(err(&r).contains("out of range"));
        r.options = vec!["parent=v0".into(), "macvlan_mode=foo".into()];
        assert!(err(&r).contains("bridge|private|vepa|passthru"));
        r.options = vec!["parent=v0".into(), "macvlan_mode=passthru".into()];
        r.host_shim = true;
        assert!(err(&r).contains("passthru forbids"));

        let mut r = req(&["198.18.0.0/24"]);
        r.driver = "bridge".into();
        assert!(err(&r).contains("unsupported driver"));
        assert!(err(&req(&[])).contains("--subnet is required"));
        assert!(err(&req(&["198.18.0.5/24"])).contains("write it as 198.18.0.0/24"));
        assert!(err(&req(&["198.18.0.0/16", "198.18.3.0/24"])).contains("overlaps"));
        assert!(err(&req(&["198.18.0.0/31"])).contains("too small"));
        let mut r = req(&["198.18.0.0/24"]);
        r.aux_addresses = vec!["x".into()];
        assert!(err(&r).contains("NAME=IP"));
        let mut r = req(&["198.18.0.0/24"]);
        r.name = "bad name".into();
        assert!(err(&r).contains("invalid network name"));
    }

    #[test]
    fn mtu_and_dhcp_options() {
        let mut r = req(&["198.18.0.0/24"]);
        r.options.push("mtu=9000".into());
        assert_eq!(plan(&r).unwrap().mtu, Some(9000));
        r.options[1] = "mtu=jumbo".into();
        assert!(err(&r).contains("is not a number"));
        r.options[1] = "mtu=67".into();
        assert!(err(&r).contains("68-65535"));
        let mut r = req(&["198.18.0.0/24", "2001:db8:1::/64"]);
        r.options.push("mtu=1200".into());
        assert!(err(&r).contains("IPv6 needs at least 1280"));
        let e = check_mtu_fits(9000, "v0", 1500).unwrap_err();
        assert!(matches!(e, ControlError::Conflict(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("larger than parent `v0`'s MTU 1500") && e.contains("mtu 9000"),
            "{e}"
        );
        assert!(check_mtu_fits(1500, "v0", 1500).is_ok());

        let mut r = req(&[]);
        r.options.push("dhcp=true".into());
        let p = plan(&r).unwrap();
        assert!(p.dhcp && p.subnets.is_empty());
        r.dhcp = true;
        r.options.pop();
        assert!(plan(&r).unwrap().dhcp, "--dhcp is -o dhcp=true");
        r.subnets = vec!["198.18.0.0/24".into()];
        assert!(err(&r).contains("takes no --subnet"));
        r.subnets.clear();
        r.host_shim = true;
        assert!(err(&r).contains("host shim is not supported"));
        let mut r = req(&["198.18.0.0/24"]);
        r.options.push("dhcp=yes".into());
        assert!(err(&r).contains("use true or false"));
    }

    #[test]
    fn conflicts_with_existing_networks() {
        let p = plan(&req(&["198.18.0.0/24"])).unwrap();
        let existing = Network {
            id: "0".repeat(64),
            name: "n0".into(),
            driver: "macvlan".into(),
            parent: "v9".into(),
            link: "v9".into(),
            vlan: 0,
            created_parent: false,
            mode: Mode::Bridge,
            subnets: vec![Subnet {
                subnet: "198.18.0.0/16".parse().unwrap(),
                gateway: "198.18.0.1".parse().unwrap(),
                ip_range: None,
                aux_addresses: BTreeMap::new(),
            }],
            host_shim: None,
            dhcp: false,
            mtu: None,
            options: BTreeMap::new(),
            created: 0,
        };
        let mut state = State::default();
        state.networks.push(existing.clone());
        let e = check_against(&p, &state).unwrap_err();
        assert!(matches!(e, ControlError::Conflict(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("overlaps subnet 198.18.0.0/16 of network `n0`"),
            "{e}"
        );
        state.networks[0].parent = "v0".into();
        assert!(
            check_against(&p, &state)
                .unwrap_err()
                .to_string()
                .contains("already uses parent interface `v0`")
        );
        state.networks[0].name = "n1".into();
        assert!(
            check_against(&p, &state)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
    }

    #[test]
    fn shim_address_defaults_outside_the_range() {
        let mut r = req(&["198.18.0.0/24", "2001:db8:1::/64"]);
        r.ip_ranges = vec!["198.18.0.128/25".into()];
        let mut p = plan(&r).unwrap();
        let addrs = assign_shim_addresses(&mut p.subnets).unwrap();
        assert_eq!(addrs[0].to_string(), "198.18.0.127/32");
        assert_eq!(addrs[1].to_string(), "2001:db8:1:0:ffff:ffff:ffff:ffff/128");
        assert_eq!(
            p.subnets[0].aux_addresses[SHIM_AUX].to_string(),
            "198.18.0.127"
        );
        // A given host_shim aux address wins.
        let mut r = req(&["198.18.0.0/24"]);
        r.aux_addresses = vec!["host_shim=198.18.0.9".into()];
        let mut p = plan(&r).unwrap();
        assert_eq!(
            assign_shim_addresses(&mut p.subnets).unwrap()[0].to_string(),
            "198.18.0.9/32"
        );
    }
}
