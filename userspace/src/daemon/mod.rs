//! `xmacvlan daemon`: the long-running owner of the dataplane, driven over a control socket.
pub mod socket;
