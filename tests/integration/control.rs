//! The control path end to end, as root, in throw-away namespaces: `network` and `endpoint`
//! commands parsed by the real CLI, kernel state read back over netlink, the state file, and
//! the CNI reference plugins as the yardstick.
//!
//! Every test builds a [`Lab`]: a "host" namespace holding veth parents (xmacvlan runs inside
//! it as it would on a host), endpoint namespaces, and a private data root. Dropping the lab
//! deletes all of them, also on panic, which destroys every link made inside.
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xmacvlan::control::{State, drift};
use xmacvlan::netlink::{Link, MacVlanMode, Netlink, Route};
use xmacvlan::netns::{Netns, NetnsGuard};
use xmacvlan_tests::{namespaces_named, require_root};

struct Lab {
    prefix: String,
    host: NetnsGuard,
    endpoints: Vec<NetnsGuard>,
    root: PathBuf,
}

impl Lab {
    /// A host namespace with veth parents `v0`, `v1`, … (MTU `mtu`, up, peers up) and
    /// `endpoints` empty namespaces named PREFIX-e0, PREFIX-e1, …
    fn new(tag: &str, parents: usize, endpoints: usize, mtu: u32) -> Lab {
        require_root();
        let prefix = format!("xmvc{}{tag}", std::process::id());
        let host = NetnsGuard::create(&format!("{prefix}-h")).unwrap();
        let root = std::env::temp_dir().join(format!("{prefix}-data"));
        let _ = std::fs::remove_dir_all(&root);
        let lab = Lab {
            endpoints: (0..endpoints)
                .map(|i| NetnsGuard::create(&format!("{prefix}-e{i}")).unwrap())
                .collect(),
            prefix,
            host,
            root,
        };
        lab.host
            .run(|| {
                let nl = Netlink::new()?;
                for i in 0..parents {
                    let v = nl.add_veth(&format!("v{i}"), &format!("v{i}p"), 1)?;
                    let p = nl.require_link(&format!("v{i}p"))?.index;
                    for index in [v, p] {
                        nl.set_mtu(index, mtu)?;
                        nl.set_up(index)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        lab
    }

    fn ep(&self, i: usize) -> &str {
        self.endpoints[i].name()
    }

    /// Run `xmacvlan --data-root ROOT ARGS…` inside the host namespace; its stdout or error.
    fn cli(&self, args: &[&str]) -> Result<String> {
        xmacvlan_tests::cli_in(&self.host, &self.root, args)
    }

    /// `cli` with the arguments written as one line, split at whitespace.
    fn cli_line(&self, line: &str) -> Result<String> {
        self.cli(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// The error text of a command that must fail.
    fn cli_err(&self, args: &[&str]) -> String {
        match self.cli(args) {
            Ok(out) => panic!("`{}` succeeded ({out}), expected an error", args.join(" ")),
            Err(e) => format!("{e:#}"),
        }
    }

    fn inspect(&self, what: &str, name: &str) -> Value {
        let text = self.cli(&[what, "inspect", name]).unwrap();
        let mut all: Vec<Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(all.len(), 1, "{text}");
        all.remove(0)
    }

    fn state(&self) -> State {
        State::load(&self.root).unwrap()
    }

    /// Names of all links in the host and endpoint namespaces, and the state file: what
    /// a failed command must leave exactly as it was.
    fn snapshot(&self) -> (Vec<Vec<String>>, Option<String>) {
        let mut links = vec![link_names(&self.host)];
        links.extend(self.endpoints.iter().map(|n| link_names(n)));
        (
            links,
            std::fs::read_to_string(self.root.join("state.json")).ok(),
        )
    }

    /// The lab as it was built: host has only its veths, endpoint namespaces only `lo`.
    fn assert_clean(&self, parents: usize) {
        let mut want: Vec<String> = (0..parents)
            .flat_map(|i| [format!("v{i}"), format!("v{i}p")])
            .collect();
        want.push("lo".into());
        want.sort();
        assert_eq!(link_names(&self.host), want, "host namespace leftovers");
        for ns in &self.endpoints {
            assert_eq!(link_names(ns), ["lo"], "leftovers in {}", ns.name());
        }
        let state = self.state();
        assert!(
            state.networks.is_empty() && state.endpoints.is_empty(),
            "{state:?}"
        );
    }
}

impl Drop for Lab {
    /// The namespaces delete themselves (NetnsGuard); the data root is ours to remove.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn link_names(ns: &Netns) -> Vec<String> {
    let mut names: Vec<String> = ns
        .run(|| Ok(Netlink::new()?.links()?))
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    names
}

/// A device read back inside its namespace.
struct Readback {
    link: Link,
    addresses: BTreeSet<String>,
    /// Routes as text (`default via …`, `198.18.0.0/24`), link-local ones left out.
    routes: BTreeSet<String>,
}

fn read(ns: &Netns, ifname: &str) -> Readback {
    ns.run(|| {
        let nl = Netlink::new()?;
        let link = nl.require_link(ifname)?;
        let addresses = nl
            .addresses(link.index)?
            .into_iter()
            .filter(|(a, _)| !is_link_local(a))
            .map(|(a, p)| format!("{a}/{p}"))
            .collect();
        let routes = nl
            .routes_of(link.index)?
            .iter()
            .filter(|r| !is_link_local(&r.destination))
            .map(Route::to_string)
            .collect();
        Ok(Readback {
            link,
            addresses,
            routes,
        })
    })
    .unwrap()
}

fn is_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn set<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `ping` from inside `ns`; IPv6 retried while DAD keeps the source address tentative.
fn ping(ns: &Netns, dst: &str) -> bool {
    let v6 = dst.contains(':');
    for _ in 0..if v6 { 50 } else { 1 } {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns.name(), "ping", "-c1", "-W2", dst])
            .output()
            .expect("running ping")
            .status
            .success();
        if ok {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

const NET: &[&str] = &[
    "network",
    "create",
    "-d",
    "macvlan",
    "--subnet",
    "198.18.0.0/24",
    "--gateway",
    "198.18.0.1",
    "--ip-range",
    "198.18.0.128/25",
    "--subnet",
    "2001:db8:1::/64",
    "-o",
    "parent=v0",
];

fn with(base: &[&str], more: &[&str]) -> Vec<String> {
    base.iter().chain(more).map(|s| s.to_string()).collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn network_and_endpoints_round_trip_through_the_kernel() {
    let lab = Lab::new("rt", 1, 2, 1400);
    let net = with(NET, &["--host-shim", "n1"]);
    let id = lab.cli(&args(&net)).unwrap();
    assert_eq!(id.trim().len(), 64, "prints the network id: {id}");
    let (a, b) = (lab.ep(0).to_string(), lab.ep(1).to_string());
    lab.cli(&["endpoint", "create", "--network", "n1", "--netns", &a, "a"])
        .unwrap();
    lab.cli_line(&format!("endpoint create --network n1 --netns {b} --ifname ens5 --mac-address 02:aa:00:00:00:0b --ip 198.18.0.200 b"))
    .unwrap();

    // Endpoint a: Docker's derived MAC, the first addresses of the ranges, default routes.
    let host_v0 = lab
        .host
        .run(|| Ok(Netlink::new()?.require_link("v0")?))
        .unwrap();
    let ra = read(&lab.endpoints[0], "eth0");
    assert_eq!(ra.link.kind.as_deref(), Some("macvlan"));
    assert_eq!(ra.link.macvlan_mode, Some(MacVlanMode::Bridge));
    assert_eq!(ra.link.mac, [0x02, 0x42, 198, 18, 0, 128]);
    assert_eq!(ra.link.mtu, 1400, "inherits the parent's MTU");
    assert!(ra.link.up);
    assert_eq!(ra.link.parent_index, Some(host_v0.index));
    assert_eq!(ra.addresses, set(["198.18.0.128/24", "2001:db8:1::2/64"]));
    assert_eq!(
        ra.routes,
        set([
            "default via 198.18.0.1",
            "198.18.0.0/24",
            "default via 2001:db8:1::1",
            "2001:db8:1::/64"
        ])
    );
    let rb = read(&lab.endpoints[1], "ens5");
    assert_eq!(rb.link.mac, [0x02, 0xaa, 0, 0, 0, 0x0b]);
    assert_eq!(rb.addresses, set(["198.18.0.200/24", "2001:db8:1::3/64"]));
    // The devices live in their namespaces, not in the host.
    let host_links = link_names(&lab.host);
    assert!(
        !host_links.iter().any(|l| l == "eth0" || l == "ens5"),
        "{host_links:?}"
    );

    // The host shim: a macvlan on v0 with the aux address and a route to the range.
    let shim_name = lab.state().networks[0].host_shim.clone().unwrap().ifname;
    let shim = read(&lab.host, &shim_name);
    assert_eq!(shim.link.parent_index, Some(host_v0.index));
    assert!(
        shim.addresses.contains("198.18.0.127/32"),
        "{:?}",
        shim.addresses
    );
    assert!(shim.routes.contains("198.18.0.128/25"), "{:?}", shim.routes);

    // Traffic: endpoint to endpoint (v4 and v6), host (through the shim) to an endpoint.
    assert!(ping(&lab.endpoints[0], "198.18.0.200"));
    assert!(ping(&lab.endpoints[0], "2001:db8:1::3"));
    assert!(ping(&lab.host, "198.18.0.128"));

    // ls and inspect.
    let ls = lab.cli(&["network", "ls"]).unwrap();
    assert!(ls.starts_with("NETWORK ID"), "{ls}");
    assert!(
        ls.contains(" n1 ") && ls.contains("macvlan") && ls.contains("v0"),
        "{ls}"
    );
    let ls: Vec<Value> =
        serde_json::from_str(&lab.cli(&["endpoint", "ls", "--format", "json"]).unwrap()).unwrap();
    assert_eq!(ls.len(), 2);
    let n = lab.inspect("network", "n1");
    assert_eq!(n["Id"], id.trim());
    assert_eq!(n["Driver"], "macvlan");
    assert_eq!(n["IPAM"]["Config"][0]["IPRange"], "198.18.0.128/25");
    assert_eq!(n["Endpoints"]["a"]["IPv4Address"], "198.18.0.128/24");
    assert_eq!(n["Drift"], Value::Array(vec![]), "{n:#}");
    let e = lab.inspect("endpoint", "b");
    assert_eq!(e["Device"]["Mtu"], 1400);
    assert_eq!(e["Device"]["MacvlanMode"], "bridge");
    assert_eq!(e["VlanId"], 0);
    // The fast path's view of the same state.
    let state = lab.state();
    let spec = state.endpoint("a").unwrap().spec();
    assert_eq!((spec.vid, spec.mac), (0, [0x02, 0x42, 198, 18, 0, 128]));

    // Remove everything: the kernel is as it was.
    assert!(
        lab.cli_err(&["network", "rm", "n1"])
            .contains("has active endpoints (a, b)")
    );
    lab.cli(&["endpoint", "rm", "a", "b"]).unwrap();
    lab.cli(&["network", "rm", "n1"]).unwrap();
    lab.assert_clean(1);
}

#[test]
fn private_mode_and_ipv4_only() {
    let lab = Lab::new("pm", 1, 1, 1500);
    lab.cli_line("network create --subnet 198.18.4.0/24 -o parent=v0 -o macvlan_mode=private n")
        .unwrap();
    let ns = lab.ep(0).to_string();
    lab.cli(&["endpoint", "create", "--network", "n", "--netns", &ns, "e"])
        .unwrap();
    let r = read(&lab.endpoints[0], "eth0");
    assert_eq!(r.link.macvlan_mode, Some(MacVlanMode::Private));
    // Docker's default gateway is the subnet's first address; IPAM starts after it.
    assert_eq!(r.addresses, set(["198.18.4.2/24"]));
    assert!(
        r.routes.contains("default via 198.18.4.1"),
        "{:?}",
        r.routes
    );
    lab.cli(&["endpoint", "rm", "e"]).unwrap();
    lab.cli(&["network", "rm", "n"]).unwrap();
    lab.assert_clean(1);
}

#[test]
fn ipam_exhaustion_and_reuse_after_rm() {
    let lab = Lab::new("ipam", 1, 1, 1500);
    lab.cli_line("network create --subnet 198.18.0.0/24 --ip-range 198.18.0.4/30 --aux-address r=198.18.0.5 -o parent=v0 n")
    .unwrap();
    let ns = lab.ep(0).to_string();
    let create = |name: &str, ifname: &str| {
        lab.cli_line(&format!(
            "endpoint create --network n --netns {ns} --ifname {ifname} {name}"
        ))
    };
    for i in 0..3 {
        create(&format!("e{i}"), &format!("eth{i}")).unwrap();
    }
    let got: Vec<String> = lab
        .state()
        .endpoints
        .iter()
        .map(|e| e.addresses[0].to_string())
        .collect();
    assert_eq!(
        got,
        ["198.18.0.4/24", "198.18.0.6/24", "198.18.0.7/24"],
        "aux .5 skipped"
    );
    let before = lab.snapshot();
    let e = format!("{:#}", create("e3", "eth3").unwrap_err());
    assert!(
        e.contains("no free IPv4 address left on network `n`"),
        "{e}"
    );
    assert_eq!(lab.snapshot(), before, "exhaustion created nothing");
    lab.cli(&["endpoint", "rm", "e1"]).unwrap();
    create("e3", "eth3").unwrap();
    assert_eq!(
        lab.state().endpoint("e3").unwrap().addresses[0].to_string(),
        "198.18.0.6/24",
        "the freed address is handed out again"
    );
    assert!(
        read(&lab.endpoints[0], "eth3")
            .addresses
            .contains("198.18.0.6/24")
    );
    lab.cli(&["endpoint", "rm", "e0", "e2", "e3"]).unwrap();
    lab.cli(&["network", "rm", "n"]).unwrap();
    lab.assert_clean(1);
}

#[test]
fn parallel_creates_get_distinct_addresses() {
    const N: usize = 8;
    let lab = Arc::new(Lab::new("par", 1, N, 1500));
    lab.cli_line("network create --subnet 198.18.8.0/24 --subnet 2001:db8:8::/64 -o parent=v0 n")
        .unwrap();
    // Each thread runs the CLI on its own: its own lock file descriptor, its own netlink.
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (lab, barrier) = (lab.clone(), barrier.clone());
            std::thread::spawn(move || {
                let ns = lab.ep(i).to_string();
                barrier.wait();
                lab.cli(&[
                    "endpoint",
                    "create",
                    "--network",
                    "n",
                    "--netns",
                    &ns,
                    &format!("e{i}"),
                ])
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let state = lab.state();
    assert_eq!(state.endpoints.len(), N, "no update lost");
    let addrs: BTreeSet<String> = state
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().map(ToString::to_string))
        .collect();
    assert_eq!(addrs.len(), 2 * N, "distinct addresses: {addrs:?}");
    for (i, ns) in lab.endpoints.iter().enumerate() {
        let ep = state.endpoint(&format!("e{i}")).unwrap();
        let r = read(ns, "eth0");
        for a in &ep.addresses {
            assert!(
                r.addresses.contains(&a.to_string()),
                "{a} not on e{i}'s device"
            );
        }
    }
    let names: Vec<String> = (0..N).map(|i| format!("e{i}")).collect();
    let mut rm = vec!["endpoint", "rm"];
    rm.extend(names.iter().map(String::as_str));
    lab.cli(&rm).unwrap();
    lab.cli(&["network", "rm", "n"]).unwrap();
    lab.assert_clean(1);
}

#[test]
fn every_validation_error_is_clear_and_creates_nothing() {
    let lab = Lab::new("val", 3, 2, 1500);
    lab.cli_line("network create --subnet 198.18.0.0/24 -o parent=v0 n1")
        .unwrap();
    let (a, b) = (lab.ep(0).to_string(), lab.ep(1).to_string());
    lab.cli(&["endpoint", "create", "--network", "n1", "--netns", &a, "e1"])
        .unwrap();
    // A device of someone else's in namespace b, which must survive a refused create.
    lab.endpoints[1]
        .run(|| {
            let nl = Netlink::new()?;
            nl.add_veth("eth0", "other", 1)?;
            Ok(())
        })
        .unwrap();

    // Every refused command, with a fragment its error must contain. For each row the loop
    // proves three things: the command fails, its message names the one thing wrong with it
    // (each network row is a valid `n2` but for one flaw), and it changes nothing: the links
    // of every namespace and the state file are exactly as before. `NS` stands for namespace
    // b, whose name differs per run.
    const REFUSED: &[(&str, &str)] = &[
        (
            "network create --subnet 198.18.1.0/24 --gateway 198.18.2.1 -o parent=v1 n2",
            "--gateway 198.18.2.1 is outside every --subnet",
        ),
        (
            "network create --subnet 198.18.1.0/24 --ip-range 198.18.2.0/25 -o parent=v1 n2",
            "--ip-range 198.18.2.0/25 is outside every --subnet",
        ),
        (
            "network create --subnet 198.18.0.128/25 -o parent=v1 n2",
            "overlaps subnet 198.18.0.0/24 of network `n1`",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=nope0 n2",
            "parent interface `nope0` does not exist",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=nope0.10 n2",
            "parent interface `nope0` (the trunk of -o parent=nope0.10) does not exist",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=v1.4095 n2",
            "VLAN id 4095 in `-o parent=v1.4095` is out of range",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=v0 n2",
            "network `n1` already uses parent interface `v0`",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=v1 -o mtu=9000 n2",
            "MTU 9000 is larger than parent `v1`'s MTU 1500",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=v1 -o vlan=7 n2",
            "unknown option `-o vlan`",
        ),
        (
            "network create --dhcp --subnet 198.18.1.0/24 -o parent=v1 n2",
            "takes no --subnet",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=v1 -o macvlan_mode=nat n2",
            "unknown macvlan mode `nat`",
        ),
        (
            "network create --subnet 198.18.1.0/24 -d ipvlan -o parent=v1 n2",
            "unsupported driver `ipvlan`",
        ),
        (
            "network create --subnet 198.18.1.0/24 n2",
            "-o parent=IF is required",
        ),
        (
            "network create --subnet 198.18.1.0/24 -o parent=v1 n1",
            "a network named `n1` already exists",
        ),
        ("network rm n1", "has active endpoints (e1)"),
        ("network rm nothere", "no such network `nothere`"),
        (
            "endpoint create --network n1 --netns NS e1",
            "an endpoint named `e1` already exists",
        ),
        (
            "endpoint create --network n1 --netns NS --ifname x1 --mac-address 02:42:c6:12:00:02 e2",
            "MAC address 02:42:c6:12:00:02 is already used by endpoint `e1`",
        ),
        (
            "endpoint create --network n1 --netns NS --ifname x1 --ip 198.18.9.9 e2",
            "address 198.18.9.9 is outside every IPv4 subnet",
        ),
        (
            "endpoint create --network n1 --netns NS --ifname x1 --ip 198.18.0.2 e2",
            "address 198.18.0.2 is already in use",
        ),
        (
            "endpoint create --network n1 --netns NS --ifname x1 --ip6 2001:db8::9 e2",
            "has no IPv6 subnet",
        ),
        (
            "endpoint create --network nope --netns NS e2",
            "no such network `nope`",
        ),
        (
            "endpoint create --network n1 --netns xmv-no-such-ns e2",
            "network namespace `xmv-no-such-ns` does not exist",
        ),
        (
            "endpoint create --network n1 --netns NS e2",
            "already has an interface named `eth0`: choose another --ifname",
        ),
    ];
    for (line, want) in REFUSED {
        let argv: Vec<&str> = line
            .split_whitespace()
            .map(|w| if w == "NS" { b.as_str() } else { w })
            .collect();
        let before = lab.snapshot();
        let err = lab.cli_err(&argv);
        assert!(
            err.contains(want),
            "`{}`:\n  got  {err}\n  want …{want}…",
            argv.join(" ")
        );
        assert_eq!(
            lab.snapshot(),
            before,
            "`{}` changed something",
            argv.join(" ")
        );
    }
    assert!(link_names(&lab.endpoints[1]).contains(&"eth0".to_string()));
    lab.endpoints[1]
        .run(|| {
            let nl = Netlink::new()?;
            Ok(nl.del_link(nl.require_link("eth0")?.index)?)
        })
        .unwrap();
    lab.cli(&["endpoint", "rm", "e1"]).unwrap();
    lab.cli(&["network", "rm", "n1"]).unwrap();
    lab.assert_clean(3);
}

#[test]
fn drift_is_reported_and_endpoint_rm_is_idempotent() {
    let lab = Lab::new("drift", 1, 2, 1500);
    lab.cli_line("network create --subnet 198.18.0.0/24 -o parent=v0 --host-shim n")
        .unwrap();
    let (a, b) = (lab.ep(0).to_string(), lab.ep(1).to_string());
    lab.cli(&["endpoint", "create", "--network", "n", "--netns", &a, "a"])
        .unwrap();
    lab.cli(&["endpoint", "create", "--network", "n", "--netns", &b, "b"])
        .unwrap();
    assert!(
        lab.host
            .run(|| Ok(drift::check(&lab.state())?))
            .unwrap()
            .is_empty()
    );

    // Behind xmacvlan's back: a's device deleted, b's replaced by a foreign one.
    for (ns, replace) in [(&lab.endpoints[0], false), (&lab.endpoints[1], true)] {
        ns.run(|| {
            let nl = Netlink::new()?;
            nl.del_link(nl.require_link("eth0")?.index)?;
            if replace {
                nl.add_veth("eth0", "peer", 1)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let n = lab.inspect("network", "n");
    let drift = n["Drift"].to_string();
    assert!(
        drift.contains("device `eth0` is missing from namespace"),
        "{drift}"
    );
    assert!(drift.contains("is not the endpoint's macvlan"), "{drift}");
    let found = lab.host.run(|| Ok(drift::check(&lab.state())?)).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].subject == "endpoint a" && found[1].subject == "endpoint b");

    // rm clears the records, leaves the foreign device alone, and may be repeated.
    lab.cli(&["endpoint", "rm", "a", "b"]).unwrap();
    lab.cli(&["endpoint", "rm", "a", "b"]).unwrap();
    assert!(lab.state().endpoints.is_empty());
    assert!(link_names(&lab.endpoints[1]).contains(&"peer".to_string()));
    lab.endpoints[1]
        .run(|| {
            let nl = Netlink::new()?;
            Ok(nl.del_link(nl.require_link("eth0")?.index)?)
        })
        .unwrap();

    // A deleted shim is drift too; rm of the network still succeeds.
    let shim = lab.state().networks[0].host_shim.clone().unwrap().ifname;
    lab.host
        .run(|| {
            let nl = Netlink::new()?;
            Ok(nl.del_link(nl.require_link(&shim)?.index)?)
        })
        .unwrap();
    let drift = lab.inspect("network", "n")["Drift"].to_string();
    assert!(
        drift.contains("host shim") && drift.contains("is missing"),
        "{drift}"
    );
    lab.cli(&["network", "rm", "n"]).unwrap();
    lab.assert_clean(1);
}

#[test]
fn vlan_parent_is_created_or_the_missing_8021q_is_named() {
    let lab = Lab::new("vlan", 1, 1, 1500);
    let before = lab.snapshot();
    match lab.cli_line("network create --subnet 198.18.0.0/24 -o parent=v0.100 n") {
        Err(e) => {
            // This machine's kernel: no 802.1Q. The error names it, and nothing is left.
            let e = format!("{e:#}");
            assert!(
                e.contains("CONFIG_VLAN_8021Q") && e.contains("8021q"),
                "{e}"
            );
            assert_eq!(lab.snapshot(), before);
        }
        Ok(_) => {
            // A kernel with 802.1Q: the sub-interface exists, is ours, and goes with the network.
            let vlan = lab
                .host
                .run(|| Ok(Netlink::new()?.require_link("v0.100")?))
                .unwrap();
            assert_eq!(vlan.vlan_id, Some(100));
            let n = lab.inspect("network", "n");
            assert_eq!(n["Parent"]["VlanId"], 100);
            assert_eq!(n["Parent"]["CreatedByXmacvlan"], true);
            lab.cli(&["network", "rm", "n"]).unwrap();
            lab.assert_clean(1);
        }
    }
}

#[test]
fn corrupted_state_is_an_error_and_is_kept() {
    let lab = Lab::new("bad", 1, 0, 1500);
    std::fs::create_dir_all(&lab.root).unwrap();
    let path = lab.root.join("state.json");
    std::fs::write(&path, "{ not json").unwrap();
    for argv in [
        vec!["network", "ls"],
        vec![
            "network",
            "create",
            "--subnet",
            "198.18.0.0/24",
            "-o",
            "parent=v0",
            "n",
        ],
    ] {
        let e = lab.cli_err(&argv);
        assert!(
            e.contains("is corrupted") && e.contains("left as it is"),
            "{e}"
        );
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    assert_eq!(link_names(&lab.host), ["lo", "v0", "v0p"]);
}

/// The CNI reference: Debian's `containernetworking-plugins` (macvlan + host-local).
const CNI_DIR: &str = "/usr/lib/cni";

fn cni(lab: &Lab, command: &str, netns: &Netns, config: &str) -> Result<String> {
    lab.host.run(|| {
        use std::io::Write;
        let mut child = Command::new(Path::new(CNI_DIR).join("macvlan"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("{}-ref", lab.prefix))
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running the CNI macvlan plugin")?;
        child.stdin.take().unwrap().write_all(config.as_bytes())?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "CNI {command} failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    })
}

#[test]
fn devices_match_the_cni_reference_plugin() {
    assert!(
        Path::new(CNI_DIR).join("macvlan").exists()
            && Path::new(CNI_DIR).join("host-local").exists(),
        "the CNI reference plugins are missing: apt-get install containernetworking-plugins"
    );
    let lab = Lab::new("cni", 2, 2, 1450);
    let ipam_dir = lab.root.with_extension("cni-ipam");
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("{}-ref", lab.prefix),
        "type": "macvlan",
        "master": "v1",
        "mode": "bridge",
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [
                [{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1"}],
                [{"subnet": "2001:db8:1::/64", "gateway": "2001:db8:1::1"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        }
    })
    .to_string();
    cni(&lab, "ADD", &lab.endpoints[1], &config).unwrap();
    lab.cli_line("network create --subnet 198.18.0.0/24 --gateway 198.18.0.1 --subnet 2001:db8:1::/64 --gateway 2001:db8:1::1 -o parent=v0 n")
    .unwrap();
    let ns = lab.ep(0).to_string();
    lab.cli(&["endpoint", "create", "--network", "n", "--netns", &ns, "e"])
        .unwrap();

    let ours = read(&lab.endpoints[0], "eth0");
    let reference = read(&lab.endpoints[1], "eth0");
    assert_eq!(ours.link.kind, reference.link.kind);
    assert_eq!(ours.link.macvlan_mode, reference.link.macvlan_mode);
    assert_eq!(ours.link.mtu, reference.link.mtu);
    assert_eq!(ours.link.mtu, 1450);
    assert_eq!(ours.link.up, reference.link.up);
    assert_eq!(ours.addresses, reference.addresses, "same IPAM result");
    assert_eq!(ours.routes, reference.routes);
    assert!(
        ours.routes.contains("default via 2001:db8:1::1"),
        "{:?}",
        ours.routes
    );

    cni(&lab, "DEL", &lab.endpoints[1], &config).unwrap();
    let _ = std::fs::remove_dir_all(&ipam_dir);
    lab.cli(&["endpoint", "rm", "e"]).unwrap();
    lab.cli(&["network", "rm", "n"]).unwrap();
    lab.assert_clean(2);
}

/// Run last by name order is not guaranteed, so every test checks its own lab; this one
/// checks that labs of finished tests left no namespace behind.
#[test]
fn finished_labs_leave_no_namespaces() {
    let lab = Lab::new("ns", 0, 1, 1500);
    let prefix = lab.prefix.clone();
    assert_eq!(namespaces_named(&prefix).len(), 2);
    drop(lab);
    assert!(
        namespaces_named(&prefix).is_empty(),
        "{:?}",
        namespaces_named(&prefix)
    );
}

#[test]
fn a_failure_after_provisioning_rolls_back() {
    let lab = Lab::new("rb", 1, 0, 1500);
    // The host already routes the range elsewhere: the shim's route cannot be added, after
    // the shim device itself was made. The shim must go again, and nothing be recorded.
    lab.host
        .run(|| {
            let nl = Netlink::new()?;
            let v0p = nl.require_link("v0p")?.index;
            Ok(nl.add_route("198.18.0.128".parse()?, 25, None, v0p)?)
        })
        .unwrap();
    let before = lab.snapshot();
    let e = lab.cli_err(&[
        "network",
        "create",
        "--subnet",
        "198.18.0.0/24",
        "--ip-range",
        "198.18.0.128/25",
        "-o",
        "parent=v0",
        "--host-shim",
        "n",
    ]);
    assert!(
        e.contains("198.18.0.128/25") && e.contains("already exists"),
        "{e}"
    );
    assert!(e.contains("nothing was left behind"), "{e}");
    assert_eq!(lab.snapshot(), before);
    assert!(lab.state().networks.is_empty());
}
