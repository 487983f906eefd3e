//! xmacvlan: an AF_XDP fast path for macvlan-style container networks.
//!
//! The path of a frame: the XDP classifier ([`xdp`], C source in `ebpf/`) keys it by
//! (802.1Q VLAN id, destination MAC) and redirects it into an AF_XDP socket ([`xsk`]); the
//! [`dataplane`] hands it to the endpoint's consumer; [`telemetry`] records what happened.
//! Everything the classifier does not claim goes on through the kernel's own macvlan devices.
pub mod abi;
pub mod afpacket;
pub mod cli;
pub mod cni;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod doctor;
pub mod frame;
pub mod logging;
pub mod memif;
pub mod netlink;
pub mod netns;
pub mod nic;
pub mod plugin;
pub mod sys;
pub mod telemetry;
pub mod xdp;
pub mod xsk;
