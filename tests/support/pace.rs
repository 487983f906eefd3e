//! Flow control for the tests' traffic ([`generator::Pace`]): the generator never has more
//! frames in flight than the veth ring and the dataplane's rings hold, so a test's exact
//! counts hold on a machine whose cores are busy with other work; a slow receiver slows the
//! traffic down instead of dropping it.
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use xmacvlan::dataplane::{Dataplane, EndpointCounters};

/// Frames to the counted endpoints not yet delivered, at most: a quarter of the 2048-entry
/// AF_XDP RX ring, so with the uncounted streams sent round-robin beside them (at most 1.5
/// times as many in these tests) everything in flight still fits the smallest ring.
pub use xmacvlan_bench::scenario::PACE_WINDOW as WINDOW;

/// Live delivery counters of endpoints that stay attached while the generator runs.
pub struct Delivered(Vec<Arc<EndpointCounters>>);

impl Delivered {
    /// The endpoints attached now (all of them, or those `keep` selects by name).
    pub fn of(dp: &Dataplane, keep: impl Fn(&str) -> bool) -> Self {
        Self(
            dp.endpoint_counters()
                .into_iter()
                .filter(|(spec, _)| keep(&spec.name))
                .map(|(_, c)| c)
                .collect(),
        )
    }

    pub fn frames(&self) -> u64 {
        self.0.iter().map(|c| c.frames.load(Relaxed)).sum()
    }
}
