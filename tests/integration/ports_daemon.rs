//! memif ports through the real daemon: with no client an endpoint works through its kernel
//! device (TCP from the wire connects, UDP arrives), a client admitted by namespace gets its
//! frames instead, strangers and second clients are refused, a `kill -9` of a client under
//! traffic frees the port with nothing leaked, and DPDK's testpmd (a client the project did
//! not write) receives exactly its endpoint's frames and its macswap replies leave the NIC.
//! Needs root and the package's binaries (`cargo xtask test` builds them).
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xmacvlan::control::State;
use xmacvlan::netlink::Netlink;
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::app::App;
use xmacvlan_tests::capture::Capture;
use xmacvlan_tests::daemon_lab::{Daemon, Lab};
use xmacvlan_tests::testpmd::Testpmd;

static SERIAL: Mutex<()> = Mutex::new(());

const WIRE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 250);

fn endpoint_ip(lab: &Lab, name: &str) -> IpAddr {
    let state = State::load(&lab.dir.join("data")).unwrap();
    state.endpoint(name).unwrap().addresses[0].addr
}

/// The wire side gets an address in the endpoint's subnet, as a host on the VLAN would.
fn address_the_wire(lab: &Lab) {
    lab.host
        .run(|| {
            let nl = Netlink::new()?;
            Ok(nl.add_address(nl.require_link("v0p")?.index, IpAddr::V4(WIRE_IP), 24)?)
        })
        .unwrap();
}

/// A TCP connect from the wire to a listener in the endpoint's namespace, and `n` UDP
/// datagrams the other way round: how many the listener got.
fn kernel_path_works(lab: &Lab, ep: usize, ip: IpAddr, n: u32) -> u32 {
    let (tcp, udp) = lab.endpoints[ep]
        .run(|| {
            Ok((
                TcpListener::bind("0.0.0.0:7000")?,
                UdpSocket::bind("0.0.0.0:7001")?,
            ))
        })
        .unwrap();
    let mut conn = lab
        .host
        .run(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::new(ip, 7000),
                Duration::from_secs(5),
            )?)
        })
        .expect("a TCP connect from the wire reaches the endpoint");
    let (mut accepted, _) = tcp.accept().unwrap();
    conn.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let sender = lab.host.run(|| Ok(UdpSocket::bind("0.0.0.0:0")?)).unwrap();
    let mut received = 0;
    let mut buf = [0u8; 64];
    for i in 0..n {
        sender
            .send_to(&i.to_be_bytes(), SocketAddr::new(ip, 7001))
            .unwrap();
        // One in flight at a time: flow control, not luck, keeps the receive buffer from
        // overflowing on a busy machine.
        if udp
            .recv(&mut buf)
            .is_ok_and(|len| len == 4 && buf[..4] == i.to_be_bytes())
        {
            received += 1;
        }
    }
    received
}

/// What a process's descriptors refer to, sorted.
fn fd_links(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    v.sort();
    v
}

/// [`fd_links`] once it stayed the same for 300 ms: the daemon closes each control
/// connection (a stats request, a refused client) just after answering it.
fn settled_fd_links(pid: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = fd_links(pid);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = fd_links(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn memfd_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:"))
        .count()
}

fn log_path(lab: &Lab, what: &str) -> std::path::PathBuf {
    lab.dir.join(format!(
        "{what}-{}.log",
        Instant::now().elapsed().as_nanos()
    ))
}

fn port_rx(daemon: &Daemon, name: &str) -> u64 {
    daemon
        .stats()
        .iter()
        .flat_map(|s| &s.endpoints)
        .find(|e| e.name == name)
        .and_then(|e| e.port.as_ref().map(|p| p.rx_frames))
        .unwrap_or(0)
}

#[test]
fn no_client_no_black_hole_then_admission_and_kill_9_of_a_client() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("ports");
    // With a memif secret: every client below but the one without it is refused for another
    // reason first, and the sinks that attach pass it.
    lab.use_port_secret();
    lab.create_network();
    let c0 = lab.create_endpoint(0);
    let ip = endpoint_ip(&lab, "c0");
    address_the_wire(&lab);
    let daemon = lab.start_daemon();
    assert!(lab.port_socket(0).exists(), "the daemon serves c0's port");

    // Nobody attached: the endpoint works as with Docker's driver.
    assert_eq!(
        kernel_path_works(&lab, 0, ip, 200),
        200,
        "every datagram reaches the listener"
    );

    // A client from another namespace is refused, and so is this process (the host's).
    let stranger_log = log_path(&lab, "stranger");
    let mut stranger = App::sink(
        lab.endpoints[1].name(),
        &lab.port_socket(0),
        "stranger",
        &stranger_log,
    );
    let _ = stranger.wait_output(Duration::from_secs(10));
    let why = std::fs::read_to_string(&stranger_log).unwrap();
    assert!(
        why.contains("not in endpoint c0's network namespace"),
        "{why}"
    );
    let err = xmacvlan::memif::Client::connect(&lab.port_socket(0), &Default::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("not in endpoint c0's network namespace"),
        "{err:#}"
    );
    daemon.wait_for_log("memif client refused", Duration::from_secs(5));

    // A client in the namespace gets the frames; a second one is refused meanwhile.
    let before_links = settled_fd_links(daemon.child.id());
    let sink = lab.attach_sink(&daemon, 0);
    let second_log = log_path(&lab, "second");
    let mut second = App::sink(
        lab.endpoints[0].name(),
        &lab.port_socket(0),
        "second",
        &second_log,
    );
    let _ = second.wait_output(Duration::from_secs(10));
    let why = std::fs::read_to_string(&second_log).unwrap();
    assert!(why.contains("already has a client"), "{why}");

    // kill -9 under traffic: the port is freed, nothing of the client stays in the daemon,
    // and the endpoint is back on the kernel path.
    std::thread::scope(|s| {
        let traffic = s.spawn(|| lab.burst(std::slice::from_ref(&c0), 20_000));
        let deadline = Instant::now() + Duration::from_secs(20);
        while port_rx(&daemon, "c0") < 1000 {
            assert!(Instant::now() < deadline, "no frames reached the client");
            std::thread::sleep(Duration::from_millis(20));
        }
        sink.signal("KILL");
        daemon.wait_for_port("c0", false);
        traffic.join().unwrap();
    });
    drop(sink);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.stats()[0].endpoints[0].port.is_some() {
        assert!(
            Instant::now() < deadline,
            "the gone client's port was never reaped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_links = settled_fd_links(daemon.child.id());
    assert_eq!(
        after_links, before_links,
        "no descriptor of the client left in the daemon"
    );
    assert_eq!(
        memfd_mappings(daemon.child.id()),
        0,
        "no mapping of the client's memory left"
    );
    assert_eq!(
        kernel_path_works(&lab, 0, ip, 50),
        50,
        "back on the kernel path"
    );

    // A client in the namespace without the secret is refused.
    let no_secret_log = log_path(&lab, "no-secret");
    let mut no_secret = App::sink(
        lab.endpoints[0].name(),
        &lab.port_socket(0),
        "no-secret",
        &no_secret_log,
    );
    let _ = no_secret.wait_output(Duration::from_secs(10));
    let why = std::fs::read_to_string(&no_secret_log).unwrap();
    assert!(why.contains("wrong secret"), "{why}");
    assert!(daemon.stats()[0].endpoints[0].port.is_none());

    // A new client attaches (with the secret) and gets an exact burst.
    let sink = lab.attach_sink(&daemon, 0);
    lab.burst(std::slice::from_ref(&c0), 500);
    daemon.wait_for_frames(&[("c0", 500)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while port_rx(&daemon, "c0") < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(port_rx(&daemon, "c0"), 500);
    let out = sink.stop_sink();
    assert_eq!(
        (out["frames"].as_u64(), out["misdelivered"].as_u64()),
        (Some(500), Some(0)),
        "{out}"
    );
    let (_, status) = daemon.terminate();
    assert!(status.success());
    assert!(!lab.port_socket(0).exists(), "sockets go with the daemon");
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}

#[test]
fn testpmd_receives_exactly_its_frames_and_its_macswap_replies_leave_the_nic() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("tpmd");
    // The user demux here (the other test runs xdp).
    lab.write_config("info", "user");
    lab.create_network();
    let c0 = lab.create_endpoint(0);
    let c1 = lab.create_endpoint(1);
    let daemon = lab.start_daemon();

    // rxonly in c0's namespace, xmacvlan-sink on c1: each gets exactly its own frames.
    let tlog = log_path(&lab, "testpmd");
    let mut testpmd = Testpmd::start(
        lab.endpoints[0].name(),
        &lab.port_socket(0),
        "rxonly",
        &tlog,
        &[],
        &[],
    );
    // testpmd sets up its memory pool first: on a busy machine that takes a while.
    daemon.wait_for_port_within("c0", true, Duration::from_secs(60));
    // testpmd connects before it starts forwarding: frames before it offers buffers would be
    // (counted) ring-full drops.
    testpmd.wait_ready(&daemon);
    let client = daemon.stats()[0].endpoints[0].port.clone().unwrap().client;
    assert!(client.starts_with("DPDK"), "{client}");
    let sink = lab.attach_sink(&daemon, 1);
    const N: u64 = 1000;
    lab.burst(&[c0.clone(), c1.clone()], N);
    daemon.wait_for_frames(&[("c0", N), ("c1", N)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (port_rx(&daemon, "c0") < N || port_rx(&daemon, "c1") < N) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    testpmd.wait_rx(N);
    let (stats, out) = testpmd.stop();
    assert_eq!(stats.rx_packets, N, "testpmd's count:\n{out}");
    assert_eq!(sink.stop_sink()["frames"], N);
    daemon.wait_for_port("c0", false);

    // macswap in testpmd on c0, xmacvlan-reflect on c1: their replies leave v0 (captured on
    // the wire side), each from its endpoint's MAC.
    let capture = lab.host.run(|| Capture::open("v0p")).unwrap();
    let testpmd = Testpmd::start(
        lab.endpoints[0].name(),
        &lab.port_socket(0),
        "macswap",
        &log_path(&lab, "macswap"),
        &[],
        &[],
    );
    daemon.wait_for_port_within("c0", true, Duration::from_secs(60));
    testpmd.wait_ready(&daemon);
    let reflect = App::reflect(
        lab.endpoints[1].name(),
        &lab.port_socket(1),
        "reflect-c1",
        &log_path(&lab, "reflect"),
    );
    daemon.wait_for_port("c1", true);
    daemon.wait_for_log(
        &format!("memif client ready (pid {})", reflect.pid()),
        Duration::from_secs(10),
    );
    const M: u64 = 300;
    lab.burst(&[c0.clone(), c1.clone()], M);
    let mut replies = [0u64; 2];
    let deadline = Instant::now() + Duration::from_secs(15);
    while replies != [M, M] && Instant::now() < deadline {
        if let Some(f) = capture.next(Duration::from_millis(200)).unwrap()
            && f.len() >= 14
            && f[12..14] == [0x88, 0xb5]
            && f[0..6] == xmacvlan_bench::lab::GENERATOR_MAC
        {
            for (i, ep) in [&c0, &c1].iter().enumerate() {
                replies[i] += u64::from(f[6..12] == ep.mac);
            }
        }
    }
    let stats = daemon.stats();
    let ports: Vec<_> = stats[0].endpoints.iter().map(|e| e.port.clone()).collect();
    let (_, out) = testpmd.stop();
    let reflected = reflect.stop();
    assert_eq!(
        replies,
        [M, M],
        "every reflected frame left the NIC; ports {ports:?}; testpmd:\n{out}\n{reflected}"
    );
    for p in ports.iter().flatten() {
        assert_eq!(
            (p.rx_frames, p.tx_frames, p.tx_dropped()),
            (M, M, 0),
            "{p:?}"
        );
    }
    assert!(
        reflected.contains(&format!("received {M} reflected {M}")),
        "{reflected}"
    );
    let (_, status) = daemon.terminate();
    assert!(status.success());
    lab.cli("endpoint rm c0 c1");
    lab.cli("network rm n1");
}

/// Frames longer than testpmd's memif buffers, both ways: 1500-byte frames into 512-byte
/// buffers (`bsize=512`, chains of 3) and mbufs of 384 data bytes (`--mbuf-size=512`, chains
/// of 4), and its macswap replies back as chains that leave the NIC whole.
#[test]
fn testpmd_receives_and_sends_chained_frames() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("tpchain");
    lab.write_config("info", "xdp");
    lab.create_network();
    let c0 = lab.create_endpoint(0);
    let daemon = lab.start_daemon();
    const LEN: usize = 1500;
    let streams = lab_streams(std::slice::from_ref(&c0), LEN, false);
    let small = ["bsize=512"];
    let mbufs = ["--mbuf-size=512"];

    // rxonly: every frame whole (its length, in 4 mbufs), none dropped.
    let mut testpmd = Testpmd::start(
        lab.endpoints[0].name(),
        &lab.port_socket(0),
        "rxonly",
        &log_path(&lab, "tp-chain-rx"),
        &small,
        &mbufs,
    );
    daemon.wait_for_port_within("c0", true, Duration::from_secs(60));
    testpmd.wait_ready(&daemon);
    testpmd.command("set verbose 1");
    testpmd.wait_for_output("Change verbose level from 0 to 1");
    // 300 frames take 900 of its 1024 buffers: none waits for testpmd to be scheduled.
    const N: u64 = 300;
    lab.send(&streams, N);
    daemon.wait_for_frames(&[("c0", N)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while port_rx(&daemon, "c0") < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = daemon.stats()[0].endpoints[0].port.clone().unwrap();
    testpmd.wait_rx(N);
    let (stats, out) = testpmd.stop();
    assert_eq!(
        (stats.rx_packets, stats.rx_bytes),
        (N, N * LEN as u64),
        "testpmd's count: {port:?}\n{out}"
    );
    assert_eq!((port.rx_frames, port.rx_dropped()), (N, 0), "{port:?}");
    let whole = format!("length={LEN} - nb_segs=4");
    assert_eq!(
        out.matches(&whole).count() as u64,
        N,
        "every frame in one piece of {LEN} bytes, in 4 mbufs:\n{out}"
    );
    daemon.wait_for_port("c0", false);

    // macswap: testpmd sends each frame back in a chain; it leaves v0 whole.
    let capture = lab.host.run(|| Capture::open("v0p")).unwrap();
    let testpmd = Testpmd::start(
        lab.endpoints[0].name(),
        &lab.port_socket(0),
        "macswap",
        &log_path(&lab, "tp-chain-swap"),
        &small,
        &mbufs,
    );
    daemon.wait_for_port_within("c0", true, Duration::from_secs(60));
    testpmd.wait_ready(&daemon);
    const M: u64 = 200;
    lab.send(&streams, M);
    let mut replies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while (replies.len() as u64) < M && Instant::now() < deadline {
        if let Some(f) = capture.next(Duration::from_millis(200)).unwrap()
            && f.len() >= 14
            && f[0..6] == xmacvlan_bench::lab::GENERATOR_MAC
            && f[6..12] == c0.mac
        {
            replies.push(f);
        }
    }
    let port = daemon.stats()[0].endpoints[0].port.clone().unwrap();
    let (stats, out) = testpmd.stop();
    assert_eq!(replies.len() as u64, M, "{port:?}\n{out}");
    for (i, f) in replies.iter().enumerate() {
        assert_eq!(f.len(), LEN, "reply {i} whole");
        let p = xmacvlan::frame::read_payload(f).expect("the payload came back");
        assert_eq!(p.seq, i as u64, "in order");
    }
    assert_eq!((stats.rx_packets, stats.tx_packets), (M, M), "{out}");
    assert_eq!(
        (
            port.rx_frames,
            port.tx_frames,
            port.drop_bad_chain,
            port.tx_dropped()
        ),
        (M, M, 0, 0),
        "{port:?}"
    );
    let (_, status) = daemon.terminate();
    assert!(status.success());
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}
