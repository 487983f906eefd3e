//! 802.1Q through the real kernel path, inside the VM of `cargo xtask vm-test` (the host kernel
//! has no 802.1Q). A trunk veth pair with VLANs 100 and 200 on both ends; a macvlan on each
//! VLAN sub-interface in an endpoint namespace, as Docker's macvlan driver makes them; a
//! "router" namespace on the far end holding a gateway address per VLAN.
//!
//! ```text
//!   ep100 ns                        trunk ns                        router ns
//!   eth0 (macvlan) 198.18.1.2/24 ── veth0.100 ─┐            ┌─ veth1.100 198.18.1.1/24
//!                                              veth0 ════ veth1
//!   eth0 (macvlan) 198.18.2.2/24 ── veth0.200 ─┘            └─ veth1.200 198.18.2.1/24
//!        + decoy 198.18.1.3/24
//!   ep200 ns
//! ```
//! The VLAN 200 endpoint also holds 198.18.1.3/24, an address (and so a route) of the VLAN 100
//! subnet: if VLAN 100 frames reached VLAN 200 it would answer the VLAN 100 endpoint's ARP and
//! echo requests, and its ping to 198.18.1.3 would succeed (checked by hand with both macvlans
//! on one VLAN: it does; with a /32 it would not, for want of a route back). It must fail, and no VLAN 200 device may
//! count a single received packet meanwhile. IPv6 is off in every namespace so nothing else
//! talks.
//!
//! Host tests skip these (`#[ignore]`, and `XMACVLAN_IN_VM` unset); the VM harness runs them
//! with `--include-ignored` and `XMACVLAN_IN_VM=1`. Inside the VM, a missing 802.1Q is a
//! failure, never a skip.
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use xmacvlan::netlink::{MacVlanMode, Netlink};
use xmacvlan::netns::{Netns, NetnsGuard};
use xmacvlan_tests::exact::require_8021q;
use xmacvlan_tests::require_root;

const ROUTER_100: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const EP_100: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// On the VLAN 200 endpoint, in the VLAN 100 subnet: the bait for leaked frames.
const DECOY: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const ROUTER_200: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const EP_200: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// Namespaces of one topology; all deleted on drop (also on panic), which destroys every
/// link created in them.
struct Topology {
    trunk: NetnsGuard,
    router: NetnsGuard,
    ep100: NetnsGuard,
    ep200: NetnsGuard,
}

fn disable_ipv6(ns: &Netns) -> Result<()> {
    ns.run(|| {
        for scope in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1")
                .with_context(|| format!("disabling IPv6 ({scope}) in {}", ns_name()))?;
        }
        Ok(())
    })
}

fn ns_name() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

impl Topology {
    fn build(tag: &str) -> Result<Self> {
        let prefix = format!("xmvvlan{}-{tag}", std::process::id());
        let topo = Topology {
            trunk: NetnsGuard::create(&format!("{prefix}-trunk"))?,
            router: NetnsGuard::create(&format!("{prefix}-router"))?,
            ep100: NetnsGuard::create(&format!("{prefix}-ep100"))?,
            ep200: NetnsGuard::create(&format!("{prefix}-ep200"))?,
        };
        for ns in [&topo.trunk, &topo.router, &topo.ep100, &topo.ep200] {
            disable_ipv6(ns)?;
        }
        let router_file = topo.router.file()?;
        let ep_files = [topo.ep100.file()?, topo.ep200.file()?];

        // The trunk side: veth0 with its VLAN sub-interfaces, a macvlan on each.
        topo.trunk.run(|| {
            let nl = Netlink::new()?;
            let veth0 = nl.add_veth("veth0", "veth1", 1)?;
            let veth1 = nl.require_link("veth1")?.index;
            nl.set_netns(veth1, &router_file)?;
            nl.set_up(veth0)?;
            for (vid, file, mac) in [
                (100u16, &ep_files[0], [0x02, 0x58, 0x4d, 0x00, 0x64, 0x02]),
                (200u16, &ep_files[1], [0x02, 0x58, 0x4d, 0x00, 0xc8, 0x02]),
            ] {
                let name = format!("veth0.{vid}");
                let vlan = nl.add_vlan(&name, veth0, vid).with_context(|| {
                    format!(
                        "creating {name} inside the VM: its kernel must have 802.1Q \
                         (the harness loads module 8021q; check the `guest modules` line)"
                    )
                })?;
                nl.set_up(vlan)?;
                let link = nl.require_link(&name)?;
                ensure!(
                    link.kind.as_deref() == Some("vlan") && link.vlan_id == Some(vid),
                    "{name} is {:?} with VLAN id {:?}, expected a vlan device with id {vid}",
                    link.kind,
                    link.vlan_id
                );
                println!(
                    "VLAN device: {name} (#{}, kind vlan, id {vid}, on veth0 #{veth0})",
                    link.index
                );
                let mv =
                    nl.add_macvlan(&format!("mv{vid}"), vlan, MacVlanMode::Bridge, Some(mac))?;
                nl.set_netns(mv, file)?;
            }
            Ok(())
        })?;

        // The router side: the matching VLAN devices with the gateway addresses.
        topo.router.run(|| {
            let nl = Netlink::new()?;
            let veth1 = nl.require_link("veth1")?.index;
            nl.set_up(veth1)?;
            for (vid, gw) in [(100u16, ROUTER_100), (200u16, ROUTER_200)] {
                let name = format!("veth1.{vid}");
                let vlan = nl
                    .add_vlan(&name, veth1, vid)
                    .with_context(|| format!("creating {name} in the router namespace"))?;
                nl.add_address(vlan, IpAddr::V4(gw), 24)?;
                nl.set_up(vlan)?;
                println!("VLAN device: {name} (#{vlan}, id {vid}) gateway {gw}/24");
            }
            Ok(())
        })?;

        // The endpoints: rename to eth0, address, up.
        for (ns, vid, addrs) in [
            (&topo.ep100, 100u16, vec![(EP_100, 24)]),
            (&topo.ep200, 200u16, vec![(EP_200, 24), (DECOY, 24)]),
        ] {
            ns.run(|| {
                let nl = Netlink::new()?;
                let lo = nl.require_link("lo")?.index;
                nl.set_up(lo)?;
                let mv = nl.require_link(&format!("mv{vid}"))?;
                ensure!(
                    mv.kind.as_deref() == Some("macvlan"),
                    "mv{vid} is {:?}, expected macvlan",
                    mv.kind
                );
                nl.set_name(mv.index, "eth0")?;
                for (addr, prefix) in &addrs {
                    nl.add_address(mv.index, IpAddr::V4(*addr), *prefix)?;
                }
                nl.set_up(mv.index)?;
                println!(
                    "endpoint on VLAN {vid}: eth0 (macvlan on veth0.{vid}) with {}",
                    addrs
                        .iter()
                        .map(|(a, p)| format!("{a}/{p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(())
            })?;
        }
        Ok(topo)
    }
}

/// Result of one `ping` run inside a namespace.
struct Ping {
    transmitted: u32,
    received: u32,
    success: bool,
    output: String,
}

/// `ping` from inside `ns`: a child spawned by a thread that entered the namespace lives there.
fn ping(ns: &Netns, to: Ipv4Addr, count: u32, deadline_secs: u32) -> Result<Ping> {
    ns.run(|| {
        let out = Command::new("ping")
            .args(["-n", "-c", &count.to_string(), "-i", "0.2"])
            .args(["-w", &deadline_secs.to_string(), &to.to_string()])
            .output()
            .context("running `ping` (install iputils-ping)")?;
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // "3 packets transmitted, 3 received, 0% packet loss, time 402ms"
        let stats = output
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no statistics in ping's output:\n{output}"))?;
        let number_before = |word: &str| -> Result<u32> {
            let parts: Vec<&str> = stats.split([',', ' ']).filter(|s| !s.is_empty()).collect();
            let i = parts
                .iter()
                .position(|p| *p == word)
                .with_context(|| format!("no `{word}` in `{stats}`"))?;
            Ok(parts[i - 1].parse()?)
        };
        Ok(Ping {
            transmitted: number_before("packets")?,
            received: number_before("received")?,
            success: out.status.success(),
            output,
        })
    })
}

/// Received packets of `dev` in namespace `ns` (from /proc/thread-self/net/dev, which shows
/// the namespace of the reading thread).
fn rx_packets(ns: &Netns, dev: &str) -> Result<u64> {
    ns.run(|| {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")
            .context("reading /proc/thread-self/net/dev")?;
        for line in text.lines() {
            if let Some((name, stats)) = line.split_once(':')
                && name.trim() == dev
            {
                let fields: Vec<&str> = stats.split_whitespace().collect();
                return Ok(fields.get(1).context("short /proc/net/dev line")?.parse()?);
            }
        }
        bail!("no device `{dev}` in namespace {}", ns.name())
    })
}

#[test]
#[ignore = "needs 802.1Q: runs inside the VM (`sudo -E cargo xtask vm-test`)"]
fn vlan_endpoints_reach_their_gateway_and_vlan100_never_reaches_vlan200() -> Result<()> {
    require_8021q("vm_vlan");
    require_root();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {}", release.trim());
    let topo = Topology::build("gw")?;

    // VLAN 100 carries ARP and ICMP between the endpoint and its gateway.
    gateway_ping(&topo.ep100, ROUTER_100, 100)?;

    // Isolation: the VLAN 100 endpoint asks for an address that exists only on VLAN 200.
    let watched = [
        (&topo.ep200, "eth0"),
        (&topo.router, "veth1.200"),
        (&topo.trunk, "veth0.200"),
    ];
    let before: Vec<u64> = watched
        .iter()
        .map(|(ns, dev)| rx_packets(ns, dev))
        .collect::<Result<_>>()?;
    let router100_before = rx_packets(&topo.router, "veth1.100")?;
    let p = ping(&topo.ep100, DECOY, 3, 4)?;
    ensure!(
        !p.success && p.received == 0,
        "VLAN 100 reached {DECOY}, which exists only on VLAN 200: frames crossed VLANs:\n{}",
        p.output
    );
    // The ARP requests did go out on VLAN 100: the router's VLAN 100 device saw them.
    let router100_after = rx_packets(&topo.router, "veth1.100")?;
    ensure!(
        router100_after > router100_before,
        "the VLAN 100 endpoint's ARP requests for {DECOY} never reached veth1.100 \
         ({router100_before} -> {router100_after} packets): the isolation check proved nothing"
    );
    for ((ns, dev), before) in watched.iter().zip(before) {
        let after = rx_packets(ns, dev)?;
        ensure!(
            after == before,
            "{dev} in {} received {} packets while only VLAN 100 was talking",
            ns.name(),
            after - before
        );
    }
    println!(
        "isolation: VLAN 100 -> {DECOY} (VLAN 200 only): {} sent, 0 answered; VLAN 200 devices \
         received 0 packets; veth1.100 received {}",
        p.transmitted,
        router100_after - router100_before
    );

    // VLAN 200 works too (checked last: its neighbour entries would send ARP probes on VLAN
    // 200 a few seconds later, into the quiet window above).
    gateway_ping(&topo.ep200, ROUTER_200, 200)?;
    Ok(())
}

/// The endpoint in `ns` pings its gateway `gw` on VLAN `vid`: every request answered.
fn gateway_ping(ns: &Netns, gw: Ipv4Addr, vid: u16) -> Result<()> {
    let p = ping(ns, gw, 3, 20)?;
    ensure!(
        p.success && p.received == p.transmitted && p.received == 3,
        "VLAN {vid}: the endpoint could not ping its gateway {gw}:\n{}",
        p.output
    );
    println!(
        "VLAN {vid}: endpoint -> gateway {gw}: {}/{} replies",
        p.received, p.transmitted
    );
    Ok(())
}
