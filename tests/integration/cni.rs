//! `xmacvlan-cni` run as a container runtime runs it (`CNI_*` environment, config on stdin),
//! side by side with the reference `macvlan` plugin on another veth parent with the same
//! config; the fast path serving what ADD made; ADD → CHECK → DEL → DEL, chained with the
//! reference `tuning` plugin; STATUS, GC, VERSION; and every error case with its code and
//! nothing left behind. Needs root, the reference plugins (containernetworking-plugins) and
//! the `xmacvlan`/`xmacvlan-cni` binaries (`cargo xtask test` builds them).
use std::path::PathBuf;

use serde_json::{Value, json};
use xmacvlan::cni::ops::port_link;
use xmacvlan::ether::Mac;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan_tests::cni_lab::{
    CNI_DIR, Lab, Run, daemon_endpoints, served_by_fast_path, sibling_bin,
};
use xmacvlan_tests::udhcpd::{Pool, Udhcpd};

fn ours() -> PathBuf {
    sibling_bin("xmacvlan-cni")
}

fn reference(name: &str) -> PathBuf {
    let p = PathBuf::from(CNI_DIR).join(name);
    assert!(
        p.exists(),
        "{} is missing: apt-get install containernetworking-plugins",
        p.display()
    );
    p
}

/// The same network config for either plugin: host-local IPAM with its own data directory.
fn config(lab: &Lab, plugin: &str, master: &str, version: &str) -> Value {
    let which = if plugin == "xmacvlan" { "ours" } else { "ref" };
    let mut c = json!({
        "cniVersion": version,
        "name": format!("n-{which}"),
        "type": plugin,
        "master": master,
        "mode": "bridge",
        "mtu": 1400,
        "ipam": {
            "type": "host-local",
            "dataDir": lab.ipam_dir(which),
            "ranges": [
                [{"subnet": "198.18.30.0/24", "gateway": "198.18.30.1"}],
                [{"subnet": "2001:db8:30::/64", "gateway": "2001:db8:30::1"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "198.19.0.0/16"}]
        }
    });
    if plugin == "xmacvlan" {
        c["controlSocket"] = json!(lab.socket());
        c["dataRoot"] = json!(lab.data_root());
        c["portDir"] = json!(lab.dir.join("ports"));
    }
    c
}

fn with_prev(config: &Value, prev: &Value) -> Value {
    let mut c = config.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The interface as the kernel has it, without what differs by nature (index, MAC, the
/// link-local address derived from the MAC).
fn read_back(ns: &NetnsGuard, ifname: &str) -> Value {
    ns.run(|| {
        let nl = Netlink::new()?;
        let link = nl.require_link(ifname)?;
        let mut addresses: Vec<String> = nl
            .addresses(link.index)?
            .into_iter()
            .filter(|(a, _)| !a.to_string().starts_with("fe80"))
            .map(|(a, p)| format!("{a}/{p}"))
            .collect();
        addresses.sort();
        let mut routes: Vec<String> = nl
            .routes_of(link.index)?
            .iter()
            .map(ToString::to_string)
            .filter(|r| !r.starts_with("fe80"))
            .collect();
        routes.sort();
        Ok(json!({
            "kind": link.kind, "mode": format!("{:?}", link.macvlan_mode), "mtu": link.mtu,
            "up": link.up, "addresses": addresses, "routes": routes,
        }))
    })
    .unwrap()
}

fn ok(run: &Run, what: &str) {
    assert!(run.ok, "{what} failed: {run:?}");
}

#[test]
fn side_by_side_with_the_reference_macvlan_then_check_chained_with_tuning_and_del_twice() {
    let lab = Lab::new("sbs", 2, 2);
    let daemon = lab.start_daemon();
    let (c0, c1) = (lab.containers[0].path(), lab.containers[1].path());
    let (c0, c1) = (c0.to_str().unwrap(), c1.to_str().unwrap());
    let mine = config(&lab, "xmacvlan", "v0", "1.0.0");
    let theirs = config(&lab, "macvlan", "v1", "1.0.0");

    let a = lab.plugin(&ours(), "ADD", "ctr-a", c0, "eth0", &mine);
    ok(&a, "xmacvlan ADD");
    let r = lab.plugin(&reference("macvlan"), "ADD", "ctr-r", c1, "eth0", &theirs);
    ok(&r, "reference ADD");
    let (ra, rr) = (a.json(), r.json());
    // The results: same shape and addresses; each its own sandbox and MAC.
    for key in ["cniVersion", "ips", "routes", "dns"] {
        assert_eq!(ra[key], rr[key], "result `{key}`: ours {ra} reference {rr}");
    }
    assert_eq!(ra["interfaces"][0]["name"], rr["interfaces"][0]["name"]);
    assert_eq!(ra["interfaces"][0]["sandbox"], c0);
    let mac = ra["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("02:42:"), "a random local MAC: {mac}");
    // The kernel: the same device, addresses and routes.
    let (ka, kr) = (
        read_back(&lab.containers[0], "eth0"),
        read_back(&lab.containers[1], "eth0"),
    );
    assert_eq!(ka, kr, "ours vs the reference plugin's, read back");
    assert_eq!(ka["mtu"], 1400);
    assert!(
        ka["routes"]
            .as_array()
            .unwrap()
            .contains(&json!("198.19.0.0/16 via 198.18.30.1")),
        "{ka}"
    );

    // No black hole with nothing attached; the fast path serves an attached application.
    let state = lab.state();
    assert_eq!(state.endpoints.len(), 1);
    let ep = state.endpoints[0].clone();
    assert_eq!(Mac(ep.mac).to_string(), mac);
    assert_eq!(
        ep.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["198.18.30.2/24", "2001:db8:30::2/64"],
        "the IPAM plugin's addresses recorded, none allocated again"
    );
    served_by_fast_path(&lab, &ep.spec(), c0, "eth0", 500);
    // The container finds its port by its namespace's inode and its interface name.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(c0).unwrap());
    let link = port_link(&lab.dir.join("ports"), inode, "eth0");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(format!("../../{}.sock", ep.name))
    );

    // CHECK against prevResult, then chained: tuning after us, CHECK both with its result.
    ok(
        &lab.plugin(
            &ours(),
            "CHECK",
            "ctr-a",
            c0,
            "eth0",
            &with_prev(&mine, &ra),
        ),
        "CHECK",
    );
    let tuning = json!({"cniVersion": "1.0.0", "name": "n-ours", "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}});
    let t = lab.plugin(
        &reference("tuning"),
        "ADD",
        "ctr-a",
        c0,
        "eth0",
        &with_prev(&tuning, &ra),
    );
    ok(&t, "tuning ADD after xmacvlan");
    let chained = t.json();
    assert_eq!(chained["interfaces"], ra["interfaces"], "{chained}");
    ok(
        &lab.plugin(
            &ours(),
            "CHECK",
            "ctr-a",
            c0,
            "eth0",
            &with_prev(&mine, &chained),
        ),
        "CHECK with tuning's result",
    );
    ok(
        &lab.plugin(
            &reference("tuning"),
            "CHECK",
            "ctr-a",
            c0,
            "eth0",
            &with_prev(&tuning, &chained),
        ),
        "tuning CHECK",
    );
    // CHECK sees what changed behind its back: the address removed from the device.
    let flushed = std::process::Command::new("ip")
        .args([
            "-n",
            lab.containers[0].name(),
            "-4",
            "addr",
            "flush",
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    assert!(flushed.success());
    let bad = lab.plugin(
        &ours(),
        "CHECK",
        "ctr-a",
        c0,
        "eth0",
        &with_prev(&mine, &chained),
    );
    assert_eq!(bad.code(), 101, "{bad:?}");
    assert!(
        bad.json()["msg"]
            .as_str()
            .unwrap()
            .contains("198.18.30.2/24 of prevResult")
    );

    // DEL in reverse order, then DEL again: both succeed, nothing is left.
    ok(
        &lab.plugin(
            &reference("tuning"),
            "DEL",
            "ctr-a",
            c0,
            "eth0",
            &with_prev(&tuning, &chained),
        ),
        "tuning DEL",
    );
    for round in 0..2 {
        ok(
            &lab.plugin(
                &ours(),
                "DEL",
                "ctr-a",
                c0,
                "eth0",
                &with_prev(&mine, &chained),
            ),
            &format!("DEL #{round}"),
        );
        ok(
            &lab.plugin(&reference("macvlan"), "DEL", "ctr-r", c1, "eth0", &theirs),
            &format!("reference DEL #{round}"),
        );
    }
    assert_eq!(Lab::links(&lab.containers[0]), ["lo"]);
    assert_eq!(Lab::links(&lab.containers[1]), ["lo"]);
    let state = lab.state();
    assert!(
        state.endpoints.is_empty() && state.networks.is_empty(),
        "{state:?}"
    );
    assert!(lab.leases("ours").is_empty(), "{:?}", lab.leases("ours"));
    assert!(daemon_endpoints(&lab.socket()).is_empty());
    assert_eq!(lab.xdp_on_v0(), None, "last endpoint gone: XDP detached");
    assert!(
        !link.exists() && !link.parent().unwrap().exists(),
        "port link left"
    );
    assert!(
        std::fs::read_dir(lab.data_root().join("cni"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    drop(daemon);
}

/// What a failed ADD must leave exactly as it was.
fn snapshot(lab: &Lab) -> (Vec<String>, Vec<String>, Vec<String>, String) {
    (
        Lab::links(&lab.host),
        Lab::links(&lab.containers[0]),
        lab.leases("ours"),
        {
            let state = lab.state();
            format!("{:?} {:?}", state.networks, state.endpoints)
        },
    )
}

#[test]
fn every_error_has_its_code_and_leaves_nothing_behind() {
    let lab = Lab::new("err", 1, 2);
    let daemon = lab.start_daemon();
    let c0 = lab.containers[0].path();
    let c0 = c0.to_str().unwrap();
    let good = config(&lab, "xmacvlan", "v0", "1.0.0");
    let before = snapshot(&lab);
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, Value, u64, &str)> = vec![
        (
            "unknown mode",
            edit(&|c| c["mode"] = json!("nat")),
            7,
            "unknown macvlan mode `nat`",
        ),
        (
            "missing master key",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("master");
            }),
            7,
            "`master` is required",
        ),
        (
            "missing master link",
            edit(&|c| c["master"] = json!("nope0")),
            7,
            "master `nope0` does not exist",
        ),
        (
            "bad VLAN id",
            edit(&|c| c["master"] = json!("v0.5000")),
            7,
            "1-4094",
        ),
        (
            "bad version",
            edit(&|c| c["cniVersion"] = json!("0.2.0")),
            1,
            "not supported",
        ),
        (
            "no IPAM",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("ipam");
            }),
            7,
            "`ipam` with a `type`",
        ),
        (
            "unknown IPAM plugin",
            edit(&|c| c["ipam"]["type"] = json!("nope-ipam")),
            7,
            "not in CNI_PATH",
        ),
        (
            "IPAM failure",
            edit(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "198.18.30.0/33"}]])),
            0,
            "IPAM plugin `host-local`",
        ),
        (
            "MTU above the parent's (after IPAM)",
            edit(&|c| c["mtu"] = json!(9000)),
            100,
            "MTU 9000",
        ),
        (
            "daemon down",
            edit(&|c| c["controlSocket"] = json!(lab.dir.join("none.sock"))),
            50,
            "daemon is not running",
        ),
    ];
    for (what, conf, code, needle) in cases {
        let run = lab.plugin(&ours(), "ADD", "ctr-e", c0, "eth0", &conf);
        let got = run.code();
        let msg = run.json()["msg"].as_str().unwrap().to_string();
        if code != 0 {
            assert_eq!(got, code, "{what}: {run:?}");
        } else {
            assert!(got > 0, "{what}: {run:?}");
        }
        assert!(msg.contains(needle), "{what}: `{needle}` not in: {msg}");
        assert_eq!(snapshot(&lab), before, "{what} left something behind");
    }
    // Conflicts with networks already in the state: one the CLI made (same name, or same
    // parent), and a CNI network attached with another mode.
    xmacvlan_tests::cli_in(
        &lab.host,
        &lab.data_root(),
        &[
            "network",
            "create",
            "--subnet",
            "198.18.31.0/24",
            "-o",
            "parent=v0",
            "clinet",
        ],
    )
    .unwrap();
    let with_cli = snapshot(&lab);
    let same_name = edit(&|c| c["name"] = json!("clinet"));
    let run = lab.plugin(&ours(), "ADD", "ctr-e", c0, "eth0", &same_name);
    assert_eq!(run.code(), 100, "{run:?}");
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("was not made by xmacvlan-cni")
    );
    let run = lab.plugin(&ours(), "ADD", "ctr-e", c0, "eth0", &good);
    assert_eq!(run.code(), 100, "{run:?}");
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("already uses parent interface `v0`")
    );
    assert_eq!(snapshot(&lab), with_cli, "a refused ADD changed something");
    xmacvlan_tests::cli_in(&lab.host, &lab.data_root(), &["network", "rm", "clinet"]).unwrap();
    ok(
        &lab.plugin(&ours(), "ADD", "ctr-e", c0, "eth0", &good),
        "ADD",
    );
    let private = edit(&|c| c["mode"] = json!("private"));
    let c1 = lab.containers[1].path();
    let run = lab.plugin(
        &ours(),
        "ADD",
        "ctr-f",
        c1.to_str().unwrap(),
        "eth0",
        &private,
    );
    assert_eq!(run.code(), 100, "{run:?}");
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("already exists with master `v0` and mode bridge")
    );
    assert_eq!(Lab::links(&lab.containers[1]), ["lo"]);
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-e", c0, "eth0", &good),
        "DEL",
    );
    assert_eq!(snapshot(&lab), before);

    // Not JSON at all, and a missing variable.
    let run = lab.host.run(|| {
        use std::io::Write;
        let mut child = std::process::Command::new(ours())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "x")
            .env("CNI_NETNS", c0)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(b"{ not json")?;
        Ok(child.wait_with_output()?)
    });
    let out = run.unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 6, "{v}");
    let run = lab.plugin(&ours(), "ADD", "", c0, "eth0", &good);
    assert_eq!(run.code(), 4, "{run:?}");
    // An ADD into a namespace that does not exist.
    let run = lab.plugin(
        &ours(),
        "ADD",
        "ctr-e",
        "/run/netns/xmv-no-such-ns",
        "eth0",
        &good,
    );
    assert_eq!(run.code(), 3, "{run:?}");
    assert_eq!(
        snapshot(&lab),
        before,
        "ADD into a missing netns left something"
    );

    // STATUS: fine with the daemon, 50 without.
    let v11 = edit(&|c| c["cniVersion"] = json!("1.1.0"));
    ok(&lab.plugin(&ours(), "STATUS", "", "", "", &v11), "STATUS");
    let down = edit(&|c| {
        c["cniVersion"] = json!("1.1.0");
        c["controlSocket"] = json!(lab.dir.join("none.sock"));
    });
    assert_eq!(lab.plugin(&ours(), "STATUS", "", "", "", &down).code(), 50);
    // VERSION.
    let v = lab.plugin(
        &ours(),
        "VERSION",
        "",
        "",
        "",
        &json!({"cniVersion": "1.1.0"}),
    );
    ok(&v, "VERSION");
    assert_eq!(
        v.json()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // CHECK of an attachment that does not exist.
    let run = lab.plugin(
        &ours(),
        "CHECK",
        "ctr-x",
        c0,
        "eth0",
        &with_prev(&good, &json!({})),
    );
    assert_eq!(run.code(), 3, "{run:?}");
    drop(daemon);
    // DEL of what was never added, with the daemon gone: still fine.
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-x", c0, "eth0", &good),
        "DEL of nothing",
    );
    assert_eq!(snapshot(&lab), before);
}

#[test]
fn gc_removes_what_is_not_valid_del_tolerates_a_missing_netns_and_0_4_0_results() {
    let lab = Lab::new("gc", 1, 3);
    let _daemon = lab.start_daemon();
    let paths: Vec<String> = lab
        .containers
        .iter()
        .map(|c| c.path().to_str().unwrap().to_string())
        .collect();
    let conf = config(&lab, "xmacvlan", "v0", "1.1.0");
    // Three ADDs at once, as a runtime starting pods does: the first makes the network, the
    // others wait for the state lock and join it; each gets its own lease.
    let results: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (lab, conf) = (&lab, &conf);
                scope
                    .spawn(move || lab.plugin(&ours(), "ADD", &format!("ctr-{i}"), p, "eth0", conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses = Vec::new();
    for (i, r) in results.iter().enumerate() {
        ok(r, "parallel ADD");
        addresses.push(r.json()["ips"][0]["address"].clone());
        // A 1.1.0 result names the endpoint's memif socket.
        let socket = r.json()["interfaces"][0]["socketPath"].clone();
        let name = xmacvlan::cni::ops::endpoint_name("n-ours", &format!("ctr-{i}"), "eth0");
        assert_eq!(
            socket,
            json!(lab.dir.join("ports").join(format!("{name}.sock")))
        );
    }
    addresses.sort_by_key(ToString::to_string);
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "distinct leases: {addresses:?}");
    assert_eq!(lab.state().networks.len(), 1, "one network record");
    assert_eq!(daemon_endpoints(&lab.socket()).len(), 3);
    // GC keeping only ctr-0: ctr-1 and ctr-2 go (devices, state, leases, the fast path).
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-0", "ifname": "eth0"}]);
    ok(&lab.plugin(&ours(), "GC", "", "", "", &gc), "GC");
    assert_eq!(Lab::links(&lab.containers[0]).len(), 2);
    assert_eq!(Lab::links(&lab.containers[1]), ["lo"]);
    assert_eq!(Lab::links(&lab.containers[2]), ["lo"]);
    assert_eq!(lab.state().endpoints.len(), 1);
    assert_eq!(
        lab.leases("ours").len(),
        2,
        "ctr-0's IPv4 and IPv6: {:?}",
        lab.leases("ours")
    );
    assert_eq!(daemon_endpoints(&lab.socket()).len(), 1);

    // DEL after the namespace is gone (the kernel took the device with it).
    let ns0 = lab.containers[0].name().to_string();
    xmacvlan::netns::Netns::open(&ns0)
        .unwrap()
        .delete()
        .unwrap();
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-0", &paths[0], "eth0", &conf),
        "DEL with the netns gone",
    );
    let state = lab.state();
    assert!(
        state.endpoints.is_empty() && state.networks.is_empty(),
        "{state:?}"
    );
    assert!(lab.leases("ours").is_empty());
    assert!(daemon_endpoints(&lab.socket()).is_empty());

    // A 0.4.0 config gets a 0.4.0 result (IPs carry their version).
    let old = config(&lab, "xmacvlan", "v0", "0.4.0");
    let r = lab.plugin(&ours(), "ADD", "ctr-1", &paths[1], "eth0", &old);
    ok(&r, "ADD 0.4.0");
    let v = r.json();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["ips"][0]["version"], "4", "{v}");
    ok(
        &lab.plugin(
            &ours(),
            "CHECK",
            "ctr-1",
            &paths[1],
            "eth0",
            &with_prev(&old, &v),
        ),
        "CHECK 0.4.0",
    );
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-1", &paths[1], "eth0", &old),
        "DEL 0.4.0",
    );
    assert!(lab.state().networks.is_empty());

    // static IPAM with the address and MAC a runtime passes as capabilities (Multus's
    // "ips" and "mac", as in deploy/kubernetes/nad-vlan100.yaml).
    let mut st = config(&lab, "xmacvlan", "v0", "1.0.0");
    st["capabilities"] = json!({"ips": true, "mac": true});
    st["ipam"] = json!({"type": "static"});
    st["runtimeConfig"] = json!({"ips": ["198.18.30.77/24"], "mac": "02:00:00:00:30:77"});
    let r = lab.plugin(&ours(), "ADD", "ctr-s", &paths[2], "eth0", &st);
    ok(&r, "ADD with static IPAM");
    let v = r.json();
    assert_eq!(v["ips"][0]["address"], "198.18.30.77/24", "{v}");
    assert_eq!(v["interfaces"][0]["mac"], "02:00:00:00:30:77", "{v}");
    let mac = lab.containers[2]
        .run(|| Ok(Netlink::new()?.require_link("eth0")?.mac))
        .unwrap();
    assert_eq!(mac, [2, 0, 0, 0, 0x30, 0x77]);
    // ADD again for the same attachment: refused, the first one untouched.
    let again = lab.plugin(&ours(), "ADD", "ctr-s", &paths[2], "eth0", &st);
    assert_eq!(again.code(), 100, "{again:?}");
    assert!(
        again.json()["msg"]
            .as_str()
            .unwrap()
            .contains("DEL it before")
    );
    assert_eq!(Lab::links(&lab.containers[2]), ["eth0", "lo"]);
    ok(
        &lab.plugin(
            &ours(),
            "CHECK",
            "ctr-s",
            &paths[2],
            "eth0",
            &with_prev(&st, &v),
        ),
        "CHECK static",
    );
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-s", &paths[2], "eth0", &st),
        "DEL static",
    );
    assert_eq!(Lab::links(&lab.containers[2]), ["lo"]);
    let state = lab.state();
    assert!(
        state.endpoints.is_empty() && state.networks.is_empty(),
        "{state:?}"
    );
}

#[test]
fn a_restarted_daemon_serves_what_cni_added() {
    let lab = Lab::new("rs", 1, 1);
    let c0 = lab.containers[0].path();
    let c0 = c0.to_str().unwrap();
    let conf = config(&lab, "xmacvlan", "v0", "1.0.0");
    let daemon = lab.start_daemon();
    let r = lab.plugin(&ours(), "ADD", "ctr-r", c0, "eth0", &conf);
    ok(&r, "ADD");
    let prev = with_prev(&conf, &r.json());
    // Killed: CHECK now says the plugin is not available.
    drop(daemon);
    assert_eq!(
        lab.plugin(&ours(), "CHECK", "ctr-r", c0, "eth0", &prev)
            .code(),
        50
    );
    // A new daemon serves the attachment from the state, without another ADD.
    let _daemon = lab.start_daemon();
    let ep = lab.state().endpoints[0].clone();
    served_by_fast_path(&lab, &ep.spec(), c0, "eth0", 300);
    ok(
        &lab.plugin(&ours(), "CHECK", "ctr-r", c0, "eth0", &prev),
        "CHECK",
    );
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-r", c0, "eth0", &conf),
        "DEL",
    );
    assert_eq!(Lab::links(&lab.containers[0]), ["lo"]);
    assert!(lab.state().endpoints.is_empty());
    assert!(lab.leases("ours").is_empty());
}

/// A background process killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dhcp_ipam_gets_a_lease_through_the_container_interface() {
    let lab = Lab::new("dh", 1, 1);
    let _daemon = lab.start_daemon();
    let c0 = lab.containers[0].path();
    let c0 = c0.to_str().unwrap();
    // A DHCP server on the wire side (busybox udhcpd on v0p) and the dhcp IPAM plugin's
    // daemon on a private socket, both in the host namespace.
    lab.host
        .run(|| {
            let nl = Netlink::new()?;
            let v0p = nl.require_link("v0p")?.index;
            Ok(nl.add_address(v0p, "198.18.50.1".parse()?, 24)?)
        })
        .unwrap();
    let server = Udhcpd::start(
        lab.host.name(),
        "v0p",
        &lab.dir,
        &Pool {
            first: "198.18.50.100",
            last: "198.18.50.110",
            router: "198.18.50.1",
            dns: "198.18.50.53",
            lease_s: 600,
        },
    );
    let spawn = |cmd: &mut std::process::Command| {
        lab.host
            .run(|| {
                Ok(Proc(
                    cmd.stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()?,
                ))
            })
            .unwrap()
    };
    let socket = lab.dir.join("dhcp.sock");
    let _dhcp = spawn(
        std::process::Command::new(reference("dhcp"))
            .args(["daemon", "-broadcast", "-socketpath"])
            .arg(&socket),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dhcp daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut conf = config(&lab, "xmacvlan", "v0", "1.0.0");
    conf["ipam"] = json!({"type": "dhcp", "daemonSocketPath": socket});
    conf.as_object_mut().unwrap().remove("mtu");
    let r = lab.plugin(&ours(), "ADD", "ctr-d", c0, "eth0", &conf);
    ok(&r, "ADD with dhcp IPAM");
    let v = r.json();
    let address = v["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        address.starts_with("198.18.50.1") && address.ends_with("/24"),
        "{v}"
    );
    let kernel = read_back(&lab.containers[0], "eth0");
    assert!(
        kernel["addresses"]
            .as_array()
            .unwrap()
            .contains(&json!(address)),
        "{kernel}"
    );
    assert_eq!(lab.state().endpoints[0].addresses[0].to_string(), address);
    // The server leased it to the container's MAC (as xmacvlan's own client does for Docker).
    let mac = Mac(lab.state().endpoints[0].mac).to_string();
    let leased_ip = || server.lease_of(&mac).map(|l| l.ip);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while leased_ip().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        leased_ip().map(|ip| format!("{ip}/24")),
        Some(address.clone())
    );
    ok(
        &lab.plugin(&ours(), "CHECK", "ctr-d", c0, "eth0", &with_prev(&conf, &v)),
        "CHECK dhcp",
    );
    ok(
        &lab.plugin(&ours(), "DEL", "ctr-d", c0, "eth0", &conf),
        "DEL dhcp",
    );
    assert_eq!(Lab::links(&lab.containers[0]), ["lo"]);
    assert!(lab.state().endpoints.is_empty());
    // The dhcp plugin released the lease through the device before it went.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.lease_of(&mac).and_then(|l| l.expires_in).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never saw the RELEASE: {:?}",
            server.lease_of(&mac)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
