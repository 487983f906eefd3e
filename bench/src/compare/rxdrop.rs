//! The AF_XDP rxdrop anchor: one socket on the lab NIC's queue 0 that every frame is
//! redirected to (`xmv_redirect_all`, no lookup), read by one thread on the receive core that
//! hands each batch straight back to the fill ring, unread. No demux, no queue hop, no copy:
//! the most any mode that delivers into AF_XDP sockets could carry on this NIC and core, as
//! the XDP_DROP ceiling is the most any mode could. It idles by the run's [`IdlePolicy`] like
//! the other modes' receive threads, so its busy ns/frame is the socket path's own cost.
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result};
use xmacvlan::abi::Counters;
use xmacvlan::dataplane::{HotLoop, IdlePolicy, Sleeper, pin};
use xmacvlan::modes::XdpMode;
use xmacvlan::xdp::{Classifier, Program, Steering};
use xmacvlan::xsk::{self, QueueConfig, QueueRings, QueueUmem, SocketStats, StatsHandle};

use crate::background::{self, Background};
use crate::lab::NIC;

/// The thread's name: [`super::placement::renice_receive_threads`] finds it by it.
pub const THREAD: &str = "xmv-rxdrop";

pub struct Rxdrop {
    /// Frames received so far (published once per batch).
    pub frames: Arc<AtomicU64>,
    socket: StatsHandle,
    reader: Background<(u64, SocketStats)>,
    /// Detaches the program when dropped, after the reader closed the socket.
    classifier: Classifier,
}

/// What the loop counted, and what the kernel did with the frames it redirected.
#[derive(Debug, Clone, Copy)]
pub struct RxdropFinished {
    /// Frames taken off the receive ring (and given back to the fill ring).
    pub frames: u64,
    /// Frames redirected to the socket that it could not take (a full receive ring, or no
    /// free frame in the fill ring), by the socket's `XDP_STATISTICS`.
    pub socket_dropped: u64,
    /// The program's counters: `seen` is every frame the NIC's XDP saw.
    pub xdp: Counters,
}

impl Rxdrop {
    /// Attach the redirect program to the lab NIC, bind the socket to queue 0 and start the
    /// loop on `rx_core`. Call from a thread in the lab's host namespace.
    pub fn start(rx_core: usize, idle: IdlePolicy, queue: &QueueConfig) -> Result<Self> {
        let index = xmacvlan::sys::if_index(NIC).context("lab NIC missing")?;
        let mut classifier = Classifier::load(Program::RedirectAll, Steering::PerQueue, 1)?;
        classifier.attach(index, NIC, XdpMode::Native, &mut Vec::new())?;
        let (umem, rings, _bound) =
            xsk::open_queue(NIC, 0, queue, &mut Vec::new()).context("opening the rxdrop socket")?;
        classifier.set_socket(
            classifier.xsk_index(0, 0),
            &rings.socket,
            umem.max_rx_frame(),
        )?;
        let socket = rings.socket.stats_handle();
        let mut sleeper = background::sleeper_on([rings.socket.as_raw_fd()], idle)?;
        let frames = Arc::new(AtomicU64::new(0));
        let published = frames.clone();
        let reader = Background::spawn(THREAD, move |stop| {
            recycle_until_stopped(umem, rings, rx_core, &published, stop, &mut sleeper)
        })?;
        Ok(Self {
            frames,
            socket,
            reader,
            classifier,
        })
    }

    /// Frames received or dropped by the socket so far: what the drain after sending waits
    /// for (a syscall: not for hot loops).
    pub fn accounted(&self) -> u64 {
        let dropped = self.socket.statistics().map_or(0, |s| s.dropped());
        self.frames.load(Ordering::Relaxed) + dropped
    }

    /// Stop the loop (it finishes the batch it is in), close the socket, detach the program.
    pub fn stop(self) -> Result<RxdropFinished> {
        let (frames, socket) = self.reader.stop()?;
        Ok(RxdropFinished {
            frames,
            socket_dropped: socket.dropped(),
            xdp: self.classifier.counters()?,
        })
    }
}

/// The loop: recycle a batch, count it; when there is none, idle as the other receive
/// threads do. Returns the frames recycled and the socket's counters at the end.
fn recycle_until_stopped(
    umem: QueueUmem,
    mut rings: QueueRings,
    core: usize,
    frames: &AtomicU64,
    stop: &AtomicBool,
    idle: &mut Sleeper,
) -> Result<(u64, SocketStats)> {
    pin(core, "the rxdrop loop");
    // Where a frame the fill ring did not take would wait (it always takes them: room is
    // asked for first); made before the hot loop.
    let spill = xmacvlan::xsk::FramePool::new(xsk::BATCH, []);
    let mut total = 0u64;
    {
        let _hot = HotLoop::enter();
        loop {
            // Read before the pass: the stop comes after the drain, so an empty pass after
            // seeing it means every frame that reached the socket was counted.
            let stopping = stop.load(Ordering::Acquire);
            let n = rings.recycle_rx(&spill);
            if n > 0 {
                total += n as u64;
                frames.store(total, Ordering::Relaxed);
                idle.worked();
            } else if stopping {
                break;
            } else {
                background::rest(idle, stop, stopping, background::STOP_CHECK);
            }
        }
    }
    let socket = rings
        .socket
        .statistics()
        .context("reading the rxdrop socket's statistics")?;
    // The socket (in `rings`) closes before the UMEM it maps.
    drop(rings);
    drop(umem);
    Ok((total, socket))
}
