//! What a link receives, as it was on the wire: an AF_PACKET socket whose frames get back
//! the 802.1Q tag the kernel moves out of the data on receive (it reports it in
//! PACKET_AUXDATA instead), so a test can see the tags a sender put on.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Capture {
    fd: OwnedFd,
}

const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

impl Capture {
    /// Everything `ifname` (in the calling thread's namespace) receives from now on.
    pub fn open(ifname: &str) -> Result<Self> {
        let index = xmacvlan::sys::if_index(ifname)
            .with_context(|| format!("no interface {ifname} to capture on"))?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto.into()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: `fd` is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid int of the size given.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error()).context("PACKET_AUXDATA");
        }
        // Room for everything a test sends before it reads (the default holds ~300 frames).
        let size: libc::c_int = 32 << 20;
        // SAFETY: `size` is a valid int of the size given.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error()).context("SO_RCVBUFFORCE");
        }
        Ok(Self { fd })
    }

    /// Make the captured link promiscuous for as long as this capture lives (a membership of
    /// its socket: the kernel takes it back when the socket closes), so that frames to MACs
    /// and VLANs the link's own filters would drop are seen too (a real NIC filters both).
    pub fn promiscuous(self, ifname: &str) -> Result<Self> {
        let index = xmacvlan::sys::if_index(ifname)
            .with_context(|| format!("no interface {ifname} to make promiscuous"))?;
        // SAFETY: packet_mreq is plain data; all-zero is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = index as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: `mreq` is a valid packet_mreq of the size given.
        let ret = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as u32,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error()).context("PACKET_MR_PROMISC");
        }
        Ok(self)
    }

    /// The next received (not outgoing) frame within `timeout`, its tag put back in place.
    pub fn next(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ret = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if ret < 0 {
                bail!("poll: {}", std::io::Error::last_os_error());
            }
            if ret == 0 {
                continue;
            }
            if let Some(frame) = self.recv()? {
                return Ok(Some(frame));
            }
        }
    }

    fn recv(&self) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65536];
        let mut control = [0u64; 64];
        // SAFETY: plain data; all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` points at live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).context("recvmsg(AF_PACKET)");
        }
        buf.truncate(n as usize);
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            return Ok(None);
        }
        // SAFETY: CMSG_* walk the control buffer recvmsg filled, within msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: non-null cmsg from CMSG_FIRSTHDR/NXTHDR lies inside the buffer.
            let c = unsafe { &*cmsg };
            if c.cmsg_level == libc::SOL_PACKET && c.cmsg_type == libc::PACKET_AUXDATA {
                // SAFETY: the kernel put a tpacket_auxdata here; read unaligned to be safe.
                let aux: libc::tpacket_auxdata =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 && buf.len() >= 12 {
                    let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                        aux.tp_vlan_tpid
                    } else {
                        0x8100
                    };
                    let mut tag = tpid.to_be_bytes().to_vec();
                    tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                    buf.splice(12..12, tag);
                }
            }
            // SAFETY: as above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        Ok(Some(buf))
    }
}
