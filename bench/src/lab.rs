//! The lab: a NIC made of a veth pair, a "wire" namespace holding the generator's end, and
//! endpoints on VLANs and untagged, each with a kernel macvlan device in its own namespace
//! where the kernel allows it. Everything lives in namespaces created here and is removed
//! when the [`Lab`] is dropped, also on error and on panic.
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xmacvlan::abi::Mac;
use xmacvlan::dataplane::{DataplaneConfig, EndpointSpec};
use xmacvlan::netlink::MacVlanMode as Mode;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;

use crate::ingress::{Feed, Ingress};

/// The veth end that plays the NIC (in the host namespace) and its peer on the wire.
pub const NIC: &str = "nic0";
pub const WIRE: &str = "wire0";
/// Source MAC of generated frames.
pub const GENERATOR_MAC: Mac = [0x02, 0x58, 0x4d, 0xff, 0xff, 0xfe];

#[derive(Debug, Clone)]
pub struct Topology {
    /// VLANs with endpoints; 0 stands for untagged.
    pub vlans: Vec<u16>,
    pub endpoints_per_vlan: usize,
    pub queues: u32,
    /// Where each endpoint's kernel macvlan device goes.
    pub kernel_devices: KernelDevices,
    /// MTU of the lab NIC and its peer (above 3498, XDP programs must be multi-buffer: the
    /// classifier is, the `xdp-frame` ingress's feed program is not). See [`mtu_for`].
    pub mtu: Option<u32>,
    /// How generated frames reach the NIC.
    pub ingress: Ingress,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            vlans: vec![100, 200, 0],
            endpoints_per_vlan: 2,
            queues: 1,
            kernel_devices: KernelDevices::OwnNamespace,
            mtu: None,
            ingress: Ingress::Skb,
        }
    }
}

/// The MTU a lab must set for frames of `frame_len` bytes (without FCS; a tag may come on top,
/// as veth allows): None for frames a standard MTU carries, else a jumbo MTU of 9000.
pub fn mtu_for(frame_len: usize) -> Option<u32> {
    (frame_len > 1514).then_some(JUMBO_MTU)
}

/// The MTU of a jumbo-frame network, as data centres run them.
pub const JUMBO_MTU: u32 = 9000;

/// Kernel macvlan devices for the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelDevices {
    None,
    /// Each in a namespace of its own with an address, as Docker's macvlan driver does.
    OwnNamespace,
    /// All in the host namespace, named `mv<i>` (the benchmark's kernel baseline reads them;
    /// a thousand namespaces would only slow the setup).
    Host,
}

pub struct Lab {
    /// Every namespace of this lab is named `{prefix}-…`.
    pub prefix: String,
    pub endpoints: Vec<EndpointSpec>,
    /// Per endpoint, the name of its macvlan device in the host namespace (`Host` placement).
    pub host_devices: Vec<Option<String>>,
    /// One-line notes on what could not be built (e.g. VLAN devices without 802.1Q).
    pub notes: Vec<String>,
    pub ingress: Ingress,
    // Fields drop in declaration order: endpoint namespaces (their macvlans) before the
    // host namespace (the NIC they hang off), then the wire.
    /// Per endpoint, its own namespace (`OwnNamespace` placement; made even where its VLAN
    /// device could not be, so an application there can attach to its port).
    endpoint_namespaces: Vec<Option<NetnsGuard>>,
    /// The `xdp-frame` ingress's redirect program (in the wire namespace).
    _feed: Option<Feed>,
    pub host: NetnsGuard,
    pub wire: NetnsGuard,
}

/// MAC of endpoint `i` on VLAN `vid`: locally administered, `02:58:<vid>:<i + 1>`.
pub fn endpoint_mac(vid: u16, i: usize) -> Mac {
    let n = (i + 1) as u16;
    [
        0x02,
        0x58,
        (vid >> 8) as u8,
        vid as u8,
        (n >> 8) as u8,
        n as u8,
    ]
}

pub fn endpoint_name(vid: u16, i: usize) -> String {
    if vid == 0 {
        format!("untag-{i}")
    } else {
        format!("v{vid}-{i}")
    }
}

impl Lab {
    /// Build the lab under a unique prefix (includes the pid).
    pub fn build(topology: &Topology) -> Result<Self> {
        crate::ingress::check(topology.ingress, topology.queues)?;
        let prefix = format!("xmvlab{}-{}", std::process::id(), unique_suffix());
        let host = NetnsGuard::create(&format!("{prefix}-host"))?;
        let wire = NetnsGuard::create(&format!("{prefix}-wire"))?;
        let wire_file = wire.file()?;
        let mut endpoints = Vec::new();
        for &vid in &topology.vlans {
            for i in 0..topology.endpoints_per_vlan {
                endpoints.push(EndpointSpec {
                    name: endpoint_name(vid, i),
                    vid,
                    mac: endpoint_mac(vid, i),
                });
            }
        }
        // The wire carries only generated frames: no IPv6 autoconfiguration chatter from
        // the generator's side, so XDP counters equal what the generator sent.
        wire.run(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                .context("disabling IPv6 in the wire namespace")
        })?;
        host.run(|| {
            let nl = Netlink::new()?;
            let nic = nl.add_veth(NIC, WIRE, topology.queues)?;
            let wire_index = nl.require_link(WIRE)?.index;
            if let Some(mtu) = topology.mtu {
                nl.set_mtu(nic, mtu)?;
                nl.set_mtu(wire_index, mtu)?;
            }
            nl.set_netns(wire_index, &wire_file)?;
            nl.set_up(nic)?;
            Ok(())
        })?;
        let feed = wire.run(|| {
            let nl = Netlink::new()?;
            let index = nl.require_link(WIRE)?.index;
            nl.set_up(index)?;
            match topology.ingress {
                Ingress::Skb => Ok(None),
                Ingress::XdpFrame => Feed::install(&nl, index).map(Some),
            }
        })?;
        if topology.ingress == Ingress::XdpFrame {
            // veth takes redirected frames only while the receiving end runs NAPI: with an
            // XDP program, or with GRO on, which keeps NAPI for the kernel path too.
            shell_in(&host, &format!("ethtool -K {NIC} gro on"))
                .context("turning GRO on for the xdp-frame ingress")?;
        }
        let mut lab = Lab {
            prefix: prefix.clone(),
            host_devices: vec![None; endpoints.len()],
            endpoints,
            notes: Vec::new(),
            ingress: topology.ingress,
            endpoint_namespaces: Vec::new(),
            _feed: feed,
            host,
            wire,
        };
        if topology.ingress == Ingress::XdpFrame {
            lab.notes.push(format!(
                "ingress xdp-frame: the generator sends into {}; the feed program redirects \
                 every frame into {WIRE}, so it reaches {NIC} as an xdp_frame, like a NIC's buffer",
                crate::ingress::GENERATOR_PORT
            ));
        }
        match topology.kernel_devices {
            KernelDevices::None => {}
            KernelDevices::OwnNamespace => lab.add_kernel_devices(&prefix)?,
            KernelDevices::Host => lab.add_host_devices()?,
        }
        Ok(lab)
    }

    /// A macvlan per endpoint, on the NIC (untagged) or on its VLAN sub-interface, moved into
    /// a namespace of its own with an address: what Docker's macvlan driver would create.
    fn add_kernel_devices(&mut self, prefix: &str) -> Result<()> {
        let mut missing_vlans = Vec::new();
        let mut vlan_error = None;
        let mut namespaces: Vec<Option<NetnsGuard>> = std::iter::repeat_with(|| None)
            .take(self.endpoints.len())
            .collect();
        let vlans: Vec<u16> = dedup(self.endpoints.iter().map(|e| e.vid));
        for (vlan_index, &vid) in vlans.iter().enumerate() {
            let parent = self.host.run(|| {
                let nl = Netlink::new()?;
                let nic = nl.require_link(NIC)?.index;
                if vid == 0 {
                    return Ok(Some(nic));
                }
                match nl.add_vlan(&format!("{NIC}.{vid}"), nic, vid) {
                    Ok(index) => {
                        nl.set_up(index)?;
                        Ok(Some(index))
                    }
                    Err(e) => {
                        vlan_error.get_or_insert_with(|| format!("{e:#}"));
                        Ok(None)
                    }
                }
            })?;
            if parent.is_none() {
                missing_vlans.push(format!("{NIC}.{vid}"));
            }
            let on_vlan = self
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.vid == vid);
            for (i, (index, ep)) in on_vlan.enumerate() {
                let ns = NetnsGuard::create(&format!("{prefix}-{}", ep.name))?;
                if let Some(parent) = parent {
                    let ns_file = ns.file()?;
                    let temp_name = format!("mv{vlan_index}x{i}");
                    self.host.run(|| {
                        let nl = Netlink::new()?;
                        let index =
                            nl.add_macvlan(&temp_name, parent, Mode::Bridge, Some(ep.mac))?;
                        Ok(nl.set_netns(index, &ns_file)?)
                    })?;
                    let addr = IpAddr::V4(Ipv4Addr::new(198, 18, vlan_index as u8, 10 + i as u8));
                    ns.run(|| {
                        let nl = Netlink::new()?;
                        let index = nl.require_link(&temp_name)?.index;
                        nl.set_name(index, "eth0")?;
                        nl.add_address(index, addr, 24)?;
                        Ok(nl.set_up(index)?)
                    })
                    .with_context(|| format!("configuring endpoint {}", ep.name))?;
                }
                namespaces[index] = Some(ns);
            }
        }
        self.endpoint_namespaces = namespaces;
        if !missing_vlans.is_empty() {
            self.notes.push(format!(
                "kernel VLAN objects not created: {} ({}); tagged frames are still classified by XDP, \
                 but broadcast and ARP on those VLANs have no kernel device to reach",
                missing_vlans.join(", "),
                vlan_error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Untagged endpoints' macvlans in the host namespace, up, named `mv<i>`.
    fn add_host_devices(&mut self) -> Result<()> {
        let endpoints = self.endpoints.clone();
        let names = self.host.run(|| {
            // Without this, every macvlan sends IPv6 DAD, router solicitations and MLD
            // reports, which bridge mode hands to every other macvlan: with a thousand
            // endpoints that storm alone fills the namespace's cores and the readers' rings.
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
                .context("disabling IPv6 for the host-namespace macvlans")?;
            let nl = Netlink::new()?;
            let nic = nl.require_link(NIC)?.index;
            let mut names = Vec::new();
            for (i, ep) in endpoints.iter().enumerate() {
                if ep.vid != 0 {
                    names.push(None);
                    continue;
                }
                let name = format!("mv{i}");
                let index = nl.add_macvlan(&name, nic, Mode::Bridge, Some(ep.mac))?;
                nl.set_up(index)?;
                names.push(Some(name));
            }
            Ok(names)
        })?;
        if endpoints.iter().any(|e| e.vid != 0) {
            self.notes
                .push("host-namespace macvlans are made for untagged endpoints only".to_string());
        }
        self.host_devices = names;
        Ok(())
    }

    /// The namespace an application of endpoint `index` runs in: its own, or the host
    /// namespace where its macvlan is (`Host` placement) or where it has none.
    pub fn endpoint_netns(&self, index: usize) -> &NetnsGuard {
        self.endpoint_namespaces
            .get(index)
            .and_then(Option::as_ref)
            .unwrap_or(&self.host)
    }

    /// Interface index of endpoint `i`'s macvlan in the host namespace (`Host` placement;
    /// call from a thread in the lab's host namespace), with its name.
    pub fn host_device(&self, i: usize) -> Result<(u32, &str)> {
        let spec = &self.endpoints[i];
        let Some(device) = self.host_devices.get(i).and_then(Option::as_deref) else {
            anyhow::bail!(
                "endpoint {} has no macvlan in the host namespace: the kernel baseline needs \
                 untagged endpoints in a lab built with KernelDevices::Host",
                spec.name
            );
        };
        let index = xmacvlan::sys::if_index(device)
            .with_context(|| format!("macvlan {device} of endpoint {} is missing", spec.name))?;
        Ok((index, device))
    }

    /// Run a shell command in the lab's host namespace, with its own sysfs (sysfs shows the
    /// namespace of whoever mounted it; `ip netns exec` mounts a fresh one).
    pub fn shell(&self, script: &str) -> Result<()> {
        shell_in(&self.host, script)
    }

    pub fn dataplane_config(&self, base: &DataplaneConfig) -> DataplaneConfig {
        DataplaneConfig {
            ifname: NIC.into(),
            ..base.clone()
        }
    }
}

fn shell_in(ns: &NetnsGuard, script: &str) -> Result<()> {
    command_in(ns, &["sh", "-c", script]).map(drop)
}

/// Run a program in namespace `ns` through `ip netns exec` (a fresh sysfs); its stdout.
pub fn command_in(ns: &NetnsGuard, program: &[&str]) -> Result<String> {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(program)
        .output()
        .context("running `ip netns exec` (iproute2)")?;
    if !output.status.success() {
        anyhow::bail!(
            "`{}` in namespace {} failed ({}): {}",
            program.join(" "),
            ns.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn dedup(items: impl Iterator<Item = u16>) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Distinguishes labs built by one process (tests build several).
fn unique_suffix() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Wait until `total()` stops changing for `quiet`, or `expected` is reached, or `limit`.
pub fn wait_for_drain(
    mut total: impl FnMut() -> u64,
    expected: u64,
    quiet: Duration,
    limit: Duration,
) {
    let start = Instant::now();
    let mut last = total();
    let mut since = Instant::now();
    while start.elapsed() < limit && last < expected {
        std::thread::sleep(Duration::from_millis(5));
        let now = total();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
}

pub fn describe_mac(mac: &Mac) -> String {
    xmacvlan::ether::Mac(*mac).to_string()
}
