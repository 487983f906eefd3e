//! A lab of just a NIC and its wire, for tests that bring their own endpoint specs, and its
//! teardown that proves no namespace outlived it.
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};

use crate::namespaces_named;

pub fn build() -> Lab {
    Lab::build(&Topology {
        vlans: vec![0],
        endpoints_per_vlan: 1,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .expect("building the lab")
}

/// Tear the lab down; fails if any of its namespaces survived.
pub fn tear_down(lab: Lab) {
    let prefix = lab.prefix.clone();
    drop(lab);
    let left = namespaces_named(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The lab's generator on queue 0, running until its stop flag (or ten minutes): for tests
/// that change things while traffic flows. `rate` in frames/s; None = as fast as it can.
pub fn generator_until_stopped(rate: Option<u64>) -> GeneratorConfig {
    GeneratorConfig {
        ifname: lab::WIRE.into(),
        queue: 0,
        amount: Amount::For(std::time::Duration::from_secs(600)),
        rate,
        core: Some(0),
        frame_size: generator::FRAME_SIZE,
        max_in_flight: generator::MAX_IN_FLIGHT,
    }
}

/// Sets a generator's stop flag when dropped, so a failing assertion inside a thread scope
/// stops the traffic instead of waiting out the generator's duration.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// After the generator stopped: wait until the dataplane's endpoints stop receiving (no change
/// for 300 ms, at most 5 s), so the final numbers include every frame still on its way.
pub fn drain(dp: &xmacvlan::dataplane::Dataplane) {
    let delivered = || {
        dp.endpoint_counters()
            .iter()
            .map(|(_, c)| c.frames.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    lab::wait_for_drain(
        delivered,
        u64::MAX,
        std::time::Duration::from_millis(300),
        std::time::Duration::from_secs(5),
    );
}
