//! The host shim and the MTU through a real Docker engine: `-o host_shim=true` with the
//! shim's aux addresses lets the host reach every container of the network and back (IPv4
//! with ARP, IPv6 with neighbour discovery, TCP from a container to the host), and
//! `-o mtu=9000` on a parent at 9000 gives the containers and the shim that MTU; more than
//! the parent's is refused.
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use xmacvlan::netlink::Netlink;
use xmacvlan::netns::Netns;
use xmacvlan_tests::docker_lab::{Parents, TempDir, Xmacvlan, run_container, sandbox_of};
use xmacvlan_tests::dockerd::{Dockerd, text};
use xmacvlan_tests::require_root;

const SUBNET: &str = "198.18.62.0/24";
const SUBNET6: &str = "2001:db8:62::/64";
const SHIM: &str = "198.18.62.254";
const SHIM6: &str = "2001:db8:62::fe";

/// The container's eth0: its MTU and its IPv4 and global IPv6 addresses.
fn eth0(docker: &Dockerd, container: &str) -> (u32, IpAddr, IpAddr) {
    Netns::open(&sandbox_of(docker, container))
        .unwrap()
        .run(|| {
            let nl = Netlink::new()?;
            let link = nl.require_link("eth0")?;
            let addrs = nl.addresses(link.index)?;
            let v4 = addrs.iter().find(|a| a.0.is_ipv4()).unwrap().0;
            let v6 = addrs
                .iter()
                .find(|a| matches!(a.0, IpAddr::V6(ip) if ip.segments()[0] == 0x2001))
                .unwrap()
                .0;
            Ok((link.mtu, v4, v6))
        })
        .unwrap()
}

/// The host pings `ip` (through the shim: its route covers the subnet).
fn host_ping(ip: &IpAddr) {
    let out = Command::new("ping")
        .args(["-c", "2", "-W", "2", &ip.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the host cannot ping {ip}: {}",
        text(&out.stdout)
    );
}

#[test]
fn host_reaches_containers_through_the_shim_at_the_networks_mtu() {
    require_root();
    let tmp = TempDir::create("s");
    let dir = tmp.0.clone();
    let parents = Parents::create("s");
    let nl = Netlink::new().unwrap();
    for end in [&parents.a, &parents.b] {
        nl.set_mtu(nl.require_link(end).unwrap().index, 9000)
            .unwrap();
    }
    let mut xmv = Xmacvlan::new(&dir, "s");
    xmv.start("xdp");
    let mut docker = Dockerd::new(&dir);
    docker.start();
    docker.import_busybox();
    let driver = xmv.driver();
    let parent = format!("parent={}", parents.b);
    let create = |extra: &[&str], name: &str| {
        let mut args = vec![
            "network", "create", "-d", &driver, "--subnet", SUBNET, "--ipv6", "--subnet", SUBNET6,
            "-o", &parent,
        ];
        args.extend_from_slice(extra);
        args.push(name);
        docker.cli(&args)
    };

    // Refused, with nothing made: an MTU above the parent's, a shim without its addresses.
    let out = create(&["-o", "mtu=9001"], "big");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "MTU 9001 is larger than parent `{}`'s MTU 9000",
            parents.b
        )),
        "{err}"
    );
    let out = create(&["-o", "host_shim=true"], "noaux");
    let err = text(&out.stderr);
    assert!(err.contains("--aux-address host_shim=IP"), "{err}");
    assert!(xmv.state().networks.is_empty());
    assert!(parents.children().is_empty());

    let out = create(
        &[
            "-o",
            "host_shim=true",
            "-o",
            "mtu=9000",
            "--aux-address",
            &format!("host_shim={SHIM}"),
            "--aux-address",
            &format!("host_shim6={SHIM6}"),
        ],
        "sh",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let net = xmv.state().networks[0].clone();
    let shim = net.host_shim.clone().expect("a host shim");
    assert_eq!(net.mtu, Some(9000));
    let shim_link = nl.require_link(&shim.ifname).unwrap();
    assert_eq!(shim_link.mtu, 9000, "the shim has the network's MTU");
    assert_eq!(
        shim.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!("{SHIM}/32"), format!("{SHIM6}/128")]
    );

    run_container(&docker, "c1", "sh");
    run_container(&docker, "c2", "sh");
    let mut addresses = Vec::new();
    for c in ["c1", "c2"] {
        let (mtu, v4, v6) = eth0(&docker, c);
        assert_eq!(mtu, 9000, "{c}: the network's MTU");
        // Both families, ARP and neighbour discovery through the shim.
        host_ping(&v4);
        host_ping(&v6);
        addresses.push(v4);
    }
    assert_ne!(addresses[0], addresses[1]);
    for ep in xmv.state().endpoints {
        assert_eq!(
            ep.mtu,
            Some(9000),
            "the record carries the MTU for the fast path"
        );
    }

    // A container reaches a TCP listener on the host through the shim.
    let listener = TcpListener::bind((SHIM, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = {
        let sock = docker.sock();
        std::thread::spawn(move || {
            Command::new(xmacvlan_tests::dockerd::DOCKER)
                .args(["-H", &sock, "exec", "c2", "sh", "-c"])
                .arg(format!("echo hello-from-c2 | nc {SHIM} {port}"))
                .output()
                .unwrap()
        })
    };
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (conn, from) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection from c2 through the shim"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = String::new();
    BufReader::new(&conn).read_line(&mut got).unwrap();
    // busybox nc leaves when the host closes its end.
    drop(conn);
    assert_eq!(got.trim(), "hello-from-c2");
    assert_eq!(from.ip(), addresses[1], "the connection came from c2");
    let _ = client.join();

    docker.ok(&["rm", "-f", "c1", "c2"]);
    docker.ok(&["network", "rm", "sh"]);
    assert!(
        nl.link_by_name(&shim.ifname).unwrap().is_none(),
        "the shim went with the network"
    );
    assert!(parents.children().is_empty());
    drop(docker);
    drop(xmv);
    drop(parents);
}
