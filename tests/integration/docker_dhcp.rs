//! DHCP for containers: `docker network create --ipam-driver null -o dhcp=true` against a
//! real Docker engine, and `xmacvlan endpoint create` on a `--dhcp` network, both leasing
//! from a DHCP server of the test's own (busybox `udhcpd`) in a wire namespace.
//!
//! The lease is 10 s (T1 5 s): two renewals take 10 s of the test, not a minute; udhcpd takes
//! any lease with `min_lease 10`, and the daemon's schedule is the lease's own, so a longer
//! one changes nothing but the wait.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use xmacvlan::control::Endpoint;
use xmacvlan::ether::Mac;
use xmacvlan::ipc::protocol::{Answer, LeaseNote, Request};
use xmacvlan::ipc::socket::request;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::{Netns, NetnsGuard};
use xmacvlan_tests::app::App;
use xmacvlan_tests::docker_lab::{Parents, TempDir, Xmacvlan, ping, run_container, sandbox_of};
use xmacvlan_tests::dockerd::Dockerd;
use xmacvlan_tests::fast_path;
use xmacvlan_tests::require_root;
use xmacvlan_tests::udhcpd::{Pool, Udhcpd};

const LEASE_S: u32 = 10;
const WIRE_HOST: &str = "198.18.60.1";

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The wire: the veth end the DHCP server answers on, moved into a namespace of its own with
/// the server's address.
fn wire(parents: &Parents) -> NetnsGuard {
    let ns = NetnsGuard::create(&format!("xmvdh{}", std::process::id())).unwrap();
    let nl = Netlink::new().unwrap();
    let a = nl.require_link(&parents.a).unwrap().index;
    nl.set_netns(a, &ns.file().unwrap()).unwrap();
    ns.run(|| {
        let nl = Netlink::new()?;
        let a = nl.require_link(&parents.a)?.index;
        nl.add_address(a, WIRE_HOST.parse()?, 24)?;
        nl.set_up(a)?;
        Ok(nl.set_up(nl.require_link("lo")?.index)?)
    })
    .unwrap();
    ns
}

/// The container's eth0: its MAC and IPv4 address (read over netlink in its sandbox).
fn eth0(netns: &str) -> (String, IpAddr, u8) {
    Netns::open(netns)
        .unwrap()
        .run(|| {
            let nl = Netlink::new()?;
            let link = nl.require_link("eth0")?;
            let v4 = nl
                .addresses(link.index)?
                .into_iter()
                .find(|a| a.0.is_ipv4())
                .expect("an IPv4 address");
            Ok((Mac(link.mac).to_string(), v4.0, v4.1))
        })
        .unwrap()
}

/// The leases `stats` lists as lost.
fn lease_notes(xmv: &Xmacvlan) -> Vec<LeaseNote> {
    match request(&xmv.socket(), &Request::Stats).unwrap() {
        Answer::Stats { leases, .. } => leases,
        other => panic!("stats answered {other:?}"),
    }
}

fn record(xmv: &Xmacvlan, name: &str) -> Endpoint {
    xmv.state()
        .endpoint(name)
        .cloned()
        .expect("the endpoint's record")
}

/// Wait for `more` renewals of the endpoint's lease after the one recorded now; the moments
/// they were seen, as seconds after the lease was first granted.
fn renewals(xmv: &Xmacvlan, name: &str, more: u32) -> Vec<u64> {
    let start = record(xmv, name).lease.unwrap().renewals;
    let mut seen = Vec::new();
    let mut last = start;
    wait(
        &format!("{more} renewals of {name}'s lease"),
        Duration::from_secs(u64::from(LEASE_S) * u64::from(more) + 10),
        || {
            let lease = record(xmv, name).lease.unwrap();
            if lease.renewals > last {
                last = lease.renewals;
                seen.push(lease.granted_at);
            }
            lease.renewals >= start + more
        },
    );
    seen
}

#[test]
fn docker_and_cli_endpoints_lease_renew_and_release() {
    require_root();
    let tmp = TempDir::create("h");
    let dir = tmp.0.clone();
    let parents = Parents::create("h");
    let wire = wire(&parents);
    let mut server = Udhcpd::start(
        wire.name(),
        &parents.a,
        &dir,
        &Pool {
            first: "198.18.60.100",
            last: "198.18.60.110",
            router: WIRE_HOST,
            dns: "198.18.60.53",
            lease_s: LEASE_S,
        },
    );
    let mut xmv = Xmacvlan::new(&dir, "h");
    xmv.start("xdp");
    let mut docker = Dockerd::new(&dir);
    docker.start();
    docker.import_busybox();
    let driver = xmv.driver();
    docker.ok(&[
        "network",
        "create",
        "-d",
        &driver,
        "--ipam-driver",
        "null",
        "-o",
        "dhcp=true",
        "-o",
        &format!("parent={}", parents.b),
        "dh",
    ]);

    // The container's address is the server's lease for the container's MAC.
    run_container(&docker, "c1", "dh");
    let sandbox = sandbox_of(&docker, "c1");
    let (mac, address, prefix) = eth0(&sandbox);
    wait("the server's lease file", Duration::from_secs(5), || {
        server.lease_of(&mac).is_some()
    });
    let leased = server.lease_of(&mac).unwrap();
    assert_eq!(leased.ip, address.to_string(), "{leased:?}");
    assert_eq!(prefix, 24);
    let name = xmv.state().endpoints[0].name.clone();
    let rec = record(&xmv, &name);
    let lease = rec.lease.clone().unwrap();
    assert_eq!(
        (
            lease.address.to_string(),
            lease.lease_s,
            lease.dns[0].to_string()
        ),
        (address.to_string(), LEASE_S, "198.18.60.53".into())
    );
    assert_eq!(Mac(rec.mac).to_string(), mac);
    let inspect = docker.ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", "c1"]);
    assert!(
        inspect.contains(&format!("\"Gateway\":\"{WIRE_HOST}\"")),
        "{inspect}"
    );
    ping(&docker, "c1", WIRE_HOST);

    // Renewed by the daemon, twice, as the server sees it.
    let acks = |s: &Udhcpd| s.log().matches("sending ACK").count();
    let acks_before = acks(&server);
    let seen = renewals(&xmv, &name, 2);
    eprintln!("renewals of a {LEASE_S} s lease seen at granted_at {seen:?}");
    assert!(acks(&server) >= acks_before + 2);
    assert!(server.lease_of(&mac).unwrap().expires_in.is_some());

    // Restarts of the daemon keep the address and the lease, and the next daemon renews it.
    for _ in 0..2 {
        xmv.stop();
        xmv.start("xdp");
        renewals(&xmv, &name, 1);
        assert_eq!(eth0(&sandbox).1, address, "the address survives a restart");
        assert_eq!(record(&xmv, &name).lease.unwrap().address, lease.address);
    }

    // With an application attached the fast path claims the MAC; the server's answers still
    // reach the container's kernel device, and the lease is renewed.
    let port = xmv.port_dir().join(format!("{name}.sock"));
    let mut sink = App::sink(&sandbox, &port, "dhcp-sink", &dir.join("sink.log"));
    wait("the sink to connect", Duration::from_secs(20), || {
        assert!(!sink.exited(), "the sink exited");
        fast_path::stats(&xmv.socket()).iter().any(|s| {
            s.endpoints
                .iter()
                .any(|e| e.name == name && e.port.as_ref().is_some_and(|p| p.connected))
        })
    });
    renewals(&xmv, &name, 1);
    drop(sink);
    assert!(
        !xmv.log_text().contains("DHCP lease lost"),
        "{}",
        xmv.log_text()
    );

    // A server that stops answering: the lease runs out, which is logged and listed by
    // `stats`; the container keeps its address, and once the server is back the daemon gets
    // that same address again.
    server.stop();
    wait(
        "the lease to be reported lost",
        Duration::from_secs(30),
        || lease_notes(&xmv).iter().any(|n| n.endpoint == name),
    );
    let note = lease_notes(&xmv).remove(0);
    assert!(note.problem.contains("expired"), "{note:?}");
    assert_eq!(note.address, address.to_string());
    assert!(xmv.log_text().contains("DHCP lease lost"));
    assert_eq!(eth0(&sandbox).1, address, "never a silent address change");
    server.resume();
    wait(
        "the lease to be held again",
        Duration::from_secs(30),
        || lease_notes(&xmv).is_empty(),
    );
    assert_eq!(record(&xmv, &name).lease.unwrap().address, lease.address);
    assert!(xmv.log_text().contains("DHCP lease held again"));

    // docker rm releases the lease: the server expires it at once.
    docker.ok(&["rm", "-f", "c1"]);
    wait(
        "the server to see the RELEASE",
        Duration::from_secs(5),
        || server.lease_of(&mac).unwrap().expires_in.is_none(),
    );
    assert!(xmv.log_text().contains("DHCP lease released"));
    assert!(xmv.state().endpoints.is_empty());

    // A server that does not answer: xmacvlan's message, no link, no record, no lease.
    server.stop();
    let leases_before = server.leases();
    let err = docker.fails(&[
        "run",
        "-d",
        "--name",
        "c2",
        "--network",
        "dh",
        xmacvlan_tests::dockerd::IMAGE,
        "sleep",
        "600",
    ]);
    assert!(
        err.contains(&format!(
            "no DHCP server answered on parent `{}`",
            parents.b
        )),
        "{err}"
    );
    let _ = docker.cli(&["rm", "-f", "c2"]);
    assert!(parents.children().is_empty(), "{:?}", parents.children());
    assert!(xmv.state().endpoints.is_empty());
    assert_eq!(server.leases(), leases_before);
    server.resume();
    docker.ok(&["network", "rm", "dh"]);

    // The same through `xmacvlan endpoint create` on a `--dhcp` network.
    xmv.cli(&[
        "network",
        "create",
        "--dhcp",
        "-o",
        &format!("parent={}", parents.b),
        "cdh",
    ])
    .unwrap();
    let ns = NetnsGuard::create(&format!("xmvdc{}", std::process::id())).unwrap();
    xmv.cli(&[
        "endpoint",
        "create",
        "e1",
        "--network",
        "cdh",
        "--netns",
        ns.name(),
    ])
    .unwrap();
    let (mac, address, _) = eth0(&ns.path().display().to_string());
    wait("the server's lease file", Duration::from_secs(5), || {
        server.lease_of(&mac).is_some()
    });
    assert_eq!(
        server.lease_of(&mac).map(|l| l.ip),
        Some(address.to_string())
    );
    let rec = record(&xmv, "e1");
    assert_eq!(rec.addresses[0].addr, address);
    assert_eq!(rec.gateways, [WIRE_HOST.parse::<IpAddr>().unwrap()]);
    renewals(&xmv, "e1", 1);
    xmv.cli(&["endpoint", "rm", "e1"]).unwrap();
    wait(
        "the server to see e1's RELEASE",
        Duration::from_secs(5),
        || server.lease_of(&mac).unwrap().expires_in.is_none(),
    );
    // A server that does not answer leaves nothing either.
    server.stop();
    let err = xmv
        .cli(&[
            "endpoint",
            "create",
            "e2",
            "--network",
            "cdh",
            "--netns",
            ns.name(),
        ])
        .unwrap_err();
    assert!(err.contains("no DHCP server answered on parent"), "{err}");
    assert!(xmv.state().endpoints.is_empty());
    assert!(
        Netns::open(ns.name())
            .unwrap()
            .run(|| Ok(Netlink::new()?.links()?.len()))
            .unwrap()
            == 1,
        "only lo is left in the namespace"
    );
    xmv.cli(&["network", "rm", "cdh"]).unwrap();
    drop(docker);
    drop(xmv);
    drop(server);
    drop(ns);
    drop(wire);
}
