//! AF_XDP sockets and their UMEMs (xsk-rs). The only module that touches ring descriptors
//! and UMEM memory directly.
//!
//! Ownership, per (NIC, queue): one UMEM; its fill and completion rings belong to the
//! queue's worker ([`QueueRings`]); every socket on that queue shares the UMEM. Frames move
//! as [`RxFrame`] values, which cannot be copied, so a frame is owned by exactly one party
//! at a time: the kernel, a ring, a consumer, or a free-frame queue.
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::modes::{BindMode, Bound};
use anyhow::{Context, Result, anyhow, bail};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

mod busy_poll;
pub mod chain;
mod ledger;
mod pool;
mod send;
pub mod wait;
pub use chain::MAX_CHAIN;
pub use pool::FramePool;
pub use send::{StageError, TxBatch};

/// Frames handled per ring operation.
pub const BATCH: usize = 64;

/// TX ring entries of every shared socket (the ports' transmissions).
pub const TX_RING: usize = 64;

/// Ring and UMEM sizes for one queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    pub frames: u32,
    pub frame_size: u32,
    /// Receive ring of each socket.
    pub rx_ring: u32,
    pub bind: BindMode,
}

/// What the kernel keeps in front of every frame it receives into a UMEM chunk
/// (`XDP_PACKET_HEADROOM` of `linux/bpf.h`).
pub const XDP_PACKET_HEADROOM: u32 = 256;

impl QueueConfig {
    /// What one chunk holds of a received frame: the chunk less the kernel's headroom. The
    /// longest frame a socket without multi-buffer takes whole.
    pub fn chunk_room(&self) -> u32 {
        self.frame_size.saturating_sub(XDP_PACKET_HEADROOM)
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            frames: 8192,
            frame_size: 4096,
            rx_ring: 2048,
            bind: BindMode::Auto,
        }
    }
}

/// A received frame: the queue whose UMEM holds it, and its chunks there: the descriptor of
/// the first; the others, in a multi-buffer frame, are found through the queue's
/// [`chain::Links`]. As small as one descriptor, whatever the frame's length.
#[derive(Debug)]
pub struct RxFrame {
    desc: FrameDesc,
    queue: u16,
    chunks: u8,
    len: u32,
}

impl RxFrame {
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The frame's length, all its chunks together.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The UMEM chunks the frame takes (more than one only with multi-buffer).
    pub fn chunks(&self) -> usize {
        usize::from(self.chunks)
    }
}

/// One UMEM chunk, free: what pools hold and what the fill and TX rings take.
#[derive(Debug)]
pub struct Chunk {
    desc: FrameDesc,
}

/// What one read of a socket's receive ring took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Descriptors taken off the ring (a full batch: more may wait).
    pub descs: usize,
    /// Of those, chunks the kernel really held (see `ledger`): out of its hands now.
    pub chunks: usize,
    /// Whole frames passed on.
    pub frames: usize,
    /// Broken chains dropped, their chunks given back.
    pub broken: usize,
}

/// The UMEM of one queue; cheap to clone (shared), so consumers can read frame bytes.
#[derive(Clone)]
pub struct QueueUmem {
    umem: Umem,
    ifname: Interface,
    queue: u16,
    rx_ring: u32,
    /// Which frames the kernel holds, shared by every socket of the queue.
    ledger: std::sync::Arc<ledger::Ledger>,
    /// Which chunk follows which in a multi-buffer frame.
    links: std::sync::Arc<chain::Links>,
    /// Whether the queue's sockets receive (and send) frames longer than a chunk as chains.
    multi_buffer: bool,
    chunk_room: u32,
}

/// What the queue's worker owns: the fill ring, the completion ring, and the queue's own
/// socket (the per-queue socket of `user` demux; idle but holding the rings in `xdp` mode).
pub struct QueueRings {
    fill: FillQueue,
    comp: CompQueue,
    pub socket: RxSocket,
    scratch: Vec<FrameDesc>,
    /// Frames kept out of the fill ring for transmission (see [`QueueRings::take_tx_frames`]).
    tx_reserve: Vec<FrameDesc>,
    /// Times the driver asked for a wake-up after a refill and got one, not yet taken
    /// ([`QueueRings::take_fill_wakeups`]).
    fill_wakeups: u64,
}

/// One AF_XDP socket: its receive ring, and its TX ring for application ports.
pub struct RxSocket {
    rx: RxQueue,
    tx: TxQueue,
    queue: u16,
    ledger: std::sync::Arc<ledger::Ledger>,
    links: std::sync::Arc<chain::Links>,
    /// A chain whose end the last read did not reach.
    joiner: chain::Joiner,
    scratch: Vec<FrameDesc>,
    /// Set only while dropping: fields drop in order, so this closes after `rx` and `_tx`.
    last_reference: Option<OwnedFd>,
}

/// Create queue `queue`'s UMEM and its first socket on `ifname`, and hand every frame to the
/// fill ring. The XDP program must already be attached (this never loads libxdp's own).
/// Each bind mode is tried with multi-buffer (`XDP_USE_SG`, Linux 6.6+) first, then without.
/// Why `Auto` fell back to copy mode, or why multi-buffer was refused, goes to `warnings`, for
/// the caller to log or print.
pub fn open_queue(
    ifname: &str,
    queue: u32,
    cfg: &QueueConfig,
    warnings: &mut Vec<String>,
) -> Result<(QueueUmem, QueueRings, Bound)> {
    let attempts: &[(BindFlags, Bound)] = match cfg.bind {
        BindMode::Zerocopy => &[(BindFlags::XDP_ZEROCOPY, Bound::Zerocopy)],
        BindMode::Copy => &[(BindFlags::XDP_COPY, Bound::Copy)],
        BindMode::Auto => &[
            (BindFlags::XDP_ZEROCOPY, Bound::Zerocopy),
            (BindFlags::XDP_COPY, Bound::Copy),
        ],
    };
    let mut last_error = None;
    for &(flags, bound) in attempts {
        let flags = flags | BindFlags::XDP_USE_NEED_WAKEUP;
        let opened = match try_open_queue(ifname, queue, cfg, flags | BindFlags::XDP_USE_SG) {
            Ok(opened) => Ok(opened),
            Err(sg_refused) => try_open_queue(ifname, queue, cfg, flags).inspect(|_| {
                warnings.push(format!(
                    "{ifname} queue {queue}: multi-buffer AF_XDP (XDP_USE_SG) refused \
                     ({sg_refused:#}: it needs Linux 6.6+ and, in zero-copy, a driver that \
                     supports it); frames longer than {} bytes go to the kernel",
                    cfg.chunk_room()
                ))
            }),
        };
        match opened {
            Ok((umem, rings)) => {
                if let Some(refused) = &last_error {
                    warnings.push(format!(
                        "{ifname} queue {queue}: zero-copy bind refused ({refused:#}); using copy mode"
                    ));
                }
                return Ok((umem, rings, bound));
            }
            Err(e) => last_error = Some(e),
        }
    }
    let e = last_error.expect("at least one attempt");
    if cfg.bind == BindMode::Zerocopy {
        Err(e.context(format!(
            "binding an AF_XDP socket in zero-copy mode to {ifname} queue {queue}: the driver \
             does not support it (veth never does); use --bind copy or auto"
        )))
    } else {
        Err(e.context(format!(
            "binding an AF_XDP socket to {ifname} queue {queue}"
        )))
    }
}

fn try_open_queue(
    ifname: &str,
    queue: u32,
    cfg: &QueueConfig,
    flags: BindFlags,
) -> Result<(QueueUmem, QueueRings)> {
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| anyhow!("{e}"))?)
        .fill_queue_size(ring_size(cfg.frames)?)
        .comp_queue_size(ring_size(cfg.frames)?)
        .build()
        .map_err(|e| anyhow!("UMEM configuration: {e}"))?;
    let frames = NonZeroU32::new(cfg.frames).ok_or_else(|| anyhow!("UMEM needs frames"))?;
    let (umem, descs) =
        Umem::new(umem_config, frames, false).map_err(|e| anyhow!("creating the UMEM: {e}"))?;
    let queue_umem = QueueUmem {
        umem,
        ifname: ifname
            .parse()
            .map_err(|_| anyhow!("interface name {ifname:?} contains a NUL byte"))?,
        queue: u16::try_from(queue).context("queue id")?,
        rx_ring: cfg.rx_ring,
        ledger: std::sync::Arc::new(ledger::Ledger::new(
            cfg.frames as usize,
            cfg.frame_size as usize,
        )),
        links: std::sync::Arc::new(chain::Links::new(
            cfg.frames as usize,
            cfg.frame_size as usize,
        )),
        multi_buffer: flags.contains(BindFlags::XDP_USE_SG),
        chunk_room: cfg.chunk_room(),
    };
    let (socket, rings) = queue_umem.create_socket(flags)?;
    let (fill, comp) = rings
        .ok_or_else(|| anyhow!("{ifname} queue {queue} is already bound by another AF_XDP user"))?;
    let mut descs = descs;
    // A sixteenth of the frames is set aside for ports' transmissions, from which they return
    // by the completion ring; the rest start in the kernel's hands.
    let tx_reserve = descs.split_off(descs.len() - tx_reserve_frames(cfg.frames));
    let mut rings = QueueRings {
        fill,
        comp,
        socket,
        scratch: Vec::with_capacity(BATCH),
        tx_reserve,
        fill_wakeups: 0,
    };
    let free = rings.fill.nb_free(cfg.frames) as usize;
    if free < descs.len() {
        bail!("fill ring has room for {free} of {} frames", descs.len());
    }
    for desc in &descs {
        queue_umem.ledger.given(desc.addr());
    }
    // SAFETY: the descriptors are this UMEM's own, fresh from Umem::new, and owned by no
    // other ring.
    let produced = unsafe { rings.fill.produce(&descs) };
    if produced != descs.len() {
        bail!(
            "could only hand {produced} of {} frames to the fill ring",
            descs.len()
        );
    }
    Ok((queue_umem, rings))
}

/// Frames of a queue's UMEM reserved for transmission: a sixteenth. TX has a pool of its own
/// so that a busy receive path (which hands every free frame straight back to the fill ring)
/// cannot starve a port's transmissions, nor a sending port the fill ring.
pub fn tx_reserve_frames(frames: u32) -> usize {
    (frames / 16) as usize
}

/// A ring size xsk-rs accepts (a power of two), or an error naming the size.
pub fn ring_size(n: u32) -> Result<QueueSize> {
    QueueSize::new(n).map_err(|e| anyhow!("ring size {n}: {e} (must be a power of two)"))
}

impl QueueUmem {
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Frames the kernel delivered twice (dropped, see `ledger`): must stay 0 on a sound
    /// driver.
    pub fn duplicates(&self) -> u64 {
        self.ledger.duplicates()
    }

    /// Whether the queue's sockets were bound multi-buffer (`XDP_USE_SG`).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The chunks a transmitted frame of `len` bytes takes (each a chunk less the 256 bytes
    /// xsk-rs leaves in front of its frames, as on receive), or None if it cannot go: longer
    /// than a chunk without multi-buffer, or than [`MAX_CHAIN`] chunks with it.
    #[inline]
    pub fn tx_chunks(&self, len: usize) -> Option<usize> {
        let chunks = len.div_ceil(self.chunk_room.max(1) as usize).max(1);
        let limit = if self.multi_buffer { MAX_CHAIN } else { 1 };
        (chunks <= limit).then_some(chunks)
    }

    /// The longest frame a socket of this queue takes whole: a chain of [`MAX_CHAIN`] chunks
    /// with multi-buffer, one chunk without. The classifier passes longer ones to the kernel
    /// rather than redirect them to a socket that would drop them.
    pub fn max_rx_frame(&self) -> u32 {
        if self.multi_buffer {
            self.chunk_room * MAX_CHAIN as u32
        } else {
            self.chunk_room
        }
    }

    /// Another socket on this queue, sharing the UMEM (`XDP_SHARED_UMEM`; the kernel makes it
    /// inherit the first socket's bind mode).
    pub fn add_socket(&self) -> Result<RxSocket> {
        let (socket, rings) = self.create_socket(BindFlags::empty())?;
        if rings.is_some() {
            bail!(
                "a shared socket on queue {} unexpectedly got its own fill ring",
                self.queue
            );
        }
        Ok(socket)
    }

    fn create_socket(
        &self,
        flags: BindFlags,
    ) -> Result<(RxSocket, Option<(FillQueue, CompQueue)>)> {
        let config = SocketConfig::builder()
            .rx_queue_size(ring_size(self.rx_ring)?)
            .tx_queue_size(ring_size(TX_RING as u32)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(flags)
            .build();
        // SAFETY: INHIBIT_PROG_LOAD is set, which is what Socket::new requires when the
        // (interface, queue) pair is shared; xmacvlan attaches its own program.
        let (tx, rx, rings) =
            unsafe { Socket::new(config, &self.umem, &self.ifname, self.queue.into()) }.map_err(
                |e| {
                    let hint = match std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .and_then(|io| io.raw_os_error())
                    {
                        Some(libc::EPERM) => " (needs root, or CAP_NET_RAW + CAP_NET_ADMIN)",
                        Some(libc::EBUSY) => {
                            " (another AF_XDP socket with its own UMEM holds this queue)"
                        }
                        Some(libc::EINVAL) => " (queue id beyond the NIC's queue count?)",
                        _ => "",
                    };
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    anyhow!(
                        "creating an AF_XDP socket on queue {}: {e}{cause}{hint}",
                        self.queue
                    )
                },
            )?;
        Ok((
            RxSocket {
                rx,
                tx,
                queue: self.queue,
                ledger: self.ledger.clone(),
                links: self.links.clone(),
                joiner: chain::Joiner::default(),
                scratch: vec![FrameDesc::default(); BATCH],
                last_reference: None,
            },
            rings,
        ))
    }

    /// The bytes of a received frame's first chunk: the whole frame unless it came in a
    /// chain, and in any case its headers.
    #[inline]
    pub fn head<'a>(&'a self, frame: &'a RxFrame) -> &'a [u8] {
        debug_assert_eq!(frame.queue, self.queue, "frame of another queue's UMEM");
        // SAFETY: `frame` came from an rx ring of a socket on this UMEM (RxFrame values are
        // only made by RxSocket::recv on this queue), and while it is held as an RxFrame no
        // ring hands it to the kernel, so nothing writes it during the borrow.
        unsafe { self.umem.data(&frame.desc) }.contents()
    }

    /// A received frame as its segments, one per chunk, in order: written into `out`, the
    /// count returned. No allocation.
    #[inline]
    pub fn segments<'a>(&'a self, frame: &'a RxFrame, out: &mut [&'a [u8]; MAX_CHAIN]) -> usize {
        debug_assert_eq!(frame.queue, self.queue, "frame of another queue's UMEM");
        let mut chunk = frame.desc;
        let chunks = frame.chunks().min(MAX_CHAIN);
        for (i, slot) in out.iter_mut().enumerate().take(chunks) {
            if i > 0 {
                chunk = self.links.get(&chunk);
            }
            // SAFETY: every chunk of `frame` is this UMEM's and held with it (its links were
            // written when the chain was joined and belong to its holder): as for `head`.
            *slot = unsafe { self.umem.data(&chunk) }.contents();
        }
        chunks
    }

    /// Give every chunk of `frame` back to `pool`.
    #[inline]
    pub fn release(&self, frame: RxFrame, pool: &FramePool) {
        debug_assert_eq!(frame.queue, self.queue, "frame of another queue's UMEM");
        chain::release_chain(frame.desc, frame.chunks, &self.links, |desc| {
            pool.put(Chunk { desc })
        });
    }
}

impl RxSocket {
    /// Take up to [`BATCH`] descriptors off the receive ring and hand each whole frame to `f`,
    /// with the monotonic time read once after the batch was taken (so it is never earlier
    /// than a frame's send time). A chain the batch ends inside is held for the next read; a
    /// broken chain is dropped, its chunks given back to `free` (see `chain`). A chunk the
    /// kernel had already handed over is not passed on (see `ledger`). No allocation; no
    /// syscall (the clock is vDSO).
    #[inline]
    pub fn recv(&mut self, free: &FramePool, mut f: impl FnMut(RxFrame, u64)) -> Received {
        // SAFETY: the scratch descriptors are overwritten by consume, and the frames it
        // returns are this socket's UMEM's, now owned by us (moved out as RxFrame below).
        let n = unsafe { self.rx.consume(&mut self.scratch) };
        let mut got = Received {
            descs: n,
            ..Received::default()
        };
        if n == 0 {
            return got;
        }
        let now = crate::sys::monotonic_ns();
        let Self {
            scratch,
            ledger,
            links,
            joiner,
            queue,
            ..
        } = self;
        for desc in &scratch[..n] {
            let ours = ledger.taken(desc.addr());
            got.chunks += usize::from(ours);
            match joiner.push(*desc, ours, links, |desc| free.put(Chunk { desc })) {
                chain::Joined::Nothing => {}
                chain::Joined::Frame { head, chunks, len } => {
                    got.frames += 1;
                    let frame = RxFrame {
                        desc: head,
                        queue: *queue,
                        chunks,
                        len,
                    };
                    f(frame, now);
                }
                chain::Joined::Broken => got.broken += 1,
            }
        }
        got
    }

    /// Give back the chain a read ended inside, whose end will not be read (the socket is
    /// closing): returns whether there was one, a broken frame for the caller to count.
    pub fn abandon_chain(&mut self, free: &FramePool) -> bool {
        self.joiner
            .abandon(&self.links, |desc| free.put(Chunk { desc }))
    }

    /// The queue this socket is bound to.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The kernel's counters for this socket (`XDP_STATISTICS`); a syscall, not for hot loops.
    pub fn statistics(&self) -> Result<SocketStats> {
        self.stats_handle().statistics()
    }
}

impl RxSocket {
    /// A handle that reads this socket's kernel counters from another thread. It must not
    /// be used after the socket is closed (the fd number could be reused).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

/// Reads `XDP_STATISTICS` of a socket owned by another thread (getsockopt is thread-safe).
#[derive(Debug, Clone, Copy)]
pub struct StatsHandle(std::os::fd::RawFd);

impl StatsHandle {
    pub fn statistics(&self) -> Result<SocketStats> {
        socket_statistics(self.0)
    }
}

crate::counter_set! {
    /// The kernel's counters of one AF_XDP socket (`XDP_STATISTICS`), or a sum over sockets.
    pub struct SocketStats in "xsk" {
        /// Frames redirected to the socket that found no free buffer (fill ring empty).
        rx_dropped: Dropped(reason = "rx_dropped"), "RX-DROPPED";
        /// Invalid descriptors on the socket's receive side.
        rx_invalid_descs: Info, "RX-INVALID";
        /// Frames redirected to the socket whose receive ring was full.
        rx_ring_full: Dropped(reason = "rx_ring_full"), "RX-RING-FULL";
        /// Times the fill ring was found empty.
        rx_fill_ring_empty_descs: Info, "FILL-EMPTY";
        /// Invalid descriptors on the socket's TX ring.
        tx_invalid_descs: Info, "TX-INVALID";
        /// Times the TX ring was found empty.
        tx_ring_empty_descs: Info, "TX-EMPTY";
    }
}

impl SocketStats {
    /// Frames the kernel redirected to the socket but could not place in it.
    pub fn dropped(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }
}

fn socket_statistics(fd: std::os::fd::RawFd) -> Result<SocketStats> {
    // SAFETY: xdp_statistics is plain data; all-zero is a valid value.
    let mut raw: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `raw` and `len` are valid and writable and `len` holds raw's size; a stale or
    // wrong fd only makes the call fail.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            (&mut raw as *mut libc::xdp_statistics).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(XDP_STATISTICS)");
    }
    Ok(SocketStats {
        rx_dropped: raw.rx_dropped,
        rx_invalid_descs: raw.rx_invalid_descs,
        rx_ring_full: raw.rx_ring_full,
        rx_fill_ring_empty_descs: raw.rx_fill_ring_empty_descs,
        tx_invalid_descs: raw.tx_invalid_descs,
        tx_ring_empty_descs: raw.tx_ring_empty_descs,
    })
}

impl RxSocket {
    /// Free entries of this socket's TX ring (no syscall: reads the ring's consumer index).
    #[inline]
    pub fn tx_room(&mut self) -> usize {
        self.tx.nb_free(BATCH as u32) as usize
    }

    /// Kick the kernel to transmit what this socket's TX ring holds, if the driver asked to be
    /// woken (copy mode always does). Called at most once per batch. A kernel that is busy or
    /// out of buffers leaves the frames queued for the next kick. Returns the frames the
    /// device dropped: in copy mode the kernel stops at a frame the driver refused
    /// (`NET_XMIT_DROP`, e.g. a veth whose peer's ring is full), completes it unsent and
    /// answers `EBUSY`.
    #[inline]
    pub fn tx_kick(&mut self) -> u64 {
        if !self.tx.needs_wakeup() {
            return 0;
        }
        // SAFETY: a zero-length sendto on our own socket's fd with no buffer and no address:
        // it only asks the kernel to process the TX ring.
        let ret = unsafe {
            libc::sendto(
                self.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
            1
        } else {
            0
        }
    }

    /// Whether the TX ring still holds frames the kernel has not taken.
    #[inline]
    pub fn tx_pending(&mut self) -> bool {
        self.tx.nb_free_exact() < TX_RING as u32
    }
}

/// Closing an AF_XDP socket waits for an RCU grace period, and xsk-rs closes it under its
/// UMEM's lock, so the sockets of one queue would close one after another (~13 ms each on the
/// 2-core VM: 13 s to stop 1020 endpoints). A duplicate of the fd, closed after xsk-rs's close,
/// takes that wait out of the lock, where closes from several threads overlap
/// (`dataplane::close_in_parallel`).
impl Drop for RxSocket {
    fn drop(&mut self) {
        // SAFETY: the fd belongs to `self.rx`, which stays open until after this returns.
        let fd = unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) };
        // Without a duplicate (out of fds) the socket simply closes under the lock.
        self.last_reference = fd.try_clone_to_owned().ok();
    }
}

impl std::os::fd::AsRawFd for RxSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.rx.fd().as_raw_fd()
    }
}

impl QueueRings {
    /// Hand frames from `free` back to the kernel's fill ring, at most one batch. Wakes the
    /// driver only when it asked to be woken (need_wakeup). Returns the frames handed back.
    #[inline]
    pub fn refill(&mut self, free: &FramePool) -> usize {
        let room = self.fill.nb_free(BATCH as u32) as usize;
        self.scratch.clear();
        while self.scratch.len() < room.min(BATCH) {
            match free.take() {
                Some(chunk) => self.scratch.push(chunk.desc),
                None => break,
            }
        }
        self.produce_scratch(free)
    }

    /// The frames set aside for transmission, as values for the queue's TX free-frame pool.
    /// Empty after the first call.
    pub fn take_tx_frames(&mut self) -> Vec<Chunk> {
        self.tx_reserve
            .drain(..)
            .map(|desc| Chunk { desc })
            .collect()
    }

    /// Take up to one batch of transmitted frames off the completion ring (shared by every
    /// socket of the queue) and give them back to the TX pool `tx_free`. No syscall.
    #[inline]
    pub fn reap_completions(&mut self, tx_free: &FramePool) -> usize {
        self.scratch.clear();
        self.scratch.resize(BATCH, FrameDesc::default());
        // SAFETY: the completion ring only returns descriptors of this queue's UMEM that a
        // socket of it transmitted; the kernel is done with them, so they are ours again.
        let n = unsafe { self.comp.consume(&mut self.scratch) };
        for desc in &self.scratch[..n] {
            tx_free.put(Chunk { desc: *desc });
        }
        self.scratch.clear();
        n
    }

    /// An AF_XDP rxdrop pass: take up to one batch off the queue socket's receive ring and
    /// give the frames straight back to the fill ring, unread (the benchmark's anchor for
    /// any path that delivers into sockets). Returns the frames recycled (a chain counts once). No allocation; a
    /// syscall only when the driver asked for a fill-ring wake-up.
    #[cfg(feature = "bench")]
    #[inline]
    pub fn recycle_rx(&mut self, spill: &FramePool) -> usize {
        // Only as many as the fill ring takes, so none is left in our hands.
        let room = (self.fill.nb_free(BATCH as u32) as usize).min(BATCH);
        self.scratch.clear();
        // Within the capacity of BATCH it was made with: no allocation.
        self.scratch.resize(room, FrameDesc::default());
        // SAFETY: consume overwrites the scratch descriptors; those it returns are frames of
        // this queue's UMEM the kernel handed to the queue's socket, now ours, and they go
        // back to the kernel below without being read or held anywhere else.
        let n = unsafe { self.socket.rx.consume(&mut self.scratch) };
        self.scratch.truncate(n);
        let ledger = &self.socket.ledger;
        self.scratch.retain(|d| ledger.taken(d.addr()));
        // A multi-buffer frame is several descriptors: count the frames, by their last ones.
        let frames = self
            .scratch
            .iter()
            .filter(|d| !chain::Desc::more(*d))
            .count();
        self.produce_scratch(spill);
        frames
    }

    /// Hand the scratch descriptors to the fill ring; any it does not take (it was asked for
    /// room first, so none should be) go to `spill` rather than being forgotten.
    fn produce_scratch(&mut self, spill: &FramePool) -> usize {
        if self.scratch.is_empty() {
            return 0;
        }
        // SAFETY: every descriptor came from an RxFrame of this queue's UMEM that was moved
        // in (so no one else holds it), and nb_free guaranteed room for all of them.
        let n = unsafe { self.fill.produce(&self.scratch) };
        for desc in &self.scratch[..n] {
            self.socket.ledger.given(desc.addr());
        }
        for desc in self.scratch.drain(..).skip(n) {
            spill.put(Chunk { desc });
        }
        if self.fill.needs_wakeup() {
            // A syscall, but only when the driver went to sleep and asked for it.
            self.fill.wakeup(self.socket.rx.fd_mut(), 0).ok();
            self.fill_wakeups += 1;
        }
        n
    }

    /// Wake-ups the fill ring asked for (its need_wakeup flag) and got since the last call.
    #[inline]
    pub fn take_fill_wakeups(&mut self) -> u64 {
        std::mem::take(&mut self.fill_wakeups)
    }
}
