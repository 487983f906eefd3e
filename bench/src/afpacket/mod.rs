//! Zero-copy AF_PACKET TPACKET_V3 receive ring for one interface: the `kernel` demux baseline
//! (plain macvlan read the way a tuned packet consumer would read it).
//!
//! The kernel fills fixed-size blocks of a shared mmap'd ring with frames and hands a whole block
//! to userspace at once (when it is full or its retire timeout fires). [`PacketRing::poll_block`]
//! walks the frames of one ready block in place and gives the block back: no copy, no allocation,
//! one `poll()` only when nothing is ready, so syscalls are per block, never per frame.
//!
//! Lab-only (the library's dataplane never reads a packet socket), so it lives in the bench
//! crate, whose only other `unsafe` module is `xsk_tx`: every block states its invariant.
//! The tests need root (namespaces, veth pairs) and run under `cargo test -p xmacvlan-bench`.
//! [`raw`] is the plain (non-ring) socket of the kernel baseline's latency runs.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, anyhow, bail};

pub mod raw;

#[cfg(test)]
mod tests;

// ABI constants from <linux/if_packet.h>; mirrored here because they never change and not every
// libc release exports them at the crate root.
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V3: libc::c_int = 2;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
/// `tp_frame_size` only matters to V1/V2; V3 packs frames by `tp_next_offset`. The kernel still
/// checks it (16-aligned, at least a header, divides the block), so it is fixed here.
const FRAME_SIZE: u32 = 2048;

/// `struct tpacket_req3`.
#[repr(C)]
#[derive(Default)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// `struct tpacket_stats_v3`.
#[repr(C)]
#[derive(Default)]
struct TpacketStatsV3 {
    packets: u32,
    drops: u32,
    freeze_q_cnt: u32,
}

// Offsets inside `struct tpacket_block_desc` (version, offset_to_priv, then the 8-aligned
// `tpacket_hdr_v1`) and `struct tpacket3_hdr`.
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
const HDR_NEXT_OFFSET: usize = 0;
const HDR_SEC: usize = 4;
const HDR_NSEC: usize = 8;
const HDR_SNAPLEN: usize = 12;
const HDR_LEN: usize = 16;
const HDR_MAC: usize = 24;

/// Geometry of the receive ring.
///
/// Defaults: 64 blocks of 256 KiB (16 MiB). A 64-byte frame takes ~144 bytes of a block with its
/// header, so a block holds ~1,800 of them and the ring ~115k: over 100 ms at 1 Mpps (about
/// AF_PACKET v3's ceiling), enough to ride out a descheduled consumer, while each block hand-back
/// (and each `poll()`) is amortized over many frames. 256 KiB (order-6 pages) is small enough that
/// the kernel finds the memory on a long-running host. The 1 ms retire timeout is the smallest the
/// kernel takes: it bounds how long a frame can wait in a half-filled block at low load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block; a multiple of the page size. A frame longer than a block minus its
    /// header is truncated by the kernel (counted in [`RingStats::truncated`]).
    pub block_size: u32,
    pub block_count: u32,
    /// Milliseconds after which the kernel hands over a block that is not full (≥ 1).
    pub retire_timeout_ms: u32,
    /// Do not see frames this host sends out of the interface (`PACKET_IGNORE_OUTGOING`):
    /// a receive consumer wants only what arrives.
    pub ignore_outgoing: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            block_size: 256 * 1024,
            block_count: 64,
            retire_timeout_ms: 1,
            ignore_outgoing: true,
        }
    }
}

impl RingConfig {
    fn validate(&self) -> Result<()> {
        // SAFETY: sysconf reads a constant and touches no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
        if self.block_size < FRAME_SIZE.max(page) || !self.block_size.is_multiple_of(page) {
            bail!(
                "AF_PACKET ring block size {} must be a non-zero multiple of the page size ({page})",
                self.block_size
            );
        }
        if self.block_count == 0 {
            bail!("AF_PACKET ring needs at least one block");
        }
        if (self.block_size as u64) * (self.block_count as u64) > isize::MAX as u64 / 2 {
            bail!(
                "AF_PACKET ring of {} x {} bytes is too large",
                self.block_count,
                self.block_size
            );
        }
        if self.retire_timeout_ms == 0 {
            // 0 would ask the kernel to pick a timeout from the link speed (several ms).
            bail!("AF_PACKET ring retire timeout must be at least 1 ms");
        }
        Ok(())
    }

    fn ring_len(&self) -> usize {
        self.block_size as usize * self.block_count as usize
    }
}

/// Kernel-side counters of the socket since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames the socket saw: delivered into the ring plus dropped (the kernel's `tp_packets`).
    pub packets: u64,
    /// Frames dropped because no block was free (`tp_drops`).
    pub drops: u64,
    /// Times the ring froze because userspace held every block (`tp_freeze_q_cnt`).
    pub freeze_q_cnt: u64,
    /// Frames handed to the consumer shorter than on the wire (did not fit a block); counted here.
    pub truncated: u64,
}

/// An AF_PACKET socket with a TPACKET_V3 receive ring bound to one interface.
pub struct PacketRing {
    fd: OwnedFd,
    ring: NonNull<u8>,
    config: RingConfig,
    /// Index of the next block to read; blocks are handed over in ring order.
    next: usize,
    totals: RingStats,
    ifindex: u32,
}

// SAFETY: the ring mapping is owned by this value alone (no aliasing handle is exposed) and is
// only touched through `&mut self`; moving it to another thread is sound.
unsafe impl Send for PacketRing {}

fn last_error(what: &str, ifindex: u32) -> anyhow::Error {
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            anyhow!("{what}: AF_PACKET needs root or CAP_NET_RAW ({err})")
        }
        Some(libc::ENODEV) | Some(libc::ENXIO) => {
            anyhow!("{what}: no interface with index {ifindex} in this network namespace ({err})")
        }
        Some(libc::ENOMEM) => {
            anyhow!("{what}: the kernel could not allocate the ring; use smaller blocks ({err})")
        }
        _ => anyhow!("{what} (interface index {ifindex}): {err}"),
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialized `T` of exactly the length passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Bind an AF_PACKET socket to interface `ifindex`, every protocol (ETH_P_ALL).
fn bind_all_protocols(fd: RawFd, ifindex: u32) -> Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the length passed, alive during the call.
    let ret = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(last_error("AF_PACKET: binding to the interface", ifindex));
    }
    Ok(())
}

impl PacketRing {
    /// Open a TPACKET_V3 ring on interface `ifindex` of the calling thread's network namespace.
    pub fn open(ifindex: u32, config: RingConfig) -> Result<PacketRing> {
        config.validate()?;
        if ifindex == 0 {
            bail!("AF_PACKET ring: interface index 0 names no interface");
        }
        // Protocol 0: the socket receives nothing until bind() names the interface, so no frame
        // of another interface slips into the ring while it is being set up.
        // SAFETY: socket() takes plain integers and touches no memory of ours.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_error("opening an AF_PACKET socket", ifindex));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sfd = fd.as_raw_fd();

        setsockopt(sfd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3)
            .map_err(|e| anyhow!("AF_PACKET: setting TPACKET_V3: {e}"))?;
        if config.ignore_outgoing {
            setsockopt(
                sfd,
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                &(1 as libc::c_int),
            )
            .map_err(|e| anyhow!("AF_PACKET: PACKET_IGNORE_OUTGOING: {e}"))?;
        }
        let req = TpacketReq3 {
            block_size: config.block_size,
            block_nr: config.block_count,
            frame_size: FRAME_SIZE,
            frame_nr: config.block_size / FRAME_SIZE * config.block_count,
            retire_blk_tov: config.retire_timeout_ms,
            ..Default::default()
        };
        if setsockopt(sfd, libc::SOL_PACKET, PACKET_RX_RING, &req).is_err() {
            return Err(last_error(
                &format!(
                    "AF_PACKET: PACKET_RX_RING of {} blocks x {} bytes",
                    config.block_count, config.block_size
                ),
                ifindex,
            ));
        }

        // SAFETY: maps the ring the kernel just allocated for this socket; length is exactly
        // block_size * block_count, as the kernel requires; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                config.ring_len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                sfd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(last_error("AF_PACKET: mapping the receive ring", ifindex));
        }
        let ring = PacketRing {
            ring: NonNull::new(addr.cast()).expect("mmap returned a null mapping"),
            fd,
            config,
            next: 0,
            totals: RingStats::default(),
            ifindex,
        };

        // On error `ring` is dropped here: unmapped and closed.
        bind_all_protocols(sfd, ifindex)?;
        Ok(ring)
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Status word of block `index`, shared with the kernel.
    #[inline]
    fn block_status(&self, index: usize) -> &AtomicU32 {
        // SAFETY: `index < block_count`, so the block lies inside the mapping, which lives as long
        // as `self`; BLOCK_STATUS is 8 past a page-aligned block start, so the u32 is aligned;
        // the kernel writes it concurrently, hence the atomic view.
        unsafe {
            &*self
                .ring
                .as_ptr()
                .add(index * self.config.block_size as usize + BLOCK_STATUS)
                .cast::<AtomicU32>()
        }
    }

    /// Is the next block owned by userspace?
    #[inline]
    pub fn block_ready(&self) -> bool {
        self.block_status(self.next).load(Ordering::Acquire) & TP_STATUS_USER != 0
    }

    /// Deliver the frames of the next ready block to `on_frame`, then give the block back to
    /// the kernel. Waits up to `timeout_ms` (`-1`: forever, `0`: not at all) with `poll()` only if
    /// no block is ready. Returns the number of frames delivered: 0 when the wait timed out.
    /// Each slice is the frame from its Ethernet header, valid only during the call.
    #[inline]
    pub fn poll_block(
        &mut self,
        timeout_ms: i32,
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<usize> {
        self.poll_block_stamped(timeout_ms, |frame, _| on_frame(frame))
    }

    /// [`Self::poll_block`], with each frame's arrival time as the kernel stamped it when it
    /// placed the frame (CLOCK_REALTIME, nanoseconds): unlike the time the block is read, it
    /// does not include the wait for a half-filled block to retire.
    #[inline]
    pub fn poll_block_stamped(
        &mut self,
        timeout_ms: i32,
        mut on_frame: impl FnMut(&[u8], u64),
    ) -> Result<usize> {
        if !self.block_ready() {
            if timeout_ms == 0 {
                return Ok(0);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd, alive during the call.
            let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    return Ok(0);
                }
                return Err(anyhow!(
                    "AF_PACKET: poll on interface {}: {err}",
                    self.ifindex
                ));
            }
            if !self.block_ready() {
                return Ok(0);
            }
        }

        let block_size = self.config.block_size as usize;
        // SAFETY: `next < block_count`, so the block lies inside the mapping; the Acquire load in
        // `block_ready` saw TP_STATUS_USER, so the kernel has finished writing it and will not
        // touch it until we store TP_STATUS_KERNEL below.
        let block = unsafe {
            std::slice::from_raw_parts(self.ring.as_ptr().add(self.next * block_size), block_size)
        };
        let num_pkts = read_u32(block, BLOCK_NUM_PKTS) as usize;
        let mut offset = read_u32(block, BLOCK_FIRST_PKT) as usize;
        let mut delivered = 0;
        while delivered < num_pkts {
            // The kernel wrote these offsets; still, never read outside the block.
            if offset + HDR_MAC + 2 > block_size {
                break;
            }
            let snaplen = read_u32(block, offset + HDR_SNAPLEN) as usize;
            let len = read_u32(block, offset + HDR_LEN) as usize;
            let mac = u16::from_ne_bytes([block[offset + HDR_MAC], block[offset + HDR_MAC + 1]]);
            let start = offset + mac as usize;
            let Some(frame) = block.get(start..start + snaplen) else {
                break;
            };
            if snaplen < len {
                self.totals.truncated += 1;
            }
            let stamp = u64::from(read_u32(block, offset + HDR_SEC)) * 1_000_000_000
                + u64::from(read_u32(block, offset + HDR_NSEC));
            on_frame(frame, stamp);
            delivered += 1;
            let next = read_u32(block, offset + HDR_NEXT_OFFSET) as usize;
            if next == 0 {
                break;
            }
            offset += next;
        }

        self.block_status(self.next)
            .store(TP_STATUS_KERNEL, Ordering::Release);
        self.next = (self.next + 1) % self.config.block_count as usize;
        Ok(delivered)
    }

    /// Kernel counters since the socket was opened (the kernel resets its own on every read, so
    /// they are accumulated here). One syscall: call it per report, not per frame.
    pub fn stats(&mut self) -> Result<RingStats> {
        let mut st = TpacketStatsV3::default();
        let mut len = size_of::<TpacketStatsV3>() as libc::socklen_t;
        // SAFETY: `st` is a writable tpacket_stats_v3 and `len` holds its size.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&mut st as *mut TpacketStatsV3).cast(),
                &mut len,
            )
        };
        if ret < 0 {
            return Err(last_error(
                "AF_PACKET: reading PACKET_STATISTICS",
                self.ifindex,
            ));
        }
        self.totals.packets += st.packets as u64;
        self.totals.drops += st.drops as u64;
        self.totals.freeze_q_cnt += st.freeze_q_cnt as u64;
        Ok(self.totals)
    }
}

#[inline]
fn read_u32(block: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
}

impl AsRawFd for PacketRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        // SAFETY: `ring` is the mapping made in `open` with exactly this length; no slice into it
        // outlives `poll_block`, so nothing refers to it any more. The fd closes after this.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.config.ring_len()) };
    }
}
