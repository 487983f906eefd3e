//! A port's edges under a steady stream: a client that connects but offers its receive
//! buffers only later (DPDK's does, about 100 ms on), and leaves while frames keep coming.
//! Every frame sent to the endpoint arrives at its kernel device or at the client, or is
//! counted by reason; none is lost unseen, and none is dropped for want of a buffer while the
//! client was still setting up (the endpoint is claimed only once it offers buffers).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{ClaimPolicy, Dataplane, EndpointSpec, PortSnapshot};
use xmacvlan::memif::client::{Client, ClientConfig};
use xmacvlan::memif::{PortEvent, PortServer, PortServerConfig};
use xmacvlan::modes::Demux;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::placed::DevStats;
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::bare_lab::StopOnDrop;
use xmacvlan_tests::testpmd::Testpmd;
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

/// The stream: this many frames a second to the one endpoint, until this long after the
/// client left (however long the client took to start), at most `LIMIT`.
const RATE: u64 = 5_000;
const AFTER: Duration = Duration::from_millis(1000);
const LIMIT: Duration = Duration::from_secs(60);
/// The client starts this far into the stream; the library's waits this long after its
/// handshake before it offers its receive buffers; each leaves once it has been getting
/// frames for this long.
const CONNECT_AT: Duration = Duration::from_millis(500);
const OFFER_DELAY: Duration = Duration::from_millis(200);
const STAY: Duration = Duration::from_millis(1000);

/// How long the stalling client stops reading: its ring fills, and once it has offered no
/// buffer for the daemon's stall time its endpoint's frames go to the kernel device.
const PAUSE: Duration = Duration::from_millis(1500);

/// DPDK's runtime directory is named after the test process and the forward mode: two
/// testpmd of one process at a time would share it. The area's tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A directory removed when the test ends, however it ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The library's memif client, made to wait before offering buffers.
    Library,
    /// The same, which also stops reading for a while once it is getting frames.
    LibraryStalling,
    /// DPDK's testpmd (`rxonly`), which offers its buffers late by itself.
    Testpmd,
}

/// Where the frames went.
#[derive(Debug)]
struct Counts {
    sent: u64,
    kernel_device: u64,
    client: u64,
    /// Pushed into the client's ring but not read by it before it left.
    left_in_ring: u64,
    port: PortSnapshot,
    endpoint_not_connected: u64,
}

fn edges(demux: Demux, who: Who) -> Counts {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Topology {
        vlans: vec![0],
        endpoints_per_vlan: 1,
        kernel_devices: KernelDevices::OwnNamespace,
        ..Topology::default()
    })
    .expect("building the lab");
    let endpoint: EndpointSpec = lab.endpoints[0].clone();
    let what = format!("{who:?} client, {demux:?} demux");
    let streams = lab_streams(std::slice::from_ref(&endpoint), 64, false);
    let gen_cfg = GeneratorConfig {
        ifname: lab::WIRE.into(),
        queue: 0,
        amount: Amount::For(LIMIT),
        rate: Some(RATE),
        core: Some(0),
        frame_size: generator::FRAME_SIZE,
        max_in_flight: generator::MAX_IN_FLIGHT,
    };
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let device = || {
        lab.endpoint_netns(0)
            .run(|| DevStats::read("eth0"))
            .expect("the endpoint's kernel device")
    };
    let scratch = Scratch(std::env::temp_dir().join(format!("xmv-edges-{}", lab.prefix)));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).unwrap();
    // The client is admitted by its process's namespace: the test process's own (the
    // library's client runs in a thread of it), the endpoint's (testpmd runs there).
    let client_ns = match who {
        Who::Library | Who::LibraryStalling => {
            std::path::PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
        }
        Who::Testpmd => lab.endpoint_netns(0).path(),
    };
    let counts = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &[])?;
            dp.add_endpoint_with(endpoint.clone(), ClaimPolicy::WhileConnected)?;
            let server = PortServer::start(PortServerConfig::new(dir))?;
            let socket = server.serve(&endpoint.name, &client_ns)?;
            let before = device();
            let start = Instant::now();
            let stop = AtomicBool::new(false);
            let leave = AtomicBool::new(false);
            let (sent, client, left_in_ring, port) = std::thread::scope(|s| {
                // If this thread fails, the client must still leave, or the scope waits on it.
                let _leave = StopOnDrop(&leave);
                let _stop = StopOnDrop(&stop);
                let generator =
                    s.spawn(|| lab.wire.run(|| generator::run(&gen_cfg, &streams, &stop)));
                std::thread::sleep(CONNECT_AT);
                // The client: connects, and only after a while offers its buffers.
                let app = s.spawn(|| match who {
                    Who::Library | Who::LibraryStalling => {
                        let cfg = ClientConfig {
                            name: "late".into(),
                            offer_delay: OFFER_DELAY,
                            ..ClientConfig::default()
                        };
                        let mut client = Client::connect(&socket, &cfg).expect("connecting");
                        let mut got = 0u64;
                        let mut paused = who != Who::LibraryStalling;
                        while !leave.load(Ordering::Relaxed) {
                            got += client.recv(|_| {}) as u64;
                            if !paused && got > RATE / 2 {
                                paused = true;
                                std::thread::sleep(PAUSE);
                            }
                            let _ = client.wait(Duration::from_millis(5));
                        }
                        client.close("leaving under traffic");
                        (got, 0)
                    }
                    Who::Testpmd => {
                        let log = dir.join("testpmd.log");
                        let tp = Testpmd::start(
                            lab.endpoint_netns(0).name(),
                            &socket,
                            "rxonly",
                            &log,
                            &[],
                            &[],
                        );
                        while !leave.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let (stats, _) = tp.stop();
                        (stats.rx_packets, 0)
                    }
                });
                // Hand the port over when the handshake completes (as the daemon does), take
                // it back when the client leaves.
                let mut port: Option<PortSnapshot> = None;
                let mut serving_since: Option<Instant> = None;
                while port.is_none() {
                    if serving_since.is_none()
                        && dp.port(&endpoint.name).is_some_and(|p| p.rx_frames > 0)
                    {
                        serving_since = Some(Instant::now());
                    }
                    let stay = match who {
                        Who::LibraryStalling => STAY + PAUSE,
                        _ => STAY,
                    };
                    if serving_since.is_some_and(|t| t.elapsed() >= stay) {
                        leave.store(true, Ordering::Relaxed);
                    }
                    match server.next_event(Duration::from_millis(20)) {
                        Some(PortEvent::Connected {
                            endpoint: name,
                            port: p,
                            info,
                        }) => dp
                            .connect_port(&name, p, info)
                            .expect("connecting the port"),
                        Some(PortEvent::Disconnected { endpoint: name, .. }) => {
                            port = Some(dp.disconnect_port(&name).expect("the port's numbers"));
                        }
                        // The serving thread may see it go first.
                        None => {
                            for (_, reaped) in dp.reap_disconnected() {
                                port = Some(reaped.expect("reaped cleanly"));
                            }
                        }
                    }
                    assert!(
                        start.elapsed() < LIMIT,
                        "{what}: the client never came and went"
                    );
                }
                let (got, _) = app.join().expect("the client");
                // The stream goes on after the client left: the kernel device has it again.
                std::thread::sleep(AFTER);
                stop.store(true, Ordering::Relaxed);
                let sent = generator.join().expect("the generator")?;
                let port: PortSnapshot = port.expect("set above");
                let left_in_ring = port.rx_frames.saturating_sub(got);
                anyhow::Ok((sent, got, left_in_ring, port))
            })?;
            // What is on its way still: the kernel device's backlog, the dataplane.
            std::thread::sleep(Duration::from_millis(300));
            let kernel_device = device().since(&before).rx_packets;
            let finished = dp.stop()?;
            drop(server);
            anyhow::Ok(Counts {
                sent: sent.per_stream[0],
                kernel_device,
                client,
                left_in_ring,
                port,
                endpoint_not_connected: finished.endpoints[0].dropped_not_connected,
            })
        })
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    drop(scratch);
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty(), "namespaces left");
    eprintln!("{what}: {counts:?}");
    let c = &counts;
    if who == Who::LibraryStalling {
        // Its ring filled, and for the stall time its frames were ring-full drops (counted);
        // then its endpoint went to the kernel device, and came back once it read again.
        assert_eq!(c.port.stalls, 1, "{what}: {c:?}");
        assert!(c.port.drop_ring_full > 0, "{what}: {c:?}");
    } else {
        // Not one frame dropped for want of a buffer: until the client offered its buffers
        // its endpoint was not claimed, and its frames went to the kernel device.
        assert_eq!(
            (c.port.drop_ring_full, c.port.stalls),
            (0, 0),
            "{what}: {c:?}"
        );
    }
    assert_eq!(c.port.drop_rx_too_big, 0, "{what}: {c:?}");
    assert!(c.client > 0, "{what}: the client got frames: {c:?}");
    assert!(
        c.kernel_device > 0,
        "{what}: the kernel device got frames: {c:?}"
    );
    // Every frame placed: at the kernel device, read by the client, left unread in its ring
    // when it left, or counted as arriving after it was gone.
    assert_eq!(
        c.kernel_device
            + c.client
            + c.left_in_ring
            + c.port.drop_ring_full
            + c.port.drop_not_connected
            + c.endpoint_not_connected,
        c.sent,
        "{what}: every frame at the kernel device or the client, or counted: {c:?}"
    );
    counts
}

#[test]
fn a_library_client_that_offers_buffers_late_loses_nothing_xdp_demux() {
    require_root();
    edges(Demux::Xdp, Who::Library);
}

#[test]
fn a_library_client_that_offers_buffers_late_loses_nothing_user_demux() {
    require_root();
    edges(Demux::User, Who::Library);
}

#[test]
fn a_client_that_stops_reading_has_its_frames_go_to_the_kernel_device_xdp_demux() {
    require_root();
    edges(Demux::Xdp, Who::LibraryStalling);
}

#[test]
fn a_client_that_stops_reading_has_its_frames_go_to_the_kernel_device_user_demux() {
    require_root();
    edges(Demux::User, Who::LibraryStalling);
}

#[test]
fn testpmd_connecting_and_leaving_under_a_stream_loses_nothing_xdp_demux() {
    require_root();
    edges(Demux::Xdp, Who::Testpmd);
}

#[test]
fn testpmd_connecting_and_leaving_under_a_stream_loses_nothing_user_demux() {
    require_root();
    edges(Demux::User, Who::Testpmd);
}
