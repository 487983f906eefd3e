//! Endpoints join and leave while traffic runs: the others lose nothing, nobody gets a frame
//! that is not theirs (a reused slot included), and every frame is accounted for. Needs root.
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use xmacvlan::dataplane::{Dataplane, EndpointResult, EndpointSpec};
use xmacvlan::modes::DemuxMode;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::pace::{self, Delivered};
use xmacvlan_tests::{dataplane_config, require_root};

fn churn_under_traffic(demux: DemuxMode) {
    let lab = Lab::build(&Topology {
        vlans: vec![0],
        endpoints_per_vlan: 5,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .unwrap();
    // Streams go to all five MACs for the whole run; only some are attached at any time.
    let all: Vec<EndpointSpec> = lab.endpoints.clone();
    let streams = lab_streams(&all, 64, false);
    let late = EndpointSpec {
        name: "late".into(),
        ..all[4].clone()
    };
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let gen_cfg = GeneratorConfig {
        ifname: lab::WIRE.into(),
        queue: 0,
        amount: Amount::For(Duration::from_millis(1500)),
        rate: Some(50_000),
        core: Some(0),
        frame_size: generator::FRAME_SIZE,
        max_in_flight: generator::MAX_IN_FLIGHT,
    };
    let stop = AtomicBool::new(false);
    let (sent, finished, removed) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &all[..3])?;
            // Paced on the endpoints that stay attached (0 and 2).
            let untouched = [&all[0].name, &all[2].name];
            let frames = Delivered::of(&dp, |n| untouched.iter().any(|u| *u == n));
            let delivered = || frames.frames();
            let counted: Vec<bool> = (0..streams.len()).map(|i| i == 0 || i == 2).collect();
            let pace_sent = PaceSent::default();
            let pace = Pace::delivered(&pace_sent, &delivered, pace::WINDOW).counting(&counted);
            std::thread::scope(|s| {
                let generator = s.spawn(|| {
                    lab.wire
                        .run(|| generator::run_paced(&gen_cfg, &streams, &stop, Some(pace)))
                });
                std::thread::sleep(Duration::from_millis(300));
                dp.add_endpoint(all[3].clone())?;
                std::thread::sleep(Duration::from_millis(300));
                // Endpoint 1 leaves; "late" (endpoint 4's MAC) takes its slot.
                let removed = dp.remove_endpoint(&all[1].name)?;
                assert!(
                    dp.remove_endpoint(&all[1].name).is_err(),
                    "removing twice is an error"
                );
                dp.add_endpoint(late.clone())?;
                let sent = generator.join().expect("generator panicked")?;
                std::thread::sleep(Duration::from_millis(200));
                anyhow::Ok((sent, dp.stop()?, removed))
            })
        })
        .unwrap();
    let by_name = |n: &str| -> &EndpointResult {
        finished
            .endpoints
            .iter()
            .find(|e| e.spec.name == n)
            .unwrap()
    };
    let sent_to = |i: usize| sent.per_stream[i];
    // Untouched endpoints: everything sent to them, nothing else.
    for i in [0, 2] {
        let e = by_name(&all[i].name);
        assert_eq!(
            e.frames,
            sent_to(i),
            "{demux:?} {}: lost frames during churn",
            e.spec.name
        );
        assert_eq!(
            (e.misdelivered, e.dropped),
            (0, 0),
            "{demux:?} {}",
            e.spec.name
        );
    }
    // Endpoints that came and went: only their own frames, some of them.
    for e in [&removed, by_name(&all[3].name), by_name("late")] {
        assert_eq!(
            e.misdelivered, 0,
            "{demux:?} {}: got foreign frames",
            e.spec.name
        );
        assert!(e.frames > 0, "{demux:?} {}: received nothing", e.spec.name);
    }
    assert!(removed.frames < sent_to(1));
    assert!(by_name("late").frames < sent_to(4));
    // Every frame: delivered to its owner or handed to the kernel as a miss (or, in user
    // demux, claimed during a change and counted as dropped-unknown).
    let delivered: u64 = finished.endpoints.iter().map(|e| e.frames).sum::<u64>() + removed.frames;
    let unknown: u64 = finished.queues.iter().map(|q| q.dropped_unknown).sum();
    let x = &finished.xdp;
    assert_eq!(x.seen, sent.total(), "{x:?}");
    assert_eq!(
        delivered + unknown + x.pass_miss + x.pass_no_socket,
        sent.total(),
        "{x:?}"
    );
}

#[test]
fn xdp_demux_endpoints_join_and_leave_under_traffic() {
    require_root();
    churn_under_traffic(DemuxMode::Xdp);
}

#[test]
fn user_demux_endpoints_join_and_leave_under_traffic() {
    require_root();
    churn_under_traffic(DemuxMode::User);
}
