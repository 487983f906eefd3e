//! CNI results: the IPAM plugin's (read, any supported version) and the plugin's own
//! (written in the config's version: 1.x has no `version` on IPs, 0.3.x/0.4.0 does).
use std::net::IpAddr;

use serde_json::{Value, json};

use super::error::*;
use crate::control::Cidr;
use crate::control::model::CidrError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The interface address with its prefix (`198.18.0.2/24`).
    pub address: Cidr,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`, when given.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

/// What an IPAM plugin (or a previous plugin, as `prevResult`) answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Addressing {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    pub dns: Option<Value>,
}

/// The limits on what is read from a peer's result.
const MAX_ENTRIES: usize = 256;

fn bad(what: &str, detail: impl std::fmt::Display) -> CniError {
    CniError::new(DECODE_FAILURE, format!("{what}: {detail}"))
}

fn ip_field(v: &Value, key: &str, what: &str) -> CniResult<Option<IpAddr>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| bad(what, format!("`{key}` `{s}` is not an IP address"))),
        Some(other) => Err(bad(what, format!("`{key}` is {other}, not a string"))),
    }
}

fn cidr_field(v: &Value, key: &str, what: &str) -> CniResult<Cidr> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(what, format!("an entry has no `{key}`")))?
        .parse()
        .map_err(|e: CidrError| bad(what, e))
}

fn list<'a>(v: &'a Value, key: &str, what: &str) -> CniResult<&'a [Value]> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) if a.len() <= MAX_ENTRIES => Ok(a),
        Some(Value::Array(_)) => Err(bad(what, format!("more than {MAX_ENTRIES} `{key}`"))),
        Some(_) => Err(bad(what, format!("`{key}` is not an array"))),
    }
}

impl Addressing {
    /// Read a result object; `what` names it in errors ("the IPAM plugin's result").
    pub fn parse(v: &Value, what: &str) -> CniResult<Self> {
        let mut out = Addressing::default();
        for ip in list(v, "ips", what)? {
            let address = cidr_field(ip, "address", what)?;
            let interface = match ip.get("interface") {
                None | Some(Value::Null) => None,
                Some(i) => Some(
                    i.as_u64()
                        .filter(|i| *i < MAX_ENTRIES as u64)
                        .ok_or_else(|| bad(what, format!("`interface` {i} is not an index")))?
                        as usize,
                ),
            };
            out.ips.push(IpConfig {
                address,
                gateway: ip_field(ip, "gateway", what)?,
                interface,
            });
        }
        for r in list(v, "routes", what)? {
            out.routes.push(RouteConfig {
                dst: cidr_field(r, "dst", what)?,
                gw: ip_field(r, "gw", what)?,
            });
        }
        out.dns = v.get("dns").filter(|d| d.is_object()).cloned();
        Ok(out)
    }

    /// The gateway a route without one uses: the first IP of its family that has one.
    pub fn gateway_for(&self, route: &RouteConfig) -> Option<IpAddr> {
        route.gw.or_else(|| {
            self.ips
                .iter()
                .filter(|ip| ip.address.is_ipv4() == route.dst.is_ipv4())
                .find_map(|ip| ip.gateway)
        })
    }
}

/// One entry of a result's `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: String,
    /// The endpoint's memif socket (a 1.1.0 field; left out of older results).
    pub socket_path: Option<String>,
}

/// The plugin's ADD result in `version`.
pub fn result_json(version: &str, iface: &Interface, addressing: &Addressing) -> Value {
    let legacy = super::config::version_key(version) < (1, 0, 0);
    let ips: Vec<Value> = addressing
        .ips
        .iter()
        .map(|ip| {
            let mut o = json!({"address": ip.address.to_string(), "interface": 0});
            if let Some(gw) = ip.gateway {
                o["gateway"] = json!(gw.to_string());
            }
            if legacy {
                o["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
            }
            o
        })
        .collect();
    let routes: Vec<Value> = addressing
        .routes
        .iter()
        .map(|r| {
            let mut o = json!({"dst": r.dst.to_string()});
            if let Some(gw) = r.gw {
                o["gw"] = json!(gw.to_string());
            }
            o
        })
        .collect();
    let mut interface = json!({"name": iface.name, "mac": iface.mac, "sandbox": iface.sandbox});
    if let Some(path) = &iface.socket_path
        && super::config::version_key(version) >= (1, 1, 0)
    {
        interface["socketPath"] = json!(path);
    }
    let mut out = json!({"cniVersion": version, "interfaces": [interface], "ips": ips});
    if !routes.is_empty() {
        out["routes"] = json!(routes);
    }
    if let Some(dns) = &addressing.dns {
        out["dns"] = dns.clone();
    }
    out
}

/// The interfaces of a result (prevResult), checked.
pub fn interfaces(v: &Value, what: &str) -> CniResult<Vec<Interface>> {
    list(v, "interfaces", what)?
        .iter()
        .map(|i| {
            let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Ok(Interface {
                name: s("name"),
                mac: s("mac"),
                sandbox: s("sandbox"),
                socket_path: i
                    .get("socketPath")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_results_of_both_formats_and_writes_each() {
        let v040 = json!({"cniVersion": "0.4.0", "ips": [
            {"version": "4", "address": "198.18.0.2/24", "gateway": "198.18.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
        let a = Addressing::parse(&v040, "r").unwrap();
        assert_eq!(a.ips[0].address.to_string(), "198.18.0.2/24");
        assert_eq!(
            a.gateway_for(&a.routes[0]).unwrap().to_string(),
            "198.18.0.1"
        );
        let iface = Interface {
            name: "eth0".into(),
            mac: "02:42:c6:12:00:02".into(),
            sandbox: "/run/netns/x".into(),
            socket_path: None,
        };
        let new = result_json("1.0.0", &iface, &a);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["sandbox"], "/run/netns/x");
        let old = result_json("0.4.0", &iface, &a);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(Addressing::parse(&new, "r").unwrap().ips, a.ips);
        assert_eq!(interfaces(&new, "r").unwrap(), std::slice::from_ref(&iface));
        let with_socket = Interface {
            socket_path: Some("/run/xmacvlan/ports/e.sock".into()),
            ..iface
        };
        let v11 = result_json("1.1.0", &with_socket, &a);
        assert_eq!(
            v11["interfaces"][0]["socketPath"],
            "/run/xmacvlan/ports/e.sock"
        );
        assert!(
            result_json("1.0.0", &with_socket, &a)["interfaces"][0]
                .get("socketPath")
                .is_none()
        );
    }

    #[test]
    fn hostile_results_are_refused() {
        for bad in [
            json!({"ips": [{"address": "nope"}]}),
            json!({"ips": [{"address": "198.18.0.2/24", "gateway": 7}]}),
            json!({"ips": "x"}),
            json!({"routes": [{"gw": "198.18.0.1"}]}),
            json!({"ips": [{"address": "198.18.0.2/24", "interface": -1}]}),
            json!({"ips": vec![json!({"address": "198.18.0.2/24"}); 300]}),
        ] {
            let e = Addressing::parse(&bad, "the IPAM result").unwrap_err();
            assert_eq!(e.code, DECODE_FAILURE, "{bad}");
        }
    }
}
