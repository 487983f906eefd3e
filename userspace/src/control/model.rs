//! What a network and an endpoint are, as persisted: plain serde data, no kernel handles.
//! Also the small value types they are made of (CIDR prefixes, the parent `IF`/`IF.VID`,
//! the macvlan mode) with their parsing and checks.
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ControlError;
use crate::abi::Mac;
use crate::ether::VlanId;
use crate::netlink::MacVlanMode;

/// An address with a prefix length: a subnet (`198.18.0.0/24`) or an interface address
/// (`198.18.0.2/24`). Serialized as its text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn bits(&self) -> u8 {
        if self.is_ipv4() { 32 } else { 128 }
    }

    /// The first address of the prefix, as an integer of its family.
    pub fn first(&self) -> u128 {
        let host_bits = u32::from(self.bits() - self.prefix);
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        ip_to_u128(self.addr) & mask
    }

    /// The last address of the prefix (the IPv4 broadcast address).
    pub fn last(&self) -> u128 {
        let host_bits = u32::from(self.bits() - self.prefix);
        let hosts = 1u128.checked_shl(host_bits).map_or(u128::MAX, |n| n - 1);
        self.first() | hosts
    }

    /// The prefix with its host bits cleared (`198.18.0.5/24` → `198.18.0.0/24`).
    pub fn network(&self) -> Cidr {
        Cidr::new(u128_to_ip(self.first(), self.is_ipv4()), self.prefix)
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && (self.first()..=self.last()).contains(&ip_to_u128(ip))
    }

    pub fn contains(&self, other: &Cidr) -> bool {
        other.is_ipv4() == self.is_ipv4()
            && self.prefix <= other.prefix
            && self.contains_ip(other.addr)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a text is not a [`Cidr`]; each carries the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not a CIDR prefix: write it as 198.18.0.0/24 or 2001:db8::/64")]
    NoPrefix(String),
    #[error("`{text}`: `{addr}` is not an IP address")]
    NotAnAddress { text: String, addr: String },
    #[error("`{text}`: the prefix length must be 0-{max}")]
    PrefixLength { text: String, max: u8 },
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(s.into()))?;
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::NotAnAddress {
            text: s.into(),
            addr: addr.into(),
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 =
            prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::PrefixLength {
                    text: s.into(),
                    max,
                })?;
        Ok(Cidr { addr, prefix })
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn u128_to_ip(value: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// `-o parent=`: a link (`eth0`) or a VLAN sub-interface of one (`eth0.100`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentSpec {
    /// The name as given; also the name of the VLAN sub-interface.
    pub name: String,
    /// For `IF.VID`: the trunk link and the VLAN id.
    pub vlan: Option<(String, u16)>,
}

impl ParentSpec {
    /// Docker's reading: a name with a dot whose suffix is a number is `IF.VID`.
    pub fn parse(name: &str) -> Result<Self, ControlError> {
        check_ifname(name, "-o parent")?;
        let vlan = match name.rsplit_once('.') {
            Some((link, vid)) if !vid.is_empty() && vid.bytes().all(|b| b.is_ascii_digit()) => {
                // All digits: the only way to fail is the range.
                let id: VlanId = vid.parse().map_err(|_| {
                    ControlError::Invalid(format!(
                        "VLAN id {vid} in `-o parent={name}` is out of range: 802.1Q ids are {}-{}",
                        VlanId::MIN,
                        VlanId::MAX
                    ))
                })?;
                if link.is_empty() {
                    return Err(ControlError::Invalid(format!(
                        "`-o parent={name}` has no interface before the VLAN id: write it as IF.VID, e.g. eth0.100"
                    )));
                }
                Some((link.to_string(), id.get()))
            }
            _ => None,
        };
        Ok(Self {
            name: name.to_string(),
            vlan,
        })
    }
}

/// A Linux interface name: 1-15 bytes, no `/`, no whitespace, not `.` or `..`.
pub fn check_ifname(name: &str, what: &str) -> Result<(), ControlError> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(ControlError::Invalid(format!(
            "{what} `{name}` is not a valid interface name: use 1-15 characters without `/`, `:` or spaces"
        )));
    }
    Ok(())
}

/// Network and endpoint names, as Docker accepts them.
pub fn check_name(name: &str, what: &str) -> Result<(), ControlError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 64;
    if !ok {
        return Err(ControlError::Invalid(format!(
            "invalid {what} name `{name}`: use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        )));
    }
    Ok(())
}

/// `-o macvlan_mode=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

impl Mode {
    pub fn netlink(self) -> MacVlanMode {
        match self {
            Mode::Bridge => MacVlanMode::Bridge,
            Mode::Private => MacVlanMode::Private,
            Mode::Vepa => MacVlanMode::Vepa,
            Mode::Passthru => MacVlanMode::Passthrough,
        }
    }

    /// The mode of a device read back from the kernel (None for modes Docker has no name for).
    pub fn from_netlink(mode: MacVlanMode) -> Option<Mode> {
        [Mode::Bridge, Mode::Private, Mode::Vepa, Mode::Passthru]
            .into_iter()
            .find(|m| m.netlink() == mode)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::Private => "private",
            Mode::Vepa => "vepa",
            Mode::Passthru => "passthru",
        }
    }
}

/// A `macvlan_mode` that is none of [`Mode`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown macvlan mode `{0}`: use -o macvlan_mode=bridge|private|vepa|passthru")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "bridge" => Ok(Mode::Bridge),
            "private" => Ok(Mode::Private),
            "vepa" => Ok(Mode::Vepa),
            "passthru" => Ok(Mode::Passthru),
            _ => Err(UnknownMode(s.into())),
        }
    }
}

/// One `--subnet` with what belongs to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub subnet: Cidr,
    pub gateway: IpAddr,
    /// Where IPAM allocates from; the whole subnet when absent.
    pub ip_range: Option<Cidr>,
    /// Addresses IPAM never hands out (`--aux-address NAME=IP`).
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

impl Subnet {
    /// The range IPAM allocates from.
    pub fn pool(&self) -> Cidr {
        self.ip_range.unwrap_or(self.subnet)
    }

    /// The host shim's address in this subnet: the aux address named `host_shim`, or any
    /// name starting so (`host_shim6`: Docker keeps one aux address per name, so a
    /// dual-stack network names its IPv6 one differently).
    pub fn shim_address(&self) -> Option<IpAddr> {
        self.aux_addresses
            .get(SHIM_AUX)
            .or_else(|| {
                self.aux_addresses
                    .iter()
                    .find(|(name, _)| name.starts_with(SHIM_AUX))
                    .map(|(_, ip)| ip)
            })
            .copied()
    }
}

/// The aux address the host shim uses (chosen automatically when not given).
pub const SHIM_AUX: &str = "host_shim";

/// The host namespace's own macvlan on the parent, so the host can reach its containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostShim {
    pub ifname: String,
    #[serde(with = "crate::ether::mac_text")]
    pub mac: Mac,
    /// Host addresses (/32, /128), one per subnet: the subnets' `host_shim` aux addresses.
    pub addresses: Vec<Cidr>,
    /// Routed through the shim: each subnet's ip-range (or the subnet).
    pub routes: Vec<Cidr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64 hex digits, as Docker's network ids.
    pub id: String,
    pub name: String,
    pub driver: String,
    /// `-o parent` as given (`eth0` or `eth0.100`).
    pub parent: String,
    /// The link frames arrive on: the trunk for `IF.VID`, else the parent itself.
    pub link: String,
    /// 802.1Q VLAN id of the parent, 0 when untagged.
    pub vlan: u16,
    /// Whether xmacvlan created the VLAN sub-interface (and so deletes it with the network).
    pub created_parent: bool,
    pub mode: Mode,
    pub subnets: Vec<Subnet>,
    pub host_shim: Option<HostShim>,
    /// `-o dhcp=true`: endpoints lease their addresses from the segment's DHCP server (the
    /// network has no subnets of its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// `-o mtu=N`: the MTU of the endpoints' macvlans and the shim (the parent's if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The `-o` options as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// Who made a network's endpoints, and so who removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `xmacvlan endpoint create`.
    Cli,
    /// Docker, through the network plugin.
    Docker,
    /// A CNI runtime (podman, a Kubernetes pod) through `xmacvlan-cni`.
    Cni,
}

impl Network {
    pub fn owner(&self) -> Owner {
        if self.name == crate::control::docker::name_of(&self.id) {
            Owner::Docker
        } else if self.options.contains_key(crate::control::external::MADE_BY) {
            Owner::Cni
        } else {
            Owner::Cli
        }
    }
}

impl Owner {
    /// How a user removes endpoint `name` of such a network (never `xmacvlan endpoint rm`
    /// for one a runtime owns: the runtime would keep a container whose link is gone).
    pub fn removal(self, name: &str) -> String {
        match self {
            Owner::Cli => format!("`xmacvlan endpoint rm {name}`"),
            Owner::Docker => {
                "its container's removal (`docker rm`, or `docker network disconnect`)".into()
            }
            Owner::Cni => "its container's removal (`podman rm`, or deleting the pod)".into(),
        }
    }
}

/// One container's attachment to a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub network: String,
    /// The network's VLAN id (0 = untagged), copied so the fast path needs no join.
    pub vlan: u16,
    #[serde(with = "crate::ether::mac_text")]
    pub mac: Mac,
    /// Addresses with their subnet's prefix length.
    pub addresses: Vec<Cidr>,
    /// Default-route gateways (one per address family).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// `--netns` as given: a name under /run/netns or a path.
    pub netns: String,
    pub ifname: String,
    pub created: u64,
    /// The network's MTU (None: the parent's), copied like `vlan`: the largest frame the
    /// endpoint's device takes, and so the fast path's limit for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// On a `dhcp` network: the lease its IPv4 address comes from, kept current by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::dhcp::Lease>,
}

impl Endpoint {
    /// What the fast path needs to serve this endpoint.
    pub fn spec(&self) -> crate::dataplane::EndpointSpec {
        crate::dataplane::EndpointSpec {
            name: self.name.clone(),
            vid: self.vlan,
            mac: self.mac,
        }
    }
}

/// Docker's MAC for a container: `02:42` and the four bytes of its IPv4 address.
pub fn derived_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A `--mac-address` must name one unicast station.
pub fn check_mac(mac: &Mac) -> Result<(), ControlError> {
    if mac[0] & 1 == 1 {
        return Err(ControlError::Invalid(format!(
            "MAC address {} is a multicast address: use a unicast one (first byte even, e.g. 02:…)",
            crate::ether::Mac(*mac)
        )));
    }
    if *mac == [0; 6] {
        return Err(ControlError::Invalid(
            "MAC address 00:00:00:00:00:00 is not usable: give a real one or omit --mac-address"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_arithmetic() {
        let net = c("198.18.0.5/24");
        assert_eq!(net.network(), c("198.18.0.0/24"));
        assert_eq!(
            u128_to_ip(net.last(), true),
            "198.18.0.255".parse::<IpAddr>().unwrap()
        );
        assert!(net.contains_ip("198.18.0.200".parse().unwrap()));
        assert!(!net.contains_ip("198.18.1.0".parse().unwrap()));
        assert!(!net.contains_ip("2001:db8::1".parse().unwrap()));
        assert!(c("198.18.0.0/16").contains(&c("198.18.3.0/24")));
        assert!(!c("198.18.3.0/24").contains(&c("198.18.0.0/16")));
        assert!(c("198.18.3.0/24").overlaps(&c("198.18.0.0/16")));
        assert!(!c("198.18.3.0/24").overlaps(&c("198.18.4.0/24")));
        assert!(!c("198.18.0.0/24").overlaps(&c("2001:db8::/32")));
        let v6 = c("2001:db8:1::/64");
        assert_eq!(
            u128_to_ip(v6.last(), false),
            "2001:db8:1::ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c("0.0.0.0/0").first(), 0);
        assert_eq!(c("::/0").last(), u128::MAX);
        assert_eq!(c("198.18.0.7/32").first(), c("198.18.0.7/32").last());
    }

    #[test]
    fn cidr_parse_errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert!(err("198.18.0.0").contains("not a CIDR"));
        assert!(err("198.18.0.0/33").contains("0-32"));
        assert!(err("2001:db8::/129").contains("0-128"));
        assert!(err("nope/24").contains("not an IP"));
        assert_eq!(
            "198.18.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixLength {
                text: "198.18.0.0/33".into(),
                max: 32
            })
        );
        let json = serde_json::to_string(&c("2001:db8::/64")).unwrap();
        assert_eq!(json, "\"2001:db8::/64\"");
        assert_eq!(
            serde_json::from_str::<Cidr>(&json).unwrap(),
            c("2001:db8::/64")
        );
    }

    #[test]
    fn parent_parsing() {
        assert_eq!(
            ParentSpec::parse("eth0").unwrap(),
            ParentSpec {
                name: "eth0".into(),
                vlan: None
            }
        );
        assert_eq!(
            ParentSpec::parse("eth0.100").unwrap().vlan,
            Some(("eth0".into(), 100))
        );
        assert_eq!(
            ParentSpec::parse("bond0.1.4094").unwrap().vlan,
            Some(("bond0.1".into(), 4094))
        );
        // A dotted name without a numeric suffix is a plain link name.
        assert_eq!(ParentSpec::parse("br.lan").unwrap().vlan, None);
        for bad in ["eth0.0", "eth0.4095", "eth0.40950"] {
            let e = ParentSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("out of range") && e.contains("1-4094"), "{e}");
        }
        let err = |s: &str| match ParentSpec::parse(s).unwrap_err() {
            ControlError::Invalid(e) => e,
            other => panic!("{s}: not Invalid: {other:?}"),
        };
        assert!(err(".100").contains("no interface"));
        assert!(err("averyveryverylongname").contains("1-15"));
        assert!(ParentSpec::parse("").is_err());
    }

    #[test]
    fn names_and_modes() {
        assert!(check_name("web-1.a_b", "network").is_ok());
        assert!(
            check_name("-web", "network")
                .unwrap_err()
                .to_string()
                .contains("starting with")
        );
        assert!(check_name("a b", "endpoint").is_err());
        assert!(check_ifname("eth0", "--ifname").is_ok());
        assert!(check_ifname("a/b", "--ifname").is_err());
        assert_eq!(
            "passthru".parse::<Mode>().unwrap().netlink(),
            MacVlanMode::Passthrough
        );
        assert!(
            "source"
                .parse::<Mode>()
                .unwrap_err()
                .to_string()
                .contains("bridge|private|vepa|passthru")
        );
        assert_eq!(serde_json::to_string(&Mode::Vepa).unwrap(), "\"vepa\"");
    }

    #[test]
    fn mac_derivation_and_checks() {
        assert_eq!(
            derived_mac(Ipv4Addr::new(198, 18, 0, 2)),
            [0x02, 0x42, 198, 18, 0, 2]
        );
        assert!(check_mac(&[0x02, 0, 0, 0, 0, 1]).is_ok());
        assert!(
            check_mac(&[0x03, 0, 0, 0, 0, 1])
                .unwrap_err()
                .to_string()
                .contains("multicast")
        );
        assert!(check_mac(&[0; 6]).is_err());
    }
}
