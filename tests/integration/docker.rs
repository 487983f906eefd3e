//! `docker network create -d xmacvlan` against a real Docker engine (Debian's docker.io),
//! side by side with Docker's own `-d macvlan`.
//!
//! The test runs its own dockerd, private to it (temporary data-root, exec-root, pidfile and
//! socket; no iptables, no bridge), in the host namespace (`ip netns exec` breaks dockerd's
//! cgroup mounts), on a veth pair it creates: Docker's macvlan network hangs off one end,
//! xmacvlan's off the other, so the two containers share one L2 segment. The plugin socket has
//! a unique name (`xmvt<pid>`), removed at the end like everything else.
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use xmacvlan::control::model::derived_mac;
use xmacvlan::netlink::{MacVlanMode, Netlink};
use xmacvlan::netns::Netns;
use xmacvlan_bench::generator::Sent;
use xmacvlan_tests::docker_lab::{
    Parents, TempDir, Xmacvlan, ping, run_container, sandbox_of, wait_for,
};
use xmacvlan_tests::dockerd::Dockerd;
use xmacvlan_tests::fast_path;
use xmacvlan_tests::require_root;

/// (subnet, ip-range, gateway): the same flags for both drivers, one /24 apart (Docker's IPAM
/// shares one pool between networks with the same subnet, so the second could not have the
/// same gateway). The two containers reach each other over one L2 segment through on-link
/// routes the test adds (see [`route_to`]).
const MV: (&str, &str, &str) = ("198.18.0.0/24", "198.18.0.128/26", "198.18.0.1");
const XV: (&str, &str, &str) = ("198.18.1.0/24", "198.18.1.128/26", "198.18.1.1");
/// Both networks are dual-stack: (IPv6 subnet, gateway).
const MV6: (&str, &str) = ("2001:db8:1::/64", "2001:db8:1::1");
const XV6: (&str, &str) = ("2001:db8:2::/64", "2001:db8:2::1");

/// What a container's interface looks like from inside, read over netlink in its sandbox.
#[derive(Debug)]
struct Readback {
    mode: Option<MacVlanMode>,
    mac: [u8; 6],
    address: (IpAddr, u8),
    default_via: Option<IpAddr>,
    /// The global IPv6 address and the IPv6 default route's gateway.
    address6: (IpAddr, u8),
    default_via6: Option<IpAddr>,
    mtu: u32,
}

fn read_back(docker: &Dockerd, container: &str) -> Readback {
    let ns = Netns::open(&sandbox_of(docker, container)).unwrap();
    ns.run(|| {
        let nl = Netlink::new()?;
        let link = nl.require_link("eth0")?;
        assert_eq!(
            link.kind.as_deref(),
            Some("macvlan"),
            "{container}: {link:?}"
        );
        let addresses = nl.addresses(link.index)?;
        let v4: Vec<_> = addresses.iter().filter(|a| a.0.is_ipv4()).collect();
        assert_eq!(v4.len(), 1, "{container}: {addresses:?}");
        let v6: Vec<_> = addresses
            .iter()
            .filter(|a| matches!(a.0, IpAddr::V6(ip) if (ip.segments()[0] & 0xffc0) != 0xfe80))
            .collect();
        assert_eq!(v6.len(), 1, "{container}: {addresses:?}");
        let routes = nl.routes_of(link.index)?;
        let default_via = |v6: bool| {
            routes
                .iter()
                .find(|r| r.is_default() && r.destination.is_ipv6() == v6)
                .and_then(|r| r.gateway)
        };
        Ok(Readback {
            mode: link.macvlan_mode,
            mac: link.mac,
            address: *v4[0],
            default_via: default_via(false),
            address6: *v6[0],
            default_via6: default_via(true),
            mtu: link.mtu,
        })
    })
    .unwrap()
}

/// No black hole, then the fast path (see [`fast_path`]): frames sent from the wire (the
/// other veth end) to the container's MAC reach its `eth0` while nothing is attached to the
/// endpoint's port, and exactly those reach `xmacvlan-sink` run in the container's sandbox
/// on `<port-dir>/<endpoint>.sock` (the socket a `docker run -v` of the port dir shows it).
fn assert_fast_path_serves(xmv: &Xmacvlan, docker: &Dockerd, parents: &Parents, endpoint: &str) {
    let spec = xmv.state().endpoint(endpoint).unwrap().spec();
    let sandbox = sandbox_of(docker, "cb");
    let port = xmv.port_dir().join(format!("{endpoint}.sock"));
    assert!(port.exists(), "the daemon serves {}", port.display());
    let wire = |f: &(dyn Fn() -> anyhow::Result<Sent> + Sync)| f().unwrap();
    let target = fast_path::Endpoint {
        control: &xmv.socket(),
        spec: &spec,
        netns: &sandbox,
        ifname: "eth0",
        port: &port,
        logs: &xmv.dir,
    };
    fast_path::no_black_hole_then_sink(&target, &wire, &parents.a, 300);
}

/// An on-link route in the container to the other network's subnet (same L2 segment).
fn route_to(docker: &Dockerd, container: &str, subnet: &str) {
    let (net, prefix) = subnet.split_once('/').unwrap();
    let (net, prefix): (IpAddr, u8) = (net.parse().unwrap(), prefix.parse().unwrap());
    Netns::open(&sandbox_of(docker, container))
        .unwrap()
        .run(|| {
            let nl = Netlink::new()?;
            let index = nl.require_link("eth0")?.index;
            Ok(nl.add_route(net, prefix, None, index)?)
        })
        .unwrap();
}

/// One raw HTTP exchange on the plugin socket: the whole answer.
fn raw_call(plugin: &Path, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(plugin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// The plugin socket treats its peer as hostile: unknown methods, oversized or chunked bodies
/// and a peer that sends nothing get an HTTP error, and the next caller is served.
fn hostile_peers(plugin: &Path) {
    let a = raw_call(
        plugin,
        b"POST /NetworkDriver.Nope HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert!(
        a.starts_with("HTTP/1.1 404 ") && a.contains("unknown plugin method"),
        "{a}"
    );
    let a = raw_call(
        plugin,
        b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert!(a.starts_with("HTTP/1.1 413 "), "{a}");
    let a = raw_call(
        plugin,
        b"POST /Plugin.Activate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert!(a.starts_with("HTTP/1.1 411 "), "{a}");
    let _silent = std::os::unix::net::UnixStream::connect(plugin).unwrap();
    let started = Instant::now();
    let a = raw_call(
        plugin,
        b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        a.starts_with("HTTP/1.1 200 ") && a.contains("NetworkDriver"),
        "{a}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a silent peer held the plugin for {:?}",
        started.elapsed()
    );
}

/// xmacvlan's endpoints are exactly the ones Docker has on `xv`: no orphan, no duplicate.
fn assert_same_endpoints(docker: &Dockerd, xmv: &Xmacvlan) {
    let docker_ids = docker.ok(&[
        "network",
        "inspect",
        "xv",
        "-f",
        "{{range $id, $c := .Containers}}{{$c.EndpointID}} {{end}}",
    ]);
    let mut from_docker: Vec<String> = docker_ids
        .split_whitespace()
        .map(xmacvlan::control::docker::name_of)
        .collect();
    let mut ours: Vec<String> = xmv.state().endpoints.into_iter().map(|e| e.name).collect();
    from_docker.sort();
    ours.sort();
    assert_eq!(ours, from_docker, "xmacvlan's endpoints vs Docker's");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn docker_xmacvlan_beside_docker_macvlan() {
    require_root();
    let tmp = TempDir::create("");
    let dir = tmp.0.clone();
    // Dropped in reverse: dockerd first (Docker releases its endpoints), then xmacvlan, then
    // the parents, then the directory.
    let parents = Parents::create("k");
    let mut xmv = Xmacvlan::new(&dir, "");
    let mut docker = Dockerd::new(&dir);
    xmv.start("xdp");
    hostile_peers(&xmv.plugin);
    docker.start();
    docker.import_busybox();
    let driver = xmv.driver();
    let net_args =
        |driver: &str, net: (&str, &str, &str), v6: (&str, &str), parent: &str, name: &str| {
            [
                "network",
                "create",
                "-d",
                driver,
                "--subnet",
                net.0,
                "--ip-range",
                net.1,
                "--gateway",
                net.2,
                "--ipv6",
                "--subnet",
                v6.0,
                "--gateway",
                v6.1,
                "-o",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("parent={parent}"), name.to_string()])
            .collect::<Vec<String>>()
        };
    docker.ok(&strs(&net_args("macvlan", MV, MV6, &parents.a, "mv")));
    docker.ok(&strs(&net_args(&driver, XV, XV6, &parents.b, "xv")));
    let xv_id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", "xv"]);
    let state = xmv.state();
    assert_eq!(state.networks.len(), 1);
    assert_eq!(
        state.networks[0].id, xv_id,
        "the record carries Docker's NetworkID"
    );
    assert_eq!(state.networks[0].parent, parents.b);
    let opts = docker.ok(&["network", "inspect", "-f", "{{json .Options}}", "xv"]);
    assert!(
        opts.contains(&format!("\"parent\":\"{}\"", parents.b)),
        "{opts}"
    );

    // Every bad input fails with xmacvlan's message and creates nothing.
    let links_before = parents.children();
    let bad: &[(&[&str], &str)] = &[
        (
            &["-o", "parent=PB", "-o", "macvlan_mode=turbo"],
            "unknown macvlan mode `turbo`: use -o macvlan_mode=bridge|private|vepa|passthru",
        ),
        (&[], "-o parent=IF is required"),
        (
            &["-o", "parent=lo"],
            "parent interface `lo` is the loopback device",
        ),
        (&["-o", "parent=PB"], "already uses parent interface"),
    ];
    for (i, (opts, message)) in bad.iter().enumerate() {
        let name = format!("bad{i}");
        let mut args = vec![
            "network",
            "create",
            "-d",
            &driver,
            "--subnet",
            "198.18.2.0/24",
        ];
        let opts: Vec<String> = opts.iter().map(|o| o.replace("PB", &parents.b)).collect();
        args.extend(opts.iter().map(String::as_str));
        args.push(&name);
        let err = docker.fails(&args);
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!docker.ok(&["network", "ls"]).contains(&name));
    }
    // Docker's IPAM refuses a gateway outside the subnet before it calls any driver (its own
    // client even before the engine); the plugin's check is the control path's, unit-tested
    // with Docker's JSON in plugin::docker::handlers.
    let err = docker.fails(&[
        "network",
        "create",
        "-d",
        &driver,
        "--subnet",
        "198.18.2.0/24",
        "--gateway",
        "198.18.3.1",
        "-o",
        "parent=lo",
        "badgw",
    ]);
    assert!(err.contains("198.18.3.1"), "{err}");
    assert_eq!(
        xmv.state().networks.len(),
        1,
        "nothing recorded by the bad inputs"
    );
    assert_eq!(
        parents.children(),
        links_before,
        "no link made by the bad inputs"
    );

    // Side by side: the same interface from either driver.
    run_container(&docker, "ca", "mv");
    run_container(&docker, "cb", "xv");
    let (a, b) = (read_back(&docker, "ca"), read_back(&docker, "cb"));
    let ip = |text: &str| -> IpAddr { text.split('/').next().unwrap().parse().unwrap() };
    for (rb, net) in [(&a, MV), (&b, XV)] {
        assert_eq!(
            rb.address,
            (ip(net.1), 24),
            "the ip-range's first address: {rb:?}"
        );
        let IpAddr::V4(v4) = rb.address.0 else {
            unreachable!()
        };
        assert_eq!(
            rb.mac,
            derived_mac(v4),
            "Docker's MAC, 02:42 + IPv4: {rb:?}"
        );
        assert_eq!(rb.default_via, Some(ip(net.2)), "{rb:?}");
    }
    for (rb, net) in [(&a, MV6), (&b, XV6)] {
        let subnet: xmacvlan::control::Cidr = net.0.parse().unwrap();
        assert!(subnet.contains_ip(rb.address6.0), "{rb:?}");
        assert_eq!(rb.address6.1, 64, "{rb:?}");
        assert_eq!(rb.default_via6, Some(ip(net.1)), "{rb:?}");
    }
    // Docker's IPAM hands out the same host part in either network.
    let host6 = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.segments()[4..].to_vec(),
        IpAddr::V4(_) => unreachable!(),
    };
    assert_eq!(host6(a.address6.0), host6(b.address6.0));
    assert_eq!(a.mode, b.mode, "macvlan mode");
    assert_eq!(a.mode, Some(MacVlanMode::Bridge));
    assert_eq!(a.mtu, b.mtu, "MTU");
    route_to(&docker, "ca", XV.0);
    route_to(&docker, "cb", MV.0);
    ping(&docker, "ca", &b.address.0.to_string());
    ping(&docker, "cb", &a.address.0.to_string());

    // The endpoint in xmacvlan's state, where Docker put it.
    let ep_name = {
        let cb_sandbox = sandbox_of(&docker, "cb");
        wait_for("the endpoint's record to name eth0 in the sandbox", || {
            let s = xmv.state();
            s.endpoints.len() == 1
                && s.endpoints[0].netns == cb_sandbox
                && s.endpoints[0].ifname == "eth0"
        });
        let ep = xmv.state().endpoints[0].clone();
        assert_eq!(ep.mac, b.mac);
        assert_eq!(ep.addresses[0].addr, b.address.0);
        ep.name
    };
    assert_fast_path_serves(&xmv, &docker, &parents, &ep_name);

    // dockerd restarted: the containers stop (Leave, DeleteEndpoint) and start again; no
    // duplicate and no orphan.
    docker.stop();
    assert!(
        xmv.state().endpoints.is_empty(),
        "orphaned endpoints: {:?}",
        xmv.state().endpoints
    );
    assert!(
        parents.children().is_empty(),
        "links left: {:?}",
        parents.children()
    );
    docker.start();
    docker.ok(&["start", "ca", "cb"]);
    wait_for("one endpoint again", || {
        let s = xmv.state();
        s.endpoints.len() == 1 && s.endpoints[0].ifname == "eth0"
    });
    assert_eq!(xmv.state().networks.len(), 1, "no duplicate network");
    let b = read_back(&docker, "cb");
    route_to(&docker, "ca", XV.0);
    route_to(&docker, "cb", MV.0);
    ping(&docker, "ca", &b.address.0.to_string());
    assert_same_endpoints(&docker, &xmv);

    let ep_name = {
        let now = xmv.state().endpoints[0].name.clone();
        assert_ne!(now, ep_name, "Docker made a new endpoint");
        now
    };

    // The fast path serves the running container's endpoint; the daemon killed with -9 and
    // restarted serves it again.
    assert_fast_path_serves(&xmv, &docker, &parents, &ep_name);
    xmv.kill_9();
    xmv.start("xdp");
    wait_for("the restarted daemon to serve the endpoint", || {
        xmv.log_text()
            .contains("daemon started: 1 of 1 recorded endpoints on the fast path")
    });
    assert_fast_path_serves(&xmv, &docker, &parents, &ep_name);

    // Removal leaves nothing: no link, no state entry, no classifier (XDP detached).
    docker.ok(&["rm", "-f", "ca", "cb"]);
    docker.ok(&["network", "rm", "mv", "xv"]);
    let state = xmv.state();
    assert!(
        state.networks.is_empty() && state.endpoints.is_empty(),
        "{state:?}"
    );
    assert!(
        parents.children().is_empty(),
        "links left: {:?}",
        parents.children()
    );
    assert_eq!(parents.xdp_on_b(), None, "the classifier is still attached");
    assert!(xmv.stats().iter().all(|s| s.endpoints.is_empty()));
    let log = xmv.log_text();
    assert!(
        log.contains("docker plugin call"),
        "calls are logged at debug"
    );
    drop(docker);
    drop(xmv);
    drop(parents);
}
