//! "No black hole, then the fast path" for an endpoint a runtime made (Docker, CNI, podman):
//! with no memif client attached, frames sent to the endpoint's MAC from the wire reach the
//! container's kernel device (the classifier counts them `pass_unclaimed`, the fast path
//! takes none); once `xmacvlan-sink` is attached to the endpoint's port from inside the
//! container's namespace, exactly the frames sent reach the sink, and the daemon's port
//! counters agree. Traffic is paced by the wire and by what the daemon counts delivered.
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::Value;
use xmacvlan::dataplane::{EndpointSnapshot, EndpointSpec, Snapshot};
use xmacvlan::ether::Mac;
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::ipc::socket::request;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent, Sent};
use xmacvlan_bench::scenario::lab_streams;

use crate::app::App;

/// An endpoint as a runtime made it, and where its application finds its port.
pub struct Endpoint<'a> {
    /// The daemon's control socket.
    pub control: &'a Path,
    pub spec: &'a EndpointSpec,
    /// The container's network namespace: a path (a Docker sandbox, `/run/netns/NAME`).
    pub netns: &'a str,
    /// The endpoint's interface inside it.
    pub ifname: &'a str,
    /// The socket the application is pointed at (`<port-dir>/<endpoint>.sock` or a link).
    pub port: &'a Path,
    /// Where the sink's log goes.
    pub logs: &'a Path,
}

/// The wire the frames come from: `ifname` (the parent's veth peer), in the namespace the
/// closure runs the generator in.
pub type Wire<'a> = &'a dyn Fn(&(dyn Fn() -> anyhow::Result<Sent> + Sync)) -> Sent;

pub fn stats(control: &Path) -> Vec<Snapshot> {
    match request(control, &Request::Stats).unwrap() {
        Answer::Stats { interfaces, .. } => interfaces,
        other => panic!("stats answered {other:?}"),
    }
}

fn find(control: &Path, name: &str) -> (Snapshot, EndpointSnapshot) {
    let all = stats(control);
    all.iter()
        .find_map(|s| {
            s.endpoints
                .iter()
                .find(|e| e.name == name)
                .map(|e| (s.clone(), e.clone()))
        })
        .unwrap_or_else(|| panic!("{name} is not on the fast path: {all:?}"))
}

/// The interface's received packets in a namespace, from `ip -s -j link`.
pub fn kernel_rx(netns: &str, ifname: &str) -> u64 {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-s", "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -s link show {ifname} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packets in {json}"))
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` frames to the endpoint's MAC from `wire_if`, paced by the wire and, when given,
/// by `delivered` (frames the daemon counted delivered or dropped since the start).
fn send(
    wire: Wire,
    wire_if: &str,
    spec: &EndpointSpec,
    count: u64,
    delivered: Option<&(dyn Fn() -> u64 + Sync)>,
) -> u64 {
    let cfg = GeneratorConfig {
        ifname: wire_if.into(),
        queue: 0,
        amount: Amount::EachStream(count),
        rate: Some(20_000),
        core: None,
        frame_size: 2048,
        max_in_flight: generator::MAX_IN_FLIGHT,
    };
    let streams = lab_streams(std::slice::from_ref(spec), 64, false);
    let sent = wire(&|| {
        let counted = PaceSent::default();
        let mut pace = Pace::wire(&counted);
        pace.delivered = delivered.map(|d| (d, 64));
        generator::run_paced(&cfg, &streams, &AtomicBool::new(false), Some(pace))
    });
    assert_eq!(sent.total(), count, "the generator sent every frame");
    count
}

/// The whole check; returns the frames the sink received (= `count`).
pub fn no_black_hole_then_sink(ep: &Endpoint, wire: Wire, wire_if: &str, count: u64) -> u64 {
    let name = &ep.spec.name;
    // A daemon answers its socket before it has attached what its state records.
    wait(&format!("the daemon to list {name}"), || {
        stats(ep.control)
            .iter()
            .any(|s| s.endpoints.iter().any(|e| &e.name == name))
    });
    // No client: the kernel device gets the frames, the fast path none.
    let (iface, before) = find(ep.control, name);
    assert!(before.port.is_none(), "no client yet: {before:?}");
    let rx_before = kernel_rx(ep.netns, ep.ifname);
    send(wire, wire_if, ep.spec, count, None);
    wait("the classifier to pass the unclaimed frames", || {
        let (now, _) = find(ep.control, name);
        now.xdp.pass_unclaimed >= iface.xdp.pass_unclaimed + count
    });
    let (_, after) = find(ep.control, name);
    assert_eq!(
        (after.frames, after.dropped_not_connected),
        (before.frames, before.dropped_not_connected),
        "no client: the fast path takes none of {name}'s frames"
    );
    wait("the container's kernel device to receive them", || {
        kernel_rx(ep.netns, ep.ifname) >= rx_before + count
    });

    // A sink in the container's namespace gets exactly the frames sent.
    let log = ep.logs.join(format!("sink-{name}.log"));
    let mac = Mac(ep.spec.mac).to_string();
    let sink = App::spawn(
        ep.netns,
        &crate::sibling_bin("xmacvlan-sink"),
        &[
            ep.port.to_str().unwrap(),
            "--json",
            "--name",
            "test-sink",
            "--mac",
            &mac,
        ],
        &log,
    );
    let mut sink = sink;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !find(ep.control, name)
        .1
        .port
        .is_some_and(|p| p.connected && p.client == "test-sink" && p.claimed)
    {
        let why = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!sink.exited(), "the sink exited: {}", why());
        assert!(
            Instant::now() < deadline,
            "the port never showed the sink connected and claimed: {}",
            why()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let port_counts = || {
        let (_, e) = find(ep.control, name);
        let p = e.port.as_ref().expect("the sink is attached");
        (
            p.rx_frames,
            p.drop_ring_full + p.drop_not_connected + e.dropped(),
        )
    };
    let (rx0, dropped0) = port_counts();
    let delivered = || {
        let (rx, dropped) = port_counts();
        (rx - rx0) + (dropped - dropped0)
    };
    send(wire, wire_if, ep.spec, count, Some(&delivered));
    wait("the port to hand the sink every frame", || {
        port_counts().0 >= rx0 + count
    });
    let (rx, dropped) = port_counts();
    assert_eq!(
        (rx - rx0, dropped - dropped0),
        (count, 0),
        "the port's counters"
    );
    // What `xmacvlan stats` shows now (docs/docker.md and docs/kubernetes.md quote it).
    if let Answer::Stats {
        demux,
        uptime_s,
        interfaces,
        ..
    } = request(ep.control, &Request::Stats).unwrap()
    {
        eprintln!(
            "{}",
            xmacvlan::telemetry::live::tables(&demux, uptime_s, &interfaces)
        );
    }
    let out = sink.stop_sink();
    eprintln!(
        "(the sink ran in {} on {}; its summary: {out})",
        ep.netns,
        ep.port.display()
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        (out["frames"].as_u64(), out["misdelivered"].as_u64()),
        (Some(count), Some(0)),
        "the sink got exactly the frames sent: {out} {log_text}"
    );
    wait("the port to be released", || {
        find(ep.control, name).1.port.is_none()
    });
    count
}
