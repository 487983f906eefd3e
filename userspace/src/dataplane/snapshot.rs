//! A running dataplane's numbers at one moment, for `xmacvlan stats` and metrics.
use serde::{Deserialize, Serialize};

use super::{ClaimPolicy, EndpointCounts, PortSnapshot, QueueSnapshot};
use crate::abi::Counters;
use crate::modes::{Bound, Demux, XdpMode};
use crate::xsk::SocketStats;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub interface: String,
    pub demux: Demux,
    pub xdp_mode: XdpMode,
    pub bind: Bound,
    /// Whether the AF_XDP sockets are multi-buffer (`XDP_USE_SG`): frames longer than a UMEM
    /// chunk take the fast path as chains (absent in older snapshots: not).
    #[serde(default)]
    pub multi_buffer: bool,
    pub xdp: Counters,
    pub queues: Vec<QueueSnapshot>,
    pub endpoints: Vec<EndpointSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub name: String,
    pub vid: u16,
    pub mac: String,
    #[serde(flatten)]
    pub counts: EndpointCounts,
    /// The kernel's counters of the endpoint's sockets (`xdp` demux), summed over queues.
    pub socket: SocketStats,
    /// The NIC queue its port's frames leave through (absent in older snapshots).
    #[serde(default)]
    pub tx_queue: u16,
    /// When its frames are claimed (absent in older snapshots: always).
    #[serde(default)]
    pub claim: ClaimPolicy,
    /// The application port connected now, if any.
    #[serde(default)]
    pub port: Option<PortSnapshot>,
}

impl EndpointSnapshot {
    /// Every drop, by any reason, for this endpoint: its own and its sockets'.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped_ring_full + self.socket.dropped()
    }
}

/// A snapshot reads as its counts (`snapshot.frames`).
impl std::ops::Deref for EndpointSnapshot {
    type Target = EndpointCounts;
    fn deref(&self) -> &EndpointCounts {
        &self.counts
    }
}
