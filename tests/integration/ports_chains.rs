//! memif chained buffers through the dataplane, in a lab (root). The ports are the daemon's
//! own (`PortServer`, `ServerPort`) attached to a real dataplane; the clients are the
//! library's with buffers smaller than the frames, and a test playing a hostile client on its
//! rings by hand.
//!
//! - 1500-byte frames reach a client with 256-byte buffers whole, tag stripped, in order, in
//!   chains of 6 buffers; the client's 1400-byte chains leave the NIC whole with the tag.
//! - A client whose whole ring is smaller than the frames: every frame counted RX-TOO-BIG.
//! - Hostile chains (unterminated, longer than the largest frame) are counted BAD-CHAIN, the
//!   port stays up, and the frame behind them leaves.
//! - DPDK's testpmd on a port with no NIC behind it: 9000-byte frames go to it in chains of
//!   its 2048-byte buffers, whole, and its macswap replies come back whole (the NIC side of
//!   jumbo frames needs multi-buffer XDP; this is the memif side).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{ClaimPolicy, Dataplane, PortSnapshot};
use xmacvlan::frame::{ETHERTYPE_TEST, TPID_8021Q, read_payload};
use xmacvlan::memif::shm::{DESC_FLAG_NEXT, Desc};
use xmacvlan::memif::{Client, ClientConfig, PortEvent, PortServer, PortServerConfig};
use xmacvlan::modes::Demux;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::capture::Capture;
use xmacvlan_tests::raw_memif::handshake_port;
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root, wait_until};

/// Frames to the chained client, their length on the wire (tagged), its buffer size.
const FRAMES: u64 = 200;
const FRAME_LEN: usize = 1500;
const BUFFER: u32 = 256;
/// Frames the chained client sends back, and their length (untagged).
const SENT: usize = 40;
const SENT_LEN: usize = 1400;
/// Frames to the client whose whole ring (4 x 256 bytes) is smaller than one.
const TOO_BIG: u64 = 10;

/// The sockets' directory, removed with the test.
struct SocketDir(PathBuf);
impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A frame the client sends: from `src` to the generator, numbered `seq`, every byte set.
fn client_frame(src: [u8; 6], seq: u16) -> Vec<u8> {
    let mut f: Vec<u8> = (0..SENT_LEN)
        .map(|i| (i as u8).wrapping_mul(7) ^ seq as u8)
        .collect();
    f[..6].copy_from_slice(&lab::GENERATOR_MAC);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    f[14..16].copy_from_slice(&seq.to_be_bytes());
    f
}

fn connect(srv: &PortServer, path: &Path, log2_ring_size: u8) -> (Client, PortEvent) {
    let cfg = ClientConfig {
        name: "chains".into(),
        log2_ring_size,
        buffer_size: BUFFER,
        ..ClientConfig::default()
    };
    let client = Client::connect(path, &cfg).expect("connecting the client");
    let event = srv.next_event(Duration::from_secs(5)).expect("a port");
    (client, event)
}

fn chains(demux: Demux) {
    require_root();
    let what = format!("{demux:?} demux");
    let lab = Lab::build(&Topology {
        vlans: vec![100],
        endpoints_per_vlan: 3,
        queues: 1,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .expect("building the lab");
    let eps = lab.endpoints.clone();
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let capture = lab.wire.run(|| Capture::open(lab::WIRE)).expect("capture");
    let dir = SocketDir(
        std::env::temp_dir().join(format!("xmacvlan-chains-{}-{demux:?}", std::process::id())),
    );
    let srv = PortServer::start(PortServerConfig::new(&dir.0)).unwrap();
    // The clients are this process: admitted from its own namespace.
    let own = Path::new("/proc/self/ns/net");
    let paths: Vec<PathBuf> = eps
        .iter()
        .map(|e| srv.serve(&e.name, own).unwrap())
        .collect();
    let (chained, chained_port) = connect(&srv, &paths[0], 8);
    let (tiny, tiny_port) = connect(&srv, &paths[1], 2);
    let (raw_port, c2s, _s2c, region) = handshake_port(4, 1 << 16, 4096);
    let mut ports = vec![chained_port, tiny_port];
    let ports: Vec<_> = ports
        .drain(..)
        .map(|event| match event {
            PortEvent::Connected { port, info, .. } => (port, info),
            PortEvent::Disconnected { reason, .. } => panic!("{what}: refused: {reason}"),
        })
        .collect();

    let (received, snaps, client) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &[])?;
            for e in &eps {
                dp.add_endpoint_with(e.clone(), ClaimPolicy::WhileConnected)?;
            }
            for (e, (port, info)) in eps.iter().zip(ports) {
                dp.connect_port(&e.name, port, info)?;
            }
            let info = xmacvlan_tests::mem_port::info("raw");
            dp.connect_port(&eps[2].name, Box::new(raw_port), info)?;

            // 1. 1500-byte frames into 256-byte buffers, paced by what the client has read
            //    (32 frames in flight at most; its ring holds 42).
            let read = AtomicU64::new(0);
            let delivered = || read.load(Ordering::Relaxed);
            let never = AtomicBool::new(false);
            let gen_cfg = |count| GeneratorConfig {
                ifname: lab.ingress.generator_device().into(),
                queue: 0,
                amount: Amount::EachStream(count),
                rate: Some(20_000),
                core: None,
                frame_size: generator::FRAME_SIZE,
                max_in_flight: 32,
            };
            let (received, mut client) = std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut client = chained;
                    let mut frames = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while (frames.len() as u64) < FRAMES && Instant::now() < deadline {
                        client.recv(|f| frames.push(f.to_vec()));
                        read.store(frames.len() as u64, Ordering::Relaxed);
                        client.wait(Duration::from_millis(10)).unwrap();
                    }
                    (frames, client)
                });
                let pace_sent = PaceSent::default();
                let pace = Pace::delivered(&pace_sent, &delivered, 32);
                let streams = lab_streams(&eps[..1], FRAME_LEN, false);
                lab.wire
                    .run(|| generator::run_paced(&gen_cfg(FRAMES), &streams, &never, Some(pace)))?;
                anyhow::Ok(reader.join().expect("reader"))
            })?;

            // 2. The client's 1400-byte frames, 6 buffers each, to the wire.
            for seq in 0..SENT as u16 {
                assert!(
                    client.send(&client_frame(eps[0].mac, seq)),
                    "frame {seq} queued"
                );
            }
            client.flush();
            let tx_done = |dp: &Dataplane| {
                dp.port(&eps[0].name)
                    .is_some_and(|p| p.tx_frames + p.tx_dropped() == SENT as u64)
            };
            assert!(wait_until(Duration::from_secs(10), || tx_done(&dp)));

            // 3. A client whose ring cannot hold one frame, even chained.
            let wire_pace = PaceSent::default();
            let streams = lab_streams(&eps[1..2], FRAME_LEN, false);
            lab.wire.run(|| {
                let pace = Some(Pace::wire(&wire_pace));
                generator::run_paced(&gen_cfg(TOO_BIG), &streams, &never, pace)
            })?;
            assert!(wait_until(Duration::from_secs(10), || {
                dp.port(&eps[1].name)
                    .is_some_and(|p| p.drop_rx_too_big == TOO_BIG)
            }));

            // 4. Hostile chains on the third port's transmit ring, then a good frame.
            let put = |slot: u16, flags: u16, length: u32, bytes: Option<&[u8]>| {
                let offset = 8192 + u32::from(slot) * 2048;
                if let Some(b) = bytes {
                    region.write(u64::from(offset), b);
                }
                c2s.set_desc(
                    slot,
                    Desc {
                        flags,
                        region: 0,
                        length,
                        offset,
                        metadata: 0,
                    },
                );
            };
            put(0, DESC_FLAG_NEXT, 100, None);
            put(1, DESC_FLAG_NEXT, 100, None);
            c2s.set_head(2);
            assert!(wait_until(Duration::from_secs(10), || c2s.tail() == 2));
            for slot in 2..7 {
                put(slot, DESC_FLAG_NEXT, 2048, None);
            }
            put(7, 0, 2048, None);
            let good = client_frame(eps[2].mac, 7);
            put(8, 0, 60, Some(&good[..60]));
            c2s.set_head(9);
            assert!(wait_until(Duration::from_secs(10), || {
                dp.port(&eps[2].name).is_some_and(|p| p.tx_frames == 1)
            }));

            let snaps: Vec<PortSnapshot> = eps.iter().map(|e| dp.port(&e.name).unwrap()).collect();
            dp.stop()?;
            Ok((received, snaps, client))
        })
        .expect("running the lab");

    // What the chained client read: every frame whole, untagged, in order.
    assert_eq!(received.len() as u64, FRAMES, "{what}: {:?}", snaps[0]);
    for (i, f) in received.iter().enumerate() {
        assert_eq!(f.len(), FRAME_LEN - 4, "{what}: frame {i} whole, untagged");
        assert_eq!(&f[..6], &lab.endpoints[0].mac, "{what}: frame {i}");
        assert_ne!(u16::from_be_bytes([f[12], f[13]]), TPID_8021Q);
        let p = read_payload(f).unwrap_or_else(|| panic!("{what}: frame {i} has its payload"));
        assert_eq!(p.seq, i as u64, "{what}: in order");
        let padding = &f[14 + xmacvlan::frame::PAYLOAD_LEN..];
        assert!(
            padding
                .iter()
                .enumerate()
                .all(|(k, &b)| b == (k % 251) as u8),
            "{what}: frame {i}: its buffers joined in order"
        );
    }
    assert_eq!(
        (client.counters.rx_chained, client.counters.rx_broken),
        (FRAMES, 0),
        "{what}: 1496 bytes take 6 buffers of {BUFFER}"
    );
    assert_eq!(client.counters.tx_chained, SENT as u64);
    let [p0, p1, p2] = &snaps[..] else {
        unreachable!()
    };
    assert_eq!(
        (p0.rx_frames, p0.rx_dropped(), p0.tx_frames, p0.tx_dropped()),
        (FRAMES, 0, SENT as u64, 0),
        "{what}: {p0:?}"
    );
    assert_eq!(
        (
            p1.rx_frames,
            p1.drop_rx_too_big,
            p1.drop_ring_full,
            p1.connected
        ),
        (0, TOO_BIG, 0, true),
        "{what}: {p1:?}"
    );
    assert_eq!(
        (
            p2.tx_frames,
            p2.drop_bad_chain,
            p2.tx_dropped(),
            p2.connected
        ),
        (1, 2, 2, true),
        "{what}: unterminated and too long refused, the port up: {p2:?}"
    );

    // On the wire: the chained frames whole with the endpoint's tag, and the raw port's frame.
    let tag = [0x81, 0x00, 0x00, 100];
    let mut seen = Vec::new();
    let mut good = 0;
    while let Some(f) = capture.next(Duration::from_millis(500)).unwrap() {
        if f.len() < 16 || f[..6] != lab::GENERATOR_MAC {
            continue;
        }
        if f[6..12] == lab.endpoints[0].mac {
            assert_eq!(&f[12..16], &tag, "{what}: tagged");
            seen.push([&f[..12], &f[16..]].concat());
        } else if f[6..12] == lab.endpoints[2].mac {
            good += 1;
        }
    }
    assert_eq!(seen.len(), SENT, "{what}: every chained frame left");
    for (seq, f) in seen.iter().enumerate() {
        assert_eq!(
            f,
            &client_frame(lab.endpoints[0].mac, seq as u16),
            "{what}: frame {seq} whole"
        );
    }
    assert_eq!(good, 1, "{what}: the frame behind the hostile chains left");

    client.close("done");
    drop(tiny);
    drop(srv);
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty(), "namespaces left");
}

#[test]
fn chained_buffers_through_the_dataplane_xdp_demux() {
    chains(Demux::Xdp);
}

#[test]
fn chained_buffers_through_the_dataplane_user_demux() {
    chains(Demux::User);
}

/// A frame of `len` bytes from the generator's MAC to `dst`, numbered `seq`, every byte set.
fn jumbo(dst: [u8; 6], seq: u16, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seq as u8)
        .collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&lab::GENERATOR_MAC);
    f[12..14].copy_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    f[14..16].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Push `frame` once the client has offered buffers (testpmd offers them once forwarding).
fn push_when_offered(port: &mut xmacvlan::memif::ServerPort, frame: &[u8]) {
    use xmacvlan::dataplane::{AppPort, RxRefused};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match port.rx_push(&[frame], false) {
            Ok(()) => return,
            Err(RxRefused::NoBuffer) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("testpmd took no buffer: {e:?}"),
        }
    }
}

#[test]
fn jumbo_frames_to_testpmd_and_back_in_chains() {
    use xmacvlan::dataplane::{AppPort, TxFrame};
    use xmacvlan_tests::testpmd::Testpmd;
    require_root();
    const LEN: usize = 9000;
    const N: u64 = 100;
    let ns =
        xmacvlan::netns::NetnsGuard::create(&format!("xmvjumbo{}", std::process::id())).unwrap();
    let dir =
        SocketDir(std::env::temp_dir().join(format!("xmacvlan-jumbo-{}", std::process::id())));
    let srv = PortServer::start(PortServerConfig::new(&dir.0)).unwrap();
    let path = srv.serve("ep", &ns.path()).unwrap();
    let dst = [0x02, 0x42, 0, 0, 0, 1];
    for mode in ["rxonly", "macswap"] {
        let log = dir.0.join(format!("testpmd-{mode}.log"));
        // Default memif buffers (2048 bytes): a 9000-byte frame takes 5.
        let mut testpmd = Testpmd::start(ns.name(), &path, mode, &log, &[], &[]);
        let mut port = match srv.next_event(Duration::from_secs(60)) {
            Some(PortEvent::Connected { port, .. }) => port,
            _ => panic!(
                "testpmd did not connect: {}",
                std::fs::read_to_string(&log).unwrap()
            ),
        };
        if mode == "rxonly" {
            testpmd.command("set verbose 1");
            testpmd.wait_for_output("Change verbose level from 0 to 1");
        }
        for seq in 0..N as u16 {
            push_when_offered(&mut port, &jumbo(dst, seq, LEN));
            port.rx_flush();
        }
        let stats = testpmd.wait_rx(N);
        assert_eq!(
            (stats.rx_packets, stats.rx_bytes),
            (N, N * LEN as u64),
            "{mode}"
        );
        if mode == "macswap" {
            let mut back = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while (back.len() as u64) < N && Instant::now() < deadline {
                port.tx_drain(64, &mut |item| match item {
                    TxFrame::Send(segments) => back.push(segments.concat()),
                    TxFrame::Refused(why) => panic!("testpmd's chain refused: {why:?}"),
                });
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(back.len() as u64, N, "every reply came back");
            for (seq, f) in back.iter().enumerate() {
                let mut want = jumbo(dst, seq as u16, LEN);
                let (d, s) = want[..12].split_at_mut(6);
                d.swap_with_slice(s);
                assert!(
                    f == &want,
                    "reply {seq}: {} bytes, whole, MACs swapped",
                    f.len()
                );
            }
        }
        let (stats, out) = testpmd.stop();
        if mode == "rxonly" {
            let whole = format!("length={LEN} - nb_segs=5");
            assert_eq!(out.matches(&whole).count() as u64, N, "{stats:?}\n{out}");
        } else {
            assert_eq!(stats.tx_packets, N, "{out}");
        }
        match srv.next_event(Duration::from_secs(10)) {
            Some(PortEvent::Disconnected { .. }) => {}
            _ => panic!("{mode}: testpmd did not disconnect"),
        }
    }
}
