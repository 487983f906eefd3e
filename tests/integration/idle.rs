//! An idle dataplane blocks instead of polling, and wakes for everything that brings work.
//! Labs of namespaces, 16 endpoints, one queue; needs root. Runs with both cores busy: it
//! bounds the dataplane threads' own CPU time (from `/proc/self/task/*/schedstat`), never
//! their speed.
//!
//! - Idle, the dataplane's threads (one running to completion, or a worker and a consumer
//!   when split) use well under 5 % of one core over 3 s, also with an idle memif client
//!   connected (interrupt mode).
//! - After an idle period longer than the spin phase, the first frames (one per endpoint) are
//!   delivered exactly, each within far less than the 1 s safety-net timeout (so none waited
//!   for it: no lost wake-up), then a paced burst is delivered exactly.
//! - Commands issued while the threads are blocked complete within 1 s: add and remove an
//!   endpoint, a histogram copy, stop.
//! - The same with the largest receive coalescing (10 ms): every frame delivered, commands
//!   as prompt; and the same with split threads.
//! - A memif client's frames are taken after an idle period (the port's C2S eventfd wakes
//!   the consumer), every frame reflected, none dropped.
//! - The daemon (`XMACVLAN_BIN`), two endpoints and a sink connected, idles under 5 % of one
//!   core, all its threads together.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{Dataplane, EndpointSpec};
use xmacvlan::memif::{PortEvent, PortServer, PortServerConfig};
use xmacvlan::modes::{Demux, Threads};
use xmacvlan_bench::compare::placement::tasks_named;
use xmacvlan_bench::generator::{Stream, StreamKind};
use xmacvlan_bench::lab::{KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
use xmacvlan_tests::app::App;
use xmacvlan_tests::bare_lab::tear_down;
use xmacvlan_tests::exact::sent_where;
use xmacvlan_tests::{dataplane_config, require_root};

const ENDPOINTS: usize = 16;
/// Idle CPU bound: a share of one core, all dataplane threads together.
const IDLE_SHARE: f64 = 0.05;
const MEASURE: Duration = Duration::from_secs(3);
/// Longer than the spin phase (50 µs) by far: the threads are blocked.
const IDLE: Duration = Duration::from_secs(1);
/// A command's bound while the threads are blocked.
const PROMPT: Duration = Duration::from_secs(1);
/// The first frames' latency bound: half the threads' 1 s safety-net timeout.
const FIRST_FRAME: Duration = Duration::from_millis(500);
/// The coalescing of the coalescing variants: the daemon's largest (`receive-coalesce-us`).
const COALESCE: Duration = Duration::from_millis(10);

/// One test at a time: each measures every dataplane thread of this process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lab() -> Lab {
    Lab::build(&Topology {
        vlans: vec![0],
        endpoints_per_vlan: ENDPOINTS,
        queues: 1,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .expect("building the lab")
}

/// This process's dataplane threads: on-CPU nanoseconds and times scheduled so far, summed,
/// and how many threads there are (schedstat: run time, wait time, timeslices).
fn dataplane_cpu() -> (u64, u64, usize) {
    let threads = tasks_named("/proc/self/task", |comm| {
        comm.starts_with("xmv-worker") || comm.starts_with("xmv-consumer")
    })
    .expect("listing threads");
    let (mut ns, mut slices) = (0, 0);
    for (tid, _) in &threads {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
            .expect("schedstat (a kernel with CONFIG_SCHED_INFO)");
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|n| n.parse().expect("schedstat field"))
            .collect();
        ns += fields[0];
        slices += fields[2];
    }
    (ns, slices, threads.len())
}

/// The dataplane threads' CPU share of one core over [`MEASURE`]; asserts the bound.
fn assert_idle_cpu(what: &str, layout: Threads) -> f64 {
    let (before, slices_before, threads) = dataplane_cpu();
    let expected = match layout {
        Threads::RunToCompletion => 1,
        Threads::Split => 2,
    };
    assert_eq!(threads, expected, "{what}: {layout} threads");
    let start = Instant::now();
    std::thread::sleep(MEASURE);
    let (after, slices_after, _) = dataplane_cpu();
    let elapsed = start.elapsed();
    let share = (after - before) as f64 / elapsed.as_nanos() as f64;
    println!(
        "{what}: dataplane threads idle at {:.3} % of one core, {:.0} wake-ups/s",
        share * 100.0,
        (slices_after - slices_before) as f64 / elapsed.as_secs_f64()
    );
    assert!(
        share < IDLE_SHARE,
        "{what}: idle dataplane threads used {:.2} % of one core (bound {} %)",
        share * 100.0,
        IDLE_SHARE * 100.0
    );
    share
}

fn traffic(count: u64) -> TrafficConfig {
    TrafficConfig {
        count: Some(count),
        rate: Some(20_000),
        duration: Duration::from_secs(60),
        background: false,
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    }
}

/// Each endpoint's frames since `base` (counts in attach order) are what `sent` sent to it.
fn assert_exact(dp: &Dataplane, streams: &[Stream], sent: &[u64], base: &[u64], what: &str) {
    for (i, (spec, c)) in dp.endpoint_counters().iter().enumerate() {
        let expected = sent_where(streams, sent, |s| s.kind == StreamKind::Endpoint(i));
        let got = c.frames.load(std::sync::atomic::Ordering::Relaxed) - base[i];
        assert_eq!(got, expected, "{what}: endpoint {} frames", spec.name);
        assert_eq!(
            c.misdelivered.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "{what}: endpoint {} misdelivered",
            spec.name
        );
    }
}

fn frames_so_far(dp: &Dataplane) -> Vec<u64> {
    dp.endpoint_counters()
        .iter()
        .map(|(_, c)| c.frames.load(std::sync::atomic::Ordering::Relaxed))
        .collect()
}

fn timed<T, E: Into<anyhow::Error>>(
    what: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let out = f().map_err(Into::into)?;
    let took = start.elapsed();
    println!("{what} while blocked: {took:?}");
    assert!(
        took < PROMPT,
        "{what} while the threads were blocked took {took:?}"
    );
    Ok(out)
}

fn blocks_then_wakes(demux: Demux, coalesce: Duration, threads: Threads) {
    require_root();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab();
    let mut cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    cfg.idle.coalesce = coalesce;
    cfg.layout = xmacvlan::dataplane::Layout::for_cores(Some(threads), 1);
    let streams = lab_streams(&lab.endpoints, 64, false);
    let extra = EndpointSpec {
        name: "extra".into(),
        vid: 0,
        mac: [0x02, 0x58, 0, 0, 0x0f, 0xff],
    };
    lab.host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &lab.endpoints)?;
            std::thread::sleep(IDLE);
            assert_idle_cpu(
                &format!("{demux:?} demux, {ENDPOINTS} endpoints, {threads}"),
                threads,
            );

            // The first frame to each endpoint after a long idle: delivered, and none waited
            // for a timeout.
            let base = frames_so_far(&dp);
            let sent = run_traffic(&lab, &dp, 1, &streams, &traffic(1))?;
            assert_exact(&dp, &streams, &sent.per_stream, &base, "first frames");
            let copies = Instant::now();
            for spec in &lab.endpoints {
                let h = dp.latency_histogram(&spec.name)?;
                assert_eq!(h.len(), 1, "endpoint {}: its one frame timed", spec.name);
                let worst = Duration::from_nanos(h.max());
                assert!(
                    worst < FIRST_FRAME,
                    "endpoint {}: the first frame after idling took {worst:?}",
                    spec.name
                );
            }
            let took = copies.elapsed();
            assert!(
                took < PROMPT * ENDPOINTS as u32,
                "{ENDPOINTS} histogram copies: {took:?}"
            );

            // Idle again, then a paced burst.
            std::thread::sleep(IDLE);
            let base = frames_so_far(&dp);
            let sent = run_traffic(&lab, &dp, 1, &streams, &traffic(500))?;
            assert_exact(&dp, &streams, &sent.per_stream, &base, "burst after idling");

            std::thread::sleep(IDLE);
            timed("adding an endpoint", || dp.add_endpoint(extra.clone()))?;
            std::thread::sleep(IDLE);
            let removed = timed("removing an endpoint", || dp.remove_endpoint(&extra.name))?;
            assert_eq!(removed.frames, 0);
            std::thread::sleep(IDLE);
            let finished = timed("stopping", || dp.stop())?;
            assert_eq!(finished.endpoints.len(), ENDPOINTS);
            assert!(finished.endpoints.iter().all(|e| e.dropped == 0));
            Ok(())
        })
        .unwrap();
    tear_down(lab);
}

#[test]
fn idle_threads_block_and_wake_for_frames_and_commands_xdp_demux() {
    blocks_then_wakes(Demux::Xdp, Duration::ZERO, Threads::RunToCompletion);
}

#[test]
fn idle_threads_block_and_wake_for_frames_and_commands_user_demux() {
    blocks_then_wakes(Demux::User, Duration::ZERO, Threads::RunToCompletion);
}

/// `receive-threads split`: a worker thread beside the consumer, each blocking on its own.
#[test]
fn idle_split_threads_block_and_wake_for_frames_and_commands_xdp_demux() {
    blocks_then_wakes(Demux::Xdp, Duration::ZERO, Threads::Split);
}

#[test]
fn idle_split_threads_block_and_wake_for_frames_and_commands_user_demux() {
    blocks_then_wakes(Demux::User, Duration::ZERO, Threads::Split);
}

/// `receive-coalesce-us`: the threads wait after a socket wakes them, never lose a frame to
/// it, and still serve commands at once.
#[test]
fn coalescing_threads_deliver_exactly_and_serve_commands_xdp_demux() {
    blocks_then_wakes(Demux::Xdp, COALESCE, Threads::RunToCompletion);
}

#[test]
fn coalescing_threads_deliver_exactly_and_serve_commands_user_demux() {
    blocks_then_wakes(Demux::User, COALESCE, Threads::RunToCompletion);
}

/// A directory removed on drop, also when the test fails.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait for the port server's event that `endpoint`'s client connected, and hand its port to
/// the dataplane.
fn connect(dp: &mut Dataplane, server: &PortServer, endpoint: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match server.next_event(Duration::from_millis(100)) {
            Some(PortEvent::Connected {
                endpoint: e,
                port,
                info,
            }) if e == endpoint => return Ok(dp.connect_port(&e, port, info)?),
            Some(PortEvent::Disconnected { reason, .. }) => {
                anyhow::bail!("the client went away: {reason}")
            }
            _ => {}
        }
    }
    anyhow::bail!("no client connected to {endpoint}'s port within 10 s")
}

fn port_idle_then_reflects(demux: Demux) {
    require_root();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab();
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let streams = lab_streams(&lab.endpoints, 64, false);
    let dir = TempDir::new(&format!("xmv-idle-{}-{demux:?}", std::process::id()));
    let dir = &dir.0;
    let ep = lab.endpoints[0].name.clone();
    lab.host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &lab.endpoints)?;
            let server = PortServer::start(PortServerConfig::new(dir))?;
            let socket = server.serve(&ep, &lab.host.path())?;
            let app = App::reflect(lab.host.name(), &socket, "idle-test", &dir.join("app.log"));
            connect(&mut dp, &server, &ep)?;
            std::thread::sleep(IDLE);
            assert_idle_cpu(
                &format!("{demux:?} demux, an idle memif client connected"),
                cfg.layout.threads(),
            );

            for (round, count) in [(1, 1u64), (2, 200)] {
                let before = dp.port(&ep).expect("port connected");
                let sent = run_traffic(&lab, &dp, 1, &streams, &traffic(count))?;
                let to_port = sent_where(&streams, &sent.per_stream, |s| {
                    s.kind == StreamKind::Endpoint(0)
                });
                let deadline = Instant::now() + Duration::from_secs(5);
                let now = loop {
                    let now = dp.port(&ep).expect("port connected");
                    if now.tx_frames - before.tx_frames >= to_port || Instant::now() > deadline {
                        break now;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                assert_eq!(
                    now.rx_frames - before.rx_frames,
                    to_port,
                    "round {round} rx"
                );
                assert_eq!(
                    now.tx_frames - before.tx_frames,
                    to_port,
                    "round {round} reflected"
                );
                assert_eq!(
                    now.rx_dropped() + now.tx_dropped(),
                    0,
                    "round {round} drops"
                );
                std::thread::sleep(IDLE);
            }
            let snapshot = timed("disconnecting the port", || dp.disconnect_port(&ep))?;
            assert!(snapshot.tx_frames > 0);
            drop(app);
            drop(server);
            timed("stopping", || dp.stop())?;
            Ok(())
        })
        .unwrap();
    tear_down(lab);
}

#[test]
fn idle_with_a_memif_client_blocks_and_wakes_for_its_frames_xdp_demux() {
    port_idle_then_reflects(Demux::Xdp);
}

#[test]
fn idle_with_a_memif_client_blocks_and_wakes_for_its_frames_user_demux() {
    port_idle_then_reflects(Demux::User);
}

/// The daemon's own CPU time (utime + stime, `/proc/PID/stat`, in clock ticks of 10 ms) and
/// on-CPU nanoseconds of each of its threads by name (schedstat, for resolution).
fn process_cpu(pid: u32) -> (u64, std::collections::BTreeMap<String, u64>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon's stat");
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            let ns = text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            *threads.entry(comm.trim_end().to_string()).or_default() += ns;
        }
    }
    (ticks, threads)
}

#[test]
fn an_idle_daemon_with_a_connected_client_costs_almost_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = xmacvlan_tests::daemon_lab::Lab::new("idle");
    lab.create_network();
    lab.create_endpoint(0);
    lab.create_endpoint(1);
    let daemon = lab.start_daemon();
    let _sink = lab.attach_sink(&daemon, 0);
    std::thread::sleep(IDLE);
    let pid = daemon.child.id();
    let (ticks_before, ns_before) = process_cpu(pid);
    let start = Instant::now();
    std::thread::sleep(MEASURE);
    let (ticks_after, ns_after) = process_cpu(pid);
    let elapsed = start.elapsed();
    let used = |name: &String| ns_after[name] - ns_before.get(name).copied().unwrap_or(0);
    let share = ns_after.keys().map(used).sum::<u64>() as f64 / elapsed.as_nanos() as f64;
    println!(
        "idle daemon, 2 endpoints, a sink connected: {:.3} % of one core ({} ticks of utime + \
         stime in {elapsed:.1?})",
        share * 100.0,
        ticks_after - ticks_before
    );
    for name in ns_after.keys() {
        let pct = used(name) as f64 / elapsed.as_nanos() as f64 * 100.0;
        println!("  {name}: {pct:.3} %");
    }
    assert!(
        share < IDLE_SHARE,
        "the idle daemon used {:.2} % of one core (bound {} %)",
        share * 100.0,
        IDLE_SHARE * 100.0
    );
}
