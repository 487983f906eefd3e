//! `xmacvlan daemon`: the long-running owner of the dataplane, driven over a control socket
//! by the CLI (`endpoint create|rm` attach and detach live, `stats` reads from it). What
//! travels over that socket, and how clients reach it, is in [`crate::ipc`].
pub mod leases;
mod lifecycle;
pub mod metrics;
pub mod run;
pub mod server;
pub mod watch;
