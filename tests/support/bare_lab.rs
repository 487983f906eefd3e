//! A lab of just a NIC and its wire, for tests that bring their own endpoint specs, and its
//! teardown that proves no namespace outlived it.
use xmacvlan_bench::lab::{KernelDevices, Lab, Topology};

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
