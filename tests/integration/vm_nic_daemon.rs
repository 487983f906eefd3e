//! The daemon on the igb NIC in zero-copy, inside the igb guest of `cargo xtask vm-test`:
//! the daemon's own code (`daemon::server::Daemon`, in-process, as `xmacvlan daemon` runs it:
//! ports served to clients only while they are connected), networks and endpoints made by
//! the control path (`network create -o parent=xmvnic0` and `-o parent=xmvnic0.100`), memif
//! clients on the endpoints' ports, and the peer (`xmvwire0`) sending and capturing.
//!
//! ```text
//!  namespace xmvwire                  guest root namespace
//!  generator, capture ── xmvwire0 ══ xmvnic0 (igb) ── daemon ── port sink ── xmacvlan-sink (ns)
//!                                      │                  ├──── port refl ── reflector (VLAN 100)
//!                                      └─ xmvnic0.100     └──── port cyc ─── 100 attach/detach
//! ```
//!
//! One test, in steps (TCG is slow: the setup is shared): (1) a memif port receives exactly
//! what was sent to its endpoint; (2) a reflector's frames leave through zero-copy AF_XDP on
//! the queue its endpoint transmits on (igb's `tx_queue_N_packets`), tagged with its VLAN and
//! sent from its MAC, as the peer captures them; (3) an endpoint detached and attached again
//! 100 times, a client connected each time, under traffic; (4) a client killed (SIGKILL)
//! under traffic; then no UMEM frame is lost: each queue's frames are all free or with the
//! kernel, none lost, none handed over twice.
//!
//! Clients in the guest's root namespace run in-process (the daemon admits a client by its
//! process's namespace): process starts are ~85x slower under TCG.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xmacvlan::control::State;
use xmacvlan::counters::{Counts, Kind};
use xmacvlan::daemon::server::{Daemon, Settings};
use xmacvlan::dataplane::{ClaimPolicy, DataplaneConfig, EndpointSpec, Snapshot};
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::memif::client::{Client, ClientConfig};
use xmacvlan::modes::{BindMode, Bound, DemuxMode};
use xmacvlan::netns::{Netns, NetnsGuard};
use xmacvlan::xsk::QueueConfig;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Stream, StreamKind};
use xmacvlan_bench::lab::GENERATOR_MAC;
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::app::App;
use xmacvlan_tests::capture::Capture;
use xmacvlan_tests::nic_guest::{NicGuest, delta, nic_stats};
use xmacvlan_tests::require_root;

const VID: u16 = 100;
/// Frames of each stream in step (1) and (2).
const COUNT: u64 = 400;
/// Attach/detach cycles in step (3).
const CYCLES: usize = 100;
const QUEUES: usize = 4;

/// The control state, the endpoints' namespaces and kernel objects, removed on drop.
struct Lab {
    guest: NicGuest,
    root: PathBuf,
    sink_ns: NetnsGuard,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let guest = NicGuest::from_env("vm_nic_daemon");
        let pid = std::process::id();
        let root = std::env::temp_dir().join(format!("xmv-nicd-{pid}"));
        let _ = std::fs::remove_dir_all(&root);
        let lab = Lab {
            sink_ns: NetnsGuard::create(&format!("xmvnd{pid}")).unwrap(),
            guest,
            root,
        };
        let nic = lab.guest.nic.clone();
        let own = format!("/proc/{pid}/ns/net");
        for args in [
            format!("network create --subnet 198.18.40.0/24 -o parent={nic} plain"),
            format!("network create --subnet 198.18.41.0/24 -o parent={nic}.{VID} tagged"),
            format!(
                "endpoint create --network plain --netns {} sink",
                lab.sink_ns.name()
            ),
            format!("endpoint create --network tagged --netns {own} --ifname xmvrefl refl"),
            format!("endpoint create --network plain --netns {own} --ifname xmvcyc cyc"),
        ] {
            lab.cli(&args);
        }
        lab
    }

    /// An `xmacvlan` control command, in-process.
    fn cli(&self, args: &str) -> String {
        let root = self.root.display().to_string();
        let socket = self.root.join("ctl.sock").display().to_string();
        let mut argv = vec![
            "xmacvlan",
            "--data-root",
            &root,
            "--control-socket",
            &socket,
        ];
        argv.extend(args.split_whitespace());
        let mut out = Vec::new();
        xmacvlan::cli::control::execute_args(&argv, &mut out)
            .unwrap_or_else(|e| panic!("xmacvlan {args}: {e:#}"));
        String::from_utf8(out).unwrap()
    }

    fn spec(&self, name: &str) -> EndpointSpec {
        State::load(&self.root)
            .unwrap()
            .endpoint(name)
            .unwrap_or_else(|| panic!("endpoint {name} in the state"))
            .spec()
    }

    fn port(&self, name: &str) -> PathBuf {
        self.root.join("ports").join(format!("{name}.sock"))
    }

    fn daemon(&self) -> Daemon {
        Daemon::new(Settings {
            demux: DemuxMode::Xdp,
            dataplane: DataplaneConfig {
                cores: vec![1],
                queue: QueueConfig {
                    bind: BindMode::Zerocopy,
                    ..QueueConfig::default()
                },
                ..DataplaneConfig::default()
            },
            port_dir: self.root.join("ports"),
            port_secret: None,
            data_root: self.root.clone(),
            // Nothing pinned after the test: the next daemon is another test's.
            detach_on_exit: true,
            claim: ClaimPolicy::WhileConnected,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let root = self.root.display().to_string();
        for args in ["endpoint rm sink refl cyc", "network rm plain tagged"] {
            let mut argv = vec!["xmacvlan", "--data-root", &root];
            argv.extend(args.split_whitespace());
            if let Err(e) = xmacvlan::cli::control::execute_args(&argv, &mut Vec::new()) {
                eprintln!("cleaning up ({args}): {e:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn stats(daemon: &mut Daemon) -> Snapshot {
    match daemon.handle(Request::Stats).unwrap() {
        Answer::Stats { mut interfaces, .. } => {
            assert_eq!(interfaces.len(), 1, "one dataplane, on the NIC");
            interfaces.remove(0)
        }
        other => panic!("{other:?}"),
    }
}

/// Hand connected ports to the dataplane (the daemon's loop does this) until `done`.
fn settle(daemon: &mut Daemon, what: &str, mut done: impl FnMut(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        daemon.pump_ports();
        let s = stats(daemon);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_of<'a>(s: &'a Snapshot, name: &str) -> Option<&'a xmacvlan::dataplane::PortSnapshot> {
    s.endpoints
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.port.as_ref())
}

fn connected(s: &Snapshot, name: &str) -> bool {
    port_of(s, name).is_some_and(|p| p.connected)
}

/// A stream of 64-flow UDP frames from the peer to `spec` (tagged with its VLAN).
fn stream(spec: &EndpointSpec, i: usize) -> Stream {
    Stream::new(
        TestFrame {
            dst: spec.mac,
            src: GENERATOR_MAC,
            vid: (spec.vid != 0).then_some(spec.vid),
            qinq_outer: None,
            len: 64,
        },
        StreamKind::Endpoint(i),
    )
    .with_udp_flows(64)
}

/// Send `streams` from the peer, in its namespace, on a thread of its own, until `amount` is
/// sent or `stop`; frames per stream.
fn send(
    guest: &NicGuest,
    streams: Vec<Stream>,
    amount: Amount,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    let (wire, ns) = (guest.wire.clone(), guest.wire_ns.clone());
    std::thread::spawn(move || {
        let cfg = GeneratorConfig {
            ifname: wire,
            queue: 0,
            amount,
            rate: Some(rate),
            core: None,
            frame_size: generator::FRAME_SIZE,
            max_in_flight: 64,
        };
        Netns::open(&ns)
            .unwrap()
            .run(|| generator::run(&cfg, &streams, &stop))
            .expect("the generator")
            .per_stream
    })
}

/// igb's `tx_queue_N_packets`, by queue.
fn tx_queue_packets(nic: &str) -> Vec<u64> {
    let stats = nic_stats(nic).unwrap();
    (0..QUEUES)
        .map(|q| {
            stats
                .get(&format!("tx_queue_{q}_packets"))
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

/// A client in this process that sends every frame back with its MACs swapped, until
/// stopped; returns (received, reflected).
fn reflector(socket: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let cfg = ClientConfig {
            name: "reflector".into(),
            ..ClientConfig::default()
        };
        let mut client = Client::connect(&socket, &cfg).expect("the reflector connecting");
        let (mut received, mut reflected) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let (r, s) = client.forward(|f| {
                let (dst, src) = f[..12].split_at_mut(6);
                dst.swap_with_slice(src);
            });
            (received, reflected) = (received + r as u64, reflected + s as u64);
            if r == 0 {
                client.wait(Duration::from_millis(20)).expect("waiting");
            }
        }
        client.close("the test is done");
        (received, reflected)
    })
}

/// Every receive frame of every queue is back: free or with the kernel, none lost, none
/// handed over twice; and every TX frame free. Returns a line per queue.
fn every_frame_back(s: &Snapshot) -> Vec<String> {
    s.queues
        .iter()
        .enumerate()
        .map(|(q, queue)| {
            let line = format!(
                "queue {q}: {} frames, {} free, {} with the kernel, {} lost, {} duplicate; TX \
                 pool {} of {} free",
                queue.frames,
                queue.frames_free,
                queue.frames_in_kernel,
                queue.frames_lost,
                queue.frames_duplicate,
                queue.tx_pool_free,
                queue.tx_pool
            );
            assert_eq!(
                queue.frames_free + queue.frames_in_kernel,
                queue.frames,
                "{line}"
            );
            assert_eq!(
                (queue.frames_lost, queue.frames_duplicate),
                (0, 0),
                "{line}"
            );
            assert_eq!(queue.tx_pool_free, queue.tx_pool, "{line}");
            line
        })
        .collect()
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn the_daemon_serves_ports_in_zero_copy_and_loses_no_frame() {
    let lab = Lab::new();
    let nic = lab.guest.nic.clone();
    let (sink, refl, cyc) = (lab.spec("sink"), lab.spec("refl"), lab.spec("cyc"));
    assert_eq!((sink.vid, refl.vid), (0, VID));
    let mut daemon = lab.daemon();
    let state = State::load(&lab.root).unwrap();
    assert_eq!(
        daemon.restore(&state),
        3,
        "every endpoint served from the state"
    );
    let s = stats(&mut daemon);
    assert_eq!(
        (s.bind, s.queues.len()),
        (Bound::Zerocopy, QUEUES),
        "{s:#?}"
    );
    assert_eq!(
        xmacvlan::nic::rx_vlan_offload(&nic),
        Some(false),
        "turned off for the VLAN {VID} endpoint"
    );

    // (1) and (2): a sink in its own namespace, a reflector here, a stream to each.
    let sink_log = lab.root.join("sink.log");
    let sink_app = App::sink(lab.sink_ns.name(), &lab.port("sink"), "sink", &sink_log);
    let stop_reflector = Arc::new(AtomicBool::new(false));
    let reflecting = reflector(lab.port("refl"), stop_reflector.clone());
    settle(&mut daemon, "both ports connected", |s| {
        connected(s, "sink") && connected(s, "refl")
    });
    let capture = Netns::open(&lab.guest.wire_ns)
        .unwrap()
        // The reflected frames go to the generator's MAC, in VLAN 100: neither passes the
        // peer's own filters.
        .run(|| Capture::open(&lab.guest.wire)?.promiscuous(&lab.guest.wire))
        .unwrap();
    let tx_before = tx_queue_packets(&nic);
    let sent = send(
        &lab.guest,
        vec![stream(&sink, 0), stream(&refl, 1)],
        Amount::EachStream(COUNT),
        800,
        Arc::default(),
    )
    .join()
    .unwrap();
    assert_eq!(sent, [COUNT, COUNT]);
    let s = settle(&mut daemon, "every frame received and reflected", |s| {
        port_of(s, "sink").is_some_and(|p| p.rx_frames >= COUNT)
            && port_of(s, "refl").is_some_and(|p| p.rx_frames >= COUNT && p.tx_frames >= COUNT)
    });
    stop_reflector.store(true, Ordering::Relaxed);
    let (received, reflected) = reflecting.join().unwrap();
    let summary = sink_app.stop_sink();
    let refl_row = s.endpoints.iter().find(|e| e.name == "refl").unwrap();
    let (sink_port, refl_port) = (port_of(&s, "sink").unwrap(), port_of(&s, "refl").unwrap());
    assert_eq!(sink_port.rx_frames, COUNT);
    assert_eq!(summary["frames"], COUNT, "{summary}");
    assert_eq!(sink_port.counts.sum(Kind::Dropped), 0, "{sink_port:?}");
    assert_eq!((received, reflected), (COUNT, COUNT));
    assert_eq!(refl_port.tx_frames, COUNT);
    assert_eq!(refl_port.counts.sum(Kind::Dropped), 0, "{refl_port:?}");
    // On the wire: from the reflector's endpoint, to the generator, in VLAN 100. Anything
    // else the peer got, the guest's kernel sent (it is counted below, and shown).
    let (mut seen, mut others) = (0, 0);
    while let Some(frame) = capture.next(Duration::from_secs(2)).unwrap() {
        if frame[6..12] != refl.mac {
            println!("the peer also got {:02x?}", &frame[..frame.len().min(42)]);
            others += 1;
            continue;
        }
        assert_eq!(frame[..6], GENERATOR_MAC, "{frame:02x?}");
        assert_eq!(frame[12..14], [0x81, 0x00], "tagged: {frame:02x?}");
        let tci = u16::from_be_bytes([frame[14], frame[15]]);
        assert_eq!(tci & 0x0fff, VID, "{frame:02x?}");
        seen += 1;
    }
    let tx = delta(&tx_before, &tx_queue_packets(&nic));
    println!(
        "(1) sink: sent {COUNT}, port rx {}, the sink counted {}; (2) reflector: received \
         {received}, reflected {reflected}, port tx {}, transmit queue {}, igb tx per queue \
         {tx:?}",
        sink_port.rx_frames, summary["frames"], refl_port.tx_frames, refl_row.tx_queue
    );
    assert_eq!(seen, COUNT, "reflected frames on the wire");
    // igb transmitted them on the queue the endpoint's port sends on, beside what else the
    // kernel sent (on whatever queue it picked).
    let q = refl_row.tx_queue as usize;
    assert!(tx[q] >= COUNT, "igb queue {q} sent {tx:?}");
    assert_eq!(tx.iter().sum::<u64>(), COUNT + others, "igb sent {tx:?}");

    // (3) cyc detached and attached again, a client connected each time, under traffic.
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let traffic = send(
        &lab.guest,
        vec![stream(&cyc, 0)],
        Amount::For(Duration::from_secs(3600)),
        400,
        stop_traffic.clone(),
    );
    let started = Instant::now();
    let mut served = 0;
    let mut client: Option<Client> = None;
    for round in 0..CYCLES {
        // Detached with its client still connected and frames on their way.
        daemon
            .handle(Request::Detach {
                endpoint: "cyc".into(),
            })
            .unwrap();
        daemon
            .handle(Request::Attach {
                iface: nic.clone(),
                endpoint: cyc.clone(),
            })
            .unwrap();
        client = Some(
            Client::connect(
                &lab.port("cyc"),
                &ClientConfig {
                    name: format!("cycle-{round}"),
                    ..ClientConfig::default()
                },
            )
            .expect("a client on cyc's port"),
        );
        settle(&mut daemon, "cyc's client connected", |s| {
            connected(s, "cyc")
        });
        std::thread::sleep(Duration::from_millis(30));
        let s = stats(&mut daemon);
        served += s
            .endpoints
            .iter()
            .find(|e| e.name == "cyc")
            .map_or(0, |e| e.frames);
    }
    let cycling = started.elapsed();
    drop(client);
    stop_traffic.store(true, Ordering::Relaxed);
    let to_cyc = traffic.join().unwrap()[0];
    println!(
        "(3) {CYCLES} detach/attach cycles in {cycling:.1?} under {to_cyc} frames to cyc, \
         {served} of them served to its clients"
    );
    assert!(
        served > 0,
        "no frame reached cyc's clients: the cycles proved nothing"
    );

    // (4) a client killed under traffic.
    let victim = App::sink(
        lab.sink_ns.name(),
        &lab.port("sink"),
        "victim",
        &lab.root.join("victim.log"),
    );
    settle(&mut daemon, "the victim connected", |s| {
        connected(s, "sink")
    });
    let traffic = send(
        &lab.guest,
        vec![stream(&sink, 0)],
        Amount::EachStream(2400),
        800,
        Arc::default(),
    );
    settle(&mut daemon, "frames reaching the victim", |s| {
        port_of(s, "sink").is_some_and(|p| p.rx_frames > 200)
    });
    victim.signal("KILL");
    settle(&mut daemon, "the victim's port gone", |s| {
        !connected(s, "sink")
    });
    let to_victim = traffic.join().unwrap()[0];
    println!("(4) victim killed under traffic ({to_victim} frames sent to it)");

    // No frame lost: once the last frames are through, every one is back, per queue.
    std::thread::sleep(Duration::from_millis(500));
    daemon.pump_ports();
    let s = stats(&mut daemon);
    for line in every_frame_back(&s) {
        println!("{line}");
    }
    daemon.shutdown().unwrap();
    assert_eq!(
        xmacvlan::netlink::Netlink::new()
            .unwrap()
            .require_link(&nic)
            .unwrap()
            .xdp_prog_id,
        None,
        "XDP detached"
    );
    assert_eq!(
        xmacvlan::nic::rx_vlan_offload(&nic),
        Some(true),
        "rx VLAN offload back on once the dataplane stopped"
    );
}
