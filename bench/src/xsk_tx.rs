//! The traffic generator's AF_XDP transmit socket: a socket with its own UMEM whose frames
//! cycle between a free list, the TX ring and the completion ring. Lab-only, so it lives
//! here and not in the library's `xsk` (which owns the dataplane's shared UMEMs).
use std::io::Write;
use std::num::NonZeroU32;

use anyhow::{Result, anyhow, bail};
use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use xmacvlan::xsk::{BATCH, ring_size};

/// `XDP_PKT_CONTD` of `linux/if_xdp.h`: the frame continues in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;

pub struct TxPort {
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    _fill: FillQueue,
    _rx: RxQueue,
    free: Vec<FrameDesc>,
    batch: Vec<FrameDesc>,
    /// Bytes of frame data one UMEM frame holds.
    frame_data: usize,
    /// Whether frames longer than one UMEM frame go out as chains (`XDP_USE_SG`).
    multi_buffer: bool,
    /// Descriptors submitted and not yet completed.
    in_flight: usize,
}

/// The longest frame a multi-buffer port sends: a 9000-byte MTU's frame with two VLAN tags.
pub const MAX_JUMBO_FRAME: usize = 9000 + 14 + 8;

impl TxPort {
    /// A copy-mode TX socket on `ifname` queue `queue` with `frames` frames of `frame_size`.
    /// With `multi_buffer` it sends a frame longer than `frame_size` as a chain of them
    /// (`XDP_USE_SG`, Linux 6.6+), as the jumbo frames of the lab need.
    ///
    /// A socket that just closed on the same queue (the previous run's generator) releases
    /// the queue from a kernel workqueue, and until that has run a new bind answers EBUSY: on
    /// a busy machine that can take a while, so EBUSY is retried for up to 5 s.
    pub fn open(
        ifname: &str,
        queue: u32,
        frames: u32,
        frame_size: u32,
        multi_buffer: bool,
    ) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Self::open_once(ifname, queue, frames, frame_size, multi_buffer) {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(
        ifname: &str,
        queue: u32,
        frames: u32,
        frame_size: u32,
        multi_buffer: bool,
    ) -> Result<Self> {
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(frame_size).map_err(|e| anyhow!("{e}"))?)
            .fill_queue_size(ring_size(64)?)
            .comp_queue_size(ring_size(frames)?)
            .build()
            .map_err(|e| anyhow!("UMEM configuration: {e}"))?;
        // What a UMEM frame holds after the headroom xsk-rs keeps in front.
        let frame_data = umem_config.mtu() as usize;
        let count = NonZeroU32::new(frames).ok_or_else(|| anyhow!("TX UMEM needs frames"))?;
        let (umem, free) = Umem::new(umem_config, count, false)
            .map_err(|e| anyhow!("creating the TX UMEM: {e}"))?;
        let mut bind_flags = BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP;
        if multi_buffer {
            bind_flags |= BindFlags::XDP_USE_SG;
        }
        let config = SocketConfig::builder()
            .rx_queue_size(ring_size(64)?)
            .tx_queue_size(ring_size(frames)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind_flags)
            .build();
        let iface: Interface = ifname
            .parse()
            .map_err(|_| anyhow!("interface name {ifname:?} contains a NUL byte"))?;
        // SAFETY: INHIBIT_PROG_LOAD is set, as Socket::new requires for shared pairs; this
        // socket is the only one on its UMEM.
        let (tx, rx, rings) =
            unsafe { Socket::new(config, &umem, &iface, queue) }.map_err(|e| {
                // Kept as the source, so the OS error shows and `is_busy` can read it.
                let sg = if multi_buffer {
                    " with multi-buffer (XDP_USE_SG needs Linux 6.6+)"
                } else {
                    ""
                };
                anyhow::Error::new(e).context(format!(
                    "creating the generator's AF_XDP socket on {ifname} queue {queue}{sg}"
                ))
            })?;
        let Some((fill, comp)) = rings else {
            bail!("{ifname} queue {queue}: no fill/completion rings for a fresh UMEM");
        };
        Ok(Self {
            umem,
            tx,
            comp,
            _fill: fill,
            _rx: rx,
            free,
            batch: Vec::with_capacity(BATCH),
            frame_data,
            multi_buffer,
            in_flight: 0,
        })
    }

    /// Largest frame this port can send.
    pub fn max_frame(&self) -> usize {
        if self.multi_buffer {
            MAX_JUMBO_FRAME
        } else {
            self.frame_data
        }
    }

    /// Collect completed descriptors back into the free list.
    pub fn complete(&mut self) -> usize {
        let mut done = [FrameDesc::default(); BATCH];
        // SAFETY: the completion ring only returns descriptors of this UMEM that we sent.
        let n = unsafe { self.comp.consume(&mut done) };
        self.free.extend_from_slice(&done[..n]);
        self.in_flight -= n;
        n
    }

    /// Descriptors staged or submitted and not yet completed (a chained frame counts each of
    /// its buffers).
    pub fn pending(&self) -> usize {
        self.in_flight + self.batch.len()
    }

    /// Room left in the current batch in descriptors (limited by free frames).
    pub fn room(&self) -> usize {
        (BATCH - self.batch.len()).min(self.free.len())
    }

    /// Copy one frame into free UMEM frames (several, chained, for a frame longer than one)
    /// and add it to the batch. False when there is no room (flush, or complete, first).
    pub fn stage(&mut self, bytes: &[u8]) -> Result<bool> {
        if bytes.len() > self.max_frame() {
            bail!(
                "frame of {} bytes exceeds the {} bytes this port sends",
                bytes.len(),
                self.max_frame()
            );
        }
        let pieces = bytes.len().div_ceil(self.frame_data).max(1);
        if self.room() < pieces {
            return Ok(false);
        }
        for (i, piece) in bytes.chunks(self.frame_data).enumerate() {
            let mut desc = self.free.pop().expect("room() counted it");
            // Every buffer but the last says the frame goes on in the next descriptor.
            desc.set_options(if i + 1 < pieces { XDP_PKT_CONTD } else { 0 });
            // SAFETY: `desc` came from this UMEM's free list: neither the TX nor the
            // completion ring holds it, so we have exclusive access to its memory.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            cursor.write_all(piece)?;
            self.batch.push(desc);
        }
        Ok(true)
    }

    /// Submit the staged batch and kick the kernel if it asks (copy mode: always, and each
    /// kick transmits at most 32 frames, so call this every round while frames are pending).
    pub fn flush(&mut self) -> Result<usize> {
        let sent = if self.batch.is_empty() {
            0
        } else {
            // SAFETY: the descriptors are this UMEM's and were just written; no ring holds them.
            unsafe { self.tx.produce(&self.batch) }
        };
        // Frames the ring had no room for stay staged for the next flush (the ring takes the
        // whole batch or nothing, so a chain is never split).
        self.batch.drain(..sent);
        self.in_flight += sent;
        if self.in_flight > 0 && self.tx.needs_wakeup() {
            match self.tx.wakeup() {
                Ok(()) => {}
                // The kernel is busy or out of buffers: the next round kicks again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                    ) => {}
                Err(e) => return Err(anyhow!("kicking the TX ring: {e}")),
            }
        }
        Ok(sent)
    }
}

/// Whether an error's cause is the kernel's EBUSY (the queue is still bound).
fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::EBUSY)
    })
}
