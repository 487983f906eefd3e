//! A raw `AF_PACKET` socket on one interface that receives only IPv4 UDP datagrams to one
//! port: what a DHCP client needs to talk before (and regardless of) the interface having an
//! address. The filter is attached before the socket is bound, so nothing else is ever queued
//! on it, whatever the interface carries.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::check;

const ETH_P_IP: u16 = 0x0800;

pub struct PacketSocket {
    fd: OwnedFd,
}

/// Classic BPF for `ip and udp dst port PORT and not a fragment` on an Ethernet frame.
fn udp_port_filter(port: u16) -> [libc::sock_filter; 11] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LDH_ABS: u16 = 0x28;
    const LDB_ABS: u16 = 0x30;
    const LDXB_MSH: u16 = 0xb1;
    const LDH_IND: u16 = 0x48;
    const JEQ: u16 = 0x15;
    const JSET: u16 = 0x45;
    const RET: u16 = 0x06;
    [
        op(LDH_ABS, 0, 0, 12),                   // EtherType
        op(JEQ, 0, 8, u32::from(ETH_P_IP)),      // IPv4, else drop
        op(LDB_ABS, 0, 0, 23),                   // IP protocol
        op(JEQ, 0, 6, libc::IPPROTO_UDP as u32), // UDP, else drop
        op(LDH_ABS, 0, 0, 20),                   // flags and fragment offset
        op(JSET, 4, 0, 0x1fff),                  // a later fragment: drop
        op(LDXB_MSH, 0, 0, 14),                  // X = IP header length
        op(LDH_IND, 0, 0, 16),                   // UDP destination port
        op(JEQ, 0, 1, u32::from(port)),          // ours, else drop
        op(RET, 0, 0, 0x40000),                  // accept the whole frame
        op(RET, 0, 0, 0),                        // drop
    ]
}

impl PacketSocket {
    /// A socket on interface `ifindex` of the calling thread's namespace that sends whole
    /// Ethernet frames and receives the IPv4 UDP datagrams addressed to `udp_port` there.
    pub fn open_udp_port(ifindex: u32, udp_port: u16) -> io::Result<Self> {
        // Protocol 0: nothing is received until the bind below, after the filter is on.
        // SAFETY: socket takes three integers and touches no memory of ours.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor socket(2) just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut filter = udp_port_filter(udp_port);
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: `program` points at `filter`, both alive for the call; the kernel copies them.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&program as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        })?;
        // SAFETY: an all-zero sockaddr_ll is a valid value; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IP.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed, alive for the call.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(Self { fd })
    }

    /// Send one whole Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a live buffer of `frame.len()` bytes for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame into `buf` (its length), or None when `deadline` passes first.
    pub fn recv(&self, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = left
                .max(Duration::from_millis(1))
                .as_millis()
                .min(i32::MAX as u128) as i32;
            if !super::poll_readable(&[self.fd.as_raw_fd()], ms)?[0] {
                continue;
            }
            // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes for the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(e);
            }
        }
    }
}
