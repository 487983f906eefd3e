//! The traffic generator: AF_XDP copy-mode TX from a namespace into the lab's wire.
//! Streams are frame templates sent round-robin; each frame carries its stream, a
//! per-stream sequence number and the send time (monotonic ns, stamped once per batch).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xmacvlan::frame;

use crate::test_frame::{TestFrame, set_flow};
use crate::xsk_tx::TxPort;

/// What one stream is, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Unicast to endpoint `index` of the lab.
    Endpoint(usize),
    Broadcast,
    UnknownUnicast,
    /// Anything else (QinQ, truncated, oversize …) a test wants to send.
    Other,
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub frame: TestFrame,
    pub kind: StreamKind,
    /// Cut the built frame to this many bytes (truncated-frame tests).
    pub truncate_to: Option<usize>,
    /// Replace the test EtherType (e.g. ARP), making the frame a non-test frame.
    pub ethertype: Option<u16>,
    /// Send as IPv4/UDP, frame N of the stream on flow N % this (source address and port):
    /// a NIC's RSS then spreads the stream over its queues (it hashes IP headers only).
    pub udp_flows: Option<u16>,
}

impl Stream {
    pub fn new(frame: TestFrame, kind: StreamKind) -> Self {
        Self {
            frame,
            kind,
            truncate_to: None,
            ethertype: None,
            udp_flows: None,
        }
    }

    pub fn truncated(self, len: usize) -> Self {
        Self {
            truncate_to: Some(len),
            ..self
        }
    }

    pub fn with_ethertype(self, ethertype: u16) -> Self {
        Self {
            ethertype: Some(ethertype),
            ..self
        }
    }

    /// As IPv4/UDP over `flows` flows (at least 1), so that RSS spreads it.
    pub fn with_udp_flows(self, flows: u16) -> Self {
        Self {
            udp_flows: Some(flows.max(1)),
            ..self
        }
    }

    /// The frame bytes this stream sends (before per-send seq/timestamp/flow patching).
    pub fn bytes(&self, stream: u16) -> Vec<u8> {
        let mut bytes = match self.udp_flows {
            Some(_) => self.frame.build_udp(stream),
            None => self.frame.build(stream),
        };
        if let Some(ethertype) = self.ethertype {
            let tags = self.frame.vid.is_some() as usize + self.frame.qinq_outer.is_some() as usize;
            let at = 12 + 4 * tags;
            bytes[at..at + 2].copy_from_slice(&ethertype.to_be_bytes());
        }
        if let Some(n) = self.truncate_to {
            bytes.truncate(n);
        }
        bytes
    }
}

/// UMEM frame size of a generator: room for the largest test frame (3000 bytes).
pub const FRAME_SIZE: u32 = 4096;
/// Frames staged or in flight per generator: deep enough to keep the TX ring busy, shallow
/// enough that waiting in it adds little to the latency samples.
pub const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub ifname: String,
    pub queue: u32,
    /// Stop after this long (unless `count` stops it first).
    pub duration: Duration,
    /// Frames per second for this generator; None = as fast as possible.
    pub rate: Option<u64>,
    /// Send exactly this many frames of each stream, then stop.
    pub count: Option<u64>,
    pub core: Option<usize>,
    pub frame_size: u32,
    /// At most this many frames staged or in the TX ring. Frames are stamped when staged,
    /// so a deep TX queue would add its own waiting time to every latency sample.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub per_stream: Vec<u64>,
    pub elapsed: Duration,
}

impl Sent {
    pub fn total(&self) -> u64 {
        self.per_stream.iter().sum()
    }
}

struct Template {
    bytes: Vec<u8>,
    payload_at: Option<usize>,
    /// (IPv4 header offset, flows) of a stream sent as UDP flows.
    flows: Option<(usize, u16)>,
    seq: u64,
}

/// Flow control for tests that count every frame: the generator never has more frames in
/// flight than the rings between it and the receiver hold, so a busy CPU slows the traffic
/// down instead of overflowing a ring. (The bench sends unpaced: there, loss is the result.)
#[derive(Clone, Copy)]
pub struct Pace<'a> {
    /// At most this many frames sent but not yet taken by the wire's veth peer (the lab NIC,
    /// whose XDP runs on them) or dropped by it: the kernel's own counters of the wire,
    /// `tx_packets` (the peer's XDP receive count) and `tx_dropped`. A veth ring holds 256.
    pub before_xdp: u64,
    /// `(delivered, window)`: at most `window` frames sent to the counted streams and not yet
    /// counted by `delivered()` (frames the receiver got or counted as dropped).
    pub delivered: Option<(&'a (dyn Fn() -> u64 + Sync), u64)>,
    /// Which streams `delivered()` counts: by default every [`StreamKind::Endpoint`] stream.
    pub counted: Option<&'a [bool]>,
    /// What every generator sharing the wire has sent: the windows are over all of them.
    pub sent: &'a PaceSent,
    /// Fail when the window stays shut this long: frames went missing where nothing counts.
    pub stall: Duration,
}

/// Frames sent by the generators sharing a pace: in all, and to endpoint streams.
#[derive(Debug, Default)]
pub struct PaceSent {
    total: AtomicU64,
    to_endpoints: AtomicU64,
    /// The wire's counters when the first generator started (they never reset).
    base: std::sync::OnceLock<u64>,
}

impl<'a> Pace<'a> {
    /// The veth ring alone (tests whose receiver may drop on purpose, or is another process).
    pub fn wire(sent: &'a PaceSent) -> Self {
        Pace {
            before_xdp: 128,
            delivered: None,
            counted: None,
            sent,
            stall: Duration::from_secs(10),
        }
    }

    /// The veth ring and the receiver's rings (`window` below the smallest of them).
    pub fn delivered(
        sent: &'a PaceSent,
        delivered: &'a (dyn Fn() -> u64 + Sync),
        window: u64,
    ) -> Self {
        Pace {
            delivered: Some((delivered, window)),
            ..Pace::wire(sent)
        }
    }

    /// Count only the streams marked true (e.g. the endpoints that stay attached).
    pub fn counting(self, counted: &'a [bool]) -> Self {
        Pace {
            counted: Some(counted),
            ..self
        }
    }
}

/// `/proc/thread-self/net/dev`: the interface's tx_packets + tx_dropped in the calling
/// thread's namespace (where the generator runs).
fn wire_taken(ifname: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(ifname)?.strip_prefix(':'))
        .with_context(|| format!("no {ifname} in /proc/thread-self/net/dev"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // rx: bytes packets errs drop fifo frame compressed multicast | tx: bytes packets errs drop
    Ok(fields.get(9).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0))
}

/// How many more frames the pace allows now; an error once it has been shut for too long.
struct Window<'a> {
    pace: Pace<'a>,
    ifname: String,
    base: u64,
    to_endpoint: Vec<bool>,
    shut_since: Option<Instant>,
}

impl Window<'_> {
    fn room(&mut self) -> Result<usize> {
        let total = self.pace.sent.total.load(Ordering::Relaxed);
        let taken = wire_taken(&self.ifname)?.saturating_sub(self.base);
        let before_xdp = total.saturating_sub(taken);
        let mut room = self.pace.before_xdp.saturating_sub(before_xdp);
        let mut outstanding = 0;
        if let Some((delivered, window)) = self.pace.delivered {
            let to_endpoints = self.pace.sent.to_endpoints.load(Ordering::Relaxed);
            outstanding = to_endpoints.saturating_sub(delivered());
            room = room.min(window.saturating_sub(outstanding));
        }
        if room > 0 {
            self.shut_since = None;
        } else {
            let since = *self.shut_since.get_or_insert_with(Instant::now);
            if since.elapsed() > self.pace.stall {
                bail!(
                    "flow control: no progress for {:?}: {before_xdp} of {total} frames sent \
                     never reached {}'s peer (its tx_packets + tx_dropped), {outstanding} sent \
                     to endpoints never delivered: frames went missing where no counter sees them",
                    self.pace.stall,
                    self.ifname
                );
            }
        }
        Ok(room as usize)
    }

    fn sent(&self, stream: usize) {
        self.pace.sent.total.fetch_add(1, Ordering::Relaxed);
        if self.to_endpoint[stream] {
            self.pace.sent.to_endpoints.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Send `streams` until the duration, the count, or `stop`. Returns the frames handed to
/// the kernel (submitted to TX and completed) per stream.
pub fn run(cfg: &GeneratorConfig, streams: &[Stream], stop: &AtomicBool) -> Result<Sent> {
    run_paced(cfg, streams, stop, None)
}

/// [`run`], and with `pace` never more in flight than it allows.
pub fn run_paced(
    cfg: &GeneratorConfig,
    streams: &[Stream],
    stop: &AtomicBool,
    pace: Option<Pace>,
) -> Result<Sent> {
    if streams.is_empty() {
        bail!("the generator needs at least one stream");
    }
    if let Some(core) = cfg.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let mut port = TxPort::open(&cfg.ifname, cfg.queue, 4096, cfg.frame_size)?;
    let mut templates: Vec<Template> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = s.bytes(i as u16);
            let payload_at =
                frame::payload_offset(&bytes).filter(|at| at + frame::PAYLOAD_LEN <= bytes.len());
            let flows = s
                .udp_flows
                .zip(payload_at)
                .map(|(n, at)| (at - frame::UDP_HLEN - frame::IPV4_HLEN, n));
            Template {
                bytes,
                payload_at,
                flows,
                seq: 0,
            }
        })
        .collect();
    if let Some(t) = templates.iter().find(|t| t.bytes.len() > port.max_frame()) {
        bail!(
            "a {}-byte frame does not fit the generator's {}-byte frames",
            t.bytes.len(),
            port.max_frame()
        );
    }
    let mut window = match pace {
        Some(pace) => Some(Window {
            pace,
            base: {
                let now = wire_taken(&cfg.ifname)?;
                *pace.sent.base.get_or_init(|| now)
            },
            ifname: cfg.ifname.clone(),
            to_endpoint: match pace.counted {
                Some(c) if c.len() == streams.len() => c.to_vec(),
                Some(c) => bail!("the pace counts {} streams of {}", c.len(), streams.len()),
                None => streams
                    .iter()
                    .map(|s| matches!(s.kind, StreamKind::Endpoint(_)))
                    .collect(),
            },
            shut_since: None,
        }),
        None => None,
    };
    let mut sent = vec![0u64; streams.len()];
    let mut next = 0usize;
    let start = Instant::now();
    let mut done = false;
    while !done {
        port.complete();
        let elapsed = start.elapsed();
        if stop.load(Ordering::Relaxed) || elapsed >= cfg.duration {
            break;
        }
        let mut budget = match cfg.rate {
            Some(rate) => {
                let due = (elapsed.as_nanos() * rate as u128 / 1_000_000_000) as u64;
                due.saturating_sub(sent.iter().sum::<u64>()) as usize
            }
            None => usize::MAX,
        }
        .min(cfg.max_in_flight.saturating_sub(port.pending()));
        if let Some(w) = &mut window
            && budget > 0
        {
            budget = budget.min(w.room()?);
            if budget == 0 {
                // The receiver is behind: give it the CPU rather than spin.
                port.flush()?;
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
        }
        let now = xmacvlan::sys::monotonic_ns();
        while budget > 0 && port.room() > 0 {
            // Round-robin over streams that still have frames to send.
            let Some(s) = pick(&sent, cfg.count, &mut next) else {
                done = true;
                break;
            };
            let t = &mut templates[s];
            if let Some(at) = t.payload_at {
                frame::patch_payload(&mut t.bytes, at, t.seq, now);
            }
            if let Some((ip_at, flows)) = t.flows {
                set_flow(&mut t.bytes, ip_at, (t.seq % u64::from(flows)) as u16);
            }
            if !port.stage(&t.bytes)? {
                break;
            }
            t.seq += 1;
            sent[s] += 1;
            if let Some(w) = &window {
                w.sent(s);
            }
            budget -= 1;
        }
        if port.flush()? == 0 && port.complete() == 0 {
            std::thread::yield_now();
        }
    }
    // Frames still staged or in flight are not yet sent: wait for the kernel to finish.
    let deadline = Instant::now() + Duration::from_secs(2);
    port.flush()?;
    while port.pending() > 0 && Instant::now() < deadline {
        port.flush()?;
        port.complete();
        std::thread::yield_now();
    }
    if port.pending() > 0 {
        bail!(
            "{} frames never completed on {}",
            port.pending(),
            cfg.ifname
        );
    }
    Ok(Sent {
        per_stream: sent,
        elapsed: start.elapsed(),
    })
}

fn pick(sent: &[u64], count: Option<u64>, next: &mut usize) -> Option<usize> {
    for _ in 0..sent.len() {
        let s = *next;
        *next = (*next + 1) % sent.len();
        if count.is_none_or(|c| sent[s] < c) {
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn round_robin_skips_finished_streams() {
        let mut next = 0;
        let sent = [2, 1, 2];
        assert_eq!(pick(&sent, Some(2), &mut next), Some(1));
        assert_eq!(pick(&sent, Some(2), &mut next), Some(1));
        assert_eq!(pick(&[2, 2, 2], Some(2), &mut next), None);
        let mut next = 0;
        let order: Vec<_> = (0..4)
            .map(|_| pick(&[0, 0], None, &mut next).unwrap())
            .collect();
        assert_eq!(order, [0, 1, 0, 1]);
    }
}
