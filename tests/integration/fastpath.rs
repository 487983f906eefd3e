//! The fast path end to end, in a lab of namespaces: known frames of every kind go in on the
//! wire; each endpoint must get exactly its own, the classifier's counters must match what was
//! sent kind by kind and add up, and nothing may be left behind. Needs root.
use std::time::Duration;

use xmacvlan::dataplane::{Dataplane, Finished};
use xmacvlan::frame::BROADCAST;
use xmacvlan::modes::Demux;
use xmacvlan_bench::generator::{Stream, StreamKind};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::check_endpoints;
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

const PER_STREAM: u64 = 500;

/// Frames the classifier must hand to the kernel, by reason, on top of the lab streams.
fn adversarial_streams(lab: &Lab) -> Vec<Stream> {
    let ep = &lab.endpoints[0]; // VLAN 100
    let other = |frame: TestFrame| Stream::new(frame, StreamKind::Other);
    let base = TestFrame {
        dst: ep.mac,
        src: lab::GENERATOR_MAC,
        vid: Some(ep.vid),
        qinq_outer: None,
        len: 64,
    };
    vec![
        // QinQ (802.1ad outer tag) to an endpoint's MAC: left to the kernel.
        other(TestFrame {
            qinq_outer: Some(7),
            ..base.clone()
        }),
        // The right MAC on the wrong VLAN: not that endpoint's frame (isolation).
        other(TestFrame {
            vid: Some(200),
            ..base.clone()
        }),
        // Cut inside the 802.1Q tag: malformed.
        other(base.clone()).truncated(16),
        // Multicast destination.
        other(TestFrame {
            dst: [0x01, 0x00, 0x5e, 0, 0, 1],
            ..base.clone()
        }),
        // ARP to the endpoint: its kernel device must answer, so it goes to the kernel.
        other(base.clone()).with_ethertype(xmacvlan::frame::ETHERTYPE_ARP),
        // Larger than a standard MTU, to an endpoint: must be delivered whole.
        Stream::new(
            TestFrame {
                len: 3000,
                ..base.clone()
            },
            StreamKind::Endpoint(0),
        ),
        // Untagged broadcast.
        Stream::new(
            TestFrame {
                dst: BROADCAST,
                vid: None,
                ..base
            },
            StreamKind::Broadcast,
        ),
    ]
}

/// Run the lab with known traffic; the lab is torn down before this returns, and the test
/// fails if any of its namespaces survived.
fn run_exact(demux: Demux, queues: u32) -> (Finished, Vec<Stream>, Vec<u64>) {
    let topology = Topology {
        queues,
        kernel_devices: KernelDevices::None,
        mtu: Some(3400),
        ..Topology::default()
    };
    let lab = Lab::build(&topology).expect("building the lab");
    let mut streams = lab_streams(&lab.endpoints, 64, true);
    streams.extend(adversarial_streams(&lab));
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(100_000),
        duration: Duration::from_secs(60),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let cfg = lab.dataplane_config(&dataplane_config(demux, queues));
    let (finished, sent) = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            let sent = run_traffic(&lab, &dp, queues, &streams, &traffic)?;
            let live = dp.snapshot()?;
            let finished = dp.stop()?;
            // Live numbers taken after the burst equal the final ones.
            assert_eq!(live.xdp, finished.xdp);
            for (l, f) in live.endpoints.iter().zip(&finished.endpoints) {
                assert_eq!(
                    (&l.name, l.frames, l.bytes),
                    (&f.spec.name, f.frames, f.bytes)
                );
                assert_eq!(l.socket, f.socket_stats, "{}", l.name);
            }
            Ok((finished, sent))
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

fn check_exact(finished: &Finished, streams: &[Stream], sent: &[u64], queues: u32) {
    let q = queues as u64;
    for s in sent {
        assert_eq!(
            *s,
            PER_STREAM * q,
            "every stream sent in full by each generator queue"
        );
    }
    let total: u64 = sent.iter().sum();
    let delivered = check_endpoints(finished, streams, sent);
    // Endpoint 0 also got the 3000-byte frames, whole.
    let big = &finished.endpoints[0];
    assert_eq!(big.bytes, PER_STREAM * q * (64 + 3000));

    let per = PER_STREAM * q;
    let vlans = 3; // 100, 200, untagged
    // XDP saw every frame sent, each got exactly one verdict, and each ended delivered,
    // passed or dropped by reason; none was dropped: what XDP redirected was delivered.
    Ledger::finished(total, finished, &[]).assert_balanced("the exact lab");
    let x = &finished.xdp;
    assert_eq!(x.redirected, delivered, "{x:?}");
    assert_eq!(x.hit, x.redirected, "{x:?}");
    assert_eq!(x.pass_no_socket, 0, "{x:?}");
    assert_eq!(x.pass_qinq, per, "{x:?}");
    assert_eq!(x.malformed, per, "{x:?}");
    assert_eq!(
        x.pass_control, per,
        "ARP to an endpoint goes to its kernel device: {x:?}"
    );
    // Unknown MAC on each VLAN, plus the right MAC on the wrong VLAN.
    assert_eq!(x.pass_miss, per * vlans + per, "{x:?}");
    // Broadcast on each VLAN, the untagged broadcast, and the multicast frame.
    assert_eq!(x.pass_bcast_mcast, per * vlans + 2 * per, "{x:?}");
    // Tagged: the VLAN 100/200 endpoint, broadcast and unknown streams (4 endpoints + 2x2),
    // wrong-VLAN, multicast, ARP and the 3000-byte frame; QinQ and the cut tag never count.
    assert_eq!(x.tagged, per * (4 + 4 + 4), "{x:?}");
    for q in &finished.queues {
        assert_eq!(q.socket.dropped(), 0, "queue socket drops: {q:?}");
        assert_eq!(q.dropped_ring_full + q.dropped_unknown, 0, "{q:?}");
    }
}

#[test]
fn xdp_demux_delivers_exactly_and_counts_add_up() {
    require_root();
    let (finished, streams, sent) = run_exact(Demux::Xdp, 1);
    check_exact(&finished, &streams, &sent, 1);
}

#[test]
fn user_demux_delivers_exactly_and_counts_add_up() {
    require_root();
    let (finished, streams, sent) = run_exact(Demux::User, 1);
    check_exact(&finished, &streams, &sent, 1);
    let steered: u64 = finished.queues.iter().map(|q| q.steered).sum();
    assert_eq!(steered, finished.xdp.redirected);
}

#[test]
fn every_queue_is_served() {
    require_root();
    let (finished, streams, sent) = run_exact(Demux::Xdp, 2);
    check_exact(&finished, &streams, &sent, 2);
    for (i, q) in finished.queues.iter().enumerate() {
        assert!(q.refilled > 0, "queue {i} never received: {q:?}");
    }
}
