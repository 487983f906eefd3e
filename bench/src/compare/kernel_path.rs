//! The `kernel` baseline: what Docker's macvlan gives a container today. No XDP; each
//! endpoint's macvlan device (in the lab's host namespace) is read with AF_PACKET TPACKET_V3,
//! by one thread pinned to the receive core, with the same per-frame work as the fast path's
//! endpoints with the probe on (the same counts and [`Probe`]: misdelivery check, latency).
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::afpacket::{PacketRing, RingConfig};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use xmacvlan::dataplane::probe::ProbeCounts;
use xmacvlan::dataplane::{
    EndpointSpec, HotLoop, IdlePolicy, Probe, Sleeper, close_in_parallel, latency_histogram, pin,
};

/// One macvlan's reader: what the fast path counts and probes for an endpoint.
struct Consumer {
    name: String,
    frames: u64,
    probe: Probe,
    found: ProbeCounts,
}

impl Consumer {
    fn new(spec: &EndpointSpec) -> Self {
        Self {
            name: spec.name.clone(),
            frames: 0,
            probe: Probe::new(spec.key()),
            found: ProbeCounts::default(),
        }
    }

    #[inline]
    fn on_frame(&mut self, bytes: &[u8], now_ns: u64) {
        self.frames += 1;
        self.probe.observe(bytes, now_ns, &mut self.found);
    }
}

use crate::background::{self, Background};
use crate::lab::Lab;

/// Ring memory for all endpoints together, split evenly: one endpoint gets a 16 MiB ring (as
/// `RingConfig::default()`), a thousand get 256 KiB each (~1,800 minimum-size frames).
const RING_BUDGET: u32 = 16 << 20;
const BLOCK_SIZE: u32 = 64 * 1024;
const MIN_BLOCKS: u32 = 4;

/// Every TPACKET_V3 socket runs a block-retire timer at its timeout, busy or idle: a thousand
/// sockets at 1 ms are a million timer expiries a second, which alone saturate a core. The
/// timeout grows with the endpoint count (1 ms up to 16 endpoints, 64 ms at 1024), keeping the
/// timers at about 16,000 a second, at the price of latency at low load: a frame can wait that
/// long in a half-filled block. That is a cost of this baseline, reported as measured.
fn ring_config(endpoints: usize) -> RingConfig {
    let endpoints = endpoints.max(1) as u32;
    RingConfig {
        block_size: BLOCK_SIZE,
        block_count: (RING_BUDGET / BLOCK_SIZE / endpoints).max(MIN_BLOCKS),
        retire_timeout_ms: endpoints.div_ceil(16),
        ignore_outgoing: true,
    }
}

pub struct KernelPath {
    /// Frames delivered so far, all endpoints (published once per block).
    pub frames: Arc<AtomicU64>,
    reader: Background<KernelFinished>,
}

#[derive(Debug)]
pub struct KernelFinished {
    pub frames: u64,
    pub misdelivered: u64,
    /// Frames the kernel could not place in a ring (`tp_drops`), all endpoints.
    pub drops: u64,
    pub latency: Histogram<u64>,
    /// Per endpoint, in the lab's order.
    pub endpoints: Vec<KernelEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEndpoint {
    pub name: String,
    pub frames: u64,
    pub misdelivered: u64,
    pub drops: u64,
}

impl KernelPath {
    /// Open a ring on every endpoint's host-namespace macvlan (call from a thread in the lab's
    /// host namespace) and start reading them on `rx_core`, idling by `idle`.
    pub fn start(lab: &Lab, rx_core: usize, idle: IdlePolicy) -> Result<Self> {
        let mut readers = Vec::with_capacity(lab.endpoints.len());
        for (i, spec) in lab.endpoints.iter().enumerate() {
            let (index, device) = lab.host_device(i)?;
            let ring = PacketRing::open(index, ring_config(lab.endpoints.len()))
                .with_context(|| format!("opening an AF_PACKET ring on {device}"))?;
            let consumer = Consumer::new(spec);
            readers.push((ring, consumer));
        }
        let frames = Arc::new(AtomicU64::new(0));
        let published = frames.clone();
        // The reader blocks until a block is handed over (full, or retired by its timer). Its
        // waker is never written: `Background` only sets a flag, so the reader looks at it
        // at least every STOP_CHECK.
        let mut sleeper = background::sleeper_on(readers.iter().map(|(r, _)| r.as_raw_fd()), idle)?;
        let reader = Background::spawn("xmv-kernel-rx", move |stop| {
            read_until_stopped(readers, rx_core, &published, stop, &mut sleeper)
        })?;
        Ok(Self { frames, reader })
    }

    /// Stop reading (once nothing has come for twice the block-retire timeout) and collect
    /// the totals.
    pub fn stop(self) -> Result<KernelFinished> {
        self.reader.stop()
    }
}

/// The reader: one block per ring per pass, the clock read once per block.
fn read_until_stopped(
    mut readers: Vec<(PacketRing, Consumer)>,
    core: usize,
    frames: &AtomicU64,
    stop: &AtomicBool,
    idle: &mut Sleeper,
) -> Result<KernelFinished> {
    pin(core, "the kernel-path reader");
    // A block is handed over when full or when its retire timer fires: once asked to stop,
    // keep reading until nothing came for longer than that, or the frames of the last,
    // half-filled blocks would go uncounted.
    let retire_ms = readers
        .first()
        .map_or(0, |(r, _)| u64::from(r.config().retire_timeout_ms));
    let quiet_ns = retire_ms * 2_000_000 + 10_000_000;
    {
        let _hot = HotLoop::enter();
        // Since when nothing has come, counted from the request to stop.
        let mut quiet_since: Option<u64> = None;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping && quiet_since.is_none() {
                quiet_since = Some(xmacvlan::sys::monotonic_ns());
            }
            let mut pass = 0;
            for (ring, consumer) in &mut readers {
                if !ring.block_ready() {
                    continue;
                }
                let now = xmacvlan::sys::monotonic_ns();
                let n = ring.poll_block(0, |bytes| consumer.on_frame(bytes, now))?;
                pass += n;
            }
            if pass > 0 {
                frames.fetch_add(pass as u64, Ordering::Relaxed);
                idle.worked();
                if stopping {
                    quiet_since = Some(xmacvlan::sys::monotonic_ns());
                }
            } else if quiet_since.is_some_and(|t| xmacvlan::sys::monotonic_ns() - t >= quiet_ns) {
                break;
            } else {
                // Stopping, it waits for the last blocks' retire timers: never long.
                let retire = Duration::from_millis(retire_ms.max(1));
                background::rest(idle, stop, stopping, retire);
            }
        }
    }
    let mut finished = KernelFinished {
        frames: 0,
        misdelivered: 0,
        drops: 0,
        latency: latency_histogram(),
        endpoints: Vec::with_capacity(readers.len()),
    };
    let mut rings = Vec::with_capacity(readers.len());
    for (mut ring, consumer) in readers {
        let endpoint = KernelEndpoint {
            name: consumer.name.clone(),
            frames: consumer.frames,
            misdelivered: consumer.found.misdelivered,
            drops: ring.stats()?.drops,
        };
        finished.frames += endpoint.frames;
        finished.misdelivered += endpoint.misdelivered;
        finished.drops += endpoint.drops;
        finished
            .latency
            .add(&consumer.probe.latency)
            .context("merging latency histograms")?;
        finished.endpoints.push(endpoint);
        rings.push(ring);
    }
    close_in_parallel(rings);
    Ok(finished)
}
