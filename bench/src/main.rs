//! `xmacvlan-bench`: the lab (`cargo xtask run` with no interface) and the benchmarks.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xmacvlan::dataplane::{DataplaneConfig, DemuxMode, default_cores};
use xmacvlan::xdp::AttachMode;
use xmacvlan::xsk::{BindMode, QueueConfig};
use xmacvlan_bench::lab::{KernelDevices, Topology};
use xmacvlan_bench::scenario::{TrafficConfig, run_lab};

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
    #[arg(long, value_enum, default_value = "xdp")]
    demux: DemuxMode,
    #[arg(long = "xdp-mode", value_enum, default_value = "auto")]
    xdp_mode: AttachMode,
    #[arg(long, value_enum, default_value = "auto")]
    bind: BindMode,
    /// Receive queues of the lab NIC (one worker and one generator each).
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// VLANs with endpoints, comma-separated; 0 = untagged.
    #[arg(long, value_delimiter = ',', default_value = "100,200,0")]
    vlans: Vec<u16>,
    /// Endpoints on each VLAN.
    #[arg(long, default_value_t = 2)]
    per_vlan: usize,
    /// Frame length in bytes (without FCS), 60-3000.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(60..=3000))]
    frame_len: u16,
    /// Cores for the receive threads (default: all but core 0).
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Core for the generator.
    #[arg(long, default_value_t = 0)]
    generator_core: usize,
    /// Skip the kernel macvlan devices (fast-path only).
    #[arg(long)]
    no_kernel_devices: bool,
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
    }
}

fn lab(a: LabArgs) -> Result<()> {
    if !(a.duration > 0.0 && a.duration <= 3600.0) {
        anyhow::bail!(
            "--duration {} must be between 0 and 3600 seconds",
            a.duration
        );
    }
    let topology = Topology {
        vlans: a.vlans,
        endpoints_per_vlan: a.per_vlan,
        queues: a.queues,
        kernel_devices: if a.no_kernel_devices {
            KernelDevices::None
        } else {
            KernelDevices::OwnNamespace
        },
        mtu: None,
    };
    let dataplane = DataplaneConfig {
        ifname: String::new(),
        queues: a.queues,
        demux: a.demux,
        xdp_mode: a.xdp_mode,
        queue: QueueConfig {
            bind: a.bind,
            ..QueueConfig::default()
        },
        cores: a.cores.unwrap_or_else(default_cores),
        consumer_threads: 1,
        endpoint_ring: 4096,
    };
    let traffic = TrafficConfig {
        duration: Duration::from_secs_f64(a.duration),
        rate: a.rate,
        frame_len: a.frame_len as usize,
        generator_core: Some(a.generator_core),
        ..TrafficConfig::default()
    };
    let report = run_lab(&topology, &dataplane, &traffic)?;
    print!("{}", report.to_text());
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
