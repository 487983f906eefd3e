//! A running dataplane's numbers at one moment, for `xmacvlan stats` and metrics.
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::{DemuxMode, EndpointCounters, EndpointSpec, QueueSnapshot};
use crate::abi::{Counters, MacDisplay};
use crate::xdp::AttachMode;
use crate::xsk::{Bound, SocketStats};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub interface: String,
    pub demux: DemuxMode,
    pub xdp_mode: AttachMode,
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
}

impl EndpointSnapshot {
    pub fn read(spec: &EndpointSpec, c: &EndpointCounters, socket: SocketStats) -> Self {
        Self {
            name: spec.name.clone(),
            vid: spec.vid,
            mac: MacDisplay(&spec.mac).to_string(),
            frames: c.frames.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            misdelivered: c.misdelivered.load(Relaxed),
            untimed: c.untimed.load(Relaxed),
            dropped_ring_full: c.dropped_ring_full.load(Relaxed),
            socket,
        }
    }

    /// Every drop, by any reason, for this endpoint.
    pub fn dropped(&self) -> u64 {
        self.dropped_ring_full + self.socket.dropped()
    }
}
