//! xmacvlan: an AF_XDP fast path for macvlan-style container networks.
//!
//! The path of a frame: the XDP classifier ([`xdp`], C source in `ebpf/`) keys it by
//! (802.1Q VLAN id, destination MAC) and redirects it into an AF_XDP socket ([`xsk`]); the
//! [`dataplane`] copies it into the endpoint's memif port ([`memif`]), where the container's
//! application reads it; [`telemetry`] records what happened.
//! Everything the classifier does not claim goes on through the kernel's own macvlan devices.
//!
//! `unsafe` is denied everywhere (`[workspace.lints]` in the workspace's Cargo.toml) but in
//! the modules that must touch raw memory, the kernel or C (`abi`, `memif::shm`, `memif::sock`,
//! `sys`, `xsk`, and `xdp::libxdp`, libxdp's C API), allowed where they are declared, and each
//! of their unsafe blocks carries a
//! `// SAFETY:` line (clippy checks it).
#[allow(unsafe_code)]
pub mod abi;
pub mod cli;
pub mod cni;
pub mod config;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod dhcp;
pub mod doctor;
pub mod ether;
pub mod frame;
pub mod ipc;
#[cfg(test)]
mod layers;
pub mod logging;
pub mod memif;
pub mod modes;
pub mod netlink;
pub mod netns;
pub mod nic;
pub mod plugin;
pub mod rollback;
#[allow(unsafe_code)]
pub mod sys;
pub mod telemetry;
pub mod xdp;
#[allow(unsafe_code)]
pub mod xsk;
