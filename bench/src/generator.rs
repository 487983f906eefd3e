//! The traffic generator: AF_XDP copy-mode TX from a namespace into the lab's wire.
//! Streams are frame templates sent round-robin; each frame carries its stream, a
//! per-stream sequence number and the send time (monotonic ns, stamped once per batch).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use xmacvlan::frame;

use crate::flow::Window;
pub use crate::flow::{Pace, PaceSent};
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

/// UMEM frame size of a generator: room for a 3000-byte frame in one; longer (jumbo) frames
/// go out as chains of them.
pub const FRAME_SIZE: u32 = 4096;
/// Frames staged or in flight per generator: deep enough to keep the TX ring busy, shallow
/// enough that waiting in it adds little to the latency samples.
pub const MAX_IN_FLIGHT: usize = 256;

/// How many frames a generator sends (unless its stop flag ends it first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// For this long. With a rate, exactly `rate × duration` frames (rounded to the nearest):
    /// a generator that falls behind (its core busy, the TX ring full) sends what it owes
    /// as soon as it can, after the duration if need be, rather than lose it. Without a
    /// rate, as many as it can in that time.
    For(Duration),
    /// Exactly this many frames of each stream.
    EachStream(u64),
    /// Exactly this many frames in all, the streams taking turns.
    Total(u64),
}

#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub ifname: String,
    pub queue: u32,
    pub amount: Amount,
    /// Frames per second for this generator, at least 1; None = as fast as possible.
    pub rate: Option<u64>,
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

/// Send `streams` until the amount is sent, or `stop`. Returns the frames handed to the
/// kernel (submitted to TX and completed) per stream.
pub fn run(cfg: &GeneratorConfig, streams: &[Stream], stop: &AtomicBool) -> Result<Sent> {
    run_paced(cfg, streams, stop, None)
}

/// A generator that has sent nothing for this long fails rather than wait forever.
const STALL: Duration = Duration::from_secs(10);

/// What the generator owes: a frame total, a per-stream limit, a deadline.
struct Plan {
    total: Option<u64>,
    each: Option<u64>,
    deadline: Option<Duration>,
}

impl Plan {
    fn new(amount: Amount, rate: Option<u64>, streams: usize) -> Result<Plan> {
        if rate == Some(0) {
            bail!("a rate of 0 frames/s sends nothing: give at least 1");
        }
        Ok(match amount {
            Amount::For(d) => match rate {
                // Rounded to the nearest frame: 0.5 s at 3 frames/s is 2 frames.
                Some(r) => Plan {
                    total: Some(((d.as_nanos() * r as u128 + 500_000_000) / 1_000_000_000) as u64),
                    each: None,
                    deadline: None,
                },
                None => Plan {
                    total: None,
                    each: None,
                    deadline: Some(d),
                },
            },
            Amount::EachStream(n) => Plan {
                total: Some(n.saturating_mul(streams as u64)),
                each: Some(n),
                deadline: None,
            },
            Amount::Total(n) => Plan {
                total: Some(n),
                each: None,
                deadline: None,
            },
        })
    }

    /// Frames due by `elapsed` at `rate`: the first at once, then one every 1/rate, and never
    /// more than the total.
    fn due(&self, elapsed: Duration, rate: Option<u64>) -> u64 {
        let by_rate = match rate {
            Some(r) => (elapsed.as_nanos() * r as u128 / 1_000_000_000) as u64 + 1,
            None => u64::MAX,
        };
        self.total.map_or(by_rate, |t| by_rate.min(t))
    }
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
    let plan = Plan::new(cfg.amount, cfg.rate, streams.len())?;
    if let Some(core) = cfg.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
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
    // Chained (multi-buffer) sends only for frames longer than a UMEM frame holds: older
    // kernels refuse the socket option.
    let frame_data = cfg
        .frame_size
        .saturating_sub(xmacvlan::xsk::XDP_PACKET_HEADROOM);
    let multi_buffer = templates
        .iter()
        .any(|t| t.bytes.len() > frame_data as usize);
    let mut port = TxPort::open(&cfg.ifname, cfg.queue, 4096, cfg.frame_size, multi_buffer)?;
    if let Some(t) = templates.iter().find(|t| t.bytes.len() > port.max_frame()) {
        bail!(
            "a {}-byte frame does not fit the generator's {}-byte frames",
            t.bytes.len(),
            port.max_frame()
        );
    }
    let mut window = pace
        .map(|pace| Window::new(pace, &cfg.ifname, streams))
        .transpose()?;
    let mut sent = vec![0u64; streams.len()];
    let mut total = 0u64;
    let mut next = 0usize;
    let start = Instant::now();
    let mut progress = (0u64, start);
    loop {
        port.complete();
        let elapsed = start.elapsed();
        if stop.load(Ordering::Relaxed)
            || plan.deadline.is_some_and(|d| elapsed >= d)
            || plan.total.is_some_and(|t| total >= t)
        {
            break;
        }
        let mut budget =
            plan.due(elapsed, cfg.rate)
                .saturating_sub(total)
                .min(cfg.max_in_flight.saturating_sub(port.pending()) as u64) as usize;
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
            let Some(s) = pick(&sent, plan.each, &mut next) else {
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
            total += 1;
            if let Some(w) = &window {
                w.sent(s);
            }
            budget -= 1;
        }
        if total != progress.0 {
            progress = (total, Instant::now());
        } else if progress.1.elapsed() > STALL {
            bail!(
                "no frame could be sent from {} for {STALL:?} ({total} sent, {} in flight)",
                cfg.ifname,
                port.pending()
            );
        }
        let flushed = port.flush()?;
        let completed = port.complete();
        if flushed == 0 && completed == 0 {
            idle(&plan, cfg.rate, start.elapsed(), total, port.pending());
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
            "{} descriptors never completed on {}",
            port.pending(),
            cfg.ifname
        );
    }
    Ok(Sent {
        per_stream: sent,
        elapsed: start.elapsed(),
    })
}

/// Nothing to send or reap this round. A paced generator with nothing in flight sleeps until
/// its next frame is due (a spinning one would take the CPU its receiver needs); sleeping
/// late only makes it catch up. Otherwise it yields.
fn idle(plan: &Plan, rate: Option<u64>, elapsed: Duration, total: u64, in_flight: usize) {
    if let Some(r) = rate
        && in_flight == 0
        && plan.due(elapsed, rate) <= total
    {
        let next_due = Duration::from_nanos((total as u128 * 1_000_000_000 / r as u128) as u64);
        let wait = next_due
            .saturating_sub(elapsed)
            .min(Duration::from_millis(1));
        if wait >= Duration::from_micros(50) {
            std::thread::sleep(wait);
            return;
        }
    }
    std::thread::yield_now();
}

fn pick(sent: &[u64], each: Option<u64>, next: &mut usize) -> Option<usize> {
    for _ in 0..sent.len() {
        let s = *next;
        *next = (*next + 1) % sent.len();
        if each.is_none_or(|c| sent[s] < c) {
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_rate_for_a_duration_is_exactly_rate_times_duration() {
        let plan = |secs: f64, rate| {
            Plan::new(Amount::For(Duration::from_secs_f64(secs)), Some(rate), 3)
                .unwrap()
                .total
        };
        assert_eq!(plan(1.0, 5_000), Some(5_000));
        assert_eq!(plan(2.0, 1_000), Some(2_000));
        assert_eq!(plan(0.5, 3), Some(2), "1.5 frames round to 2");
        assert_eq!(plan(0.1, 1), Some(0));
        let flat_out = Plan::new(Amount::For(Duration::from_secs(2)), None, 3).unwrap();
        assert_eq!(
            (flat_out.total, flat_out.deadline),
            (None, Some(Duration::from_secs(2)))
        );
        assert!(Plan::new(Amount::Total(5), Some(0), 1).is_err());
    }

    #[test]
    fn counts_are_totals_with_no_deadline() {
        let each = Plan::new(Amount::EachStream(7), Some(100), 3).unwrap();
        assert_eq!(
            (each.total, each.each, each.deadline),
            (Some(21), Some(7), None)
        );
        let total = Plan::new(Amount::Total(7), None, 3).unwrap();
        assert_eq!(
            (total.total, total.each, total.deadline),
            (Some(7), None, None)
        );
    }

    #[test]
    fn frames_fall_due_from_the_start_and_stop_at_the_total() {
        let plan = Plan::new(Amount::For(Duration::from_secs(1)), Some(1_000), 1).unwrap();
        let at = |ms| plan.due(Duration::from_millis(ms), Some(1_000));
        assert_eq!(at(0), 1, "the first frame at once");
        assert_eq!(at(1), 2);
        assert_eq!(at(999), 1_000, "the last one is due before the second ends");
        assert_eq!(at(5_000), 1_000, "a late generator owes the total, no more");
        let unpaced = Plan::new(Amount::Total(10), None, 1).unwrap();
        assert_eq!(unpaced.due(Duration::ZERO, None), 10);
    }
}
