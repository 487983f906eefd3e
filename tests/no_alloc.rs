//! The worker and consumer loops allocate nothing per frame: a counting global allocator
//! records every allocation made on a thread while it is inside its hot loop, over more than
//! 100k frames in each demux mode, with 8 endpoints (every pass a full sweep) and with 64
//! (passes that visit only endpoints with work), and over 9000-byte frames at MTU 9000 (each
//! a multi-buffer chain of three chunks). Needs root.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use xmacvlan::dataplane::{Dataplane, in_hot_loop};
use xmacvlan::modes::Demux;
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
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
/// Frames of 9000 bytes each jumbo run sends (2,500 to each of 8 endpoints).
const JUMBO_FRAMES: u64 = 20_000;

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
    for (demux, per_vlan, frame_len, frames) in [
        (Demux::Xdp, sweeps, 64, FRAMES),
        (Demux::User, sweeps, 64, FRAMES),
        (Demux::Xdp, sparse, 64, FRAMES),
        (Demux::User, sparse, 64, FRAMES),
        (Demux::Xdp, sweeps, 9000, JUMBO_FRAMES),
        (Demux::User, sweeps, 9000, JUMBO_FRAMES),
    ] {
        let topology = Topology {
            vlans: vec![100, 0],
            endpoints_per_vlan: per_vlan,
            kernel_devices: KernelDevices::None,
            mtu: lab::mtu_for(frame_len),
            ..Topology::default()
        };
        let lab = Lab::build(&topology).unwrap();
        let streams = lab_streams(&lab.endpoints, frame_len, false);
        // The frames through the hot loops, spread over the endpoints.
        let traffic = TrafficConfig {
            count: Some(frames / lab.endpoints.len() as u64),
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
            delivered, frames,
            "{demux:?}, {endpoints} endpoints, {frame_len} bytes: all frames went through the loops"
        );
        let allocations = HOT_ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocations, 0,
            "{demux:?}, {endpoints} endpoints, {frame_len} bytes: allocations inside the hot loops"
        );
    }
}
