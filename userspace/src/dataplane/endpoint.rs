//! An endpoint: what names it (its VLAN and MAC) and the counters read while it is served.
use std::sync::atomic::AtomicU64;

use crate::abi::{Key, Mac};

/// An endpoint the fast path serves: a container's (VLAN, MAC).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    /// 802.1Q VLAN id, 0 = untagged.
    pub vid: u16,
    #[serde(with = "crate::ether::mac_text")]
    pub mac: Mac,
}

impl EndpointSpec {
    pub fn key(&self) -> Key {
        Key {
            vid: self.vid,
            mac: self.mac,
        }
    }
}

/// Counters readable while the dataplane runs; each has one writer except `dropped`.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    /// Frames whose (VLAN, destination MAC) is not this endpoint's. Must stay 0.
    pub misdelivered: AtomicU64,
    /// Frames without the generator's payload (no latency sample).
    pub untimed: AtomicU64,
    /// Frames the userspace demux could not queue because this endpoint's ring was full.
    pub dropped_ring_full: AtomicU64,
    /// Frames of an endpoint claimed only while a port is connected that reached it with no
    /// port (already on their way when the port went). Part of `frames`.
    pub dropped_not_connected: AtomicU64,
}
