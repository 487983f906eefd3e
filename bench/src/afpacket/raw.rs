//! A plain AF_PACKET socket on one interface, read and written a batch at a time with
//! `recvmmsg`/`sendmmsg`: what a latency-minded application on a kernel macvlan device uses
//! (each frame is readable as soon as it arrives, unlike a TPACKET_V3 block that waits to
//! fill or retire). The benchmark's kernel baseline sinks and reflects with it.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

use super::{PACKET_IGNORE_OUTGOING, bind_all_protocols, last_error, setsockopt};

/// Frames per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 32;
/// Bytes per frame buffer: an MTU-sized frame with its header, and more.
pub const BUF: usize = 2048;

/// A batch of frame buffers, filled by [`RawSocket::recv`] and sent by [`RawSocket::send`].
pub struct Frames {
    bufs: Box<[[u8; BUF]; BATCH]>,
    lens: [usize; BATCH],
    count: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            bufs: Box::new([[0; BUF]; BATCH]),
            lens: [0; BATCH],
            count: 0,
        }
    }
}

impl Frames {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frame `i` of the batch, to read or edit in place.
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i][..self.lens[i]]
    }
}

pub struct RawSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl RawSocket {
    /// A non-blocking socket receiving every frame arriving on `ifindex` (not those this host
    /// sends) and sending out of it, in the calling thread's network namespace.
    pub fn open(ifindex: u32) -> Result<RawSocket> {
        if ifindex == 0 {
            bail!("AF_PACKET socket: interface index 0 names no interface");
        }
        // Protocol 0 until bind() names the interface and ETH_P_ALL: no frame of another
        // interface is queued meanwhile.
        // SAFETY: socket() takes plain integers and touches no memory of ours.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(last_error("opening an AF_PACKET socket", ifindex));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            &(1 as libc::c_int),
        )
        .map_err(|e| anyhow::anyhow!("AF_PACKET: PACKET_IGNORE_OUTGOING: {e}"))?;
        bind_all_protocols(fd.as_raw_fd(), ifindex)?;
        Ok(RawSocket { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receive up to a batch of waiting frames into `frames` (never blocks); how many.
    pub fn recv(&self, frames: &mut Frames) -> io::Result<usize> {
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i].iov_base = frames.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = BUF;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at one iovec of a live buffer of BUF bytes owned by
        // `frames`, and all of them outlive the call; the kernel writes only inside them.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            frames.count = 0;
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for (len, msg) in frames.lens.iter_mut().zip(&msgs).take(n) {
            *len = (msg.msg_len as usize).min(BUF);
        }
        frames.count = n;
        Ok(n)
    }

    /// Send every frame of `frames` out of the interface; how many the kernel took (the rest
    /// found its queue full).
    pub fn send(&self, frames: &mut Frames) -> io::Result<usize> {
        let n = frames.count;
        let mut iov: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iov[i].iov_base = frames.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = frames.lens[i];
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers each point at one iovec of a live buffer holding the
        // frame's length in bytes; the kernel only reads them during the call.
        let sent = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        Ok(sent as usize)
    }
}
