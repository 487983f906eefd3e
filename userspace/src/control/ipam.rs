//! Address management for one network: hand out the lowest free address of a subnet's pool
//! (its `--ip-range`, else the whole subnet), never the network, broadcast, gateway or aux
//! addresses, never one already taken. Freed addresses are reused by the next allocation.
use std::collections::HashSet;
use std::net::IpAddr;

use super::ControlError;
use super::model::{Subnet, ip_to_u128, u128_to_ip};

/// Addresses of `subnet` that are never allocatable.
fn reserved(subnet: &Subnet, ip: IpAddr) -> Option<&'static str> {
    let value = ip_to_u128(ip);
    let net = subnet.subnet;
    // /31 and /32 (point-to-point) have no network or broadcast address.
    let has_broadcast = net.is_ipv4() && net.prefix < 31;
    if value == net.first() && (has_broadcast || !net.is_ipv4()) {
        return Some("the subnet's network address");
    }
    if has_broadcast && value == net.last() {
        return Some("the subnet's broadcast address");
    }
    if ip == subnet.gateway {
        return Some("the gateway");
    }
    if subnet.shim_address() == Some(ip) {
        return Some("the host shim's address");
    }
    if subnet.aux_addresses.values().any(|a| *a == ip) {
        return Some("an --aux-address");
    }
    None
}

/// The lowest free address of the subnet's pool, or None when it is exhausted.
/// Terminates after at most `used + reserved + 1` steps: every skipped address is one of them.
pub fn allocate(subnet: &Subnet, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    let pool = subnet.pool();
    let v4 = pool.is_ipv4();
    let mut next = pool.first();
    loop {
        let ip = u128_to_ip(next, v4);
        if reserved(subnet, ip).is_none() && !used.contains(&ip) {
            return Some(ip);
        }
        if next == pool.last() {
            return None;
        }
        next += 1;
    }
}

/// Check a requested `--ip`/`--ip6` against its subnet: inside, not reserved, not taken.
pub fn check_requested(
    subnet: &Subnet,
    ip: IpAddr,
    used: &HashSet<IpAddr>,
) -> Result<(), ControlError> {
    if !subnet.subnet.contains_ip(ip) {
        return Err(ControlError::Invalid(format!(
            "address {ip} is outside subnet {}: pick one inside it",
            subnet.subnet
        )));
    }
    if let Some(what) = reserved(subnet, ip) {
        return Err(ControlError::Invalid(format!(
            "address {ip} is {what} of subnet {}: pick another one",
            subnet.subnet
        )));
    }
    if used.contains(&ip) {
        return Err(ControlError::Conflict(format!(
            "address {ip} is already in use on this network: pick another one or omit it to have one allocated"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn subnet(net: &str, gw: &str, range: Option<&str>, aux: &[&str]) -> Subnet {
        Subnet {
            subnet: net.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            ip_range: range.map(|r| r.parse().unwrap()),
            aux_addresses: aux
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("a{i}"), a.parse().unwrap()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_and_aux_and_fills_in_order() {
        let s = subnet("198.18.0.0/24", "198.18.0.1", None, &["198.18.0.2"]);
        let mut used = HashSet::new();
        for want in ["198.18.0.3", "198.18.0.4", "198.18.0.5"] {
            let got = allocate(&s, &used).unwrap();
            assert_eq!(got, ip(want));
            used.insert(got);
        }
    }

    #[test]
    fn exhaustion_and_reuse_after_release() {
        // /29: .0 network, .7 broadcast, .1 gateway: .2-.6 are the five usable addresses.
        let s = subnet("198.18.0.0/29", "198.18.0.1", None, &[]);
        let mut used = HashSet::new();
        while let Some(a) = allocate(&s, &used) {
            assert!(used.insert(a), "{a} handed out twice");
        }
        assert_eq!(used.len(), 5);
        assert!(!used.contains(&ip("198.18.0.7")) && !used.contains(&ip("198.18.0.0")));
        used.remove(&ip("198.18.0.4"));
        assert_eq!(allocate(&s, &used), Some(ip("198.18.0.4")));
    }

    #[test]
    fn allocates_only_inside_the_ip_range() {
        let s = subnet(
            "198.18.0.0/24",
            "198.18.0.1",
            Some("198.18.0.128/30"),
            &["198.18.0.129"],
        );
        let mut used = HashSet::new();
        let mut got = Vec::new();
        while let Some(a) = allocate(&s, &used) {
            used.insert(a);
            got.push(a);
        }
        assert_eq!(
            got,
            vec![ip("198.18.0.128"), ip("198.18.0.130"), ip("198.18.0.131")]
        );
    }

    #[test]
    fn ipv6_skips_the_subnet_router_anycast_address() {
        let s = subnet("2001:db8:1::/64", "2001:db8:1::1", None, &[]);
        let used = HashSet::from([ip("2001:db8:1::2")]);
        assert_eq!(allocate(&s, &used), Some(ip("2001:db8:1::3")));
        let tiny = subnet("2001:db8:1::/126", "2001:db8:1::1", None, &[]);
        let used = HashSet::from([ip("2001:db8:1::2")]);
        assert_eq!(allocate(&tiny, &used), Some(ip("2001:db8:1::3")));
        let used = HashSet::from([ip("2001:db8:1::2"), ip("2001:db8:1::3")]);
        assert_eq!(allocate(&tiny, &used), None);
    }

    #[test]
    fn requested_addresses_are_checked() {
        let s = subnet(
            "198.18.0.0/24",
            "198.18.0.1",
            Some("198.18.0.128/25"),
            &["198.18.0.9"],
        );
        let used = HashSet::from([ip("198.18.0.20")]);
        let mut shim = s.clone();
        shim.aux_addresses
            .insert(super::super::network::SHIM_AUX.into(), ip("198.18.0.127"));
        let e = check_requested(&shim, ip("198.18.0.127"), &used)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the host shim's address"), "{e}");
        // Outside the ip-range but inside the subnet is allowed, as in Docker.
        assert!(check_requested(&s, ip("198.18.0.10"), &used).is_ok());
        let e = check_requested(&s, ip("198.18.1.10"), &used)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside subnet 198.18.0.0/24"), "{e}");
        assert!(
            check_requested(&s, ip("198.18.0.1"), &used)
                .unwrap_err()
                .to_string()
                .contains("gateway")
        );
        assert!(
            check_requested(&s, ip("198.18.0.0"), &used)
                .unwrap_err()
                .to_string()
                .contains("network address")
        );
        assert!(
            check_requested(&s, ip("198.18.0.255"), &used)
                .unwrap_err()
                .to_string()
                .contains("broadcast")
        );
        assert!(
            check_requested(&s, ip("198.18.0.9"), &used)
                .unwrap_err()
                .to_string()
                .contains("aux-address")
        );
        assert!(
            check_requested(&s, ip("198.18.0.20"), &used)
                .unwrap_err()
                .to_string()
                .contains("already in use")
        );
    }
}
