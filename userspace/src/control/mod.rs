//! The control path: Docker-compatible macvlan networks and endpoints.
//!
//! - [`model`]: what a network and an endpoint are (plain serde data) and their value types;
//! - [`ipam`]: address allocation; [`network_plan`]: `network create`'s flags checked;
//!   [`network`], [`endpoint`]: create/rm with validation, undone on failure
//!   ([`crate::rollback`], with [`undo_step`]);
//! - [`lease`]: DHCP leases of endpoints on `dhcp` networks (the client is [`crate::dhcp`]);
//! - [`provision`]: the kernel objects over rtnetlink; [`drift`]: state versus kernel;
//! - [`state`]: the persisted state under `--data-root` (locked, atomically written);
//! - [`error`]: why a request failed, by what a caller decides on ([`ControlError`]);
//! - [`docker`]: the same, as the Docker network plugin drives it (Docker's ids, its link life cycle);
//! - [`external`]: networks and endpoints whose addresses another IPAM chose (CNI).
//!
//! `xmacvlan network …` and `xmacvlan endpoint …` are in `crate::cli::control`.
//!
//! The dataplane reads its endpoints with [`State::load`]: each [`Endpoint`] carries its name,
//! network, VLAN id (0 = untagged), MAC, addresses, namespace and interface name.

pub mod docker;
pub mod drift;
pub mod endpoint;
pub mod error;
pub mod external;
pub mod ipam;
pub mod lease;
pub mod model;
pub mod network;
pub mod network_plan;
pub mod provision;
pub mod state;

pub use endpoint::EndpointCreate;
pub use error::{ControlError, StateError};
pub use model::{Cidr, Endpoint, Mode, Network, Subnet};
pub use network::NetworkCreate;
pub use state::State;

pub(crate) use crate::sys::{random_bytes, unix_now};

/// A random MAC in Docker's locally administered `02:42:…` space.
pub(crate) fn random_mac() -> crate::abi::Mac {
    let r = random_bytes::<4>();
    [0x02, 0x42, r[0], r[1], r[2], r[3]]
}

/// An undo step for a [`crate::rollback::Rollback`] over `()`: runs `undo` and logs what
/// could not be undone (the caller's error is the one the user needs).
pub(crate) fn undo_step<'a, E: Into<anyhow::Error>>(
    what: String,
    undo: impl FnOnce() -> Result<(), E> + 'a,
) -> impl FnOnce(&mut ()) + 'a {
    move |_| {
        if let Err(e) = undo() {
            let e = e.into();
            tracing::warn!("undoing {what} after a failure: {e:#}; remove it by hand");
        }
    }
}
