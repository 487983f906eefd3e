//! `docker network create -d xmacvlan` against a real Docker engine (Debian's docker.io),
//! side by side with Docker's own `-d macvlan`.
//!
//! The test runs its own dockerd, private to it (temporary data-root, exec-root, pidfile and
//! socket; no iptables, no bridge), in the host namespace (`ip netns exec` breaks dockerd's
//! cgroup mounts), on a veth pair it creates: Docker's macvlan network hangs off one end,
//! xmacvlan's off the other, so the two containers share one L2 segment. The plugin socket has
//! a unique name (`xmvt<pid>`), removed at the end like everything else.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use xmacvlan::control::State;
use xmacvlan::control::model::derived_mac;
use xmacvlan::dataplane::Snapshot;
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::ipc::socket::request;
use xmacvlan::netlink::{MacVlanMode, Netlink};
use xmacvlan::netns::Netns;
use xmacvlan_bench::generator::Sent;
use xmacvlan_tests::dockerd::{Dockerd, IMAGE, signal, text, wait_exit};
use xmacvlan_tests::fast_path;
use xmacvlan_tests::{require_root, xmacvlan_bin};

/// (subnet, ip-range, gateway): the same flags for both drivers, one /24 apart (Docker's IPAM
/// shares one pool between networks with the same subnet, so the second could not have the
/// same gateway). The two containers reach each other over one L2 segment through on-link
/// routes the test adds (see [`route_to`]).
const MV: (&str, &str, &str) = ("198.18.0.0/24", "198.18.0.128/26", "198.18.0.1");
const XV: (&str, &str, &str) = ("198.18.1.0/24", "198.18.1.128/26", "198.18.1.1");
/// Both networks are dual-stack: (IPv6 subnet, gateway).
const MV6: (&str, &str) = ("2001:db8:1::/64", "2001:db8:1::1");
const XV6: (&str, &str) = ("2001:db8:2::/64", "2001:db8:2::1");

/// The test's directory (logs, state, dockerd's roots); on failure the daemon's log is
/// printed before it goes.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("xmv-docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, file) in [("xmacvlan daemon", "xmv.log"), ("dockerd", "dockerd.log")] {
                let log = std::fs::read_to_string(self.0.join(file)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!("--- {name} log (last 40 lines) ---\n{}", tail.join("\n"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The two veth ends in the host namespace (deleting them deletes every macvlan on them).
struct Parents {
    a: String,
    b: String,
}

impl Parents {
    fn create() -> Self {
        let pid = std::process::id();
        let (a, b) = (format!("xdkA{pid}"), format!("xdkB{pid}"));
        let nl = Netlink::new().unwrap();
        nl.add_veth(&a, &b, 1).unwrap();
        let parents = Parents { a, b };
        for name in [&parents.a, &parents.b] {
            nl.set_up(nl.require_link(name).unwrap().index).unwrap();
        }
        parents
    }

    /// Host-side links on our parents (macvlans Docker or xmacvlan made, not yet moved).
    fn children(&self) -> Vec<String> {
        let nl = Netlink::new().unwrap();
        let ours: Vec<u32> = [&self.a, &self.b]
            .iter()
            .filter_map(|n| nl.link_by_name(n).unwrap().map(|l| l.index))
            .collect();
        nl.links()
            .unwrap()
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("macvlan"))
            .filter(|l| l.parent_index.is_some_and(|p| ours.contains(&p)))
            .map(|l| l.name)
            .collect()
    }

    fn xdp_on_b(&self) -> Option<u32> {
        Netlink::new()
            .unwrap()
            .require_link(&self.b)
            .unwrap()
            .xdp_prog_id
    }
}

impl Drop for Parents {
    fn drop(&mut self) {
        if let Ok(nl) = Netlink::new()
            && let Ok(Some(l)) = nl.link_by_name(&self.a)
        {
            let _ = nl.del_link(l.index);
        }
    }
}

/// `xmacvlan daemon` with the plugin on a unique socket.
struct Xmacvlan {
    dir: PathBuf,
    plugin: PathBuf,
    child: Option<Child>,
    /// /run/docker did not exist before: the daemon made it, and it goes again.
    made_run_docker: bool,
}

impl Xmacvlan {
    fn new(dir: &Path) -> Self {
        Xmacvlan {
            dir: dir.to_path_buf(),
            plugin: PathBuf::from(format!(
                "/run/docker/plugins/xmvt{}.sock",
                std::process::id()
            )),
            child: None,
            made_run_docker: !Path::new("/run/docker").exists(),
        }
    }

    fn driver(&self) -> String {
        xmacvlan::plugin::docker::driver_name(&self.plugin)
    }

    fn data_root(&self) -> PathBuf {
        self.dir.join("xmv-data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("xmv.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("xmv.log")
    }

    /// Private: nothing lands in the host's /run/xmacvlan.
    fn port_dir(&self) -> PathBuf {
        self.dir.join("ports")
    }

    fn start(&mut self, demux: &str) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(xmacvlan_bin())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--control-socket")
            .arg(self.socket())
            .arg("daemon")
            .arg("--port-dir")
            .arg(self.port_dir())
            .args(["--debug", "--demux-mode", demux, "--docker-plugin"])
            .arg(&self.plugin)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.plugin).is_err() {
            assert!(
                Instant::now() < deadline,
                "the plugin socket never answered; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "KILL");
        assert!(wait_exit(&mut child, Duration::from_secs(10)));
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if !wait_exit(&mut child, Duration::from_secs(30)) {
                signal(child.id(), "KILL");
                wait_exit(&mut child, Duration::from_secs(10));
            }
        }
    }

    fn state(&self) -> State {
        State::load(&self.data_root()).unwrap()
    }

    fn stats(&self) -> Vec<Snapshot> {
        match request(&self.socket(), &Request::Stats).unwrap() {
            Answer::Stats { interfaces, .. } => interfaces,
            other => panic!("stats answered {other:?}"),
        }
    }
}

impl Drop for Xmacvlan {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.plugin);
        if self.made_run_docker {
            let _ = std::fs::remove_dir("/run/docker/plugins");
            let _ = std::fs::remove_dir("/run/docker");
        }
    }
}

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

fn sandbox_of(docker: &Dockerd, container: &str) -> String {
    docker.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.SandboxKey}}",
        container,
    ])
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

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
            nl.add_route(net, prefix, None, index)
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

fn ping(docker: &Dockerd, from: &str, ip: &str) {
    let out = docker.cli(&["exec", from, "ping", "-c", "3", "-W", "2", ip]);
    assert!(
        out.status.success(),
        "{from} cannot ping {ip}: {}",
        text(&out.stdout)
    );
}

fn run_container(docker: &Dockerd, name: &str, network: &str) {
    docker.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--stop-timeout",
        "1",
        IMAGE,
        "sleep",
        "600",
    ]);
}

#[test]
fn docker_xmacvlan_beside_docker_macvlan() {
    require_root();
    let tmp = TempDir::create();
    let dir = tmp.0.clone();
    // Dropped in reverse: dockerd first (Docker releases its endpoints), then xmacvlan, then
    // the parents, then the directory.
    let parents = Parents::create();
    let mut xmv = Xmacvlan::new(&dir);
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
