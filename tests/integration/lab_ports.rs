//! The lab as `cargo xtask run` runs it, through memif ports: one `xmacvlan-sink` or
//! `xmacvlan-reflect` process per endpoint, in the endpoint's namespace, attached to its port.
//! Every endpoint's application must get exactly its own frames (sinks: checked MAC, no tag,
//! timed), every reflected frame must come back on the wire from its endpoint and be timed,
//! and the lab must leave no namespace or socket behind; the same at MTU 9000 with 9000-byte
//! frames, which reach the applications' 2048-byte buffers as chains. Needs root.
use xmacvlan::modes::Demux;
use xmacvlan::telemetry::report::Report;
use xmacvlan_bench::apps::LAB_PORT_ROOT;
use xmacvlan_bench::lab::{self, Topology};
use xmacvlan_bench::scenario::{LabApp, Pacing, TrafficConfig, run_lab};
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

/// Per endpoint: fewer than an application's ring holds (1024), so the count is exact even if
/// an application is descheduled for the whole run.
const PER_ENDPOINT: u64 = 300;

fn run(demux: Demux, app: LabApp, frame_len: usize) -> Report {
    let traffic = TrafficConfig {
        count: Some(PER_ENDPOINT),
        pace: Pacing::Delivered,
        generator_core: None,
        frame_len,
        ..TrafficConfig::default()
    };
    let topology = Topology {
        mtu: lab::mtu_for(frame_len),
        ..Topology::default()
    };
    run_lab(&topology, &dataplane_config(demux, 1), &traffic, app)
        .unwrap_or_else(|e| panic!("{demux:?} {app:?} {frame_len} B: {e:#}"))
}

#[test]
fn lab_delivers_exactly_into_sinks_and_back_from_reflectors() {
    sinks_and_reflectors(TrafficConfig::default().frame_len);
}

#[test]
fn lab_at_mtu_9000_delivers_9000_byte_frames_whole_into_sinks_and_back() {
    sinks_and_reflectors(9000);
}

/// Each test checks that no lab of this process is left: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sinks_and_reflectors(frame_len: usize) {
    require_root();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // This process's labs only: other suites may run labs at the same time.
    let ours = format!("xmvlab{}-", std::process::id());
    for demux in [Demux::Xdp, Demux::User] {
        let report = run(demux, LabApp::Sink, frame_len);
        let text = report.to_text();
        assert_eq!(report.endpoints.len(), 6, "{text}");
        for e in &report.endpoints {
            let a = e
                .app
                .as_ref()
                .unwrap_or_else(|| panic!("no app row: {text}"));
            assert_eq!(
                e.expected,
                Some(PER_ENDPOINT),
                "{demux:?} {}: {text}",
                e.name
            );
            // The dataplane took each frame, the port copied it, the sink counted it.
            assert_eq!(
                (
                    e.frames,
                    a.port_rx,
                    a.port_rx_dropped,
                    a.received,
                    a.misdelivered
                ),
                (PER_ENDPOINT, PER_ENDPOINT, 0, PER_ENDPOINT, 0),
                "{demux:?} {}: {text}",
                e.name
            );
            assert_eq!((a.port_tx, a.returned), (0, None), "a sink sends nothing");
            assert!(a.latency_ns.is_some(), "sink timed nothing: {text}");
        }
        let apps = report.apps.as_ref().expect("app totals");
        assert_eq!(apps.program, "xmacvlan-sink");
        assert_eq!(apps.received, 6 * PER_ENDPOINT, "{text}");
        let one_way = apps.one_way_ns.expect("one-way percentiles");
        assert!(one_way.p50 > 0 && one_way.p50 <= one_way.p99, "{text}");
        assert!(text.contains("one way, generator to sink"), "{text}");

        let report = run(demux, LabApp::Reflect, frame_len);
        let text = report.to_text();
        for e in &report.endpoints {
            let a = e
                .app
                .as_ref()
                .unwrap_or_else(|| panic!("no app row: {text}"));
            // In, reflected out of the NIC with nothing refused, and back on the wire.
            assert_eq!(
                (
                    a.port_rx,
                    a.received,
                    a.port_tx,
                    a.port_tx_dropped,
                    a.returned
                ),
                (
                    PER_ENDPOINT,
                    PER_ENDPOINT,
                    PER_ENDPOINT,
                    0,
                    Some(PER_ENDPOINT)
                ),
                "{demux:?} {}: {text}",
                e.name
            );
        }
        let apps = report.apps.as_ref().expect("app totals");
        assert_eq!(apps.program, "xmacvlan-reflect");
        assert_eq!(
            (apps.returned, apps.wrong_source),
            (Some(6 * PER_ENDPOINT), 0),
            "{text}"
        );
        let rtt = apps.round_trip_ns.expect("round-trip percentiles");
        assert!(rtt.p50 > 0 && rtt.p50 <= rtt.max, "{text}");
        assert!(
            text.contains("round trip, generator to reflector"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["apps"]["returned"], 6 * PER_ENDPOINT);
        assert_eq!(json["endpoints"][0]["app"]["port_tx"], PER_ENDPOINT);
    }
    assert_eq!(
        namespaces_named(&ours),
        Vec::<String>::new(),
        "lab namespaces left behind"
    );
    let sockets_left: Vec<_> = std::fs::read_dir(LAB_PORT_ROOT)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&ours))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        sockets_left.is_empty(),
        "port directories left behind: {sockets_left:?}"
    );
}
