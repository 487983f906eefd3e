//! The CNI commands on top of the control path and the daemon: ADD makes the endpoint (with
//! the IPAM plugin's addresses) and attaches it to the running daemon; DEL undoes that and
//! tolerates anything already gone; CHECK compares kernel and daemon with `prevResult`;
//! STATUS asks the daemon; GC removes this network's attachments the runtime no longer knows.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{Env, NetConf, SUPPORTED_VERSIONS};
use super::error::*;
use super::ipam;
use super::types::{Addressing, Interface, interfaces, result_json};
use crate::control::external::{self, ExternalAddresses, ExternalEndpoint, ExternalNetwork};
use crate::control::{Endpoint, State, endpoint, provision};
use crate::ether::Mac;
use crate::ipc::protocol::{Answer, Request};
use crate::ipc::{Notified, notify};

/// Recorded as the networks' `created-by`.
pub const MADE_BY: &str = "xmacvlan-cni";

/// The endpoint name of an attachment: stable for (network, container, ifname), within the
/// 64 characters endpoint names allow (container ids alone can be 64).
pub fn endpoint_name(network: &str, container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [network, container_id, ifname].join("\0").bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("cni-{hash:016x}")
}

/// Who an endpoint belongs to, for GC (which must release its IPAM lease): one file per
/// endpoint under `DATA_ROOT/cni/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    network: String,
    netns: String,
    /// The namespace's inode: names the container's port link (the netns may be gone at DEL).
    #[serde(default)]
    netns_inode: u64,
}

fn record_path(data_root: &Path, name: &str) -> PathBuf {
    data_root.join("cni").join(format!("{name}.json"))
}

fn write_record(data_root: &Path, name: &str, record: &Record) -> anyhow::Result<()> {
    let path = record_path(data_root, name);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(record)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn read_record(data_root: &Path, name: &str) -> Option<Record> {
    let bytes = std::fs::read(record_path(data_root, name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The endpoint's memif socket, as the daemon names it.
pub fn port_socket(port_dir: &Path, endpoint: &str) -> PathBuf {
    port_dir.join(format!("{endpoint}.sock"))
}

/// Where a container finds its port without knowing its endpoint's name:
/// `PORT_DIR/by-netns/<inode of its network namespace>/<ifname>.sock` (a container reads the
/// inode from `readlink /proc/self/ns/net`), a symlink to the endpoint's socket.
pub fn port_link(port_dir: &Path, netns_inode: u64, ifname: &str) -> PathBuf {
    port_dir
        .join("by-netns")
        .join(netns_inode.to_string())
        .join(format!("{ifname}.sock"))
}

fn link_port(conf: &NetConf, inode: u64, ifname: &str, endpoint: &str) -> anyhow::Result<()> {
    let link = port_link(&conf.port_dir, inode, ifname);
    std::fs::create_dir_all(link.parent().expect("has a parent"))?;
    std::fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(Path::new("../..").join(format!("{endpoint}.sock")), &link)?;
    Ok(())
}

fn unlink_port(conf: &NetConf, record: &Record) {
    if record.netns_inode == 0 {
        return;
    }
    let link = port_link(&conf.port_dir, record.netns_inode, &record.ifname);
    std::fs::remove_file(&link).ok();
    // Only removed when empty: another interface of the same container may still have one.
    std::fs::remove_dir(link.parent().expect("has a parent")).ok();
}

fn state(conf: &NetConf) -> CniResult<State> {
    State::load(&conf.data_root)
        .map_err(|e| CniError::with_cause(IO_FAILURE, "reading xmacvlan's state (dataRoot)", e))
}

/// Ask the daemon; a daemon that is not running is error 50.
fn ask(conf: &NetConf, request: &Request) -> CniResult<Answer> {
    match notify(&conf.control_socket, request) {
        Ok(Notified::Answered(answer)) => Ok(answer),
        Ok(Notified::NoDaemon) => Err(not_running(conf)),
        Err(e) => Err(CniError::with_cause(
            NOT_AVAILABLE,
            format!(
                "the xmacvlan daemon at {} did not answer: {e:#}",
                conf.control_socket.display()
            ),
            e,
        )),
    }
}

fn not_running(conf: &NetConf) -> CniError {
    CniError::new(
        NOT_AVAILABLE,
        format!(
            "the xmacvlan daemon is not running (nothing listens on {}): start it \
             (`xmacvlan daemon`, or the xmacvlan DaemonSet), or fix `controlSocket`",
            conf.control_socket.display()
        ),
    )
}

/// The master must exist before anything is allocated (an `IF.VID` whose trunk exists is
/// made by the control path).
fn check_master(conf: &NetConf) -> CniResult<()> {
    let spec = crate::control::model::ParentSpec::parse(&conf.master)
        .map_err(|e| CniError::new(INVALID_CONFIG, e.to_string()))?;
    let nl = crate::netlink::Netlink::new()
        .map_err(|e| CniError::with_cause(IO_FAILURE, "opening rtnetlink", e))?;
    let exists = |name: &str| nl.link_by_name(name).ok().flatten().is_some();
    let found = exists(&spec.name) || spec.vlan.as_ref().is_some_and(|(trunk, _)| exists(trunk));
    if !found {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!(
                "master `{}` does not exist on this host: check `ip link show` and fix `master`",
                conf.master
            ),
        ));
    }
    Ok(())
}

/// What IPAM assigned, as the device gets it: default routes become the gateways.
fn addresses_of(a: &Addressing) -> ExternalAddresses {
    let mut out = ExternalAddresses {
        addresses: a.ips.iter().map(|ip| ip.address).collect(),
        ..ExternalAddresses::default()
    };
    for r in &a.routes {
        let gw = a.gateway_for(r);
        if r.dst.prefix == 0 {
            if let Some(gw) = gw
                && !out.gateways.iter().any(|g| g.is_ipv4() == gw.is_ipv4())
            {
                out.gateways.push(gw);
            }
        } else {
            out.routes.push((r.dst, gw));
        }
    }
    out
}

pub fn add(env: &Env, conf: &NetConf) -> CniResult<Value> {
    ask(conf, &Request::Ping)?;
    check_master(conf)?;
    crate::netns::Netns::open(&env.netns).map_err(|e| {
        let e = anyhow::Error::from(e);
        CniError::with_cause(UNKNOWN_CONTAINER, format!("CNI_NETNS: {e:#}"), e)
    })?;
    let name = endpoint_name(&conf.name, &env.container_id, &env.ifname);
    // Checked before IPAM: releasing a lease on failure would release the existing one's.
    if state(conf)?.endpoint(&name).is_some() {
        return Err(CniError::new(
            PROVISION_FAILED,
            format!(
                "container {} already has {} on network {}: DEL it before adding it again",
                env.container_id, env.ifname, conf.name
            ),
        ));
    }
    let network = ExternalNetwork {
        name: conf.name.clone(),
        parent: conf.master.clone(),
        mode: conf.mode,
        made_by: MADE_BY.into(),
    };
    // The device first, as the reference plugin does: the dhcp IPAM plugin runs its client
    // on it.
    let device = ExternalEndpoint {
        name: name.clone(),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        mac: conf.mac.clone(),
        mtu: conf.mtu,
    };
    let (net, _) = external::attach(&conf.data_root, &network, &device)
        .map_err(|e| CniError::control("creating the endpoint", e))?;
    let netns_inode = match std::fs::metadata(&env.netns) {
        Ok(m) => std::os::unix::fs::MetadataExt::ino(&m),
        Err(e) => {
            endpoint::remove(&conf.data_root, &name).ok();
            external::remove_network_if_unused(&conf.data_root, &conf.name, MADE_BY).ok();
            return Err(CniError::new(
                UNKNOWN_CONTAINER,
                format!("CNI_NETNS {}: {e}", env.netns),
            ));
        }
    };
    let record = Record {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        network: conf.name.clone(),
        netns: env.netns.clone(),
        netns_inode,
    };
    // Every later failure removes the device, its record and port link (and the network
    // when it was the first attachment).
    let remove_device = |e: CniError| {
        unlink_port(conf, &record);
        std::fs::remove_file(record_path(&conf.data_root, &name)).ok();
        endpoint::remove(&conf.data_root, &name).ok();
        external::remove_network_if_unused(&conf.data_root, &conf.name, MADE_BY).ok();
        e
    };
    // Recorded before IPAM runs, so GC can release a lease whatever happens next.
    write_record(&conf.data_root, &name, &record)
        .and_then(|()| link_port(conf, netns_inode, &env.ifname, &name))
        .map_err(|e| {
            remove_device(CniError::with_cause(
                IO_FAILURE,
                format!("recording the attachment (dataRoot) or its port link (portDir): {e:#}"),
                e,
            ))
        })?;
    let mut addressing = ipam::add(env, conf).map_err(remove_device)?;
    // Addresses for other interfaces of a multi-interface result are not this one's.
    addressing
        .ips
        .retain(|ip| ip.interface.is_none_or(|i| i == 0));
    // From here on a failure releases the lease, then removes the device.
    let undo = |e: CniError| {
        ipam::exec(env, conf, "DEL", &env.container_id, &env.ifname).ok();
        remove_device(e)
    };
    let ep = external::configure(&conf.data_root, &name, &addresses_of(&addressing))
        .map_err(|e| undo(CniError::control("configuring the endpoint", e)))?;
    ask(
        conf,
        &Request::Attach {
            iface: net.link.clone(),
            endpoint: ep.spec(),
        },
    )
    .map_err(|e| {
        undo(CniError {
            msg: format!("attaching the endpoint to the fast path: {}", e.msg),
            ..e
        })
    })?;
    let iface = Interface {
        name: ep.ifname.clone(),
        mac: Mac(ep.mac).to_string(),
        sandbox: env.netns.clone(),
        socket_path: Some(port_socket(&conf.port_dir, &ep.name).display().to_string()),
    };
    Ok(result_json(&conf.cni_version, &iface, &addressing))
}

/// Take an endpoint off the daemon, if one runs. A daemon that cannot detach now drops the
/// endpoint when it restarts (its device is gone by then).
fn detach(conf: &NetConf, name: &str) {
    let request = Request::Detach {
        endpoint: name.to_string(),
    };
    if let Err(e) = notify(&conf.control_socket, &request) {
        eprintln!("xmacvlan-cni: detaching {name} from the daemon: {e:#}");
    }
}

/// Remove an endpoint's device, its record and its port link (after IPAM released the lease:
/// dhcp releases it through the device).
fn remove_device(conf: &NetConf, ep: &Endpoint) -> CniResult<()> {
    endpoint::remove(&conf.data_root, &ep.name)
        .map_err(|e| CniError::control(format_args!("removing endpoint {}", ep.name), e))?;
    if let Some(record) = read_record(&conf.data_root, &ep.name) {
        unlink_port(conf, &record);
    }
    std::fs::remove_file(record_path(&conf.data_root, &ep.name)).ok();
    Ok(())
}

pub fn del(env: &Env, conf: &NetConf) -> CniResult<()> {
    let name = endpoint_name(&conf.name, &env.container_id, &env.ifname);
    let ep = state(conf)?.endpoint(&name).cloned();
    if ep.is_some() {
        detach(conf, &name);
    }
    // The lease first (as the reference plugin): a failure leaves the device for a retry.
    ipam::exec(env, conf, "DEL", &env.container_id, &env.ifname)?;
    if let Some(ep) = &ep {
        remove_device(conf, ep)?;
    }
    external::remove_network_if_unused(&conf.data_root, &conf.name, MADE_BY)
        .map_err(|e| CniError::control("removing the network's record", e))?;
    Ok(())
}

fn mismatch(msg: String) -> CniError {
    CniError::new(CHECK_FAILED, msg)
}

pub fn check(env: &Env, conf: &NetConf) -> CniResult<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "CHECK needs `prevResult` (the result of ADD) in the configuration",
        )
    })?;
    let name = endpoint_name(&conf.name, &env.container_id, &env.ifname);
    let ep = state(conf)?.endpoint(&name).cloned().ok_or_else(|| {
        CniError::new(
            UNKNOWN_CONTAINER,
            format!(
                "no attachment of container {} as {} on network {}: was ADD run?",
                env.container_id, env.ifname, conf.name
            ),
        )
    })?;
    let listed = interfaces(prev, "prevResult")?;
    let index = listed
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox == env.netns)
        .ok_or_else(|| {
            mismatch(format!(
                "prevResult lists no interface {} in sandbox {}",
                env.ifname, env.netns
            ))
        })?;
    let mac = Mac(ep.mac).to_string();
    if !listed[index].mac.eq_ignore_ascii_case(&mac) {
        return Err(mismatch(format!(
            "prevResult says {} has MAC {}, xmacvlan made it with {mac}",
            env.ifname, listed[index].mac
        )));
    }
    let device = provision::read_endpoint(&ep)
        .map_err(|e| CniError::control("reading the interface back", e))?
        .ok_or_else(|| {
            mismatch(format!(
                "interface {} is gone from namespace {}",
                ep.ifname, ep.netns
            ))
        })?;
    let link = &device.link;
    if link.kind.as_deref() != Some("macvlan") || link.mac != ep.mac {
        return Err(mismatch(format!(
            "{} in {} is a {} with MAC {}, not the macvlan xmacvlan made ({mac})",
            ep.ifname,
            ep.netns,
            link.kind.as_deref().unwrap_or("device"),
            Mac(link.mac)
        )));
    }
    if link.macvlan_mode != Some(conf.mode.netlink()) {
        return Err(mismatch(format!(
            "{} is not in macvlan mode {}",
            ep.ifname,
            conf.mode.as_str()
        )));
    }
    if let Some(mtu) = conf.mtu
        && link.mtu != mtu
    {
        return Err(mismatch(format!(
            "{} has MTU {}, the config says {mtu}",
            ep.ifname, link.mtu
        )));
    }
    let addressing = Addressing::parse(prev, "prevResult")?;
    for ip in addressing
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index))
    {
        if !device
            .addresses
            .contains(&(ip.address.addr, ip.address.prefix))
        {
            return Err(mismatch(format!(
                "address {} of prevResult is not on {}",
                ip.address, ep.ifname
            )));
        }
    }
    for r in &addressing.routes {
        let gw = addressing.gateway_for(r);
        let found = device.routes.iter().any(|k| {
            k.destination == r.dst.network().addr && k.prefix == r.dst.prefix && k.gateway == gw
        });
        // A default route the namespace already had from another network is not ours.
        let foreign_default = r.dst.prefix == 0 && !gw.is_some_and(|g| ep.gateways.contains(&g));
        if !found && !foreign_default {
            return Err(mismatch(format!(
                "route {} via {gw:?} of prevResult is not in namespace {}",
                r.dst, ep.netns
            )));
        }
    }
    ipam::exec(env, conf, "CHECK", &env.container_id, &env.ifname)?;
    match ask(conf, &Request::Stats)? {
        Answer::Stats { demux, .. } if demux == "kernel" => Ok(()),
        Answer::Stats { interfaces, .. } => {
            if interfaces
                .iter()
                .any(|i| i.endpoints.iter().any(|e| e.name == ep.name))
            {
                Ok(())
            } else {
                Err(mismatch(format!(
                    "the xmacvlan daemon does not serve endpoint {} on the fast path",
                    ep.name
                )))
            }
        }
        other => Err(mismatch(format!(
            "the daemon answered stats with {other:?}"
        ))),
    }
}

pub fn status(env: &Env, conf: &NetConf) -> CniResult<()> {
    ask(conf, &Request::Ping)?;
    ipam::find(env, &conf.ipam_type).map_err(|e| CniError {
        code: NOT_AVAILABLE,
        ..e
    })?;
    Ok(())
}

pub fn gc(env: &Env, conf: &NetConf) -> CniResult<()> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            INVALID_CONFIG,
            "GC needs `cni.dev/valid-attachments` (the attachments to keep)",
        )
    })?;
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| endpoint_name(&conf.name, &a.container_id, &a.ifname))
        .collect();
    let st = state(conf)?;
    let Some(net) = st.network(&conf.name) else {
        return Ok(());
    };
    if net.options.get(external::MADE_BY).map(String::as_str) != Some(MADE_BY) {
        return Ok(());
    }
    let mut first_error = None;
    for ep in st
        .endpoints_of(&net.name)
        .filter(|e| !keep.contains(&e.name))
    {
        detach(conf, &ep.name);
        let result = match read_record(&conf.data_root, &ep.name) {
            Some(r) => ipam::exec(env, conf, "DEL", &r.container_id, &r.ifname).map(|_| ()),
            None => Ok(()),
        }
        .and_then(|()| remove_device(conf, ep));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    external::remove_network_if_unused(&conf.data_root, &conf.name, MADE_BY)
        .map_err(|e| CniError::control("removing the network's record", e))?;
    first_error.map_or(Ok(()), Err)
}

pub fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_stable_valid_and_distinct() {
        let id = "f".repeat(64);
        let a = endpoint_name("net", &id, "eth0");
        assert_eq!(a, endpoint_name("net", &id, "eth0"));
        assert_ne!(a, endpoint_name("net", &id, "eth1"));
        assert_ne!(a, endpoint_name("net2", &id, "eth0"));
        assert!(crate::control::model::check_name(&a, "endpoint").is_ok());
    }
}
