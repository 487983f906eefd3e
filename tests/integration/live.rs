//! Endpoints join and leave while traffic runs: the others lose nothing, nobody gets a frame
//! that is not theirs (a reused slot included), and every frame is accounted for. Needs root.
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use xmacvlan::abi::Key;
use xmacvlan::dataplane::{Dataplane, EndpointResult, EndpointSpec};
use xmacvlan::modes::Demux;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::pace::{self, Delivered};
use xmacvlan_tests::resources;
use xmacvlan_tests::{dataplane_config, require_root};

/// The failed-attach tests count what the whole process holds: the area's tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn churn_under_traffic(demux: Demux) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    churn_under_traffic(Demux::Xdp);
}

#[test]
fn user_demux_endpoints_join_and_leave_under_traffic() {
    require_root();
    churn_under_traffic(Demux::User);
}

/// The classifier's key map of the XDP program attached to `ifname` (in the calling thread's
/// namespace), opened by id: what a test uses to make the kernel refuse the next key.
fn key_map_of(ifname: &str) -> aya::maps::HashMap<aya::maps::MapData, Key, u32> {
    let link = xmacvlan::netlink::Netlink::new()
        .and_then(|nl| nl.require_link(ifname))
        .unwrap();
    let prog = link.xdp_prog_id.expect("an XDP program on the lab NIC");
    let maps = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog)
        .expect("the attached program is loaded")
        .map_ids()
        .unwrap()
        .expect("the program's map ids");
    let id = maps
        .into_iter()
        .find(|&id| {
            aya::maps::MapInfo::from_id(id)
                .is_ok_and(|m| m.name_as_str() == Some(xmacvlan::abi::MAP_SLOTS))
        })
        .expect("the classifier's key map");
    let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id).unwrap()).unwrap();
    aya::maps::HashMap::try_from(map).unwrap()
}

/// Keys no endpoint has (VLAN 4000, made-up MACs) until the map refuses one; returns them.
fn fill(map: &mut aya::maps::HashMap<aya::maps::MapData, Key, u32>) -> Vec<Key> {
    let mut filler = Vec::new();
    for i in 0u32.. {
        let [_, a, b, c] = i.to_be_bytes();
        let key = Key {
            vid: 4000,
            mac: [0x02, 0xff, 0xee, a, b, c],
        };
        if map.insert(key, 0, 0).is_err() {
            return filler;
        }
        filler.push(key);
    }
    unreachable!()
}

/// An attach that fails at its last step (the kernel refuses the endpoint's classifier key)
/// leaves nothing behind: the endpoint is not listed, its sockets are closed, its slot is
/// free; once there is room the same endpoint attaches and gets exactly its frames.
fn failed_attach_leaves_nothing(demux: Demux) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Topology {
        vlans: vec![0],
        endpoints_per_vlan: 2,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .unwrap();
    let all = lab.endpoints.clone();
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    // Frames to each endpoint.
    let count = 2_000u64;
    let gen_cfg = GeneratorConfig {
        ifname: lab::WIRE.into(),
        queue: 0,
        amount: Amount::EachStream(count),
        rate: Some(20_000),
        core: Some(0),
        frame_size: generator::FRAME_SIZE,
        max_in_flight: generator::MAX_IN_FLIGHT,
    };
    let streams = lab_streams(&all, 64, false);
    let stop = AtomicBool::new(false);
    let (sent, finished) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &all[..1])?;
            let mut map = key_map_of(lab::NIC);
            let filler = fill(&mut map);
            // After the filling: the test's own map handle and keys are part of the baseline.
            let before = resources::stable(Duration::from_secs(2));
            let refused = dp.add_endpoint(all[1].clone()).unwrap_err();
            assert!(
                format!("{refused:#}").contains(&all[1].name),
                "{demux:?}: the error names the endpoint: {refused:#}"
            );
            assert_eq!(
                dp.endpoints(),
                all[..1],
                "{demux:?}: a failed attach left the endpoint listed"
            );
            let after = resources::settle_to(&before, Duration::from_secs(5));
            assert!(
                after.is_ok(),
                "{demux:?}: a failed attach left resources behind: before {before:?}, after {after:?}"
            );
            for key in &filler {
                map.remove(key)?;
            }
            dp.add_endpoint(all[1].clone())?;
            let frames = Delivered::of(&dp, |_| true);
            let delivered = || frames.frames();
            let pace_sent = PaceSent::default();
            let pace = Pace::delivered(&pace_sent, &delivered, pace::WINDOW);
            let sent = lab
                .wire
                .run(|| generator::run_paced(&gen_cfg, &streams, &stop, Some(pace)))?;
            lab::wait_for_drain(
                || frames.frames(),
                sent.total(),
                Duration::from_millis(500),
                Duration::from_secs(10),
            );
            anyhow::Ok((sent, dp.stop()?))
        })
        .unwrap();
    for (i, e) in finished.endpoints.iter().enumerate() {
        assert_eq!(
            (e.frames, e.misdelivered, e.dropped),
            (sent.per_stream[i], 0, 0),
            "{demux:?} {}",
            e.spec.name
        );
    }
    assert_eq!(sent.per_stream, [count, count], "every frame sent");
}

#[test]
fn xdp_demux_failed_attach_leaves_nothing() {
    require_root();
    failed_attach_leaves_nothing(Demux::Xdp);
}

#[test]
fn user_demux_failed_attach_leaves_nothing() {
    require_root();
    failed_attach_leaves_nothing(Demux::User);
}
