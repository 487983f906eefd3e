//! What xmacvlan changes on a NIC, checked on veth where a veth can show it: rx VLAN offload
//! turned off and back on, a unicast address held by a packet socket for exactly its
//! lifetime, and busy polling refused with its reason (veth has no NAPI id). The changes that
//! need a real NIC (its unicast and VLAN filters, interrupts) are checked in the igb guest
//! (`vm_nic`).
use std::process::Command;

use xmacvlan::dataplane::{Dataplane, EndpointSpec};
use xmacvlan::modes::{BindMode, Demux};
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan::nic::{BusyPoll, VlanTags};
use xmacvlan_tests::{dataplane_config, veth_namespace};

/// A namespace of the test's own with a veth `nic0`/`peer0`.
fn veth(tag: &str) -> NetnsGuard {
    veth_namespace(&format!("xmvnic{tag}"))
}

/// `CMD ARGS…` inside `ns`, its stdout (an independent reading: iproute2 and ethtool).
fn in_ns(ns: &NetnsGuard, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rx_vlan_offload(ns: &NetnsGuard) -> String {
    in_ns(ns, &["ethtool", "-k", "nic0"])
        .lines()
        .find(|l| l.starts_with("rx-vlan-offload:"))
        .expect("ethtool -k lists rx-vlan-offload")
        .to_string()
}

#[test]
fn rx_vlan_offload_turned_off_comes_back_on_when_dropped() {
    let ns = veth("o");
    assert_eq!(rx_vlan_offload(&ns), "rx-vlan-offload: on");
    let guard = ns
        .run(|| xmacvlan::nic::vlan::RxVlanOffloadOff::turn_off("nic0"))
        .unwrap();
    assert_eq!(rx_vlan_offload(&ns), "rx-vlan-offload: off");
    // Dropped outside the namespace: the guard restores through the namespace it was made in.
    drop(guard);
    assert_eq!(rx_vlan_offload(&ns), "rx-vlan-offload: on");
    // veth's flag is on, but it has no hardware to strip tags with: nothing to change.
    let strategy = ns
        .run(|| Ok(xmacvlan::nic::vlan_strategy("nic0")?))
        .unwrap();
    assert_eq!(strategy.tags, VlanTags::InFrame, "{strategy}");
    assert!(
        strategy.why.starts_with("nic0 (veth) has no hardware"),
        "{strategy}"
    );
}

#[test]
fn a_unicast_address_lasts_exactly_as_long_as_its_packet_socket() {
    const MAC: &str = "02:58:4d:45:77:01";
    let ns = veth("u");
    let listed = || in_ns(&ns, &["bridge", "fdb", "show", "dev", "nic0"]).contains(MAC);
    let (socket, index) = ns
        .run(|| {
            let socket = xmacvlan::sys::membership::UnicastMemberships::open()?;
            Ok((socket, Netlink::new()?.require_link("nic0")?.index))
        })
        .unwrap();
    let mac = MAC.parse::<xmacvlan::ether::Mac>().unwrap().0;
    assert!(!listed());
    socket.add(index, mac).unwrap();
    assert!(listed(), "the address is in nic0's unicast list");
    // Two references (two endpoints with one MAC on two VLANs): one drop leaves it.
    socket.add(index, mac).unwrap();
    socket.drop_address(index, mac).unwrap();
    assert!(listed(), "one reference is left");
    // Closing the socket (as when the process dies) drops what it still held.
    drop(socket);
    assert!(!listed(), "gone with the socket");
}

#[test]
fn busy_polling_on_veth_is_refused_with_the_reason() {
    let ns = veth("b");
    let spec = EndpointSpec {
        name: "c1".into(),
        vid: 0,
        mac: [0x02, 0x58, 0x4d, 0x45, 0x77, 0x02],
    };
    let (busy, warnings) = ns
        .run(|| {
            let mut cfg = dataplane_config(Demux::Xdp, 1);
            cfg.ifname = "nic0".into();
            cfg.queue.bind = BindMode::Copy;
            cfg.busy_poll = BusyPoll::with_budget(64);
            let dp = Dataplane::start(&cfg, &[spec])?;
            let out = (dp.busy_poll, dp.warnings.clone());
            dp.stop()?;
            Ok(out)
        })
        .unwrap();
    assert_eq!(busy, None);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("nic0 queue 0 has no NAPI id (veth has none")),
        "{warnings:?}"
    );
}
