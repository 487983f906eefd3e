//! One measurement: one mode, one lab, one offered load, the same generator and pinning.
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::kernel_path::KernelPath;
use super::placement;
use super::rxdrop::Rxdrop;
use super::testpmd::Testpmd;
use crate::generator::Stream;
use crate::ingress::wire_counts;
use crate::lab::{Lab, NIC};
use crate::scenario::{TrafficConfig, run_traffic, run_traffic_until};
use anyhow::{Context, Result};
use serde::Serialize;
use xmacvlan::dataplane::{Dataplane, DataplaneConfig, IdlePolicy, Layout, latency_histogram};
use xmacvlan::modes::{BindMode, DemuxMode, Threads, XdpMode};
use xmacvlan::telemetry::cpu::{CpuSample, busy_ns_between};
use xmacvlan::xdp::{Classifier, Program, Steering};
use xmacvlan::xsk::QueueConfig;

/// What one measurement runs: the ceiling, or one of the dataplane's demux modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// XDP_DROP on the NIC: the most any mode could deliver.
    Ceiling,
    /// An AF_XDP socket that takes every frame and gives it straight back to the fill ring,
    /// unread: the most any mode that delivers into sockets could (no demux, so the endpoint
    /// count does not change it).
    Rxdrop,
    Xdp,
    User,
    /// Plain kernel macvlan read with AF_PACKET TPACKET_V3: what Docker gives today.
    Kernel,
    /// DPDK testpmd, `net_af_xdp`, `rxonly`: the external anchor (one AF_XDP socket that
    /// takes every frame, no demux), run at the base endpoint count only.
    Testpmd,
}

/// The modes every sweep point measures (the ceiling not at the cost point: it has no
/// receive threads to idle).
pub const ALL_MODES: [Mode; 5] = [
    Mode::Ceiling,
    Mode::Rxdrop,
    Mode::Xdp,
    Mode::User,
    Mode::Kernel,
];

impl Mode {
    /// The demux mode this mode measures (None: the anchors, no demux at all).
    pub fn demux(self) -> Option<DemuxMode> {
        match self {
            Mode::Ceiling | Mode::Rxdrop | Mode::Testpmd => None,
            Mode::Xdp => Some(DemuxMode::Xdp),
            Mode::User => Some(DemuxMode::User),
            Mode::Kernel => Some(DemuxMode::Kernel),
        }
    }

    /// `ceiling`, `rxdrop`, `testpmd`, else the demux mode's own name (`xdp`, `user`,
    /// `kernel`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ceiling => "ceiling",
            Mode::Rxdrop => "rxdrop",
            Mode::Testpmd => "testpmd",
            _ => self.demux().map_or("ceiling", DemuxMode::name),
        }
    }

    /// Whether the mode reads the frames' stamps (has latencies): the demux modes do; the
    /// anchors drop or recycle frames unread.
    pub fn timed(self) -> bool {
        self.demux().is_some()
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub mode: Mode,
    pub endpoints: usize,
    pub frame_size: usize,
    /// The offered load: the requested rate, or what the generator achieved flat out.
    pub offered_pps: f64,
    /// What the generator actually sent per second (a generator-bound run shows here).
    pub generator_pps: f64,
    /// What reached the NIC per second: the generator's rate less what the lab's feed lost
    /// on the generator's core (`xdp-frame` ingress; with `skb` the same as the generator's).
    pub reached_nic_pps: f64,
    pub delivered_pps: f64,
    /// Fraction of the frames that reached the NIC that were not delivered.
    pub loss: f64,
    /// Busy time of the receive core (user + system + irq + softirq) per delivered frame.
    pub cpu_ns_per_frame: f64,
    /// How long the receive threads polled after their last work before blocking: with a
    /// spin longer than the gap between frames the core reads busy whatever the work, so
    /// the cost rows run with none.
    pub receive_spin_us: u64,
    /// How long a receive thread woken by its sockets waited before reading (0: at once).
    pub receive_coalesce_us: u64,
    pub latency_ns: Latency,
    pub sent: u64,
    pub delivered: u64,
    /// Sent but lost before the NIC, in the lab's feed (`xdp-frame` ingress): the generator
    /// side's limit, not the receiver's, so not part of `loss`.
    pub lost_in_feed: u64,
    /// Reached the NIC but never seen by the receive path: the NIC (veth) queue overflowed because the
    /// receive core did not drain it in time.
    pub lost_before_receive: u64,
    /// Seen by the receive path, then dropped by the mode (a full socket, ring or block).
    pub dropped_after_receive: u64,
    /// Frames an endpoint received that were not its own. Must be 0.
    pub misdelivered: u64,
}

pub struct Setup<'a> {
    pub lab: &'a Lab,
    pub streams: &'a [Stream],
    pub rx_core: usize,
    pub generator_core: usize,
    pub frame_size: usize,
    /// How the receive threads (the dataplane's, the kernel path's reader) idle: the same
    /// in every mode of a run.
    pub idle: IdlePolicy,
    /// The dataplane's thread layout (`xdp`, `user`).
    pub threads: Threads,
}

/// How receive threads idled, in words, when not as the dataplane does by default:
/// "no spin", "no spin, 1000 us coalescing".
pub(super) fn idling(idle: IdlePolicy) -> Option<String> {
    if idle == IdlePolicy::default() {
        return None;
    }
    let mut words = if idle.spin.is_zero() {
        "no spin".to_string()
    } else {
        format!("spin {} us", idle.spin.as_micros())
    };
    if !idle.coalesce.is_zero() {
        words += &format!(", {} us coalescing", idle.coalesce.as_micros());
    }
    Some(words)
}

impl Measurement {
    /// Whether this is a cost row: receive threads that block as soon as they are idle, so
    /// busy time is work and wake-ups (T2), not the latency users get.
    pub fn measures_cost(&self) -> bool {
        self.receive_spin_us == 0
    }

    /// How this run's receive threads idled ([`idling`]).
    pub fn idle_policy(&self) -> IdlePolicy {
        IdlePolicy {
            spin: Duration::from_micros(self.receive_spin_us),
            coalesce: Duration::from_micros(self.receive_coalesce_us),
        }
    }
}

/// What one run saw, before it becomes rates.
struct Observed {
    sent: crate::generator::Sent,
    delivered: u64,
    /// Frames the receive path saw at all (XDP's `seen`; the kernel path: delivered + ring drops).
    received: u64,
    /// Frames received and then dropped by the mode (full sockets or rings), all reasons.
    dropped: u64,
    misdelivered: u64,
    busy_ns: u64,
    latency: hdrhistogram::Histogram<u64>,
}

/// UMEM frames per queue in the XDP modes: with 2 KiB frames, 64 MiB, about what the kernel
/// path's 16 MiB of TPACKET blocks hold in 64-byte frames. The library's default (8192 frames,
/// 2048-descriptor rings) leaves a lone socket too little room to ride out the moments its
/// consumer waits for the shared core.
const UMEM_FRAMES: u32 = 32768;

/// Deep buffers for the XDP modes, as the kernel path gets: the sockets' receive rings share
/// the UMEM's frames (one socket per endpoint in `xdp`, one per queue in `user`), 2048 to 8192
/// descriptors each.
pub(super) fn queue_config(mode: Mode, endpoints: usize, frame_len: usize) -> QueueConfig {
    let sockets = if mode == Mode::Xdp {
        endpoints.max(1)
    } else {
        1
    };
    let rx_ring = (UMEM_FRAMES / sockets as u32)
        .next_power_of_two()
        .clamp(2048, 8192);
    QueueConfig {
        bind: BindMode::Copy,
        frames: UMEM_FRAMES,
        // 2 KiB holds the sweep's frames (up to 1500 bytes) after the 256-byte XDP headroom.
        frame_size: if frame_len <= 1536 { 2048 } else { 4096 },
        rx_ring,
    }
}

/// Send `traffic` to a receiver that counts on its own (`accounted`: received or dropped so
/// far, what the drain waits for), and the receive core's busy time meanwhile.
fn send_timed(
    setup: &Setup,
    traffic: &TrafficConfig,
    accounted: &(dyn Fn() -> u64 + Sync),
) -> Result<(crate::generator::Sent, u64)> {
    let cores = [setup.rx_core];
    let before = CpuSample::read(&cores)?;
    let sent = run_traffic_until(setup.lab, 1, setup.streams, traffic, accounted)?;
    let after = CpuSample::read(&cores)?;
    Ok((sent, busy_ns_between(&before, &after)?))
}

/// How long a statistics query to testpmd may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn measure(
    setup: &Setup,
    mode: Mode,
    rate: Option<u64>,
    duration: Duration,
) -> Result<Measurement> {
    let traffic = TrafficConfig {
        duration,
        rate,
        count: None,
        frame_len: setup.frame_size,
        background: false,
        generator_core: Some(setup.generator_core),
        pace: crate::scenario::Pacing::Off,
    };
    let lab = setup.lab;
    let cores = [setup.rx_core];
    let wire_before = wire_counts(lab)?;
    let Observed {
        sent,
        delivered,
        received,
        dropped,
        misdelivered,
        busy_ns,
        latency: histogram,
    } = lab.host.run(|| match mode {
        Mode::Ceiling => {
            let index = xmacvlan::sys::if_index(NIC).context("lab NIC missing")?;
            let mut drop_all = Classifier::load(Program::DropAll, Steering::PerEndpoint, 1)?;
            drop_all.attach(index, NIC, XdpMode::Native, &mut Vec::new())?;
            placement::pin_napi_threads(lab, setup.rx_core)?;
            let seen = || drop_all.counters().map(|c| c.seen).unwrap_or(0);
            let (sent, busy_ns) = send_timed(setup, &traffic, &seen)?;
            Ok(Observed {
                sent,
                delivered: seen(),
                received: seen(),
                dropped: 0,
                misdelivered: 0,
                busy_ns,
                latency: latency_histogram(),
            })
        }
        Mode::Xdp | Mode::User => {
            let cfg = DataplaneConfig {
                ifname: NIC.into(),
                queues: 1,
                demux: mode
                    .demux()
                    .and_then(|d| d.fast_path())
                    .expect("a fast demux mode"),
                xdp_mode: XdpMode::Native,
                queue: queue_config(mode, lab.endpoints.len(), setup.frame_size),
                layout: Layout::for_cores(Some(setup.threads), 1),
                cores: cores.to_vec(),
                idle: setup.idle,
                ..DataplaneConfig::default()
            };
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            placement::pin_napi_threads(lab, setup.rx_core)?;
            placement::renice_receive_threads()?;
            let before = CpuSample::read(&cores)?;
            let sent = run_traffic(lab, &dp, 1, setup.streams, &traffic)?;
            let after = CpuSample::read(&cores)?;
            let snapshot = dp.snapshot()?;
            let finished = dp.stop()?;
            let mut histogram = latency_histogram();
            for e in &finished.endpoints {
                histogram
                    .add(&e.latency)
                    .context("merging latency histograms")?;
            }
            // After the classifier: sockets that were full, the user demux's full rings,
            // claimed frames with no socket.
            let dropped = snapshot.xdp.pass_no_socket
                + snapshot.endpoints.iter().map(|e| e.dropped()).sum::<u64>()
                + snapshot
                    .queues
                    .iter()
                    // Ring-full drops are already in the endpoints' `dropped()`.
                    .map(|q| q.socket.dropped() + q.dropped_unknown)
                    .sum::<u64>();
            Ok(Observed {
                sent,
                delivered: finished.endpoints.iter().map(|e| e.frames).sum(),
                received: snapshot.xdp.seen,
                dropped,
                misdelivered: finished.endpoints.iter().map(|e| e.misdelivered).sum(),
                busy_ns: busy_ns_between(&before, &after)?,
                latency: histogram,
            })
        }
        Mode::Rxdrop => {
            let queue = queue_config(mode, lab.endpoints.len(), setup.frame_size);
            let rxdrop = Rxdrop::start(setup.rx_core, setup.idle, &queue)?;
            placement::pin_napi_threads(lab, setup.rx_core)?;
            placement::renice_receive_threads()?;
            let accounted = || rxdrop.accounted();
            let (sent, busy_ns) = send_timed(setup, &traffic, &accounted)?;
            let finished = rxdrop.stop()?;
            Ok(Observed {
                sent,
                delivered: finished.frames,
                received: finished.xdp.seen,
                // As in the XDP modes: a full socket, or a frame redirected with no socket.
                dropped: finished.socket_dropped + finished.xdp.pass_no_socket,
                // One socket for every frame: there is nothing to misdeliver.
                misdelivered: 0,
                busy_ns,
                // Recycled unread: no stamps to time.
                latency: latency_histogram(),
            })
        }
        Mode::Testpmd => {
            let pmd = Testpmd::start(lab, setup.rx_core, setup.generator_core)?;
            placement::pin_napi_threads(lab, setup.rx_core)?;
            // The drain asks testpmd (only after sending: the pacing is off).
            let delivered = || pmd.query(QUERY_TIMEOUT).map_or(0, |s| s.rx + s.missed);
            let (sent, busy_ns) = send_timed(setup, &traffic, &delivered)?;
            let stats = pmd.stop()?;
            Ok(Observed {
                sent,
                delivered: stats.rx,
                received: stats.rx + stats.missed,
                dropped: stats.missed,
                // testpmd has one socket for every frame: there is nothing to misdeliver.
                misdelivered: 0,
                busy_ns,
                // rxonly frees frames unread: no stamps to time.
                latency: latency_histogram(),
            })
        }
        Mode::Kernel => {
            placement::prepare_kernel_path(lab, setup.rx_core)?;
            let kernel = KernelPath::start(lab, setup.rx_core, setup.idle)?;
            placement::renice_receive_threads()?;
            let delivered = || kernel.frames.load(Ordering::Relaxed);
            let (sent, busy_ns) = send_timed(setup, &traffic, &delivered)?;
            let finished = kernel.stop()?;
            Ok(Observed {
                sent,
                delivered: finished.frames,
                received: finished.frames + finished.drops,
                dropped: finished.drops,
                misdelivered: finished.misdelivered,
                busy_ns,
                latency: finished.latency,
            })
        }
    })?;
    let secs = sent.elapsed.as_secs_f64().max(1e-9);
    let sent_total = sent.total();
    // Read after the receive side drained: everything the feed passed on has reached the NIC.
    let reached = match (wire_before, wire_counts(lab)?) {
        (Some(before), Some(after)) => after.since(&before).reached_nic().min(sent_total),
        _ => sent_total,
    };
    let generator_pps = sent_total as f64 / secs;
    Ok(Measurement {
        mode,
        endpoints: lab.endpoints.len(),
        frame_size: setup.frame_size,
        offered_pps: rate.map(|r| r as f64).unwrap_or(generator_pps),
        generator_pps,
        reached_nic_pps: reached as f64 / secs,
        delivered_pps: delivered as f64 / secs,
        loss: if reached == 0 {
            0.0
        } else {
            1.0 - (delivered.min(reached) as f64 / reached as f64)
        },
        cpu_ns_per_frame: if delivered == 0 {
            0.0
        } else {
            busy_ns as f64 / delivered as f64
        },
        receive_spin_us: setup.idle.spin.as_micros() as u64,
        receive_coalesce_us: setup.idle.coalesce.as_micros() as u64,
        latency_ns: if histogram.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: histogram.value_at_quantile(0.5),
                p99: histogram.value_at_quantile(0.99),
                p999: histogram.value_at_quantile(0.999),
                max: histogram.max(),
            }
        },
        sent: sent_total,
        delivered,
        lost_in_feed: sent_total - reached,
        lost_before_receive: reached.saturating_sub(received),
        dropped_after_receive: dropped,
        misdelivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_serialize_as_their_names() {
        let names: Vec<String> = ALL_MODES
            .iter()
            .map(|m| serde_json::to_string(m).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                r#""ceiling""#,
                r#""rxdrop""#,
                r#""xdp""#,
                r#""user""#,
                r#""kernel""#
            ]
        );
    }

    #[test]
    fn idling_names_what_differs_from_the_default() {
        let default = IdlePolicy::default();
        assert_eq!(idling(default), None);
        let no_spin = IdlePolicy {
            spin: Duration::ZERO,
            ..default
        };
        assert_eq!(idling(no_spin).as_deref(), Some("no spin"));
        let coalesced = IdlePolicy {
            coalesce: Duration::from_millis(1),
            ..no_spin
        };
        assert_eq!(
            idling(coalesced).as_deref(),
            Some("no spin, 1000 us coalescing")
        );
    }
}
