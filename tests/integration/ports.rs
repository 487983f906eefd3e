//! Application ports, the dataplane side, in labs of namespaces (root). The port is a test
//! double over plain memory (`support/mem_port.rs`); the frames, the classifier, the sockets
//! and the kernel devices are real.
//!
//! - Exact delivery in both demux modes: every frame to its endpoint's port, none to another's,
//!   tags stripped, counters adding up with the ledger.
//! - Transmit: the endpoint's tag inserted on the wire (seen by an AF_PACKET capture on the
//!   wire side); spoofed, tagged, runt and oversize frames dropped, counted, never on the wire;
//!   on one queue and on two (a TX pool and completion ring each).
//! - No black hole: an endpoint claimed only while connected answers TCP and UDP through its
//!   kernel macvlan device before a port connects and after it disconnects; in between, the
//!   same frames reach the port.
//! - A port that goes away under traffic is reaped, every frame counted, no TX frame lost, and
//!   a new port attaches.
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{ClaimPolicy, Dataplane, PortSnapshot};
use xmacvlan::frame::read_payload;
use xmacvlan::modes::Demux;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::Netns;
use xmacvlan::telemetry::live;
use xmacvlan_bench::generator::{self, Stream, StreamKind};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic_until};
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::bare_lab::{StopOnDrop, generator_until_stopped};
use xmacvlan_tests::capture::Capture;
use xmacvlan_tests::exact::sent_where;
use xmacvlan_tests::mem_port::{App, info};
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root, wait_until};

const PER_STREAM: u64 = 2_000;

fn lab(vlans: Vec<u16>, per_vlan: usize, kernel_devices: KernelDevices) -> Lab {
    lab_with_queues(vlans, per_vlan, kernel_devices, 1)
}

fn lab_with_queues(
    vlans: Vec<u16>,
    per_vlan: usize,
    kernel_devices: KernelDevices,
    queues: u32,
) -> Lab {
    Lab::build(&Topology {
        vlans,
        endpoints_per_vlan: per_vlan,
        queues,
        kernel_devices,
        ..Topology::default()
    })
    .expect("building the lab")
}

fn tear_down(lab: Lab) {
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty(), "namespaces left");
}

fn exact_delivery(demux: Demux) {
    let lab = lab(vec![100, 0], 2, KernelDevices::None);
    let streams = lab_streams(&lab.endpoints, 64, true);
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let apps: Vec<App> = lab.endpoints.iter().map(|_| App::new(8192, 16)).collect();
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(100_000),
        background: true,
        // Exact delivery, whatever else the machine runs: never more in flight than the
        // rings between the generator and the ports hold.
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let (sent, finished) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &[])?;
            for (e, app) in lab.endpoints.iter().zip(&apps) {
                dp.add_endpoint_with(e.clone(), ClaimPolicy::WhileConnected)?;
                dp.connect_port(&e.name, app.port(), info(&e.name))?;
            }
            let received = || apps.iter().map(|a| a.rx.len() as u64).sum::<u64>();
            let sent = run_traffic_until(&lab, 1, &streams, &traffic, &received)?;
            Ok((sent, dp.stop()?))
        })
        .expect("running the lab");

    let what = format!("{demux:?} demux");
    Ledger::finished(sent.total(), &finished, &[]).assert_balanced(&what);
    for (i, (e, app)) in finished.endpoints.iter().zip(&apps).enumerate() {
        let name = &e.spec.name;
        let to_it = sent_where(&streams, &sent.per_stream, |s| {
            s.kind == StreamKind::Endpoint(i)
        });
        assert_eq!(to_it, PER_STREAM, "{what}: stream {i} sent in full");
        let frames = app.received();
        assert_eq!(
            frames.len() as u64,
            to_it,
            "{what}: {name}'s port got its frames"
        );
        for f in &frames {
            assert_eq!(&f[..6], &e.spec.mac, "{what}: {name}: another's frame");
            assert_ne!(
                &f[12..14],
                &[0x81, 0x00],
                "{what}: {name}: tag not stripped"
            );
            let expected_len = if e.spec.vid == 0 { 64 } else { 60 };
            assert_eq!(f.len(), expected_len, "{what}: {name}: frame length");
            let p = read_payload(f).expect("the generator's payload");
            assert_eq!(
                (p.vid, p.stream as usize),
                (e.spec.vid, i),
                "{what}: {name}"
            );
        }
        let port = e.port.as_ref().expect("still connected at stop");
        assert_eq!(port.rx_frames, to_it, "{what}: {name}: {port:?}");
        assert_eq!(port.rx_bytes, to_it * frames[0].len() as u64);
        assert_eq!(port.rx_dropped() + port.tx_dropped(), 0, "{what}: {port:?}");
        assert_eq!(e.frames, to_it, "{what}: {name}: endpoint counters");
        assert_eq!((e.misdelivered, e.dropped_not_connected), (0, 0));
        assert_eq!(
            e.latency.len(),
            e.frames,
            "{what}: {name}: every frame timed"
        );
    }
    // Broadcast and unknown unicast went to the kernel, none was unclaimed.
    assert_eq!(finished.xdp.pass_unclaimed, 0, "{:?}", finished.xdp);
    assert!(finished.xdp.pass_bcast_mcast > 0 && finished.xdp.pass_miss > 0);
    tear_down(lab);
}

#[test]
fn ports_get_exactly_their_endpoints_frames_untagged_xdp_demux() {
    require_root();
    exact_delivery(Demux::Xdp);
}

#[test]
fn ports_get_exactly_their_endpoints_frames_untagged_user_demux() {
    require_root();
    exact_delivery(Demux::User);
}

/// A frame from `src` with `len` bytes, ethertype `ethertype`, numbered `seq` at byte 20.
fn app_frame(src: [u8; 6], ethertype: u16, len: usize, seq: u16) -> Vec<u8> {
    let mut f = vec![0u8; len.max(22)];
    f[..6].copy_from_slice(&lab::GENERATOR_MAC);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[20..22].copy_from_slice(&seq.to_be_bytes());
    f.truncate(len);
    f
}

/// What the test asks each endpoint's application to send.
struct TxPlan {
    good: u16,
    spoofed: u16,
    runt: u16,
    tagged: u16,
    too_big: u16,
}

const PLAN: TxPlan = TxPlan {
    good: 200,
    spoofed: 7,
    runt: 5,
    tagged: 4,
    too_big: 3,
};

fn transmit(demux: Demux, queues: u32) {
    let lab = lab_with_queues(vec![100, 0], 1, KernelDevices::None, queues);
    let cfg = lab.dataplane_config(&dataplane_config(demux, queues));
    let apps: Vec<App> = lab.endpoints.iter().map(|_| App::new(16, 1024)).collect();
    let capture = lab.wire.run(|| Capture::open(lab::WIRE)).expect("capture");
    let what = format!("{demux:?} demux, {queues} queues");
    let (ports, queues) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &[])?;
            let mtu = dp.mtu() as usize;
            for (e, app) in lab.endpoints.iter().zip(&apps) {
                dp.add_endpoint_with(e.clone(), ClaimPolicy::WhileConnected)?;
                dp.connect_port(&e.name, app.port(), info(&e.name))?;
            }
            for (e, app) in lab.endpoints.iter().zip(&apps) {
                let mac = e.mac;
                let mut seq = 0;
                let mut next = || {
                    seq += 1;
                    seq
                };
                // Interleaved, so a drop never stops the frames behind it.
                for i in 0..PLAN.good {
                    app.send(&app_frame(mac, 0x0800, 60 + (i as usize % 40), next()));
                    if i < PLAN.spoofed {
                        app.send(&app_frame([2, 0x66, 0, 0, 0, 1], 0x0800, 60, next()));
                    }
                    if i < PLAN.runt {
                        app.send(&mac[..4].iter().chain(&mac).copied().collect::<Vec<_>>()[..10]);
                    }
                    if i < PLAN.tagged {
                        app.send(&app_frame(mac, 0x8100, 64, next()));
                    }
                    if i < PLAN.too_big {
                        app.send(&app_frame(mac, 0x0800, 14 + mtu + 1, next()));
                    }
                }
            }
            let taken = |dp: &Dataplane| {
                lab.endpoints.iter().all(|e| {
                    dp.port(&e.name).is_some_and(|p| {
                        p.tx_frames + p.tx_dropped()
                            == u64::from(
                                PLAN.good + PLAN.spoofed + PLAN.runt + PLAN.tagged + PLAN.too_big,
                            )
                    })
                })
            };
            assert!(
                wait_until(Duration::from_secs(10), || taken(&dp)),
                "{what}: TX drained"
            );
            // Every TX frame comes back to its pool through the completion ring.
            let all_back = |dp: &Dataplane| {
                dp.snapshot()
                    .unwrap()
                    .queues
                    .iter()
                    .all(|q| q.tx_pool_free == q.tx_pool)
            };
            assert!(
                wait_until(Duration::from_secs(5), || all_back(&dp)),
                "{what}: TX frames completed: {:?}",
                dp.snapshot()?.queues
            );
            let ports: Vec<PortSnapshot> = lab
                .endpoints
                .iter()
                .map(|e| dp.disconnect_port(&e.name))
                .collect::<Result<_, _>>()?;
            let queues = dp.snapshot()?.queues;
            dp.stop()?;
            Ok((ports, queues))
        })
        .expect("running the lab");

    let mut on_wire: Vec<Vec<Vec<u8>>> = vec![Vec::new(); lab.endpoints.len()];
    while let Some(f) = capture.next(Duration::from_millis(500)).unwrap() {
        let from = lab
            .endpoints
            .iter()
            .position(|e| f.len() >= 12 && f[6..12] == e.mac);
        match from {
            Some(i) => on_wire[i].push(f),
            None => assert!(
                f.len() < 12 || f[6..12] != [2, 0x66, 0, 0, 0, 1],
                "{what}: a spoofed frame left: {f:02x?}"
            ),
        }
    }
    for ((e, p), frames) in lab.endpoints.iter().zip(&ports).zip(&on_wire) {
        let name = &e.name;
        assert_eq!(p.tx_frames, u64::from(PLAN.good), "{what}: {name}: {p:?}");
        assert_eq!(
            (
                p.drop_spoofed,
                p.drop_runt,
                p.drop_tagged,
                p.drop_too_big,
                p.drop_no_frame
            ),
            (
                u64::from(PLAN.spoofed),
                u64::from(PLAN.runt),
                u64::from(PLAN.tagged),
                u64::from(PLAN.too_big),
                0
            ),
            "{what}: {name}: {p:?}"
        );
        assert_eq!(
            frames.len(),
            usize::from(PLAN.good),
            "{what}: {name}: frames on the wire"
        );
        for (i, f) in frames.iter().enumerate() {
            let body = if e.vid != 0 {
                assert_eq!(
                    &f[12..16],
                    &[0x81, 0x00, (e.vid >> 8) as u8, e.vid as u8],
                    "{what}: {name}: the endpoint's tag inserted"
                );
                [&f[..12], &f[16..]].concat()
            } else {
                f.clone()
            };
            // In order, unchanged otherwise (the wire pads nothing on veth).
            let expected = app_frame(e.mac, 0x0800, body.len(), 0);
            assert_eq!(&body[..14], &expected[..14], "{what}: {name}: frame {i}");
            assert_eq!(body.len(), 60 + i % 40, "{what}: {name}: frame {i} length");
        }
    }
    let completed: u64 = queues.iter().map(|q| q.tx_completed).sum();
    assert_eq!(
        completed,
        2 * u64::from(PLAN.good),
        "{what}: completions reaped"
    );
    if queues.len() == 2 {
        // Slot i transmits on queue i: each queue carried one endpoint's frames.
        for q in &queues {
            assert_eq!(q.tx_completed, u64::from(PLAN.good), "{what}: {queues:?}");
        }
    }
    tear_down(lab);
}

#[test]
fn port_tx_tags_on_the_wire_and_drops_bad_frames_xdp_demux() {
    require_root();
    transmit(Demux::Xdp, 1);
}

#[test]
fn port_tx_tags_on_the_wire_and_drops_bad_frames_user_demux() {
    require_root();
    transmit(Demux::User, 1);
}

/// Two queues: the endpoints (slots 0 and 1) transmit on different queues, each through its
/// own TX pool, completions reaped by each queue's worker.
#[test]
fn port_tx_on_two_queues_user_demux() {
    require_root();
    transmit(Demux::User, 2);
}

#[test]
fn port_tx_on_two_queues_xdp_demux() {
    require_root();
    transmit(Demux::Xdp, 2);
}

const ENDPOINT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const WIRE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const DATAGRAMS: u32 = 100;

/// From the wire: a TCP connect within `timeout`, true if it was accepted.
fn tcp_connects(lab: &Lab, timeout: Duration) -> bool {
    lab.wire
        .run(|| {
            let to = SocketAddr::from((ENDPOINT_IP, TCP_PORT));
            Ok(TcpStream::connect_timeout(&to, timeout).is_ok())
        })
        .unwrap()
}

/// From the wire: `DATAGRAMS` UDP datagrams numbered from `first`, paced.
fn send_datagrams(lab: &Lab, first: u32) {
    lab.wire
        .run(|| {
            let s = UdpSocket::bind((WIRE_IP, 0))?;
            for i in first..first + DATAGRAMS {
                s.send_to(&i.to_be_bytes(), (ENDPOINT_IP, UDP_PORT))?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
        .unwrap()
}

/// Every datagram numbered `first..first + DATAGRAMS` the listener got, and nothing else.
fn received_datagrams(udp: &UdpSocket, first: u32) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = udp.recv(&mut buf) {
        assert_eq!(n, 4);
        got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        if got.len() as u32 == DATAGRAMS {
            break;
        }
    }
    assert!(
        got.iter().all(|i| (first..first + DATAGRAMS).contains(i)),
        "{got:?}"
    );
    got
}

/// UDP frames to the endpoint's port number among `frames` (untagged IPv4).
fn udp_frames(frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 38 && f[12..14] == [0x08, 0x00] && f[23] == 17)
        .filter(|f| u16::from_be_bytes([f[36], f[37]]) == UDP_PORT)
        .count()
}

fn tcp_syns(frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 48 && f[12..14] == [0x08, 0x00] && f[23] == 6)
        .filter(|f| u16::from_be_bytes([f[36], f[37]]) == TCP_PORT && f[47] & 0x02 != 0)
        .count()
}

fn no_black_hole(demux: Demux) {
    let lab = lab(vec![0], 1, KernelDevices::OwnNamespace);
    let endpoint = lab.endpoints[0].clone();
    let ns = Netns::open(&format!("{}-{}", lab.prefix, endpoint.name)).unwrap();
    lab.wire
        .run(|| {
            let nl = Netlink::new()?;
            let index = nl.require_link(lab::WIRE)?.index;
            Ok(nl.add_address(index, WIRE_IP.into(), 24)?)
        })
        .unwrap();
    // The endpoint's services, on its kernel device, as a container would run them.
    let (tcp, udp) = ns
        .run(|| {
            let tcp = TcpListener::bind((ENDPOINT_IP, TCP_PORT))?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind((ENDPOINT_IP, UDP_PORT))?;
            udp.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok((tcp, udp))
        })
        .unwrap();
    let accept_one = || {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = tcp.accept() {
                let _ = s.read(&mut [0u8; 1]);
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let app = App::new(4096, 16);
    lab.host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &[])?;
            dp.add_endpoint_with(endpoint.clone(), ClaimPolicy::WhileConnected)?;

            // 1. No port: the kernel device answers, exactly as without xmacvlan.
            assert!(
                tcp_connects(&lab, Duration::from_secs(5)),
                "TCP before a port"
            );
            assert!(accept_one(), "the listener accepted");
            send_datagrams(&lab, 0);
            assert_eq!(
                received_datagrams(&udp, 0).len() as u32,
                DATAGRAMS,
                "UDP before"
            );
            let before = dp.snapshot()?;
            assert!(
                before.xdp.pass_unclaimed > DATAGRAMS as u64,
                "{:?}",
                before.xdp
            );
            assert_eq!((before.xdp.redirected, before.endpoints[0].frames), (0, 0));

            // 2. A port: the same frames reach it instead, none the kernel device.
            dp.connect_port(&endpoint.name, app.port(), info("test"))?;
            // Claimed by the serving thread once the port offers buffers, not inside the call.
            assert!(
                wait_until(Duration::from_secs(5), || dp.snapshot().is_ok_and(|s| s
                    .endpoints[0]
                    .port
                    .as_ref()
                    .is_some_and(|p| p.claimed))),
                "the endpoint was claimed"
            );
            assert!(
                !tcp_connects(&lab, Duration::from_millis(1500)),
                "TCP went to the port"
            );
            send_datagrams(&lab, 1000);
            // Frames are taken off the port as they come: wait for every datagram itself (the
            // number of SYN retransmissions before them varies).
            let mut frames = Vec::new();
            assert!(
                wait_until(Duration::from_secs(5), || {
                    frames.extend(app.received());
                    udp_frames(&frames) as u32 >= DATAGRAMS
                }),
                "the port got the datagrams: {} frames, {} datagrams",
                frames.len(),
                udp_frames(&frames)
            );
            let during = dp.snapshot()?;
            // What `xmacvlan stats` shows of it (docs/architecture.md quotes this).
            eprintln!(
                "{}",
                live::tables(demux.name(), 0.0, std::slice::from_ref(&during))
            );
            let port = dp.disconnect_port(&endpoint.name)?;
            frames.extend(app.received());
            assert_eq!(
                udp_frames(&frames) as u32,
                DATAGRAMS,
                "every datagram to the port"
            );
            assert!(tcp_syns(&frames) >= 1, "the SYN reached the port");
            assert_eq!(port.rx_frames, frames.len() as u64, "{port:?}");
            assert_eq!(
                during.xdp.pass_unclaimed, before.xdp.pass_unclaimed,
                "nothing of the endpoint's went to the kernel while connected: {:?}",
                during.xdp
            );
            udp.set_read_timeout(Some(Duration::from_millis(200)))?;
            assert!(
                received_datagrams(&udp, 1000).is_empty(),
                "the kernel device got a datagram while the port was connected"
            );
            udp.set_read_timeout(Some(Duration::from_secs(2)))?;

            // 3. Disconnected: the kernel device again.
            assert!(
                tcp_connects(&lab, Duration::from_secs(5)),
                "TCP after the port"
            );
            assert!(accept_one(), "the listener accepted again");
            send_datagrams(&lab, 2000);
            assert_eq!(
                received_datagrams(&udp, 2000).len() as u32,
                DATAGRAMS,
                "UDP after"
            );

            // Every frame counted: one verdict each; what was redirected is what the endpoint
            // handled, and that is what the port got or a counted reason.
            let after = dp.snapshot()?;
            let x = after.xdp;
            assert_eq!(x.verdicts(), x.seen, "{x:?}");
            let e = &after.endpoints[0];
            assert_eq!(x.redirected, e.frames + e.dropped(), "{x:?} {e:?}");
            assert_eq!(
                e.frames,
                port.rx_frames + port.rx_dropped() + e.dropped_not_connected,
                "{e:?} {port:?}"
            );
            assert!(x.pass_unclaimed > before.xdp.pass_unclaimed + DATAGRAMS as u64);
            assert!(e.port.is_none());
            eprintln!(
                "{}",
                live::tables(demux.name(), 0.0, std::slice::from_ref(&after))
            );
            dp.stop()?;
            Ok(())
        })
        .unwrap();
    drop((tcp, udp));
    tear_down(lab);
}

#[test]
fn no_black_hole_kernel_before_and_after_a_port_the_port_in_between_xdp_demux() {
    require_root();
    no_black_hole(Demux::Xdp);
}

#[test]
fn no_black_hole_kernel_before_and_after_a_port_the_port_in_between_user_demux() {
    require_root();
    no_black_hole(Demux::User);
}

fn reap_under_traffic(demux: Demux) {
    let lab = lab(vec![0], 2, KernelDevices::None);
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let what = format!("{demux:?} demux");
    let streams: Vec<Stream> = lab_streams(&lab.endpoints, 64, false);
    let first = App::new(1 << 16, 64);
    let second = App::new(1 << 16, 64);
    let (sent, finished, reaped) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &[])?;
            let e = lab.endpoints[0].clone();
            dp.add_endpoint_with(e.clone(), ClaimPolicy::WhileConnected)?;
            dp.add_endpoint(lab.endpoints[1].clone())?;
            let stop = AtomicBool::new(false);
            let (sent, reaped) = std::thread::scope(|s| -> anyhow::Result<_> {
                let _stop = StopOnDrop(&stop);
                let generator = s.spawn(|| {
                    lab.wire.run(|| {
                        generator::run(&generator_until_stopped(Some(20_000)), &streams, &stop)
                    })
                });
                std::thread::sleep(Duration::from_millis(200));
                dp.connect_port(&e.name, first.port(), info("first"))?;
                assert!(wait_until(Duration::from_secs(5), || first.rx.len() > 500));
                // The application goes away while frames keep coming; TX frames in flight too.
                for i in 0..32 {
                    first.send(&app_frame(e.mac, 0x0800, 64, i));
                }
                let sent_32 = || dp.port(&e.name).is_some_and(|p| p.tx_frames == 32);
                assert!(wait_until(Duration::from_secs(5), sent_32), "{what}: TX");
                first.connected.store(false, Ordering::Relaxed);
                let mut reaped = Vec::new();
                assert!(
                    wait_until(Duration::from_secs(5), || {
                        reaped.extend(dp.reap_disconnected());
                        !reaped.is_empty()
                    }),
                    "{what}: the dead port was reaped"
                );
                assert!(dp.port(&e.name).is_none());
                std::thread::sleep(Duration::from_millis(200));
                // Back to the kernel meanwhile; then a new application attaches.
                dp.connect_port(&e.name, second.port(), info("second"))?;
                assert!(wait_until(Duration::from_secs(5), || second.rx.len() > 500));
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
                let sent = generator.join().expect("generator")?;
                Ok((sent, reaped))
            })?;
            xmacvlan_tests::bare_lab::drain(&dp);
            let queues = dp.snapshot()?.queues;
            assert!(
                queues.iter().all(|q| q.tx_pool_free == q.tx_pool),
                "{what}: no TX frame lost: {queues:?}"
            );
            Ok((sent, dp.stop()?, reaped))
        })
        .expect("running the lab");

    Ledger::finished(sent.total(), &finished, &[]).assert_balanced(&what);
    assert_eq!(reaped.len(), 1, "{what}");
    let (name, first_port) = &reaped[0];
    let first_port = first_port.as_ref().expect("reaped cleanly");
    assert_eq!(name, &lab.endpoints[0].name);
    assert!(!first_port.connected);
    assert_eq!(first_port.client, "first");
    let e = &finished.endpoints[0];
    let second_port = e.port.as_ref().expect("second still connected");
    assert_eq!(
        first_port.rx_frames,
        first.rx.len() as u64,
        "{what}: {first_port:?}"
    );
    assert_eq!(
        second_port.rx_frames,
        second.rx.len() as u64,
        "{what}: {second_port:?}"
    );
    // Everything the endpoint handled went to a port or is counted by reason.
    assert_eq!(
        e.frames,
        first_port.rx_frames
            + first_port.rx_dropped()
            + second_port.rx_frames
            + second_port.rx_dropped()
            + e.dropped_not_connected,
        "{what}: {first_port:?} {second_port:?} {e:?}"
    );
    assert!(
        finished.xdp.pass_unclaimed > 0,
        "{what}: back to the kernel between ports"
    );
    assert_eq!(finished.endpoints[1].port, None);
    assert!(finished.endpoints[1].frames > 0);
    tear_down(lab);
}

#[test]
fn a_port_that_goes_away_under_traffic_is_reaped_and_replaced_xdp_demux() {
    require_root();
    reap_under_traffic(Demux::Xdp);
}

#[test]
fn a_port_that_goes_away_under_traffic_is_reaped_and_replaced_user_demux() {
    require_root();
    reap_under_traffic(Demux::User);
}
