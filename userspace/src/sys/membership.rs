//! Unicast addresses held in devices' receive filters by an `AF_PACKET` socket
//! (`PACKET_ADD_MEMBERSHIP` with `PACKET_MR_UNICAST`: the kernel's `dev_uc_add`, what a
//! macvlan does for its own MAC). Each address is a reference that lives as long as the
//! socket: the kernel drops whatever the socket still holds when it closes, however the
//! process ends (Ctrl-C, an error, SIGKILL), and an address someone else also added (a
//! macvlan with the same MAC) stays for them.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::check;

/// A packet socket that receives nothing (protocol 0, never bound) and holds addresses.
#[derive(Debug)]
pub struct UnicastMemberships {
    fd: OwnedFd,
}

impl UnicastMemberships {
    /// A socket in the calling thread's network namespace (needs CAP_NET_RAW).
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket takes three integers and touches no memory of ours.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Add `mac` to the unicast filter of device `ifindex` (a reference: adding the same
    /// address twice needs two drops).
    pub fn add(&self, ifindex: u32, mac: [u8; 6]) -> io::Result<()> {
        self.membership(libc::PACKET_ADD_MEMBERSHIP, ifindex, mac)
    }

    /// Drop one reference to `mac` on device `ifindex`.
    pub fn drop_address(&self, ifindex: u32, mac: [u8; 6]) -> io::Result<()> {
        self.membership(libc::PACKET_DROP_MEMBERSHIP, ifindex, mac)
    }

    fn membership(&self, op: libc::c_int, ifindex: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut mr_address = [0u8; 8];
        mr_address[..6].copy_from_slice(&mac);
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_UNICAST as u16,
            mr_alen: 6,
            mr_address,
        };
        // SAFETY: `mreq` is a live packet_mreq of the size passed; the kernel copies it.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                op,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        })
    }
}
