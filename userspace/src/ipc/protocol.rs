//! What the CLI and the daemon say to each other over the control socket: one JSON object
//! per line each way (see [`super::socket`]).
use serde::{Deserialize, Serialize};

use crate::dataplane::{EndpointSpec, Snapshot};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Ping,
    /// Serve an endpoint on `iface` (the trunk: the physical parent of its VLAN).
    Attach {
        iface: String,
        endpoint: EndpointSpec,
    },
    /// Stop serving an endpoint. Detaching one that is not attached succeeds (idempotent).
    Detach {
        endpoint: String,
    },
    Stats,
    /// The endpoint's latency histogram as HdrHistogram's `.hgrm` text: the total since it
    /// attached, or (`interval`) the last stats interval's.
    Histogram {
        endpoint: String,
        #[serde(default)]
        interval: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    Pong {
        pid: u32,
        version: String,
        demux: String,
        uptime_s: f64,
    },
    /// `fast_path` is false in `demux-mode kernel`: the endpoint works through its macvlan.
    Attached {
        iface: String,
        fast_path: bool,
    },
    Detached {
        attached: bool,
    },
    Stats {
        demux: String,
        uptime_s: f64,
        interfaces: Vec<Snapshot>,
        /// Endpoints the daemon detached on its own (their namespace went away).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        detached: Vec<Gone>,
        /// DHCP leases the daemon could not keep (refused, expired unanswered).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leases: Vec<LeaseNote>,
    },
    Histogram {
        hgrm: String,
        samples: u64,
    },
}

/// An endpoint the daemon detached on its own, as `stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gone {
    pub endpoint: String,
    pub iface: String,
    pub reason: String,
    /// Seconds since the daemon started, when it noticed.
    pub at_uptime_s: u64,
}

/// A DHCP lease the daemon could not keep, as `stats` shows it (until it is held again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseNote {
    pub endpoint: String,
    pub address: String,
    pub problem: String,
    /// Seconds since the daemon started, when it noticed.
    pub at_uptime_s: u64,
}
