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
use xmacvlan::dataplane::{Dataplane, DataplaneConfig, Layout, latency_histogram};
use xmacvlan::modes::{Demux, XdpMode};

use super::kernel_app::KernelApp;
use super::measure::{Latency, Mode, Setup, queue_config};
use super::placement;
use crate::apps::{AppKind, AppOutcome, LabPorts, sibling_program};
use crate::lab::{self, NIC};
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
}

/// One run of `mode` (xdp, user or kernel) with `app` on every endpoint, at `rate` frames/s.
pub fn measure(
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
                Seen {
                    sent,
                    delivered: finished.received,
                    misdelivered: finished.misdelivered,
                    one_way: finished.latency,
                    returned: None,
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
                };
                if let Some(w) = &wire {
                    wait_returned(w, seen.sent.total());
                }
                for result in ports.finish(&mut dp)? {
                    match result.outcome {
                        AppOutcome::Sink { summary, latency } => {
                            seen.delivered += summary.frames;
                            seen.misdelivered += summary.misdelivered + summary.tagged;
                            seen.one_way
                                .add(&latency)
                                .context("merging the sinks' histograms")?;
                        }
                        AppOutcome::Reflect(summary) => seen.delivered += summary.received,
                    }
                }
                dp.stop()?;
                seen
            }
        };
        if let Some(w) = wire {
            if mode == Mode::Kernel {
                wait_returned(&w, seen.sent.total());
            }
            seen.returned = Some(w.stop()?);
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
    })
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
