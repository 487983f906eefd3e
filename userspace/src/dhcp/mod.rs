//! A DHCPv4 client for endpoints on networks created with `dhcp` (`docker network create
//! -o dhcp=true`, `xmacvlan network create --dhcp`): each endpoint leases its own address
//! from the DHCP server of its segment, with its own MAC.
//!
//! - [`message`]: the messages, encoded and decoded;
//! - [`lease`]: a granted lease as the state records it, and its T1/T2/expiry schedule;
//! - [`client`]: the exchanges (acquire, extend, release), each inside the endpoint's
//!   namespace on its link.
//!
//! Who runs them: the control path acquires when it creates an endpoint and releases when it
//! removes one; the daemon (`daemon::leases`) extends every recorded lease for as long as
//! its endpoint lives.
//!
//! Hand-written rather than a crate: `mozim` (netavark's) keeps its sockets in a long-lived
//! client bound to an interface name fixed at creation, which cannot follow a Docker link
//! from the host namespace into its sandbox nor resume a recorded lease's T1/T2 after a
//! restart, and it would add second versions of `etherparse` and `rand`; `dhcproto` only
//! encodes and decodes, and brings `hickory-proto` with ICU and url (~50 crates) for that.
//! The client needs ten options of RFC 2132; frames are built with `etherparse`.
use std::net::Ipv4Addr;
use std::time::Duration;

pub mod client;
pub mod lease;
pub mod message;

pub use client::{Extended, Link, acquire, extend, release};
pub use lease::{Lease, Phase};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// How long creating an endpoint waits for a lease: long enough for a server that checks the
/// address with ARP first (udhcpd waits up to 2 s), short enough to fail well within
/// Docker's 30 s plugin timeout.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "no DHCP server answered on {segment} within {} s (DHCPDISCOVER from MAC {mac}): check \
         that a DHCP server serves that segment (its VLAN) and has free addresses",
        waited.as_secs()
    )]
    NoServer {
        segment: String,
        mac: String,
        waited: Duration,
    },
    #[error(
        "the DHCP server {server} offered {offered} on {segment} but did not acknowledge the \
         request for it"
    )]
    NoAck {
        server: Ipv4Addr,
        offered: Ipv4Addr,
        segment: String,
    },
    #[error("the DHCP server {server} refused (DHCPNAK): {message}")]
    Refused { server: Ipv4Addr, message: String },
    #[error(
        "the DHCP server {server} acknowledged {offered} instead of the address held, {held}: \
         not taken (an endpoint's address never changes behind its container's back)"
    )]
    AddressChanged {
        server: Ipv4Addr,
        held: Ipv4Addr,
        offered: Ipv4Addr,
    },
    #[error("the DHCP server {server} sent an unusable lease: {why}")]
    BadLease { server: Ipv4Addr, why: String },
    #[error("the endpoint's link `{ifname}` is not in namespace `{netns}`")]
    NoLink { netns: String, ifname: String },
    #[error("DHCP on `{ifname}` in namespace `{netns}`")]
    Io {
        netns: String,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering namespace `{netns}` for DHCP")]
    Namespace {
        netns: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
