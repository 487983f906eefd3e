//! memif ports: the shared-memory packet interface of VPP and DPDK (`net_memif`), protocol
//! version 2.0, with the daemon as the server and the application as the client that owns
//! the memory. Each served endpoint has its own filesystem socket; the daemon copies the
//! endpoint's frames into the client's receive ring and takes the client's frames from its
//! transmit ring (see `crate::dataplane::AppPort`).
//!
//! - [`wire`]: the 128-byte control messages.
//! - [`sock`]: SOCK_SEQPACKET sockets, descriptor passing, peer credentials (unsafe).
//! - [`shm`]: mapped regions, rings and descriptors (unsafe).
//! - [`chain`]: frames over several buffers (`DESC_FLAG_NEXT`).
//! - [`handshake`]: the server's message-by-message checks.
//! - [`port`]: the connected port the dataplane drives.
//! - [`server`]: the sockets and the events the daemon reads; `control`: the thread that
//!   admits clients and runs their handshakes.
//! - [`refusal`]: why a client is refused or cut off (short on the wire, full in the log).
//! - [`client`]: a client for Rust programs and tests.
//! - [`secret`]: the optional shared secret, read from a private file.
//! - [`error`]: why a port (either side) could not be set up.
pub mod chain;
pub mod client;
mod control;
pub mod error;
pub mod handshake;
pub mod port;
pub mod refusal;
pub mod secret;
pub mod server;
#[allow(unsafe_code)]
pub mod shm;
#[allow(unsafe_code)]
pub mod sock;
pub mod wire;

pub use client::{Client, ClientConfig};
pub use error::MemifError;
pub use port::{PortShared, ServerPort};
pub use server::{PortEvent, PortServer, PortServerConfig, PortStatus};

#[cfg(test)]
mod tests;
