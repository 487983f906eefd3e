//! The port receive and transmit loops allocate nothing per frame: a counting global allocator
//! records every allocation made on a thread while it is inside its hot loop, while 120k
//! frames go from the wire into application ports and the applications send every one back
//! (MACs swapped, as a reflector does), in each demux mode. Needs root.
//!
//! Copy-mode AF_XDP transmits inside the sending thread's sendto, so the consumer also does the
//! kernel's transmit work: the traffic is paced well below what the loops can carry.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use xmacvlan::dataplane::{ClaimPolicy, Dataplane, in_hot_loop};
use xmacvlan::modes::Demux;
use xmacvlan_bench::lab::{KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{TrafficConfig, lab_streams, run_traffic_until};
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::mem_port::{App, Buf, info};
use xmacvlan_tests::{dataplane_config, require_root};

struct Counting;

static HOT_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_hot_loop() {
            HOT_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_hot_loop() {
            HOT_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Send every frame the application received back out, MACs swapped, until `stop`.
fn reflect(app: &App, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Some(mut b) = app.rx.pop() else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let (dst, src) = b.bytes.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);
        // Back-pressure: wait for room rather than drop.
        let mut item: Buf = b;
        while let Err(back) = app.tx.push(item) {
            item = back;
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

#[test]
fn port_loops_allocate_nothing_per_frame() {
    require_root();
    let before = HOT_ALLOCATIONS.load(Ordering::Relaxed);
    let hot = xmacvlan::dataplane::HotLoop::enter();
    let v: Vec<u64> = Vec::with_capacity(16);
    drop(hot);
    drop(v);
    assert!(
        HOT_ALLOCATIONS.load(Ordering::Relaxed) > before,
        "counter counts"
    );

    for demux in [Demux::Xdp, Demux::User] {
        let lab = Lab::build(&Topology {
            vlans: vec![100, 0],
            endpoints_per_vlan: 4,
            kernel_devices: KernelDevices::None,
            ..Topology::default()
        })
        .unwrap();
        let streams = lab_streams(&lab.endpoints, 64, false);
        // 8 endpoints x 15k frames = 120k frames into ports, and back out.
        let traffic = TrafficConfig {
            count: Some(15_000),
            rate: Some(20_000),
            duration: Duration::from_secs(60),
            background: false,
            ..TrafficConfig::default()
        };
        let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
        let apps: Vec<App> = lab
            .endpoints
            .iter()
            .map(|_| App::new(16_384, 4096))
            .collect();
        let before = HOT_ALLOCATIONS.load(Ordering::Relaxed);
        let (sent, finished) = lab
            .host
            .run(|| {
                let mut dp = Dataplane::start(&cfg, &[])?;
                for (e, app) in lab.endpoints.iter().zip(&apps) {
                    dp.add_endpoint_with(e.clone(), ClaimPolicy::WhileConnected)?;
                    dp.connect_port(&e.name, app.port(), info(&e.name))?;
                }
                let stop = AtomicBool::new(false);
                std::thread::scope(|s| {
                    for app in &apps {
                        let stop = &stop;
                        s.spawn(move || reflect(app, stop));
                    }
                    let sent_back = || {
                        lab.endpoints
                            .iter()
                            .filter_map(|e| dp.port(&e.name))
                            .map(|p| p.tx_frames)
                            .sum::<u64>()
                    };
                    let r = run_traffic_until(&lab, 1, &streams, &traffic, &sent_back);
                    // The reflectors finish what they hold: sent back, or dropped by reason.
                    let settled = || {
                        lab.endpoints.iter().all(|e| {
                            dp.port(&e.name)
                                .is_some_and(|p| p.tx_frames + p.tx_dropped() == p.rx_frames)
                        })
                    };
                    let deadline = std::time::Instant::now() + Duration::from_secs(30);
                    while !settled() && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    stop.store(true, Ordering::Relaxed);
                    r
                })
                .map(|sent| (sent, dp.stop()))
            })
            .unwrap();
        let finished = finished.unwrap();
        let allocations = HOT_ALLOCATIONS.load(Ordering::Relaxed) - before;
        let rx: u64 = finished
            .endpoints
            .iter()
            .map(|e| e.port.as_ref().unwrap().rx_frames)
            .sum();
        let tx: u64 = finished
            .endpoints
            .iter()
            .map(|e| e.port.as_ref().unwrap().tx_frames)
            .sum();
        // Paced well below what the loops carry; still, on a busy machine a socket may drop:
        // every frame is accounted for, by reason, and most went through the loops.
        Ledger::finished(sent.total(), &finished, &[]).assert_balanced(&format!("{demux:?}"));
        for e in &finished.endpoints {
            let p = e.port.as_ref().unwrap();
            assert_eq!(e.frames, p.rx_frames + p.rx_dropped(), "{demux:?}: {p:?}");
            assert_eq!(
                p.tx_frames + p.tx_dropped(),
                p.rx_frames,
                "{demux:?}: every frame sent back or counted: {p:?}"
            );
        }
        assert!(
            tx >= 60_000,
            "{demux:?}: {rx} received, {tx} sent back: too few to tell"
        );
        assert_eq!(
            allocations, 0,
            "{demux:?}: allocations inside the hot loops"
        );
    }
}
