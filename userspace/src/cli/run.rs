//! `xmacvlan run`: the dataplane on a real NIC, endpoints from a file, until Ctrl-C.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::DataplaneFlags;
use crate::dataplane::{Dataplane, DataplaneConfig, EndpointSpec};
use crate::netlink::Netlink;
use crate::telemetry::report::{Report, plural};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The NIC (or VLAN trunk parent) to attach to.
    #[arg(long)]
    pub iface: String,
    /// Endpoints file: {"endpoints": [{"name": "c1", "vid": 100, "mac": "02:42:c6:12:00:02"}]}.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub dataplane: DataplaneFlags,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub duration: Option<Duration>,
    /// Replace an XDP program another tool attached to the interface.
    #[arg(long)]
    pub force: bool,
    /// Also write the final report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The daemon's control socket, to name a daemon that serves the interface (the global
    /// `--control-socket`; None: the default).
    #[arg(skip)]
    pub control_socket: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    endpoints: Vec<EndpointSpec>,
}

pub fn load_endpoints(path: &std::path::Path) -> Result<Vec<EndpointSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading endpoints file {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        bail!(
            "{}: the file is a bare list; put the list under \"endpoints\": \
             {{\"endpoints\": [{{\"name\": \"c1\", \"vid\": 100, \"mac\": \"02:42:c6:12:00:02\"}}]}}",
            path.display()
        );
    }
    let file: EndpointsFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"endpoints\": [{{\"name\": \"c1\", \"vid\": 100, \"mac\": \"02:42:c6:12:00:02\"}}]}}",
            path.display()
        )
    })?;
    if file.endpoints.is_empty() {
        bail!("{}: no endpoints listed", path.display());
    }
    Ok(file.endpoints)
}

pub fn run(a: RunArgs) -> Result<()> {
    if !crate::sys::is_root() {
        bail!(
            "xmacvlan run attaches XDP and opens AF_XDP sockets: run it as root (or with CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW)"
        );
    }
    let endpoints = load_endpoints(&a.config)?;
    let nl = Netlink::new()?;
    let link = nl.require_link(&a.iface)?;
    let queues = link.active_rx_queues();
    let mut cfg = DataplaneConfig {
        ifname: a.iface.clone(),
        queues,
        ..DataplaneConfig::default()
    };
    cfg.apply(&a.dataplane).map_err(anyhow::Error::msg)?;
    if let Some(id) = link.xdp_prog_id {
        refuse_if_xmacvlan_serves(&a, id)?;
    }
    let occupant = crate::xdp::place::survey(&link)?;
    let decision = crate::xdp::place::decide(&a.iface, &occupant, cfg.xdp_attach, a.force, false)?;
    if let Some((id, name)) = decision.replace {
        crate::nic::detach_xdp(&nl, link.index)
            .context("--force: detaching the existing XDP program")?;
        eprintln!(
            "xmacvlan: replaced XDP program {id} (`{name}`) on {}",
            a.iface
        );
    }
    crate::sys::catch_interrupts();
    let dp = Dataplane::start(&cfg, &endpoints)?;
    for w in &dp.warnings {
        eprintln!("xmacvlan: {w}");
    }
    let busy = match dp.busy_poll {
        Some(b) => format!(", busy polling (budget {})", b.budget),
        None => String::new(),
    };
    eprintln!(
        "xmacvlan: {} on {} ({}), demux {}, XDP {}, AF_XDP {}{busy}; Ctrl-C to stop",
        plural(endpoints.len(), "endpoint"),
        a.iface,
        plural(queues as usize, "queue"),
        cfg.demux,
        dp.attached,
        dp.bound
    );
    let start = Instant::now();
    let mut last = (0u64, Instant::now());
    let deadline = a.duration;
    while !crate::sys::interrupted().load(Ordering::Relaxed)
        && deadline.is_none_or(|d| start.elapsed() < d)
    {
        std::thread::sleep(Duration::from_millis(200));
        if last.1.elapsed() >= Duration::from_secs(1) {
            let frames: u64 = dp
                .endpoint_counters()
                .iter()
                .map(|(_, c)| c.frames.load(Ordering::Relaxed))
                .sum();
            let x = dp.xdp_counters()?;
            println!(
                "{:>8.1}s delivered {:>12} ({:>9.0} pps) | XDP seen {} redirected {} passed {}",
                start.elapsed().as_secs_f64(),
                frames,
                (frames - last.0) as f64 / last.1.elapsed().as_secs_f64(),
                x.seen,
                x.redirected,
                x.passed()
            );
            last = (frames, Instant::now());
        }
    }
    let (attached, bound) = (dp.attached, dp.bound);
    let finished = dp.stop()?;
    let duration = start.elapsed().as_secs_f64();
    let report = Report {
        interface: a.iface.clone(),
        demux: cfg.demux.to_string(),
        xdp_mode: attached.to_string(),
        bind: bound.to_string(),
        duration_s: duration,
        endpoints: Report::endpoint_rows(&finished, duration),
        xdp: finished.xdp,
        queues: finished.queues,
        sent: None,
        apps: None,
        notes: Vec::new(),
    };
    print!("{}", report.to_text());
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// xmacvlan's own classifier on the interface: a daemon (or another `xmacvlan run`) serves
/// it. Neither `xdp off` (it is held by a BPF link) nor `--force` can take it over; say who
/// holds it and what to do instead.
fn refuse_if_xmacvlan_serves(a: &RunArgs, prog_id: u32) -> Result<()> {
    let ours = crate::xdp::program_name(prog_id).as_deref() == Some(crate::abi::PROGRAM_CLASSIFY);
    if !ours {
        return Ok(());
    }
    let socket = a
        .control_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET));
    let iface = &a.iface;
    if let Some(pid) = crate::ipc::alive::daemon_pid(&crate::ipc::pid_path(&socket)) {
        bail!(
            "{iface} is served by the xmacvlan daemon (pid {pid}, control socket {}): `xmacvlan \
             run` cannot share an interface with it. Add endpoints to the daemon instead \
             (`xmacvlan endpoint create --network NET --netns NS NAME`, see them with `xmacvlan \
             stats`), or stop it first (`kill {pid}` or `systemctl stop xmacvlan`) and run again",
            socket.display()
        );
    }
    let holders = crate::ipc::alive::holders_of_bpf_program(prog_id);
    if let Some(pid) = holders.first() {
        bail!(
            "{iface} carries xmacvlan's own classifier (XDP program id {prog_id}), held by \
             another xmacvlan process (pid {pid}: a daemon on another --control-socket, or \
             another `xmacvlan run`); neither `xdp off` nor --force can take it over: stop that \
             process first (`kill {pid}`) and run again"
        );
    }
    // Nobody holds it: a killed daemon's program attached through netlink; `xdp off` or
    // --force (below) removes it.
    Ok(())
}

/// `--duration`: seconds, fractions allowed, more than zero, at most a year.
fn seconds(text: &str) -> Result<Duration, String> {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    match text.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s <= YEAR => Ok(Duration::from_secs_f64(s)),
        Ok(_) => Err(format!(
            "`{text}` seconds is out of range: give more than 0 and at most {YEAR} (a year)"
        )),
        Err(_) => Err(format!(
            "`{text}` is not a number of seconds, e.g. 10 or 0.5"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_positive_seconds_up_to_a_year() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("10"), Ok(Duration::from_secs(10)));
        // Too large for a Duration once: must be an error, not a panic.
        for bad in ["0", "-1", "1e300", "inf", "NaN", "ten", ""] {
            assert!(seconds(bad).is_err(), "{bad} accepted");
        }
    }
}
