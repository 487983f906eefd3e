//! Each plugin call translated onto the control path (`control::docker`) and the daemon's
//! fast path (over its control socket, exactly as `xmacvlan endpoint create|rm` does).
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::api;
use crate::control::docker::{self as ctl, DockerEndpoint};
use crate::control::{Cidr, ControlError, NetworkCreate};
use crate::ether::Mac;
use crate::ipc::protocol::{Answer, Request};
use crate::ipc::{Notified, notify};

/// What the handlers need: the state's root and the daemon's control socket.
#[derive(Debug, Clone)]
pub struct Context {
    pub data_root: PathBuf,
    pub control_socket: PathBuf,
}

/// Why a call was refused: Docker shows the message (its `Err`) to the user.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The request is not what the protocol says: its body, an id, an address.
    #[error("{0}")]
    BadRequest(String),
    /// The control path refused or failed (the same errors as `xmacvlan network|endpoint`).
    #[error(transparent)]
    Control(#[from] ControlError),
}

type Result<T, E = PluginError> = std::result::Result<T, E>;

/// What one call produced: the HTTP status and the JSON body; `joined` names an endpoint
/// whose link Docker is about to move (see [`ctl::settle`]).
pub struct Outcome {
    pub status: u16,
    pub body: Value,
    pub joined: Option<String>,
}

fn ok(body: Value) -> Outcome {
    Outcome {
        status: 200,
        body,
        joined: None,
    }
}

/// Dispatch one call by its path (`/NetworkDriver.Join`).
pub fn handle(ctx: &Context, path: &str, body: &[u8]) -> Outcome {
    let method = path.trim_start_matches('/');
    let result = match method {
        "Plugin.Activate" => Ok(ok(json!({"Implements": ["NetworkDriver"]}))),
        "NetworkDriver.GetCapabilities" => {
            Ok(ok(json!({"Scope": "local", "ConnectivityScope": "local"})))
        }
        "NetworkDriver.CreateNetwork" => parse(body).and_then(|r| create_network(ctx, r)),
        "NetworkDriver.DeleteNetwork" => parse(body).and_then(|r| delete_network(ctx, r)),
        "NetworkDriver.CreateEndpoint" => parse(body).and_then(|r| create_endpoint(ctx, r)),
        "NetworkDriver.DeleteEndpoint" => parse(body).and_then(|r| delete_endpoint(ctx, r)),
        "NetworkDriver.EndpointOperInfo" => parse::<api::EndpointOnly>(body).and_then(|r| {
            ctl::check_id(&r.endpoint_id, "EndpointID")?;
            Ok(ok(
                json!({"Value": {"xmacvlan.endpoint": ctl::name_of(&r.endpoint_id)}}),
            ))
        }),
        "NetworkDriver.Join" => parse(body).and_then(|r| join(ctx, r)),
        "NetworkDriver.Leave" => parse::<api::EndpointOnly>(body).and_then(|r| {
            ctl::leave(&ctx.data_root, &r.endpoint_id)?;
            Ok(ok(json!({})))
        }),
        "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity" => {
            // Nothing to do for a local macvlan network, as in Docker's own driver.
            parse::<Value>(body).map(|_| ok(json!({})))
        }
        _ => {
            return Outcome {
                status: 404,
                body: json!({"Err": format!("unknown plugin method `{method}`: xmacvlan implements Plugin.Activate and the NetworkDriver calls")}),
                joined: None,
            };
        }
    };
    result.unwrap_or_else(|e| Outcome {
        status: 200,
        body: json!({"Err": format!("{:#}", anyhow::Error::from(e))}),
        joined: None,
    })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| PluginError::BadRequest(format!("malformed request body: {e}")))
}

/// `198.18.0.1/24` → `198.18.0.1` (Docker sends gateways and aux addresses in CIDR form).
fn strip_prefix(text: &str, what: &str) -> Result<String> {
    let ip = text.split_once('/').map_or(text, |(ip, _)| ip);
    ip.parse::<IpAddr>()
        .map_err(|_| PluginError::BadRequest(format!("{what} `{text}` is not an IP address")))?;
    Ok(ip.to_string())
}

fn create_network(ctx: &Context, r: api::CreateNetwork) -> Result<Outcome> {
    ctl::check_id(&r.network_id, "NetworkID")?;
    let mut req = NetworkCreate {
        name: ctl::name_of(&r.network_id),
        driver: "macvlan".into(),
        ..Default::default()
    };
    if let Some(generic) = r.options.get(api::GENERIC) {
        let Value::Object(map) = generic else {
            return Err(PluginError::BadRequest(format!(
                "Options[{}] is not an object",
                api::GENERIC
            )));
        };
        for (key, value) in map {
            let Value::String(value) = value else {
                return Err(PluginError::BadRequest(format!(
                    "option `-o {key}` is not a string"
                )));
            };
            req.options.push(format!("{key}={value}"));
        }
    }
    // `--ipam-driver null` (what a `dhcp` network wants) still sends a pool: everything.
    let real = |d: &&api::IpamData| {
        d.address_space != "null" && !["0.0.0.0/0", "::/0"].contains(&d.pool.as_str())
    };
    for data in r.ipv4_data.iter().chain(&r.ipv6_data).filter(real) {
        req.subnets.push(data.pool.clone());
        if !data.gateway.is_empty() {
            req.gateways.push(strip_prefix(&data.gateway, "--gateway")?);
        }
        for (name, ip) in &data.aux_addresses {
            req.aux_addresses
                .push(format!("{name}={}", strip_prefix(ip, "--aux-address")?));
        }
    }
    let net = ctl::create_network(&ctx.data_root, &req, &r.network_id)?;
    tracing::info!(network = %net.name, parent = %net.parent, mode = net.mode.as_str(), "docker: network created");
    Ok(ok(json!({})))
}

fn delete_network(ctx: &Context, r: api::NetworkOnly) -> Result<Outcome> {
    ctl::check_id(&r.network_id, "NetworkID")?;
    for name in ctl::orphans(&ctx.data_root, &r.network_id)? {
        tracing::warn!(endpoint = %name, "docker: removing an endpoint Docker no longer has (its DeleteEndpoint found no daemon)");
        tell_daemon(
            ctx,
            &Request::Detach {
                endpoint: name.clone(),
            },
            &name,
        );
    }
    if let Some(net) = ctl::delete_network(&ctx.data_root, &r.network_id)? {
        tracing::info!(network = %net.name, "docker: network removed");
    }
    Ok(ok(json!({})))
}

fn cidr(text: &str, what: &str) -> Result<Option<Cidr>> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| PluginError::BadRequest(format!("Interface.{what} {e}")))
}

fn create_endpoint(ctx: &Context, r: api::CreateEndpoint) -> Result<Outcome> {
    let iface = r.interface.unwrap_or_default();
    let mac = match iface.mac_address.as_str() {
        "" => None,
        text => Some(
            text.parse::<Mac>()
                .map_err(|e| PluginError::BadRequest(e.to_string()))?
                .0,
        ),
    };
    let (ep, net) = ctl::create_endpoint(
        &ctx.data_root,
        &DockerEndpoint {
            network_id: r.network_id,
            endpoint_id: r.endpoint_id,
            address: cidr(&iface.address, "Address")?,
            address6: cidr(&iface.address_ipv6, "AddressIPv6")?,
            mac,
        },
    )?;
    tell_daemon(
        ctx,
        &Request::Attach {
            iface: net.link.clone(),
            endpoint: ep.spec(),
        },
        &ep.name,
    );
    tracing::info!(endpoint = %ep.name, network = %net.name, mac = %Mac(ep.mac), "docker: endpoint created");
    // Docker wants back only what it did not give: the MAC unless it chose one, the leased
    // address on a `dhcp` network (its `null` IPAM gave none).
    let mut interface = api::EndpointInterface::default();
    if mac.is_none() {
        interface.mac_address = Mac(ep.mac).to_string();
    }
    if let Some(lease) = &ep.lease {
        interface.address = lease.cidr().to_string();
    }
    let body = if interface.mac_address.is_empty() && interface.address.is_empty() {
        json!({})
    } else {
        json!({ "Interface": interface })
    };
    Ok(ok(body))
}

fn join(ctx: &Context, r: api::Join) -> Result<Outcome> {
    let (ep, _) = ctl::join(&ctx.data_root, &r.endpoint_id, &r.sandbox_key)?;
    // The subnet's gateway, or the leased router.
    let gateway_of = |v4: bool| {
        ep.gateways
            .iter()
            .find(|g| g.is_ipv4() == v4)
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    let body = api::JoinResponse {
        interface_name: api::InterfaceName {
            src_name: ctl::host_ifname(&r.endpoint_id),
            dst_prefix: ctl::DST_PREFIX.into(),
        },
        gateway: gateway_of(true),
        gateway_ipv6: gateway_of(false),
        disable_gateway_service: true,
    };
    tracing::info!(endpoint = %ep.name, sandbox = %ep.netns, ifname = %ep.ifname, "docker: endpoint joined");
    Ok(Outcome {
        status: 200,
        body: serde_json::to_value(body).expect("plain data"),
        joined: Some(r.endpoint_id),
    })
}

fn delete_endpoint(ctx: &Context, r: api::EndpointOnly) -> Result<Outcome> {
    ctl::check_id(&r.endpoint_id, "EndpointID")?;
    let name = ctl::name_of(&r.endpoint_id);
    // The fast path lets go first, as `xmacvlan endpoint rm` does.
    tell_daemon(
        ctx,
        &Request::Detach {
            endpoint: name.clone(),
        },
        &name,
    );
    if ctl::delete_endpoint(&ctx.data_root, &r.endpoint_id)?.is_some() {
        tracing::info!(endpoint = %name, "docker: endpoint removed");
    }
    Ok(ok(json!({})))
}

/// Once Docker moved the link into its sandbox: the endpoint's port admits clients from the
/// sandbox from now on. The daemon took the endpoint at CreateEndpoint, when its record named
/// the host namespace, so it is detached and attached again from the record (no application
/// can be attached yet: the container is only starting).
pub fn follow_sandbox(ctx: &Context, endpoint_id: &str) -> Result<()> {
    let name = ctl::name_of(endpoint_id);
    let state = crate::control::State::load(&ctx.data_root).map_err(ControlError::from)?;
    let Some(ep) = state.endpoint(&name) else {
        return Ok(());
    };
    let net = state.network(&ep.network).ok_or_else(|| {
        ControlError::NotFound(format!(
            "network `{}` of endpoint {name} is gone",
            ep.network
        ))
    })?;
    tell_daemon(
        ctx,
        &Request::Detach {
            endpoint: name.clone(),
        },
        &name,
    );
    tell_daemon(
        ctx,
        &Request::Attach {
            iface: net.link.clone(),
            endpoint: ep.spec(),
        },
        &name,
    );
    tracing::info!(endpoint = %name, sandbox = %ep.netns, "docker: the endpoint's port admits the sandbox's clients");
    Ok(())
}

/// The daemon serving this plugin is the one behind the control socket; a refusal leaves the
/// endpoint on its kernel macvlan (as `xmacvlan endpoint create` does) and is logged.
fn tell_daemon(ctx: &Context, request: &Request, endpoint: &str) {
    match notify(&ctx.control_socket, request) {
        Ok(Notified::Answered(Answer::Attached { fast_path, .. })) => {
            tracing::debug!(endpoint, fast_path, "docker: endpoint attached")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            endpoint,
            "docker: the fast path did not take the change: {e:#}; the endpoint works through its kernel macvlan"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(tag: &str) -> (Context, PathBuf) {
        let dir = std::env::temp_dir().join(format!("xmv-plugin-{tag}-{}", std::process::id()));
        let ctx = Context {
            data_root: dir.join("data"),
            control_socket: dir.join("none.sock"),
        };
        (ctx, dir)
    }

    fn err(outcome: &Outcome) -> String {
        outcome.body["Err"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn activation_capabilities_and_unknown_methods() {
        let (ctx, dir) = ctx("basic");
        let o = handle(&ctx, "/Plugin.Activate", b"");
        assert_eq!(o.body, json!({"Implements": ["NetworkDriver"]}));
        let o = handle(&ctx, "/NetworkDriver.GetCapabilities", b"{}");
        assert_eq!(o.body["Scope"], "local");
        let o = handle(&ctx, "/NetworkDriver.AllocateNetwork", b"{}");
        assert_eq!(o.status, 404);
        assert!(err(&o).contains("unknown plugin method"), "{}", err(&o));
        let o = handle(&ctx, "/NetworkDriver.Join", b"{not json");
        assert!(err(&o).contains("malformed request body"), "{}", err(&o));
        let o = handle(&ctx, "/NetworkDriver.Join", br#"{"EndpointID": "../x"}"#);
        assert!(err(&o).contains("not a Docker id"), "{}", err(&o));
        assert!(!dir.exists(), "refused calls touch nothing");
    }

    /// A protocol violation and a refusal of the control path are told apart by their variant.
    #[test]
    fn refusals_say_whose_they_are() {
        let (ctx, dir) = ctx("kinds");
        let request = |generic: Value, gateway: &str| {
            serde_json::from_value::<api::CreateNetwork>(json!({
                "NetworkID": "cd".repeat(32),
                "Options": {"com.docker.network.generic": generic},
                "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "198.18.0.0/24", "Gateway": gateway}],
            }))
            .unwrap()
        };
        let refused = |r| create_network(&ctx, r).err().expect("refused");
        match refused(request(json!({"parent": 7}), "198.18.0.1/24")) {
            PluginError::BadRequest(e) => assert!(e.contains("not a string"), "{e}"),
            other => panic!("not a bad request: {other:?}"),
        }
        match refused(request(json!({"parent": "xmv-none0"}), "198.18.9.1/24")) {
            PluginError::Control(e) => assert!(matches!(e.cause(), ControlError::Invalid(_))),
            other => panic!("not the control path's: {other:?}"),
        }
        assert!(!dir.exists(), "refused calls touch nothing");
    }

    /// Docker's own IPAM refuses a gateway outside the subnet before calling a driver; a
    /// client speaking the protocol directly gets `xmacvlan network create`'s messages, and
    /// nothing is made.
    #[test]
    fn create_network_checks_what_network_create_checks() {
        let (ctx, dir) = ctx("create");
        let call = |gateway: &str, generic: Value| {
            let body = json!({
                "NetworkID": "ab".repeat(32),
                "Options": {"com.docker.network.generic": generic},
                "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "198.18.0.0/24", "Gateway": gateway}],
                "IPv6Data": [],
            });
            err(&handle(
                &ctx,
                "/NetworkDriver.CreateNetwork",
                body.to_string().as_bytes(),
            ))
        };
        let e = call("198.18.9.1/24", json!({"parent": "xmv-none0"}));
        assert!(
            e.contains("--gateway 198.18.9.1 is outside every --subnet"),
            "{e}"
        );
        let e = call(
            "198.18.0.1/24",
            json!({"parent": "xmv-none0", "macvlan_mode": "x"}),
        );
        assert!(e.contains("unknown macvlan mode `x`"), "{e}");
        let e = call("198.18.0.1/24", json!({}));
        assert!(e.contains("-o parent=IF is required"), "{e}");
        let e = call("198.18.0.1/24", json!({"parent": 7}));
        assert!(e.contains("not a string"), "{e}");
        let e = call("nonsense", json!({"parent": "v0"}));
        assert!(e.contains("not an IP address"), "{e}");
        let e = call("198.18.0.1/24", json!({"parent": "v0", "dhcp": "true"}));
        assert!(e.contains("--ipam-driver null"), "{e}");
        let e = call(
            "198.18.0.1/24",
            json!({"parent": "v0", "host_shim": "true"}),
        );
        assert!(
            e.contains("--aux-address host_shim=IP for 198.18.0.0/24"),
            "{e}"
        );
        let e = call("198.18.0.1/24", json!({"parent": "v0", "mtu": "huge"}));
        assert!(e.contains("`-o mtu=huge` is not a number"), "{e}");
        let state = crate::control::State::load(&ctx.data_root).unwrap();
        assert!(state.networks.is_empty());
        std::fs::remove_dir_all(dir).ok();
    }
}
