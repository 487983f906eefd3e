//! Jumbo frames on the fast path, in a lab whose wire runs at MTU 9000: the classifier
//! (multi-buffer) attaches natively, every endpoint gets exactly its 64- and 1500-byte frames,
//! and the 9000-byte ones, longer than an AF_XDP socket without multi-buffer takes whole, go to
//! the kernel counted as TOO-BIG: none redirected into a socket that would drop it. Needs root.
use std::time::Duration;

use xmacvlan::dataplane::{Dataplane, Finished};
use xmacvlan::modes::{Demux, XdpMode};
use xmacvlan_bench::generator::{Stream, StreamKind};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::{check_endpoints, sent_where};
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

const PER_STREAM: u64 = 200;
const JUMBO: usize = 9000;
const STANDARD: usize = 1500;

/// Per endpoint, a 1500-byte stream it must receive and a 9000-byte one its socket cannot take.
fn sized_streams(lab: &Lab) -> Vec<Stream> {
    let mut streams = Vec::new();
    for (i, ep) in lab.endpoints.iter().enumerate() {
        let frame = |len| TestFrame {
            dst: ep.mac,
            src: lab::GENERATOR_MAC,
            vid: (ep.vid != 0).then_some(ep.vid),
            qinq_outer: None,
            len,
        };
        streams.push(Stream::new(frame(STANDARD), StreamKind::Endpoint(i)));
        streams.push(Stream::new(frame(JUMBO), StreamKind::Other));
    }
    streams
}

fn run_mixed(demux: Demux) -> (Finished, Vec<Stream>, Vec<u64>) {
    let topology = Topology {
        kernel_devices: KernelDevices::None,
        mtu: lab::mtu_for(JUMBO),
        ..Topology::default()
    };
    assert_eq!(topology.mtu, Some(9000));
    let lab = Lab::build(&topology).expect("building the lab");
    let mut streams = lab_streams(&lab.endpoints, 64, true);
    streams.extend(sized_streams(&lab));
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(50_000),
        duration: Duration::from_secs(60),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let (finished, sent) = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            assert_eq!(
                dp.snapshot()?.xdp_mode,
                XdpMode::Native,
                "attached natively"
            );
            let sent = run_traffic(&lab, &dp, 1, &streams, &traffic)?;
            Ok((dp.stop()?, sent))
        })
        .expect("running the lab");
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(
        namespaces_named(&prefix).is_empty(),
        "left behind: {:?}",
        namespaces_named(&prefix)
    );
    (finished, streams, sent.per_stream)
}

fn check_mixed(finished: &Finished, streams: &[Stream], sent: &[u64]) {
    assert!(sent.iter().all(|&n| n == PER_STREAM), "{sent:?}");
    let delivered = check_endpoints(finished, streams, sent);
    for e in &finished.endpoints {
        assert_eq!(
            e.bytes,
            PER_STREAM * (64 + STANDARD as u64),
            "{}: every frame whole",
            e.spec.name
        );
    }
    let jumbo = sent_where(streams, sent, |s| s.frame.len == JUMBO);
    assert_eq!(jumbo, PER_STREAM * finished.endpoints.len() as u64);
    let x = &finished.xdp;
    assert_eq!(
        x.pass_too_big, jumbo,
        "every 9000-byte frame to the kernel: {x:?}"
    );
    assert_eq!(x.redirected, delivered, "{x:?}");
    assert_eq!(x.hit, x.redirected + x.pass_too_big, "{x:?}");
    assert_eq!(x.pass_no_socket, 0, "{x:?}");
    Ledger::finished(sent.iter().sum(), finished, &[]).assert_balanced("the jumbo lab");
    for q in &finished.queues {
        assert_eq!(q.socket.dropped(), 0, "queue socket drops: {q:?}");
        assert_eq!(q.dropped_ring_full + q.dropped_unknown, 0, "{q:?}");
    }
}

#[test]
fn xdp_demux_at_mtu_9000_delivers_what_fits_and_passes_the_rest() {
    require_root();
    let (finished, streams, sent) = run_mixed(Demux::Xdp);
    check_mixed(&finished, &streams, &sent);
}

#[test]
fn user_demux_at_mtu_9000_delivers_what_fits_and_passes_the_rest() {
    require_root();
    let (finished, streams, sent) = run_mixed(Demux::User);
    check_mixed(&finished, &streams, &sent);
    let steered: u64 = finished.queues.iter().map(|q| q.steered).sum();
    assert_eq!(steered, finished.xdp.redirected);
}
