//! The `kernel` baseline: what Docker's macvlan gives a container today. No XDP; each
//! endpoint's macvlan device (in the lab's host namespace) is read with AF_PACKET TPACKET_V3,
//! by one thread pinned to the receive core, with the same per-frame work as the fast path's
//! consumers (the same `Consumer`: counters, misdelivery check, latency histogram).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use xmacvlan::afpacket::{PacketRing, RingConfig};
use xmacvlan::dataplane::{Consumer, EndpointCounters, HotLoop, Idle, latency_histogram, pin};

use crate::lab::Lab;

/// Rings small enough for a thousand endpoints (256 KiB each: ~1,800 minimum-size frames),
/// with the shortest retire timeout so a half-full block waits at most 1 ms.
const RING: RingConfig = RingConfig {
    block_size: 64 * 1024,
    block_count: 4,
    retire_timeout_ms: 1,
    ignore_outgoing: true,
};

pub struct KernelPath {
    /// Frames delivered so far, all endpoints (published once per block).
    pub frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<KernelFinished>>>,
}

#[derive(Debug)]
pub struct KernelFinished {
    pub frames: u64,
    pub misdelivered: u64,
    /// Frames the kernel could not place in a ring (`tp_drops`), all endpoints.
    pub drops: u64,
    pub latency: Histogram<u64>,
}

impl KernelPath {
    /// Open a ring on every endpoint's host-namespace macvlan (call from a thread in the lab's
    /// host namespace) and start reading them on `rx_core`.
    pub fn start(lab: &Lab, rx_core: usize) -> Result<Self> {
        let mut readers = Vec::with_capacity(lab.endpoints.len());
        for (spec, device) in lab.endpoints.iter().zip(&lab.host_devices) {
            let Some(device) = device else {
                bail!(
                    "endpoint {} has no macvlan in the host namespace: the kernel baseline needs \
                     untagged endpoints in a lab built with KernelDevices::Host",
                    spec.name
                );
            };
            let index = xmacvlan::sys::if_index(device).with_context(|| {
                format!("macvlan {device} of endpoint {} is missing", spec.name)
            })?;
            let ring = PacketRing::open(index, RING)
                .with_context(|| format!("opening an AF_PACKET ring on {device}"))?;
            let consumer = Consumer::new(spec, Arc::new(EndpointCounters::default()));
            readers.push((ring, consumer));
        }
        let frames = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (frames, stop) = (frames.clone(), stop.clone());
            std::thread::Builder::new()
                .name("xmv-kernel-rx".into())
                .spawn(move || read_until_stopped(readers, rx_core, &frames, &stop))
                .context("starting the kernel-path reader")?
        };
        Ok(Self {
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop reading (after draining what is ready) and collect the totals.
    pub fn stop(mut self) -> Result<KernelFinished> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow!("the kernel-path reader panicked"))?
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reader: one block per ring per pass, the clock read once per block.
fn read_until_stopped(
    mut readers: Vec<(PacketRing, Consumer)>,
    core: usize,
    frames: &AtomicU64,
    stop: &AtomicBool,
) -> Result<KernelFinished> {
    pin(core, "the kernel-path reader");
    let mut idle = Idle::default();
    {
        let _hot = HotLoop::enter();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let mut pass = 0;
            for (ring, consumer) in &mut readers {
                if !ring.block_ready() {
                    continue;
                }
                let now = xmacvlan::sys::monotonic_ns();
                let n = ring.poll_block(0, |bytes| consumer.on_frame(bytes, now))?;
                consumer.publish();
                pass += n;
            }
            if pass > 0 {
                frames.fetch_add(pass as u64, Ordering::Relaxed);
                idle.worked();
            } else if stopping {
                break;
            } else {
                idle.wait();
            }
        }
    }
    let mut finished = KernelFinished {
        frames: 0,
        misdelivered: 0,
        drops: 0,
        latency: latency_histogram(),
    };
    for (mut ring, consumer) in readers {
        finished.frames += consumer.counters.frames.load(Ordering::Relaxed);
        finished.misdelivered += consumer.counters.misdelivered.load(Ordering::Relaxed);
        finished.drops += ring.stats()?.drops;
        finished
            .latency
            .add(&consumer.latency)
            .context("merging latency histograms")?;
    }
    Ok(finished)
}
