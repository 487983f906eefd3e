//! A lab run: the dataplane on the lab's NIC, the generator on the wire, and the report
//! with what every endpoint was sent next to what it received.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::test_frame::TestFrame;
use anyhow::{Context, Result, bail};
use xmacvlan::dataplane::{Dataplane, DataplaneConfig, EndpointSpec};
use xmacvlan::frame::BROADCAST;
use xmacvlan::telemetry::report::{
    AppRow, AppTotals, EndpointRow, Percentiles, Report, SentTotals,
};

use crate::apps::{AppKind, AppOutcome, AppResult, LabPorts, sibling_program};
use crate::generator::{self, Amount, GeneratorConfig, Sent, Stream, StreamKind};
use crate::lab::{self, Lab};
use crate::round_trip::{Returned, WireReceiver};

#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub duration: Duration,
    /// Total frames per second over all generator queues; None = flat out.
    pub rate: Option<u64>,
    /// Exactly this many frames per stream (tests), instead of running for `duration`.
    pub count: Option<u64>,
    /// Frame length (bytes, without FCS).
    pub frame_len: usize,
    /// Also send broadcast and unknown-unicast frames on every VLAN.
    pub background: bool,
    pub generator_core: Option<usize>,
    /// Flow control ([`generator::Pace`]), so exact counts do not depend on an idle CPU.
    /// Tests set it; the bench measures loss and does not.
    pub pace: Pacing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// At the rate, whatever the receiver does (the bench: loss is what it measures).
    Off,
    /// Never more in flight than the veth ring holds: nothing lost before XDP; the receiver
    /// may still drop (and count) when it falls behind (tests of drops).
    Wire,
    /// Also never more than [`PACE_WINDOW`] frames to endpoints not yet delivered: nothing
    /// lost anywhere on a healthy path (tests of exact delivery).
    Delivered,
}

/// Paced traffic: frames to endpoints not yet delivered, at most. A quarter of the default
/// 2048-entry AF_XDP RX ring (uncounted streams sent round-robin beside them still fit), and
/// below the kernel's 1000-frame input backlog for the kernel-path baseline.
pub const PACE_WINDOW: u64 = 512;

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(3),
            rate: None,
            count: None,
            frame_len: 64,
            background: true,
            generator_core: Some(0),
            pace: Pacing::Off,
        }
    }
}

/// The standard streams: one per endpoint, plus broadcast and an unknown MAC per VLAN.
pub fn lab_streams(endpoints: &[EndpointSpec], frame_len: usize, background: bool) -> Vec<Stream> {
    let tag = |vid: u16| (vid != 0).then_some(vid);
    let mut streams: Vec<Stream> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Stream::new(
                TestFrame {
                    dst: e.mac,
                    src: lab::GENERATOR_MAC,
                    vid: tag(e.vid),
                    qinq_outer: None,
                    len: frame_len,
                },
                StreamKind::Endpoint(i),
            )
        })
        .collect();
    if background {
        let mut vlans: Vec<u16> = endpoints.iter().map(|e| e.vid).collect();
        vlans.dedup();
        vlans.sort_unstable();
        vlans.dedup();
        for vid in vlans {
            for (dst, kind) in [
                (BROADCAST, StreamKind::Broadcast),
                (
                    [0x02, 0x58, 0x4d, 0xee, 0xee, 0xee],
                    StreamKind::UnknownUnicast,
                ),
            ] {
                streams.push(Stream::new(
                    TestFrame {
                        dst,
                        src: lab::GENERATOR_MAC,
                        vid: tag(vid),
                        qinq_outer: None,
                        len: frame_len,
                    },
                    kind,
                ));
            }
        }
    }
    streams
}

/// Run `streams` from the lab's wire into `dataplane`, one generator per queue, and wait
/// until what was sent to endpoints has arrived (or stopped arriving).
pub fn run_traffic(
    lab: &Lab,
    dataplane: &Dataplane,
    queues: u32,
    streams: &[Stream],
    traffic: &TrafficConfig,
) -> Result<Sent> {
    let counters = dataplane.endpoint_counters();
    let delivered = || {
        counters
            .iter()
            .map(|(_, c)| c.frames.load(Ordering::Relaxed))
            .sum()
    };
    run_traffic_until(lab, queues, streams, traffic, &delivered)
}

/// [`run_traffic`] for any receiver: `delivered()` counts what it has received so far (with
/// [`Pacing::Delivered`], also what it counted as dropped, or the pace waits for those).
pub fn run_traffic_until(
    lab: &Lab,
    queues: u32,
    streams: &[Stream],
    traffic: &TrafficConfig,
    delivered: &(dyn Fn() -> u64 + Sync),
) -> Result<Sent> {
    let pace_sent = generator::PaceSent::default();
    let pace = match traffic.pace {
        Pacing::Off => None,
        Pacing::Wire => Some(generator::Pace::wire(&pace_sent)),
        Pacing::Delivered => Some(generator::Pace::delivered(
            &pace_sent,
            delivered,
            PACE_WINDOW,
        )),
    };
    let stop = xmacvlan::sys::interrupted();
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Sent>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..queues)
            .map(|q| {
                let cfg = GeneratorConfig {
                    ifname: lab.ingress.generator_device().into(),
                    queue: q,
                    amount: match traffic.count {
                        Some(n) => Amount::EachStream(n),
                        None => Amount::For(traffic.duration),
                    },
                    rate: traffic.rate.map(|r| (r / queues as u64).max(1)),
                    core: traffic.generator_core,
                    frame_size: generator::FRAME_SIZE,
                    max_in_flight: generator::MAX_IN_FLIGHT,
                };
                let failed = &failed;
                s.spawn(move || {
                    let r = lab
                        .wire
                        .run(|| generator::run_paced(&cfg, streams, stop, pace));
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator panicked"))
            .collect()
    });
    let mut total = Sent {
        per_stream: vec![0; streams.len()],
        elapsed: Duration::ZERO,
    };
    for r in results {
        let sent = r.context("traffic generator")?;
        for (t, n) in total.per_stream.iter_mut().zip(&sent.per_stream) {
            *t += n;
        }
        total.elapsed = total.elapsed.max(sent.elapsed);
    }
    // Let the receive side finish what is in flight: stop when every frame sent to an
    // endpoint is accounted for (delivered or dropped) or nothing moves for 200 ms.
    let expected: u64 = streams
        .iter()
        .zip(&total.per_stream)
        .filter(|(s, _)| matches!(s.kind, StreamKind::Endpoint(_)))
        .map(|(_, n)| n)
        .sum();
    lab::wait_for_drain(
        delivered,
        expected,
        Duration::from_millis(200),
        Duration::from_secs(3),
    );
    Ok(total)
}

/// Totals by kind of stream.
pub fn sent_totals(streams: &[Stream], sent: &Sent) -> SentTotals {
    let mut t = SentTotals {
        total: sent.total(),
        duration_s: sent.elapsed.as_secs_f64(),
        ..Default::default()
    };
    for (s, &n) in streams.iter().zip(&sent.per_stream) {
        match s.kind {
            StreamKind::Endpoint(_) => t.to_endpoints += n,
            StreamKind::Broadcast => t.broadcast += n,
            StreamKind::UnknownUnicast => t.unknown_unicast += n,
            StreamKind::Other => t.other += n,
        }
    }
    t.pps = if t.duration_s > 0.0 {
        t.total as f64 / t.duration_s
    } else {
        0.0
    };
    t
}

/// What plays the endpoints' applications in a lab run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LabApp {
    /// `xmacvlan-sink` on every endpoint's memif port: delivery into an application's memory.
    #[default]
    Sink,
    /// `xmacvlan-reflect` on every port, the frames timed again back on the wire: round trip.
    Reflect,
    /// No ports: the dataplane's own in-process consumer counts and times every frame.
    Consumer,
}

impl LabApp {
    fn kind(self) -> Option<AppKind> {
        match self {
            LabApp::Sink => Some(AppKind::Sink),
            LabApp::Reflect => Some(AppKind::Reflect),
            LabApp::Consumer => None,
        }
    }
}

/// Build the lab, run the dataplane, the applications and the traffic, report, tear down.
pub fn run_lab(
    topology: &lab::Topology,
    dataplane: &DataplaneConfig,
    traffic: &TrafficConfig,
    app: LabApp,
) -> Result<Report> {
    if !xmacvlan::sys::is_root() {
        bail!("the lab creates network namespaces and attaches XDP: run it as root (sudo)");
    }
    let program = app
        .kind()
        .map(|k| sibling_program(k.program()).map(|p| (k, p)))
        .transpose()?;
    let lab = Lab::build(topology)?;
    let cfg = lab.dataplane_config(dataplane);
    let streams = lab_streams(&lab.endpoints, traffic.frame_len, traffic.background);
    let report = lab.host.run(|| {
        let mut dp = match program {
            Some(_) => Dataplane::start(&cfg, &[])?,
            None => Dataplane::start(&cfg, &lab.endpoints)?,
        };
        for w in &dp.warnings {
            eprintln!("xmacvlan: {w}");
        }
        let ports = match &program {
            Some((kind, path)) => Some(LabPorts::attach(
                &lab,
                &mut dp,
                &lab.endpoints,
                (*kind, path),
                None,
            )?),
            None => None,
        };
        let wire = match app {
            LabApp::Reflect => Some(WireReceiver::start(&lab, &streams, traffic.generator_core)?),
            _ => None,
        };
        let (attached, bound) = (dp.attached, dp.bound);
        let sent = match &ports {
            Some(p) => {
                let counters = p.counters();
                let received = move || counters.iter().map(|c| c.counters.received()).sum();
                run_traffic_until(&lab, topology.queues, &streams, traffic, &received)?
            }
            None => run_traffic(&lab, &dp, topology.queues, &streams, traffic)?,
        };
        let returned = match wire {
            Some(w) => {
                // Reflected frames are still crossing the reflectors, the NIC and the wire:
                // wait for all of them, or until none has come for a second.
                lab::wait_for_drain(
                    || w.frames.load(Ordering::Relaxed),
                    sent_totals(&streams, &sent).to_endpoints,
                    Duration::from_secs(1),
                    Duration::from_secs(10),
                );
                Some(w.stop()?)
            }
            _ => None,
        };
        let apps = ports.map(|p| p.finish(&mut dp)).transpose()?;
        let finished = dp.stop()?;
        let duration = sent.elapsed.as_secs_f64();
        let mut rows = Report::endpoint_rows(&finished, duration);
        for (i, row) in rows.iter_mut().enumerate() {
            row.expected = Some(endpoint_share(&streams, &sent.per_stream, i));
        }
        let totals = match (&apps, &program) {
            (Some(apps), Some((kind, _))) => Some(app_rows(
                &mut rows,
                apps,
                *kind,
                &streams,
                returned.as_ref(),
                duration,
            )?),
            _ => None,
        };
        Ok(Report {
            interface: format!("{} (lab veth)", lab::NIC),
            demux: cfg.demux.to_string(),
            xdp_mode: attached.to_string(),
            bind: bound.to_string(),
            duration_s: duration,
            endpoints: rows,
            xdp: finished.xdp,
            queues: finished.queues,
            sent: Some(sent_totals(&streams, &sent)),
            apps: totals,
            notes: lab.notes.clone(),
        })
    })?;
    Ok(report)
}

/// Endpoint `i`'s share of per-stream counts (frames sent, frames back).
fn endpoint_share(streams: &[Stream], per_stream: &[u64], i: usize) -> u64 {
    streams
        .iter()
        .zip(per_stream)
        .filter(|(s, _)| s.kind == StreamKind::Endpoint(i))
        .map(|(_, n)| n)
        .sum()
}

/// Fill every row's application columns; the totals over all endpoints.
fn app_rows(
    rows: &mut [EndpointRow],
    apps: &[AppResult],
    kind: AppKind,
    streams: &[Stream],
    returned: Option<&Returned>,
    duration: f64,
) -> Result<AppTotals> {
    let mut one_way = xmacvlan::dataplane::latency_histogram();
    let mut received = 0;
    for (i, (row, app)) in rows.iter_mut().zip(apps).enumerate() {
        let mut r = AppRow {
            port_rx: app.port.rx_frames,
            port_rx_dropped: app.port.rx_dropped(),
            port_tx: app.port.tx_frames,
            port_tx_dropped: app.port.tx_dropped(),
            ..AppRow::default()
        };
        match &app.outcome {
            AppOutcome::Sink { summary, latency } => {
                r.received = summary.frames;
                r.misdelivered = summary.misdelivered + summary.tagged;
                r.latency_ns = (!latency.is_empty()).then(|| Percentiles::of(latency));
                one_way
                    .add(latency)
                    .context("merging the sinks' histograms")?;
            }
            AppOutcome::Reflect(summary) => {
                r.received = summary.received;
                r.returned = returned.map(|back| endpoint_share(streams, &back.per_stream, i));
            }
        }
        received += r.received;
        row.app = Some(r);
    }
    Ok(AppTotals {
        program: kind.program().to_string(),
        received,
        received_pps: if duration > 0.0 {
            received as f64 / duration
        } else {
            0.0
        },
        one_way_ns: (!one_way.is_empty()).then(|| Percentiles::of(&one_way)),
        returned: returned.map(|r| r.frames),
        round_trip_ns: returned
            .filter(|r| !r.latency.is_empty())
            .map(|r| Percentiles::of(&r.latency)),
        wrong_source: returned.map_or(0, |r| r.wrong_source),
    })
}
