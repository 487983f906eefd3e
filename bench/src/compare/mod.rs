//! `cargo xtask bench`: the anchors and the three demux modes compared in one invocation,
//! with the same generator and the same pinning (generator on one core, all receive work
//! on another), repetitions interleaved (A B C D A B C D …) and medians reported.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use xmacvlan::dataplane::IdlePolicy;
use xmacvlan::modes::Threads;

pub mod capacity;
mod kernel_app;
pub mod kernel_path;
mod measure;
mod output;
pub mod placement;
pub mod rxdrop;
mod summary;
pub mod targets;
pub mod testpmd;
mod through_ports;

pub use capacity::CapacityRow;
pub use measure::{ALL_MODES, Latency, Measurement, Mode};
pub use targets::Target;
pub use through_ports::PortRun;

use crate::apps::AppKind;
use crate::ingress::Ingress;
use crate::lab::{KernelDevices, Lab, Topology};
use crate::scenario::lab_streams;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub endpoint_counts: Vec<usize>,
    pub frame_sizes: Vec<usize>,
    /// Fixed loads as fractions of the measured ceiling, besides flat out.
    pub load_fractions: Vec<f64>,
    pub repetitions: usize,
    pub duration: Duration,
    pub modes: Vec<Mode>,
    pub rx_core: usize,
    pub generator_core: usize,
    pub out_dir: PathBuf,
    /// Frames/s of the runs through ports (sinks and reflectors, at the base endpoint
    /// count); None: no such runs.
    pub port_rate: Option<u64>,
    /// Probes per zero-loss capacity bisection (0: no capacities measured).
    pub capacity_steps: usize,
    /// How frames reach the lab NIC (default: `xdp-frame`, as a NIC hands them over).
    pub ingress: Ingress,
    /// Run the external anchor (DPDK testpmd, `net_af_xdp`, `rxonly`) at the base endpoint
    /// count: flat out and its zero-loss capacity.
    pub anchors: bool,
    /// At the cost point, how long every mode's receive threads wait after a wake-up by
    /// their sockets before reading ([`IdlePolicy::coalesce`]).
    pub cost_coalesce: Duration,
    /// The dataplane's thread layout (default: run to completion, as the daemon's).
    pub threads: Threads,
}

impl BenchConfig {
    /// The full sweep, every setting 5 times (enough for a median and its spread):
    /// about 22 minutes on the 2-core development VM.
    pub fn standard(out_dir: PathBuf) -> Self {
        Self {
            endpoint_counts: vec![1, 16, 256, 1024],
            frame_sizes: vec![64, 512, 1500, 9000],
            load_fractions: vec![0.1, 0.5, 0.9],
            repetitions: 5,
            duration: Duration::from_millis(1500),
            modes: ALL_MODES.to_vec(),
            rx_core: 1,
            generator_core: 0,
            out_dir,
            port_rate: Some(DEFAULT_PORT_RATE),
            capacity_steps: CAPACITY_STEPS,
            ingress: Ingress::XdpFrame,
            anchors: true,
            cost_coalesce: DEFAULT_COST_COALESCE,
            threads: Threads::RunToCompletion,
        }
    }

    /// Under a minute: two endpoint counts, 64-byte frames, one load point, one repetition.
    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            endpoint_counts: vec![1, 16],
            frame_sizes: vec![64],
            load_fractions: vec![0.5],
            repetitions: 1,
            duration: Duration::from_millis(1000),
            capacity_steps: 0,
            ..Self::standard(out_dir)
        }
    }

    /// How the receive threads idle at the cost point: no spin, so busy time is work and
    /// wake-ups; coalescing as configured.
    fn cost_idle(&self) -> IdlePolicy {
        IdlePolicy {
            spin: Duration::ZERO,
            coalesce: self.cost_coalesce,
        }
    }
}

/// The cost point's coalescing, in every mode: the kernel path's TPACKET blocks already hand
/// frames over by a 1 ms retire timer at 16 endpoints, so the XDP modes get the same batching
/// and the point compares work per frame, not wake-up policies.
pub const DEFAULT_COST_COALESCE: Duration = Duration::from_millis(1);

/// The rate of the runs through ports: about a tenth of what the slowest mode carries on the
/// 2-core development VM, so no mode queues and the latencies compare the paths.
pub const DEFAULT_PORT_RATE: u64 = 20_000;

/// Probes per capacity bisection: the bracket shrinks to 1/64 of the flat-out rate.
pub const CAPACITY_STEPS: usize = 6;

/// A run through ports: the median over repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct PortRow {
    #[serde(flatten)]
    pub median: PortRun,
    pub repetitions: usize,
}

/// One row of the results: the median over repetitions of one (mode, setting).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub median: Measurement,
    /// `flat-out` or the fraction of the ceiling offered, e.g. `0.50`.
    pub load: String,
    pub repetitions: usize,
    /// What set the delivered rate: `receiver` (frames were lost: the receive core's limit),
    /// `generator` (flat out, nothing lost: the receiver could take more; its CPU ns/frame
    /// then includes idle busy-polling), or `offered` (a fixed load, delivered in full).
    pub limited_by: &'static str,
    /// Delivered frames/s relative to the anchors and the kernel path of the same setting:
    /// the XDP_DROP ceiling, the AF_XDP rxdrop loop, the kernel path.
    pub vs_ceiling: Option<f64>,
    pub vs_rxdrop: Option<f64>,
    pub vs_kernel: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: String,
    /// 1-minute load average when the benchmark started and ended: anything else running on
    /// the two cores shows here (a quiet machine reads near 1, the generator's core).
    pub load_average: [f64; 2],
    pub rx_core: usize,
    pub generator_core: usize,
    /// How the generated frames reached the lab NIC: `xdp-frame` or `skb`.
    pub ingress: Ingress,
    /// The dataplane's thread layout in the `xdp` and `user` rows.
    pub receive_threads: Threads,
    pub duration_s: f64,
    pub runs: Vec<Row>,
    /// Through ports into applications (and back), per mode, at `port_rate`.
    pub through_ports: Vec<PortRow>,
    /// Zero-loss capacities (64-byte frames): every mode at the base endpoint count, the
    /// demux modes also at the smallest and largest counts.
    pub capacity: Vec<CapacityRow>,
    /// The performance targets, each judged from this run.
    pub targets: Vec<Target>,
    /// What the run could not do (e.g. an anchor missing from this machine).
    pub notes: Vec<String>,
}

/// What one sweep point is.
#[derive(Debug, Clone, Copy)]
struct Point {
    endpoints: usize,
    frame_size: usize,
    /// None = flat out; Some(f) = f x the ceiling's flat-out rate at this point.
    fraction: Option<f64>,
    /// How the receive threads idle: the dataplane's default, or [`BenchConfig::cost_idle`]
    /// at the cost point.
    idle: IdlePolicy,
}

impl Point {
    /// The cost point: a fixed load with no spin, so busy time is work and wake-ups (T2).
    fn measures_cost(&self) -> bool {
        self.idle.spin.is_zero()
    }
}

/// The modes point `p` measures: the configured ones, plus the anchor at the base count's
/// 64-byte flat-out point (when it can run here).
fn point_modes(cfg: &BenchConfig, p: &Point, base: usize, anchor: bool) -> Vec<Mode> {
    let mut modes = cfg.modes.clone();
    if crate::lab::mtu_for(p.frame_size).is_some() {
        // The anchors' programs (and rxdrop's socket) take single buffers: no native XDP at
        // a jumbo MTU. The modes run there: what does not fit a socket goes to the kernel.
        modes.retain(|m| !matches!(m, Mode::Ceiling | Mode::Rxdrop));
    }
    if p.measures_cost() {
        // The ceiling has no receive threads (rxdrop has one, idling like the others); the
        // testpmd anchor runs flat out only.
        modes.retain(|m| *m != Mode::Ceiling);
        return modes;
    }
    if anchor && p.endpoints == base && p.frame_size == 64 && p.fraction.is_none() {
        modes.push(Mode::Testpmd);
    }
    modes
}

fn plan(cfg: &BenchConfig) -> Vec<Point> {
    let mut points = Vec::new();
    // Endpoint sweep: 64-byte frames, flat out.
    for &endpoints in &cfg.endpoint_counts {
        points.push(Point {
            endpoints,
            frame_size: 64,
            fraction: None,
            idle: IdlePolicy::default(),
        });
    }
    // Frame-size sweep and load sweep at 16 endpoints (or the first count configured).
    let base = base_endpoints(cfg);
    for &frame_size in cfg.frame_sizes.iter().filter(|&&s| s != 64) {
        points.push(Point {
            endpoints: base,
            frame_size,
            fraction: None,
            idle: IdlePolicy::default(),
        });
    }
    // Fixed loads are fractions of the ceiling's rate: without the ceiling there are none.
    let loads: &[f64] = if cfg.modes.contains(&Mode::Ceiling) {
        &cfg.load_fractions
    } else {
        &[]
    };
    for &f in loads {
        points.push(Point {
            endpoints: base,
            frame_size: 64,
            fraction: Some(f),
            idle: IdlePolicy::default(),
        });
    }
    // The cost point (T2): the lowest load again, every receive thread blocking as soon as
    // it is idle. With the spin, a gap between frames shorter than it keeps the core busy
    // in every mode, and busy ns/frame is then 1/rate, not cost.
    if let Some(lowest) = loads.iter().copied().reduce(f64::min) {
        points.push(Point {
            endpoints: base,
            frame_size: 64,
            fraction: Some(lowest),
            idle: cfg.cost_idle(),
        });
    }
    points
}

/// Run the whole comparison. `progress(done, total, what)` is called before each run.
pub fn run(cfg: &BenchConfig, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Results> {
    if !xmacvlan::sys::is_root() {
        bail!("the benchmark builds namespaces and attaches XDP: run it as root");
    }
    let cores = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    if cfg.rx_core >= cores || cfg.generator_core >= cores || cfg.rx_core == cfg.generator_core {
        bail!(
            "the benchmark needs two distinct cores (receive {}, generator {}); this machine has {cores}",
            cfg.rx_core,
            cfg.generator_core
        );
    }
    let load_at_start = load_average();
    let points = plan(cfg);
    let base = base_endpoints(cfg);
    let mut notes = Vec::new();
    let anchor = cfg.anchors
        && match testpmd::unavailable() {
            None => true,
            Some(why) => {
                notes.push(format!("no testpmd anchor (T5): {why}"));
                false
            }
        };
    // Ports belong to the demux modes: the anchors have no endpoints.
    let port_modes: Vec<Mode> = match cfg.port_rate {
        Some(_) => cfg
            .modes
            .iter()
            .copied()
            .filter(|m| m.demux().is_some())
            .collect(),
        None => Vec::new(),
    };
    let port_runs = port_modes.len() * PORT_APPS.len() * cfg.repetitions;
    let flat_64 = |p: &&Point| p.fraction.is_none() && p.frame_size == 64;
    let flat_64_counts: Vec<usize> = points.iter().filter(flat_64).map(|p| p.endpoints).collect();
    let bisections: usize = match cfg.capacity_steps {
        0 => 0,
        _ => points
            .iter()
            .filter(flat_64)
            .map(|p| {
                let modes = point_modes(cfg, p, base, anchor);
                capacity::modes_at(p.endpoints, base, &flat_64_counts, &modes).len()
            })
            .sum(),
    };
    // Progress counts a bisection as its most probes (one that converges early skips ahead).
    let capacity_probes = bisections * cfg.repetitions * cfg.capacity_steps;
    let measurements: usize = points
        .iter()
        .map(|p| point_modes(cfg, p, base, anchor).len())
        .sum();
    let total = measurements * cfg.repetitions + port_runs + capacity_probes;
    let mut capacities = Vec::new();
    let mut through_ports = Vec::new();
    let mut done = 0;
    let mut rows: Vec<Row> = Vec::new();
    // Points sharing an endpoint count and an MTU share one lab. Jumbo frames need a lab at
    // MTU 9000, fed by the generator itself: the `xdp-frame` feed program is single-buffer.
    let mut labs: Vec<(usize, Option<u32>)> = points
        .iter()
        .map(|p| (p.endpoints, crate::lab::mtu_for(p.frame_size)))
        .collect();
    labs.sort_unstable();
    labs.dedup();
    if labs.iter().any(|(_, mtu)| mtu.is_some()) && cfg.ingress == Ingress::XdpFrame {
        notes.push(format!(
            "rows with frames over 1514 B: the lab at MTU {}, ingress `skb` (the `xdp-frame` \
             feed program is single-buffer), no `ceiling` or `rxdrop` row (their programs are \
             too); `xdp` and `user` take them as chains of socket chunks (multi-buffer AF_XDP), \
             or where the sockets cannot be multi-buffer only frames one chunk holds, the rest \
             going to the endpoints' kernel devices (`too-big`)",
            crate::lab::JUMBO_MTU
        ));
    }
    for (endpoints, mtu) in labs {
        let lab = Lab::build(&Topology {
            vlans: vec![0],
            endpoints_per_vlan: endpoints,
            queues: 1,
            kernel_devices: KernelDevices::Host,
            mtu,
            ingress: if mtu.is_some() {
                Ingress::Skb
            } else {
                cfg.ingress
            },
        })?;
        placement::prepare(&lab, cfg.rx_core)?;
        // The ceiling's flat-out rate at this endpoint count anchors the fixed loads.
        let mut ceiling_pps = None;
        let in_lab =
            |p: &&Point| p.endpoints == endpoints && crate::lab::mtu_for(p.frame_size) == mtu;
        for point in points.iter().filter(in_lab) {
            let streams = lab_streams(&lab.endpoints, point.frame_size, false);
            let setup = measure::Setup {
                lab: &lab,
                streams: &streams,
                rx_core: cfg.rx_core,
                generator_core: cfg.generator_core,
                frame_size: point.frame_size,
                idle: point.idle,
                threads: cfg.threads,
            };
            let rate = match point.fraction {
                None => None,
                Some(f) => match ceiling_pps {
                    Some(c) => Some(((c * f) as u64).max(1)),
                    None => bail!("fixed loads need a flat-out ceiling run first"),
                },
            };
            let load = point
                .fraction
                .map(|f| format!("{f:.2}"))
                .unwrap_or_else(|| "flat-out".into());
            let point_modes = point_modes(cfg, point, base, anchor);
            let mut samples: Vec<Vec<Measurement>> = vec![Vec::new(); point_modes.len()];
            for _ in 0..cfg.repetitions {
                for (m, &mode) in point_modes.iter().enumerate() {
                    progress(
                        done,
                        total,
                        &format!(
                            "{} endpoints={endpoints} frame={}B load={load}{}",
                            mode.name(),
                            point.frame_size,
                            measure::idling(point.idle)
                                .map(|words| format!(" {words}"))
                                .unwrap_or_default()
                        ),
                    );
                    samples[m].push(measure::measure(&setup, mode, rate, cfg.duration)?);
                    done += 1;
                }
            }
            let medians: Vec<Measurement> = samples.into_iter().map(median).collect();
            let of = |mode: Mode| {
                medians
                    .iter()
                    .find(|m| m.mode == mode)
                    .map(|m| m.delivered_pps)
            };
            if point.fraction.is_none() && point.frame_size == 64 {
                ceiling_pps = of(Mode::Ceiling).or(ceiling_pps);
                if cfg.capacity_steps > 0 {
                    let modes = capacity::modes_at(endpoints, base, &flat_64_counts, &point_modes);
                    let mut bisections: Vec<Vec<capacity::Bisection>> =
                        vec![Vec::new(); modes.len()];
                    for _ in 0..cfg.repetitions {
                        for (b, &mode) in modes.iter().enumerate() {
                            progress(
                                done,
                                total,
                                &format!(
                                    "{} endpoints={endpoints} zero-loss capacity",
                                    mode.name()
                                ),
                            );
                            let flat = medians.iter().find(|m| m.mode == mode).expect("measured");
                            bisections[b].push(capacity::bisect(
                                &setup,
                                mode,
                                flat,
                                cfg.capacity_steps,
                                cfg.duration,
                            )?);
                            done += cfg.capacity_steps;
                        }
                    }
                    for (mode, runs) in modes.iter().zip(bisections) {
                        let flat = medians.iter().find(|m| m.mode == *mode).expect("measured");
                        capacities.push(capacity::row(flat, runs));
                    }
                }
            }
            let vs = |anchor: Mode, m: &Measurement| {
                of(anchor).filter(|&a| a > 0.0).map(|a| m.delivered_pps / a)
            };
            for m in &medians {
                rows.push(Row {
                    vs_ceiling: vs(Mode::Ceiling, m),
                    vs_rxdrop: vs(Mode::Rxdrop, m),
                    vs_kernel: vs(Mode::Kernel, m),
                    limited_by: limited_by(m, rate),
                    median: m.clone(),
                    load: load.clone(),
                    repetitions: cfg.repetitions,
                });
            }
        }
        if let Some(rate) = cfg.port_rate.filter(|_| endpoints == base && mtu.is_none()) {
            let streams = lab_streams(&lab.endpoints, 64, false);
            let setup = measure::Setup {
                lab: &lab,
                streams: &streams,
                rx_core: cfg.rx_core,
                generator_core: cfg.generator_core,
                frame_size: 64,
                idle: IdlePolicy::default(),
                threads: cfg.threads,
            };
            for app in PORT_APPS {
                let mut samples: Vec<Vec<PortRun>> = vec![Vec::new(); port_modes.len()];
                for _ in 0..cfg.repetitions {
                    for (m, &mode) in port_modes.iter().enumerate() {
                        progress(
                            done,
                            total,
                            &format!(
                                "{} endpoints={endpoints} through ports to {} at {rate} fps",
                                mode.name(),
                                app.program()
                            ),
                        );
                        samples[m].push(through_ports::measure(
                            &setup,
                            mode,
                            app,
                            rate,
                            cfg.duration,
                        )?);
                        done += 1;
                    }
                }
                for runs in samples {
                    through_ports.push(PortRow {
                        repetitions: runs.len(),
                        median: median_port_run(runs),
                    });
                }
            }
        }
        if xmacvlan::sys::interrupted().load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
    }
    progress(done, total, "done");
    let mut results = Results {
        machine: machine_description(),
        load_average: [load_at_start, load_average()],
        rx_core: cfg.rx_core,
        generator_core: cfg.generator_core,
        ingress: cfg.ingress,
        receive_threads: cfg.threads,
        duration_s: cfg.duration.as_secs_f64(),
        runs: rows,
        through_ports,
        capacity: capacities,
        targets: Vec::new(),
        notes,
    };
    results.targets = targets::judge(&results);
    Ok(results)
}

/// The applications of the runs through ports, in this order.
const PORT_APPS: [AppKind; 2] = [AppKind::Sink, AppKind::Reflect];

/// The endpoint count of the frame-size, load and port sweeps: 16, or the first configured.
fn base_endpoints(cfg: &BenchConfig) -> usize {
    if cfg.endpoint_counts.contains(&16) {
        16
    } else {
        cfg.endpoint_counts[0]
    }
}

/// The median run by its median latency (one way for sinks, round trip for reflectors).
fn median_port_run(mut runs: Vec<PortRun>) -> PortRun {
    let p50 = |r: &PortRun| r.one_way_ns.or(r.round_trip_ns).map_or(u64::MAX, |l| l.p50);
    runs.sort_by_key(p50);
    runs.swap_remove(runs.len() / 2)
}

/// Loss above this means the receiver, not the generator, set the rate.
const LOSS_LIMIT: f64 = 0.01;

fn limited_by(m: &Measurement, rate: Option<u64>) -> &'static str {
    if m.loss > LOSS_LIMIT {
        "receiver"
    } else if rate.is_some_and(|r| m.generator_pps >= 0.98 * r as f64) {
        "offered"
    } else {
        "generator"
    }
}

/// The median run by delivered frames/s (its other numbers come with it, so one row is one
/// real run, not a mix of runs).
fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps));
    runs.swap_remove(runs.len() / 2)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

pub use output::{Written, markdown, write_outputs};
