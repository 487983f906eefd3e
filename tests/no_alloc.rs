//! The worker and consumer loops allocate nothing per frame: a counting global allocator
//! records every allocation made on a thread while it is inside its hot loop, over more than
//! 100k frames in each demux mode, with 8 endpoints (every pass a full sweep) and with 64
//! (passes that visit only endpoints with work). Needs root.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use xmacvlan::dataplane::{Dataplane, in_hot_loop};
use xmacvlan::modes::Demux;
use xmacvlan_bench::lab::{KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
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

/// Frames each run sends: 15,000 to each of 8 endpoints, or 1,875 to each of 64.
const FRAMES: u64 = 120_000;

#[test]
fn hot_loops_allocate_nothing_per_frame() {
    require_root();
    // The proof is only as good as the counter: show it counts. (One test function, so no
    // other test of this binary allocates in a marked loop while the dataplane is measured.)
    let before = HOT_ALLOCATIONS.load(Ordering::Relaxed);
    let hot = xmacvlan::dataplane::HotLoop::enter();
    let v: Vec<u64> = Vec::with_capacity(16);
    drop(hot);
    drop(v);
    assert!(
        HOT_ALLOCATIONS.load(Ordering::Relaxed) > before,
        "counter counts"
    );

    let sweeps = 4;
    let sparse = xmacvlan::dataplane::SPARSE_FROM / 2;
    for (demux, per_vlan) in [
        (Demux::Xdp, sweeps),
        (Demux::User, sweeps),
        (Demux::Xdp, sparse),
        (Demux::User, sparse),
    ] {
        let topology = Topology {
            vlans: vec![100, 0],
            endpoints_per_vlan: per_vlan,
            kernel_devices: KernelDevices::None,
            ..Topology::default()
        };
        let lab = Lab::build(&topology).unwrap();
        let streams = lab_streams(&lab.endpoints, 64, false);
        // 120k frames through the hot loops, spread over the endpoints.
        let traffic = TrafficConfig {
            count: Some(FRAMES / lab.endpoints.len() as u64),
            rate: Some(200_000),
            duration: Duration::from_secs(60),
            // Flow control: a busy CPU slows the frames down instead of dropping them before
            // XDP, so all 120k still pass through the loops.
            pace: Pacing::Delivered,
            ..TrafficConfig::default()
        };
        let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
        let before = HOT_ALLOCATIONS.load(Ordering::Relaxed);
        let finished = lab
            .host
            .run(|| {
                let dp = Dataplane::start(&cfg, &lab.endpoints)?;
                run_traffic(&lab, &dp, 1, &streams, &traffic)?;
                Ok(dp.stop()?)
            })
            .unwrap();
        let delivered: u64 = finished.endpoints.iter().map(|e| e.frames).sum();
        let endpoints = lab.endpoints.len();
        assert_eq!(
            delivered, FRAMES,
            "{demux:?}, {endpoints} endpoints: all frames went through the loops"
        );
        let allocations = HOT_ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocations, 0,
            "{demux:?}, {endpoints} endpoints: allocations inside the hot loops"
        );
    }
}
