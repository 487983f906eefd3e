//! The control path on an 802.1Q trunk. Needs a kernel with 802.1Q, so these tests are
//! `#[ignore]`d on the host and run inside the VM of `cargo xtask vm-test`
//! (`--include-ignored`). Run anywhere without 802.1Q they fail with the error naming
//! CONFIG_VLAN_8021Q / module 8021q: they never pass without having tested VLANs.
//!
//! ```text
//!   host ns: v0 (trunk) ── v0.100 (made by xmacvlan) ── macvlan → e100 ns  198.18.1.x/24
//!               │      └── v0.200 (made by xmacvlan) ── macvlan → e200 ns  198.18.2.x/24
//!   router ns: v0p ── v0p.100 198.18.1.1/24, v0p.200 198.18.2.1/24 (the gateways)
//! ```
//! In-process netlink throughout (process start is ~85x slower in the VM); one ping per VLAN.
use std::process::Command;

use anyhow::Result;
use xmacvlan::control::State;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::{Netns, NetnsGuard};
use xmacvlan_tests::require_root;

struct Trunk {
    host: NetnsGuard,
    router: NetnsGuard,
    e100: NetnsGuard,
    e200: NetnsGuard,
    root: std::path::PathBuf,
}

impl Trunk {
    fn new(tag: &str) -> Trunk {
        require_root();
        let p = format!("xmvcv{}{tag}", std::process::id());
        let t = Trunk {
            host: NetnsGuard::create(&format!("{p}-h")).unwrap(),
            router: NetnsGuard::create(&format!("{p}-r")).unwrap(),
            e100: NetnsGuard::create(&format!("{p}-e100")).unwrap(),
            e200: NetnsGuard::create(&format!("{p}-e200")).unwrap(),
            root: std::env::temp_dir().join(format!("{p}-data")),
        };
        let router = t.router.file().unwrap();
        t.host
            .run(|| {
                let nl = Netlink::new()?;
                let v0 = nl.add_veth("v0", "v0p", 1)?;
                nl.set_up(v0)?;
                nl.set_netns(nl.require_link("v0p")?.index, &router)?;
                Ok(())
            })
            .unwrap();
        t.router
            .run(|| {
                let nl = Netlink::new()?;
                let v0p = nl.require_link("v0p")?.index;
                nl.set_up(v0p)?;
                for (vid, gw) in [(100u16, [198, 18, 1, 1]), (200, [198, 18, 2, 1])] {
                    let v = nl.add_vlan(&format!("v0p.{vid}"), v0p, vid)?;
                    nl.add_address(v, gw.into(), 24)?;
                    nl.set_up(v)?;
                }
                Ok(())
            })
            .unwrap();
        t
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        xmacvlan_tests::cli_in(&self.host, &self.root, args)
    }

    fn host_links(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .host
            .run(|| Ok(Netlink::new()?.links()?))
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        names
    }
}

impl Drop for Trunk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn ping(ns: &Netns, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "ping", "-c1", "-W3", dst])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
#[ignore = "needs a kernel with 802.1Q: runs inside `cargo xtask vm-test`"]
fn networks_on_two_vlans_of_one_trunk() {
    let t = Trunk::new("two");
    for (vid, net) in [(100, 1), (200, 2)] {
        t.cli(&[
            "network",
            "create",
            "--subnet",
            &format!("198.18.{net}.0/24"),
            "-o",
            &format!("parent=v0.{vid}"),
            &format!("n{vid}"),
        ])
        .unwrap_or_else(|e| panic!("creating the VLAN {vid} network: {e:#}"));
    }
    // The sub-interfaces exist, are VLANs of v0 with the right ids, and are recorded as ours.
    let (v0, v100) = t
        .host
        .run(|| {
            let nl = Netlink::new()?;
            Ok((nl.require_link("v0")?, nl.require_link("v0.100")?))
        })
        .unwrap();
    assert_eq!(v100.kind.as_deref(), Some("vlan"));
    assert_eq!(v100.vlan_id, Some(100));
    assert_eq!(v100.parent_index, Some(v0.index));
    assert!(v100.up);
    let state = State::load(&t.root).unwrap();
    let n100 = state.network("n100").unwrap();
    assert_eq!(
        (n100.vlan, n100.link.as_str(), n100.created_parent),
        (100, "v0", true)
    );

    // One network per parent: a second one on v0.100 is refused; untagged v0 is another parent.
    let e = format!(
        "{:#}",
        t.cli(&[
            "network",
            "create",
            "--subnet",
            "198.18.3.0/24",
            "-o",
            "parent=v0.100",
            "again"
        ])
        .unwrap_err()
    );
    assert!(e.contains("already uses parent interface `v0.100`"), "{e}");

    for (ns, vid) in [(&t.e100, 100), (&t.e200, 200)] {
        t.cli(&[
            "endpoint",
            "create",
            "--network",
            &format!("n{vid}"),
            "--netns",
            ns.name(),
            &format!("e{vid}"),
        ])
        .unwrap();
    }
    let state = State::load(&t.root).unwrap();
    assert_eq!(
        state.endpoint("e100").unwrap().vlan,
        100,
        "the fast path's VLAN id"
    );
    assert_eq!(state.endpoint("e200").unwrap().spec().vid, 200);
    let dev = t
        .e100
        .run(|| Ok(Netlink::new()?.require_link("eth0")?))
        .unwrap();
    assert_eq!(dev.kind.as_deref(), Some("macvlan"));
    assert_eq!(
        dev.parent_index,
        Some(v100.index),
        "macvlan on the VLAN sub-interface"
    );

    // Each endpoint reaches its own VLAN's gateway through the trunk.
    assert!(ping(&t.e100, "198.18.1.1"), "VLAN 100 gateway unreachable");
    assert!(ping(&t.e200, "198.18.2.1"), "VLAN 200 gateway unreachable");

    t.cli(&["endpoint", "rm", "e100", "e200"]).unwrap();
    t.cli(&["network", "rm", "n100", "n200"]).unwrap();
    assert_eq!(
        t.host_links(),
        ["lo", "v0"],
        "xmacvlan's VLAN sub-interfaces removed"
    );
}

#[test]
#[ignore = "needs a kernel with 802.1Q: runs inside `cargo xtask vm-test`"]
fn an_existing_vlan_parent_is_used_and_kept() {
    let t = Trunk::new("keep");
    let v300 = t
        .host
        .run(|| {
            let nl = Netlink::new()?;
            let v0 = nl.require_link("v0")?.index;
            let v = nl.add_vlan("v0.300", v0, 300)?;
            nl.set_up(v)?;
            Ok(v)
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    t.cli(&[
        "network",
        "create",
        "--subnet",
        "198.18.30.0/24",
        "-o",
        "parent=v0.300",
        "n",
    ])
    .unwrap();
    let state = State::load(&t.root).unwrap();
    let n = state.network("n").unwrap();
    assert_eq!((n.vlan, n.created_parent), (300, false));
    t.cli(&["network", "rm", "n"]).unwrap();
    let still = t
        .host
        .run(|| Ok(Netlink::new()?.require_link("v0.300")?))
        .unwrap();
    assert_eq!(
        still.index, v300,
        "a parent xmacvlan did not create is left in place"
    );
}

/// The fast path takes its endpoints from the control state: networks on two VLANs of one
/// trunk, endpoints made by the CLI, the daemon's dataplane serving both, exact delivery of
/// tagged frames (the same MAC on the wrong VLAN is not claimed), ARP/ICMP still answered by the
/// kernel devices, one endpoint detached live while the other keeps its frames.
#[test]
#[ignore = "needs a kernel with 802.1Q: runs inside `cargo xtask vm-test`"]
fn the_daemon_serves_endpoints_of_both_vlans_from_the_state() {
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    use xmacvlan::daemon::server::{Daemon, Settings};
    use xmacvlan::dataplane::{EndpointSpec, Snapshot};
    use xmacvlan::ipc::protocol::{Answer, Request};
    use xmacvlan::modes::DemuxMode;
    use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent};
    use xmacvlan_bench::scenario::lab_streams;

    let t = Trunk::new("daemon");
    for (vid, net) in [(100, 1), (200, 2)] {
        let subnet = format!("198.18.{net}.0/24");
        let parent = format!("parent=v0.{vid}");
        t.cli(&[
            "network",
            "create",
            "--subnet",
            &subnet,
            "-o",
            &parent,
            &format!("n{vid}"),
        ])
        .unwrap_or_else(|e| panic!("creating the VLAN {vid} network: {e:#}"));
    }
    for (ns, vid) in [(&t.e100, 100), (&t.e200, 200)] {
        let network = format!("n{vid}");
        t.cli(&[
            "endpoint",
            "create",
            "--network",
            &network,
            "--netns",
            ns.name(),
            &format!("e{vid}"),
        ])
        .unwrap();
    }
    let state = State::load(&t.root).unwrap();
    let e100 = state.endpoint("e100").unwrap().spec();
    let e200 = state.endpoint("e200").unwrap().spec();
    let wrong_vlan = EndpointSpec {
        vid: 200,
        ..e100.clone()
    };
    const COUNT: u64 = 300;
    let streams = lab_streams(&[e100.clone(), e200.clone(), wrong_vlan], 64, false);
    let send = || {
        let cfg = GeneratorConfig {
            ifname: "v0p".into(),
            queue: 0,
            amount: Amount::EachStream(COUNT),
            rate: Some(5_000),
            core: None,
            frame_size: 2048,
            max_in_flight: 64,
        };
        t.router
            // Paced by the wire: nothing lost before XDP on a busy machine (the daemon is
            // another process, so its delivery is read from its stats afterwards).
            .run(|| {
                let sent = PaceSent::default();
                generator::run_paced(
                    &cfg,
                    &streams,
                    &AtomicBool::new(false),
                    Some(Pace::wire(&sent)),
                )
            })
            .unwrap()
    };
    let stats = |daemon: &mut Daemon| -> Snapshot {
        match daemon.handle(Request::Stats).unwrap() {
            Answer::Stats { mut interfaces, .. } => {
                assert_eq!(
                    interfaces.len(),
                    1,
                    "one dataplane: both VLANs share trunk v0"
                );
                interfaces.remove(0)
            }
            other => panic!("{other:?}"),
        }
    };
    let frames = |s: &Snapshot, name: &str| {
        s.endpoints
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.frames)
    };
    let wait_for = |daemon: &mut Daemon, want: &[(&str, u64)]| -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = stats(daemon);
            if want.iter().all(|(n, f)| frames(&s, n) >= Some(*f)) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    t.host
        .run(|| {
            let mut daemon = Daemon::new(Settings {
                demux: DemuxMode::Xdp,
                dataplane: xmacvlan::dataplane::DataplaneConfig {
                    queue: xmacvlan::xsk::QueueConfig {
                        bind: xmacvlan::modes::BindMode::Copy,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                port_dir: t.root.join("ports"),
                port_secret: None,
                data_root: t.root.clone(),
                detach_on_exit: true,
                // Counted by the dataplane's consumer without a memif client (the daemon
                // binary's tests attach clients).
                claim: xmacvlan::dataplane::ClaimPolicy::Always,
            });
            assert_eq!(
                daemon.restore(&state),
                2,
                "both endpoints served from the state"
            );
            let sent = send();
            assert_eq!(sent.per_stream, [COUNT; 3]);
            let s = wait_for(&mut daemon, &[("e100", COUNT), ("e200", COUNT)]);
            assert_eq!(s.interface, "v0");
            for e in &s.endpoints {
                assert_eq!(
                    (e.frames, e.misdelivered, e.dropped()),
                    (COUNT, 0, 0),
                    "{e:?}"
                );
            }
            assert_eq!(s.xdp.redirected, 2 * COUNT);
            assert_eq!(s.xdp.pass_miss, COUNT, "e100's MAC on VLAN 200 is nobody's");
            // The router's own untagged chatter (IPv6 ND on v0p) may cross the trunk too.
            assert!(s.xdp.tagged >= 3 * COUNT, "{:?}", s.xdp);
            assert_eq!(s.xdp.verdicts(), s.xdp.seen, "every frame got one verdict");

            // The kernel devices still answer for their addresses while the daemon runs.
            assert!(
                ping(&t.e100, "198.18.1.1"),
                "VLAN 100 gateway unreachable with the daemon"
            );
            assert!(
                ping(&t.e200, "198.18.2.1"),
                "VLAN 200 gateway unreachable with the daemon"
            );

            // e100 leaves live; e200 keeps every frame of the next burst.
            daemon.handle(Request::Detach {
                endpoint: "e100".into(),
            })?;
            send();
            let s = wait_for(&mut daemon, &[("e200", 2 * COUNT)]);
            assert_eq!(frames(&s, "e100"), None);
            assert_eq!(frames(&s, "e200"), Some(2 * COUNT));
            daemon.shutdown()?;
            assert_eq!(
                Netlink::new()?.require_link("v0")?.xdp_prog_id,
                None,
                "XDP detached"
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    t.cli(&["endpoint", "rm", "e100", "e200"]).unwrap();
    t.cli(&["network", "rm", "n100", "n200"]).unwrap();
}
