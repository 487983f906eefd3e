//! The `user` demux under a consumer that cannot keep up, and the benchmark's `kernel`
//! baseline, in labs of namespaces. Needs root and two cores.
//!
//! - A full endpoint ring is a counted drop, never a stall: with tiny rings and the consumer
//!   starved of CPU, every frame sent is delivered, passed or dropped by a counted reason,
//!   the ring-full drops are the endpoints' own and nothing lands at the wrong endpoint.
//! - The kernel baseline (macvlan + AF_PACKET TPACKET_V3) delivers exactly what was sent to
//!   each endpoint.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xmacvlan::dataplane::Dataplane;
use xmacvlan::modes::Demux;
use xmacvlan_bench::compare::kernel_path::KernelPath;
use xmacvlan_bench::compare::placement::tasks_named;
use xmacvlan_bench::generator::StreamKind;
use xmacvlan_bench::lab::{KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{
    Pacing, TrafficConfig, lab_streams, run_traffic, run_traffic_until,
};
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::sent_where;
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

const PER_STREAM: u64 = 3_000;
/// Endpoint ring capacity: a few frames, so a stalled consumer fills it at once.
const RING: usize = 8;
/// The worker, the generator and the veth's receive work share this core...
const FAST_CORE: usize = 0;
/// ...and the starved consumer sits on this one, under a hog.
const SLOW_CORE: usize = 1;

/// The two tests run one at a time: the first one's hog would starve the kernel-path reader,
/// which runs on the same core.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `pace`: the starved-consumer test paces by the wire only (nothing lost before XDP, the
/// rings after it may fill: that is what it tests); the baseline by delivery.
fn traffic(rate: u64, pace: Pacing) -> TrafficConfig {
    TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(rate),
        pace,
        duration: Duration::from_secs(60),
        background: false,
        generator_core: Some(FAST_CORE),
        ..TrafficConfig::default()
    }
}

/// This thread's id, from procfs (no libc call needed).
fn current_tid() -> i32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/thread-self -> {}", link.display()))
}

/// Keeps `core` busy at the highest priority until `stop`: a thread left there at the lowest
/// priority gets almost none of it.
fn hog(core: usize, started: &AtomicBool, stop: &AtomicBool) {
    xmacvlan::sys::set_task_affinity(current_tid(), core).expect("pinning the hog");
    xmacvlan::sys::set_task_nice(current_tid(), -20).expect("raising the hog's priority");
    started.store(true, Ordering::Release);
    while !stop.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}

#[test]
fn full_endpoint_rings_drop_and_count_never_stall() {
    require_root();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Topology {
        vlans: vec![100, 0],
        endpoints_per_vlan: 2,
        queues: 1,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .expect("building the lab");
    let streams = lab_streams(&lab.endpoints, 64, false);
    let mut cfg = lab.dataplane_config(&dataplane_config(Demux::User, 1));
    cfg.cores = vec![FAST_CORE];
    cfg.endpoint_ring = RING;
    // The worker on its own thread (and core), so that starving the consumer leaves it running.
    cfg.layout = xmacvlan::dataplane::Layout::Split { serving: 1 };

    let (sent, finished, ledger) = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            // Starve the consumer: move it under a hog, at the lowest priority. The worker
            // keeps running on its own core and must drop, not wait.
            let consumers = tasks_named("/proc/self/task", |c| c.starts_with("xmv-consumer"))?;
            assert_eq!(consumers.len(), 1, "one consumer thread: {consumers:?}");
            let (stop, started) = (AtomicBool::new(false), AtomicBool::new(false));
            let sent = std::thread::scope(|s| {
                s.spawn(|| hog(SLOW_CORE, &started, &stop));
                while !started.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                let tid = consumers[0].0;
                xmacvlan::sys::set_task_affinity(tid, SLOW_CORE)?;
                xmacvlan::sys::set_task_nice(tid, 19)?;
                let sent = run_traffic(&lab, &dp, 1, &streams, &traffic(200_000, Pacing::Wire));
                stop.store(true, Ordering::Relaxed);
                sent
            })?;
            // Freed, the consumer drains its rings: wait until every frame is accounted for.
            let deadline = Instant::now() + Duration::from_secs(5);
            let accounted = || -> anyhow::Result<u64> {
                let s = dp.snapshot()?;
                let queues = &s.queues;
                let endpoints = s.endpoints.iter().map(|e| (e.frames, e.socket));
                Ok(
                    Ledger::new(sent.total(), s.xdp, endpoints, queues).delivered
                        + s.xdp.passed()
                        + queues
                            .iter()
                            .map(|q| q.dropped_ring_full + q.dropped_unknown)
                            .sum::<u64>(),
                )
            };
            while accounted()? < sent.total() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let finished = dp.stop()?;
            let ledger = Ledger::finished(sent.total(), &finished, &[]);
            Ok((sent, finished, ledger))
        })
        .expect("running the lab");

    for s in &sent.per_stream {
        assert_eq!(*s, PER_STREAM, "every stream sent in full");
    }
    ledger.assert_balanced("user demux, starved consumer");
    let ring_full: u64 = finished.queues.iter().map(|q| q.dropped_ring_full).sum();
    assert!(
        ring_full > 0,
        "the starved consumer's rings never filled: the test tested nothing: {ledger:#?}"
    );
    assert_eq!(
        finished.xdp.passed(),
        0,
        "only endpoint traffic: {ledger:#?}"
    );
    let mut per_endpoint_drops = 0;
    for (i, e) in finished.endpoints.iter().enumerate() {
        let name = &e.spec.name;
        let to_it = sent_where(&streams, &sent.per_stream, |s| {
            s.kind == StreamKind::Endpoint(i)
        });
        assert_eq!(e.misdelivered, 0, "endpoint {name} misdelivered");
        assert_eq!(
            e.latency.len(),
            e.frames,
            "endpoint {name}: every frame timed"
        );
        // No sockets of its own in user demux: its drops are its full ring's.
        assert!(
            e.frames + e.dropped <= to_it,
            "endpoint {name}: {} delivered + {} dropped of {to_it} sent",
            e.frames,
            e.dropped
        );
        per_endpoint_drops += e.dropped;
    }
    assert_eq!(
        per_endpoint_drops, ring_full,
        "each ring-full drop is counted once at its queue and once at its endpoint"
    );
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty());
}

#[test]
fn kernel_baseline_delivers_exactly_what_each_endpoint_was_sent() {
    require_root();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Topology {
        vlans: vec![0],
        endpoints_per_vlan: 6,
        queues: 1,
        kernel_devices: KernelDevices::Host,
        ..Topology::default()
    })
    .expect("building the lab");
    let streams = lab_streams(&lab.endpoints, 64, false);
    let (sent, finished) = lab
        .host
        .run(|| {
            let kernel =
                KernelPath::start(&lab, SLOW_CORE, xmacvlan::dataplane::IdlePolicy::default())?;
            let delivered = || kernel.frames.load(Ordering::Relaxed);
            let sent = run_traffic_until(
                &lab,
                1,
                &streams,
                &traffic(100_000, Pacing::Delivered),
                &delivered,
            )?;
            Ok((sent, kernel.stop()?))
        })
        .expect("running the kernel baseline");

    assert_eq!(finished.endpoints.len(), lab.endpoints.len());
    for (i, (e, spec)) in finished.endpoints.iter().zip(&lab.endpoints).enumerate() {
        assert_eq!(e.name, spec.name);
        let to_it = sent_where(&streams, &sent.per_stream, |s| {
            s.kind == StreamKind::Endpoint(i)
        });
        assert_eq!(to_it, PER_STREAM);
        assert_eq!(e.frames, to_it, "endpoint {}: {e:?}", e.name);
        assert_eq!(e.misdelivered, 0, "endpoint {}", e.name);
        assert_eq!(e.drops, 0, "endpoint {}", e.name);
    }
    assert_eq!(finished.frames, sent.total());
    assert_eq!(
        finished.latency.len(),
        sent.total(),
        "every frame timed from the generator's stamp"
    );
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty());
}
