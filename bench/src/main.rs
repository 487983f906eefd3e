//! `xmacvlan-bench`: the lab (`cargo xtask run` with no interface) and the benchmarks.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xmacvlan::config::DataplaneFlags;
use xmacvlan::dataplane::DataplaneConfig;
use xmacvlan::ether::{Mac, VlanId};
use xmacvlan_bench::ingress::Ingress;
use xmacvlan_bench::lab::{KernelDevices, Topology};
use xmacvlan_bench::scenario::{LabApp, TrafficConfig, run_lab};

#[derive(Parser)]
#[command(
    name = "xmacvlan-bench",
    version,
    about = "xmacvlan's lab and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab of namespaces and veths, run the dataplane and the generator, report.
    Lab(LabArgs),
    /// Compare the anchors (XDP_DROP, AF_XDP rxdrop, testpmd) and the xdp, user and kernel
    /// demux modes (`cargo xtask bench`).
    Compare(CompareArgs),
    /// Send the lab's timestamped test frames out of any interface, e.g. one port of a real
    /// NIC towards `xmacvlan run` on another port or host: one stream per destination MAC.
    Generate(GenerateArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Interface to send from (AF_XDP copy-mode TX; no XDP program is attached).
    #[arg(long)]
    iface: String,
    /// Destination MACs, comma-separated (the endpoints' MACs): sent round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    dst: Vec<Mac>,
    /// 802.1Q VLAN id of every frame; default: untagged.
    #[arg(long)]
    vlan: Option<VlanId>,
    /// Seconds of traffic [default: 10]; with `--rate`, exactly rate × duration frames (a
    /// generator that falls behind catches up rather than send fewer).
    #[arg(long, conflicts_with = "count")]
    duration: Option<f64>,
    /// Send exactly this many frames in all (the destinations taking turns), then stop.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Frames per second, all streams together; default: as fast as possible.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Frame length in bytes (without FCS), 60-9000; one longer than 3840 goes out as a chain
    /// (multi-buffer AF_XDP, Linux 6.6+), and the interface's MTU must carry it.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(60..=9000))]
    frame_len: u16,
    /// Send each stream as IPv4/UDP over this many flows (source address and port change
    /// frame by frame), so that the receiving NIC's RSS spreads it over its queues; default:
    /// plain test frames (EtherType 0x88b5), which RSS leaves on one queue.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    udp_flows: Option<u16>,
    /// Transmit queue of the interface.
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// Core for the generator.
    #[arg(long, default_value_t = 0)]
    core: usize,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Under a minute: 1 and 16 endpoints, 64-byte frames, one fixed load, one repetition.
    #[arg(long)]
    quick: bool,
    /// Where bench-results.json, bench-results.md and the SVG plots go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Seconds of traffic per run (default: 1.5, --quick 1).
    #[arg(long)]
    duration: Option<f64>,
    /// Repetitions of every run, interleaved across modes (default: 3, --quick 1).
    #[arg(long)]
    repetitions: Option<usize>,
    /// Endpoint counts to sweep, comma-separated (default: 1,16,256,1024).
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<usize>>,
    /// Frame sizes of the frame-size sweep at the base endpoint count, comma-separated bytes
    /// without FCS, 60-9000 (default: 64,512,1500,9000, --quick 64); over 1514 the lab runs
    /// at MTU 9000.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(60..=9000))]
    frame_sizes: Option<Vec<u16>>,
    /// Only these modes, comma-separated (ceiling, rxdrop, xdp, user, kernel); the fixed loads
    /// are fractions of the ceiling's rate, so without `ceiling` only flat-out runs are made.
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Fixed loads, comma-separated fractions of the ceiling's flat-out rate (default:
    /// 0.1,0.5,0.9, --quick 0.5); the lowest is also the cost point (no spin, T2).
    #[arg(long, value_delimiter = ',')]
    loads: Option<Vec<f64>>,
    /// At the cost point, every mode's receive threads wait this many microseconds after a
    /// wake-up by their sockets before reading, so frames arriving meanwhile share it
    /// (0: read at once; at most 10000).
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=xmacvlan::config::MAX_COALESCE_US))]
    cost_coalesce_us: Option<u64>,
    /// How the dataplane's receive work is laid out in threads: `run-to-completion` (one
    /// thread, the daemon's default) or `split` (a queue worker thread beside the consumer).
    #[arg(long, value_enum, default_value = "run-to-completion")]
    receive_threads: xmacvlan::modes::Threads,
    /// The core that does all receive work (NAPI, XDP, workers, consumers).
    #[arg(long, default_value_t = 1)]
    rx_core: usize,
    /// The generator's core.
    #[arg(long, default_value_t = 0)]
    generator_core: usize,
    /// Frames/s of the runs through ports (sinks and reflectors on memif ports; the kernel
    /// baseline's AF_PACKET application); 0 skips them.
    #[arg(long, default_value_t = xmacvlan_bench::compare::DEFAULT_PORT_RATE)]
    port_rate: u64,
    /// Probes per zero-loss capacity bisection (default: 6, --quick 0 = none).
    #[arg(long)]
    capacity_steps: Option<usize>,
    /// How frames reach the lab NIC: `xdp-frame` (redirected in, as a NIC's buffers) or
    /// `skb` (AF_XDP TX straight into the wire).
    #[arg(long, value_enum, default_value = "xdp-frame")]
    ingress: Ingress,
}

#[derive(clap::Args)]
struct LabArgs {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Offered load in frames per second (all streams together); default: as fast as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The dataplane's options, as `xmacvlan run` and the daemon take them.
    #[command(flatten)]
    dataplane: DataplaneFlags,
    /// Receive queues of the lab NIC (a generator each; `--ingress skb` only).
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// VLANs with endpoints, comma-separated; 0 = untagged.
    #[arg(long, value_delimiter = ',', default_value = "100,200,0")]
    vlans: Vec<u16>,
    /// Endpoints on each VLAN.
    #[arg(long, default_value_t = 2)]
    per_vlan: usize,
    /// Frame length in bytes (without FCS), 60-9000. Above 1514 the lab's wire runs at MTU 9000
    /// and the generator sends chains (multi-buffer AF_XDP, Linux 6.6+), as the dataplane's
    /// sockets receive them; where they cannot be multi-buffer, a frame longer than a UMEM
    /// chunk (`--frame-size` less 256) goes to the endpoint's kernel device, counted as TOO-BIG.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(60..=9000))]
    frame_len: u16,
    /// Core for the generator.
    #[arg(long, default_value_t = 0)]
    generator_core: usize,
    /// Skip the kernel macvlan devices (fast-path only).
    #[arg(long)]
    no_kernel_devices: bool,
    /// What receives each endpoint's frames: `sink` (xmacvlan-sink on its memif port),
    /// `reflect` (xmacvlan-reflect on its port; round trip timed on the wire), or `consumer`
    /// (no ports: the dataplane's in-process consumer).
    #[arg(long, value_enum, default_value = "sink")]
    app: LabApp,
    /// How frames reach the lab NIC: `skb` (AF_XDP TX straight into the wire) or `xdp-frame`
    /// (redirected in by a feed program, as a NIC's buffers; one queue only).
    #[arg(long, value_enum, default_value = "skb")]
    ingress: Ingress,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xmacvlan-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    xmacvlan::sys::catch_interrupts();
    match cli.command {
        Command::Lab(args) => lab(args),
        Command::Compare(args) => compare(args),
        Command::Generate(args) => generate(args),
    }
}

fn generate(a: GenerateArgs) -> Result<()> {
    use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Stream, StreamKind};
    let amount = match a.count {
        Some(n) => Amount::Total(n),
        None => Amount::For(traffic_duration(a.duration.unwrap_or(10.0))?),
    };
    let streams = a
        .dst
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let frame = xmacvlan_bench::test_frame::TestFrame {
                dst: mac.0,
                src: xmacvlan_bench::lab::GENERATOR_MAC,
                vid: a.vlan.map(VlanId::get),
                qinq_outer: None,
                len: a.frame_len as usize,
            };
            let stream = Stream::new(frame, StreamKind::Endpoint(i));
            match a.udp_flows {
                Some(flows) => stream.with_udp_flows(flows),
                None => stream,
            }
        })
        .collect::<Vec<_>>();
    let cfg = GeneratorConfig {
        ifname: a.iface.clone(),
        queue: a.queue,
        amount,
        rate: a.rate,
        core: Some(a.core),
        frame_size: generator::FRAME_SIZE,
        max_in_flight: generator::MAX_IN_FLIGHT,
    };
    let sent = generator::run(&cfg, &streams, xmacvlan::sys::interrupted())
        .with_context(|| format!("sending from {}", a.iface))?;
    let secs = sent.elapsed.as_secs_f64().max(1e-9);
    for (mac, n) in a.dst.iter().zip(&sent.per_stream) {
        println!("{mac}  {n} frames");
    }
    println!(
        "sent {} frames in {secs:.2} s: {:.3} Mpps from {} queue {}",
        sent.total(),
        sent.total() as f64 / secs / 1e6,
        a.iface,
        a.queue
    );
    Ok(())
}

/// `--duration` of `lab` and `generate`.
fn traffic_duration(secs: f64) -> Result<Duration> {
    if !(secs > 0.0 && secs <= 3600.0) {
        anyhow::bail!("--duration {secs} must be more than 0 and at most 3600 seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn lab(a: LabArgs) -> Result<()> {
    let duration = traffic_duration(a.duration)?;
    let topology = Topology {
        vlans: a.vlans,
        endpoints_per_vlan: a.per_vlan,
        queues: a.queues,
        kernel_devices: if a.no_kernel_devices {
            KernelDevices::None
        } else {
            KernelDevices::OwnNamespace
        },
        mtu: xmacvlan_bench::lab::mtu_for(a.frame_len as usize),
        ingress: a.ingress,
    };
    if a.ingress == Ingress::XdpFrame && a.frame_len > 3000 {
        anyhow::bail!(
            "--frame-len {}: --ingress xdp-frame feeds frames of at most 3000 bytes (its feed \
             program is single-buffer); use --ingress skb for jumbo frames",
            a.frame_len
        );
    }
    let mut dataplane = DataplaneConfig {
        queues: a.queues,
        ..DataplaneConfig::default()
    };
    dataplane.apply(&a.dataplane).map_err(anyhow::Error::msg)?;
    let traffic = TrafficConfig {
        duration,
        rate: a.rate,
        frame_len: a.frame_len as usize,
        generator_core: Some(a.generator_core),
        ..TrafficConfig::default()
    };
    let report = run_lab(&topology, &dataplane, &traffic, a.app)?;
    print!("{}", report.to_text());
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn compare(a: CompareArgs) -> Result<()> {
    use xmacvlan_bench::compare::{self, ALL_MODES, BenchConfig};
    let mut cfg = if a.quick {
        BenchConfig::quick(a.out.clone())
    } else {
        BenchConfig::standard(a.out.clone())
    };
    if let Some(d) = a.duration {
        if !(0.1..=60.0).contains(&d) {
            anyhow::bail!("--duration {d} must be between 0.1 and 60 seconds");
        }
        cfg.duration = Duration::from_secs_f64(d);
    }
    if let Some(r) = a.repetitions {
        if r == 0 {
            anyhow::bail!("--repetitions must be at least 1");
        }
        cfg.repetitions = r;
    }
    if let Some(e) = a.endpoints {
        if e.iter().any(|&n| n == 0 || n > 4000) {
            anyhow::bail!("--endpoints: each count must be between 1 and 4000");
        }
        cfg.endpoint_counts = e;
    }
    if let Some(sizes) = a.frame_sizes {
        cfg.frame_sizes = sizes.into_iter().map(usize::from).collect();
    }
    if let Some(loads) = a.loads {
        if let Some(bad) = loads.iter().find(|f| !(0.001..=1.0).contains(*f)) {
            anyhow::bail!("--loads: {bad} is not a fraction of the ceiling's rate in 0.001..=1");
        }
        cfg.load_fractions = loads;
    }
    if let Some(us) = a.cost_coalesce_us {
        cfg.cost_coalesce = Duration::from_micros(us);
    }
    if let Some(names) = a.modes {
        cfg.modes = names
            .iter()
            .map(|n| {
                ALL_MODES
                    .into_iter()
                    .find(|m| m.name() == n)
                    .with_context(|| {
                        let known: Vec<&str> = ALL_MODES.iter().map(|m| m.name()).collect();
                        format!("--modes: unknown mode `{n}` ({})", known.join(", "))
                    })
            })
            .collect::<Result<_>>()?;
    }
    cfg.threads = a.receive_threads;
    cfg.rx_core = a.rx_core;
    cfg.generator_core = a.generator_core;
    cfg.port_rate = (a.port_rate > 0).then_some(a.port_rate);
    if let Some(steps) = a.capacity_steps {
        cfg.capacity_steps = steps;
    }
    cfg.ingress = a.ingress;
    let started = std::time::Instant::now();
    let results = compare::run(&cfg, &mut |done, total, what| {
        progress_bar(done, total, what, started.elapsed());
    })?;
    eprintln!();
    let written = compare::write_outputs(&results, &cfg.out_dir)?;
    print!("{}", compare::markdown(&results));
    println!("\nresults: {}", written.json.display());
    println!("table:   {}", written.table.display());
    for plot in &written.plots {
        println!("plot:    {}", plot.display());
    }
    Ok(())
}

/// `[#######.............]  7/20  1m02s  xdp endpoints=16 frame=64B load=flat-out` on stderr,
/// redrawn in place.
fn progress_bar(done: usize, total: usize, what: &str, elapsed: Duration) {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let secs = elapsed.as_secs();
    eprint!(
        "\r\x1b[2K[{}{}] {done:>3}/{total}  {}m{:02}s  {what}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        secs / 60,
        secs % 60
    );
}
