//! Runs through ports: the fast path as a container's application sees it. Each endpoint's
//! frames go into an application's memory — one `xmacvlan-sink` process per endpoint on its
//! memif port, on the receive core — or through a reflector (`xmacvlan-reflect`) and back out
//! of the NIC, the returned frames timed on the wire. At one fixed rate that every mode
//! carries, so the latencies compare paths, not queues. The kernel baseline's application
//! reads each macvlan device with a plain AF_PACKET socket on the same core
//! ([`super::kernel_app`]). Nothing is reniced here (unlike the flat-out runs): the
//! applications, the dataplane's threads and the kernel's receive work share the receive core
//! at equal weight, as they would on a host.
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use xmacvlan::dataplane::{
    Dataplane, DataplaneConfig, Layout, PortCounts, QueueCounts, SocketStats, latency_histogram,
};
use xmacvlan::modes::{Demux, XdpMode};

use super::kernel_app::KernelApp;
use super::measure::{Latency, Mode, Setup, queue_config};
use super::placement;
use crate::apps::{AppKind, AppOutcome, LabPorts, sibling_program};
use crate::lab::{self, NIC};
use crate::placed::{DevStats, Placed, Stage};
use crate::round_trip::WireReceiver;
use crate::scenario::{Pacing, TrafficConfig, run_traffic_until};

/// One run through ports (or, for `kernel`, through the macvlan devices).
#[derive(Debug, Clone, Serialize)]
pub struct PortRun {
    pub mode: Mode,
    pub app: AppKind,
    pub endpoints: usize,
    pub frame_size: usize,
    pub offered_pps: f64,
    pub generator_pps: f64,
    pub sent: u64,
    /// Frames the applications received.
    pub delivered: u64,
    pub delivered_pps: f64,
    /// Fraction of the frames sent that did not make it: sinks, not received by a sink;
    /// reflectors, not back on the wire.
    pub loss: f64,
    /// Reflectors: frames back on the wire.
    pub returned: Option<u64>,
    /// Sinks: generator stamp to the application's read.
    pub one_way_ns: Option<Latency>,
    /// Reflectors: generator stamp to the frame's arrival back on the wire.
    pub round_trip_ns: Option<Latency>,
    /// Frames an application got that were not its endpoint's. Must be 0.
    pub misdelivered: u64,
    /// Where every frame sent went, stage by stage, each loss by its counted reason.
    pub placed: Placed,
    /// The lab NIC's veth's count of reflected frames it dropped (the dataplane's modes count
    /// the same frames as the ports' DEV-DROP: a check of that counter).
    pub nic_tx_dropped: u64,
}

fn latency_of(h: &Histogram<u64>) -> Option<Latency> {
    (!h.is_empty()).then(|| Latency {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    })
}

/// What one run saw.
struct Seen {
    sent: crate::generator::Sent,
    delivered: u64,
    misdelivered: u64,
    one_way: Histogram<u64>,
    returned: Option<crate::round_trip::Returned>,
    /// The stages up to the applications (and back to the port, for reflectors).
    stages: Vec<Stage>,
    /// The ports' DEV-DROP (the dataplane's modes).
    device_dropped: Option<u64>,
    /// The lab NIC's veth's own count of what it dropped on transmit.
    nic_tx_dropped: u64,
}

/// The lab's two veth ends' counters: the NIC's (host namespace) and the wire's.
struct LabDevs {
    nic: DevStats,
    wire: DevStats,
}

impl LabDevs {
    /// Read both; call from the lab's host namespace.
    fn read(lab: &crate::lab::Lab) -> Result<Self> {
        Ok(Self {
            nic: DevStats::read(NIC)?,
            wire: lab.wire.run(|| DevStats::read(lab::WIRE))?,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            nic: self.nic.since(&before.nic),
            wire: self.wire.since(&before.wire),
        }
    }
}

/// One run of `mode` (xdp, user or kernel) with `app` on every endpoint, at `rate` frames/s.
pub(super) fn measure(
    setup: &Setup,
    mode: Mode,
    app: AppKind,
    rate: u64,
    duration: Duration,
) -> Result<PortRun> {
    let traffic = TrafficConfig {
        duration,
        rate: Some(rate),
        count: None,
        frame_len: setup.frame_size,
        background: false,
        generator_core: Some(setup.generator_core),
        pace: Pacing::Off,
    };
    let lab = setup.lab;
    let endpoints = lab.endpoints.len();
    let seen = lab.host.run(|| {
        let devs_before = LabDevs::read(lab)?;
        let wire = match app {
            AppKind::Reflect => Some(WireReceiver::start(
                lab,
                setup.streams,
                Some(setup.generator_core),
            )?),
            AppKind::Sink => None,
        };
        let mut seen = match mode {
            Mode::Kernel => {
                placement::prepare_kernel_path(lab, setup.rx_core)?;
                let kernel = KernelApp::start(lab, app, setup.rx_core)?;
                let received = || kernel.received.load(Ordering::Relaxed);
                let sent = run_traffic_until(lab, 1, setup.streams, &traffic, &received)?;
                let finished = kernel.stop()?;
                let devs = LabDevs::read(lab)?.since(&devs_before);
                let to_endpoints = to_endpoints(setup.streams, &sent);
                let mut stages = vec![Stage {
                    name: "to the application (kernel path)",
                    frames_in: to_endpoints,
                    frames_out: finished.received,
                    // A veth counts a drop on both ends (the sender's tx, the receiver's rx).
                    counted: vec![("lab veth dropped", devs.wire.tx_dropped)],
                }];
                if app == AppKind::Reflect {
                    stages.push(Stage {
                        name: "sent back by the application",
                        frames_in: finished.received,
                        frames_out: finished.reflected,
                        counted: vec![],
                    });
                }
                Seen {
                    sent,
                    delivered: finished.received,
                    misdelivered: finished.misdelivered,
                    one_way: finished.latency,
                    returned: None,
                    stages,
                    device_dropped: None,
                    nic_tx_dropped: 0,
                }
            }
            _ => {
                let demux = if mode == Mode::Xdp {
                    Demux::Xdp
                } else {
                    Demux::User
                };
                let cfg = DataplaneConfig {
                    ifname: NIC.into(),
                    queues: 1,
                    demux,
                    xdp_mode: XdpMode::Native,
                    queue: queue_config(mode, endpoints, setup.frame_size),
                    cores: vec![setup.rx_core],
                    layout: Layout::for_cores(Some(setup.threads), 1),
                    ..DataplaneConfig::default()
                };
                let mut dp = Dataplane::start(&cfg, &[])?;
                placement::pin_napi_threads(lab, setup.rx_core)?;
                let program = sibling_program(app.program())?;
                let ports = LabPorts::attach(
                    lab,
                    &mut dp,
                    &lab.endpoints,
                    (app, &program),
                    Some(setup.rx_core),
                )?;
                let counters = ports.counters();
                let received = move || counters.iter().map(|c| c.counters.received()).sum();
                let sent = run_traffic_until(lab, 1, setup.streams, &traffic, &received)?;
                let mut seen = Seen {
                    sent,
                    delivered: 0,
                    misdelivered: 0,
                    one_way: latency_histogram(),
                    returned: None,
                    stages: Vec::new(),
                    device_dropped: None,
                    nic_tx_dropped: 0,
                };
                if let Some(w) = &wire {
                    wait_returned(w, seen.sent.total());
                }
                let mut ports_total = PortCounts::default();
                let mut reflected = 0;
                let mut not_sent = 0;
                for result in ports.finish(&mut dp)? {
                    ports_total.add(&result.port.counts);
                    match result.outcome {
                        AppOutcome::Sink { summary, latency } => {
                            seen.delivered += summary.frames;
                            seen.misdelivered += summary.misdelivered + summary.tagged;
                            seen.one_way
                                .add(&latency)
                                .context("merging the sinks' histograms")?;
                        }
                        AppOutcome::Reflect(summary) => {
                            seen.delivered += summary.received;
                            reflected += summary.reflected;
                            not_sent += summary.not_sent;
                        }
                    }
                }
                let finished = dp.stop()?;
                seen.device_dropped = Some(ports_total.drop_device);
                seen.stages = dataplane_stages(
                    to_endpoints(setup.streams, &seen.sent),
                    &finished,
                    &ports_total,
                    seen.delivered,
                    (app == AppKind::Reflect).then_some((reflected, not_sent)),
                    &LabDevs::read(lab)?.since(&devs_before),
                );
                seen
            }
        };
        if let Some(w) = wire {
            if mode == Mode::Kernel {
                wait_returned(&w, seen.sent.total());
            }
            let returned = w.stop()?;
            let devs = LabDevs::read(lab)?.since(&devs_before);
            let from = seen.stages.last().map_or(0, |s| s.frames_out);
            // The port's DEV-DROP counts what the lab NIC's veth drops here (its tx_dropped):
            // the same frames, seen from both sides; the kernel path has only the veth's.
            let dropped_by_nic = match seen.device_dropped {
                Some(port) => ("dropped by the NIC's driver", port),
                None => ("lab NIC's veth dropped", devs.nic.tx_dropped),
            };
            // The wire also receives the lab devices' own frames (IPv6 neighbour discovery,
            // …): the reader counts them, so neither stage takes them for the test's.
            let wire_rx = devs.wire.rx_packets.saturating_sub(returned.not_returned);
            seen.stages.push(Stage {
                name: "to the wire",
                frames_in: from,
                frames_out: wire_rx,
                counted: vec![dropped_by_nic],
            });
            seen.nic_tx_dropped = devs.nic.tx_dropped;
            seen.stages.push(Stage {
                name: "read on the wire",
                frames_in: wire_rx,
                frames_out: returned.frames,
                counted: vec![
                    ("capture ring full", returned.ring_drops),
                    ("wrong source", returned.wrong_source),
                ],
            });
            seen.returned = Some(returned);
        }
        Ok(seen)
    })?;
    let secs = seen.sent.elapsed.as_secs_f64().max(1e-9);
    let sent = seen.sent.total();
    let made_it = seen.returned.as_ref().map_or(seen.delivered, |r| r.frames);
    Ok(PortRun {
        mode,
        app,
        endpoints,
        frame_size: setup.frame_size,
        offered_pps: rate as f64,
        generator_pps: sent as f64 / secs,
        sent,
        delivered: seen.delivered,
        delivered_pps: seen.delivered as f64 / secs,
        loss: if sent == 0 {
            0.0
        } else {
            1.0 - made_it.min(sent) as f64 / sent as f64
        },
        returned: seen.returned.as_ref().map(|r| r.frames),
        one_way_ns: latency_of(&seen.one_way),
        round_trip_ns: seen.returned.as_ref().and_then(|r| latency_of(&r.latency)),
        misdelivered: seen.misdelivered + seen.returned.as_ref().map_or(0, |r| r.wrong_source),
        placed: Placed::new(to_endpoints(setup.streams, &seen.sent), seen.stages),
        nic_tx_dropped: seen.nic_tx_dropped,
    })
}

/// The stages of a run through the dataplane: the classifier, the sockets (or the user
/// demux's rings), the ports, the applications, and for reflectors their way back out of the
/// ports.
fn dataplane_stages(
    to_endpoints: u64,
    finished: &xmacvlan::dataplane::Finished,
    ports: &PortCounts,
    app_received: u64,
    reflect: Option<(u64, u64)>,
    devs: &LabDevs,
) -> Vec<Stage> {
    let x = &finished.xdp;
    let seen_known = x.hit + x.pass_unclaimed;
    let delivered: u64 = finished.endpoints.iter().map(|e| e.frames).sum();
    let not_connected: u64 = finished
        .endpoints
        .iter()
        .map(|e| e.dropped_not_connected)
        .sum();
    let mut sockets = SocketStats::default();
    for e in &finished.endpoints {
        sockets.add(&e.socket_stats);
    }
    let mut steered = QueueCounts::default();
    let mut duplicates = 0;
    for q in &finished.queues {
        sockets.add(&q.socket);
        steered.add(&q.counts);
        duplicates += q.frames_duplicate;
    }
    let mut stages = vec![
        Stage {
            name: "to the NIC's XDP",
            frames_in: to_endpoints,
            frames_out: seen_known,
            // A veth counts a drop on both ends (the sender's tx, the receiver's rx).
            counted: vec![("lab veth dropped", devs.wire.tx_dropped)],
        },
        Stage {
            name: "claimed by XDP",
            frames_in: seen_known,
            frames_out: x.redirected,
            counted: vec![
                ("passed: no socket", x.pass_no_socket),
                ("passed: unclaimed", x.pass_unclaimed),
            ],
        },
        Stage {
            name: "into the endpoints' sockets or rings",
            frames_in: x.redirected,
            frames_out: delivered,
            counted: vec![
                ("socket dropped", sockets.rx_dropped),
                ("socket ring full", sockets.rx_ring_full),
                ("endpoint ring full", steered.dropped_ring_full),
                ("unknown to the user demux", steered.dropped_unknown),
                ("handed over twice", duplicates),
            ],
        },
        Stage {
            name: "into the ports",
            frames_in: delivered,
            frames_out: ports.rx_frames,
            counted: vec![
                ("port ring full", ports.drop_ring_full),
                ("too big for the port", ports.drop_rx_too_big),
                (
                    "port not connected",
                    ports.drop_not_connected + not_connected,
                ),
            ],
        },
        Stage {
            name: "read by the applications",
            frames_in: ports.rx_frames,
            frames_out: app_received,
            counted: vec![],
        },
    ];
    if let Some((reflected, not_sent)) = reflect {
        stages.push(Stage {
            name: "sent back by the applications",
            frames_in: app_received,
            frames_out: reflected,
            counted: vec![("its TX ring full", not_sent)],
        });
        stages.push(Stage {
            name: "out of the ports",
            frames_in: reflected,
            frames_out: ports.tx_frames,
            counted: vec![
                ("spoofed", ports.drop_spoofed),
                ("too big", ports.drop_too_big),
                ("runt", ports.drop_runt),
                ("tagged", ports.drop_tagged),
                ("no TX frame", ports.drop_no_frame),
                ("bad chain", ports.drop_bad_chain),
            ],
        });
    }
    stages
}

/// Frames sent to the endpoints' streams (not broadcast or unknown ones).
fn to_endpoints(streams: &[crate::generator::Stream], sent: &crate::generator::Sent) -> u64 {
    streams
        .iter()
        .zip(&sent.per_stream)
        .filter(|(s, _)| matches!(s.kind, crate::generator::StreamKind::Endpoint(_)))
        .map(|(_, n)| n)
        .sum()
}

/// Reflected frames are still on their way back: wait for them, or until none came for a
/// while.
fn wait_returned(wire: &WireReceiver, expected: u64) {
    lab::wait_for_drain(
        || wire.frames.load(Ordering::Relaxed),
        expected,
        Duration::from_millis(300),
        Duration::from_secs(5),
    );
}
