//! Round trip: reflected frames come back out of the lab NIC onto the wire, where this
//! reader (AF_PACKET TPACKET_V3 on the wire's veth, the generator's side) times each against
//! the stamp the generator wrote when it sent the frame.
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::afpacket::{PacketRing, RingConfig};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use xmacvlan::dataplane::{HotLoop, IdlePolicy, Sleeper, latency_histogram, pin};
use xmacvlan::frame::read_payload;

use crate::background::{self, Background};
use crate::generator::{Stream, StreamKind};
use crate::lab::{self, Lab};

/// After the stop request, keep reading until nothing came for this long (frames still
/// crossing a reflector, or in a half-filled block).
const QUIET: Duration = Duration::from_millis(50);

/// What came back.
#[derive(Debug, Clone)]
pub struct Returned {
    /// Frames to the generator's MAC that carry its stamp.
    pub frames: u64,
    /// Per stream (the generator's order): frames that came back.
    pub per_stream: Vec<u64>,
    /// Frames back from a source MAC that is not the stream's endpoint, or for a stream the
    /// generator never had: must be 0.
    pub wrong_source: u64,
    /// Frames the kernel could not place in the ring.
    pub ring_drops: u64,
    /// Frames on the wire that are not the generator's returned (the lab's kernel devices'
    /// own, such as IPv6 neighbour discovery): the wire counts them, the reader skips them.
    pub not_returned: u64,
    /// Generator stamp to this reader, nanoseconds.
    pub latency: Histogram<u64>,
}

pub struct WireReceiver {
    /// Returned frames so far (published once per block).
    pub frames: Arc<AtomicU64>,
    reader: Background<Returned>,
}

impl WireReceiver {
    /// Start reading the lab's wire, in the wire namespace, on `core`. `streams` are the
    /// generator's: a frame's stamp names its stream, whose endpoint must be its source.
    pub fn start(lab: &Lab, streams: &[Stream], core: Option<usize>) -> Result<WireReceiver> {
        let ring = lab.wire.run(|| {
            let index = xmacvlan::sys::if_index(lab::WIRE).context("the lab's wire is missing")?;
            PacketRing::open(index, RingConfig::default())
                .context("opening an AF_PACKET ring on the lab's wire")
        })?;
        let sources: Vec<Option<xmacvlan::abi::Mac>> = streams
            .iter()
            .map(|s| matches!(s.kind, StreamKind::Endpoint(_)).then_some(s.frame.dst))
            .collect();
        let frames = Arc::new(AtomicU64::new(0));
        let published = frames.clone();
        // It blocks until a block is handed over (full, or retired by its timer), as the
        // kernel-path reader does; the frames' latency is the kernel's stamp, not the read.
        let mut sleeper = background::sleeper_on([ring.as_raw_fd()], IdlePolicy::default())?;
        let reader = Background::spawn("xmv-wire-rx", move |stop| {
            read(ring, &sources, core, &published, stop, &mut sleeper)
        })?;
        Ok(WireReceiver { frames, reader })
    }

    /// Stop once nothing more comes back, and collect.
    pub fn stop(self) -> Result<Returned> {
        self.reader.stop()
    }
}

fn read(
    mut ring: PacketRing,
    sources: &[Option<xmacvlan::abi::Mac>],
    core: Option<usize>,
    published: &AtomicU64,
    stop: &AtomicBool,
    idle: &mut Sleeper,
) -> Result<Returned> {
    if let Some(core) = core {
        pin(core, "the wire reader");
    }
    let mut r = Returned {
        frames: 0,
        per_stream: vec![0; sources.len()],
        wrong_source: 0,
        ring_drops: 0,
        not_returned: 0,
        latency: latency_histogram(),
    };
    let retire = Duration::from_millis(u64::from(ring.config().retire_timeout_ms).max(1));
    let quiet_ns = QUIET.as_nanos() as u64;
    let mut quiet_since: Option<u64> = None;
    // The kernel stamps arrivals in CLOCK_REALTIME, the generator in CLOCK_MONOTONIC.
    let realtime_minus_monotonic = realtime_ns().saturating_sub(xmacvlan::sys::monotonic_ns());
    {
        let _hot = HotLoop::enter();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if stopping && quiet_since.is_none() {
                quiet_since = Some(xmacvlan::sys::monotonic_ns());
            }
            let n = ring.poll_block_stamped(0, |f, arrived| {
                let Some(p) =
                    read_payload(f).filter(|_| f.get(..6) == Some(&lab::GENERATOR_MAC[..]))
                else {
                    r.not_returned += 1;
                    return;
                };
                r.frames += 1;
                match sources.get(p.stream as usize).copied().flatten() {
                    Some(mac) if f.get(6..12) == Some(&mac[..]) => {
                        r.per_stream[p.stream as usize] += 1;
                    }
                    _ => r.wrong_source += 1,
                }
                let arrived = arrived.saturating_sub(realtime_minus_monotonic);
                r.latency
                    .record(arrived.saturating_sub(p.tx_ns).max(1))
                    .ok();
            })?;
            if n > 0 {
                published.store(r.frames, Ordering::Relaxed);
                idle.worked();
                if stopping {
                    quiet_since = Some(xmacvlan::sys::monotonic_ns());
                }
            } else if quiet_since.is_some_and(|t| xmacvlan::sys::monotonic_ns() - t >= quiet_ns) {
                break;
            } else {
                background::rest(idle, stop, stopping, retire);
            }
        }
    }
    published.store(r.frames, Ordering::Relaxed);
    r.ring_drops = ring.stats()?.drops;
    Ok(r)
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
