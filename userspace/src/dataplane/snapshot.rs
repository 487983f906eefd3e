//! A running dataplane's numbers at one moment, for `xmacvlan stats` and metrics.
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::{ClaimPolicy, DemuxMode, EndpointCounters, EndpointSpec, PortSnapshot, QueueSnapshot};
use crate::abi::Counters;
use crate::ether::Mac;
use crate::modes::{Bound, XdpMode};
use crate::xsk::SocketStats;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub interface: String,
    pub demux: DemuxMode,
    pub xdp_mode: XdpMode,
    pub bind: Bound,
    pub xdp: Counters,
    pub queues: Vec<QueueSnapshot>,
    pub endpoints: Vec<EndpointSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub name: String,
    pub vid: u16,
    pub mac: String,
    pub frames: u64,
    pub bytes: u64,
    pub misdelivered: u64,
    pub untimed: u64,
    /// Dropped by the userspace demux: this endpoint's ring was full.
    pub dropped_ring_full: u64,
    /// The kernel's counters of the endpoint's sockets (xdp demux), summed over queues.
    pub socket: SocketStats,
    /// When its frames are claimed (absent in older snapshots: always).
    #[serde(default)]
    pub claim: ClaimPolicy,
    /// Part of `frames`: reached the endpoint with no port connected (claim while-connected).
    #[serde(default)]
    pub dropped_not_connected: u64,
    /// The application port connected now, if any.
    #[serde(default)]
    pub port: Option<PortSnapshot>,
}

impl EndpointSnapshot {
    pub fn read(spec: &EndpointSpec, c: &EndpointCounters, socket: SocketStats) -> Self {
        Self {
            name: spec.name.clone(),
            vid: spec.vid,
            mac: Mac(spec.mac).to_string(),
            frames: c.frames.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            misdelivered: c.misdelivered.load(Relaxed),
            untimed: c.untimed.load(Relaxed),
            dropped_ring_full: c.dropped_ring_full.load(Relaxed),
            socket,
            claim: ClaimPolicy::Always,
            dropped_not_connected: c.dropped_not_connected.load(Relaxed),
            port: None,
        }
    }

    /// Every drop, by any reason, for this endpoint.
    pub fn dropped(&self) -> u64 {
        self.dropped_ring_full + self.socket.dropped()
    }
}
