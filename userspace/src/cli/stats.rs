//! `xmacvlan stats`: the running daemon's counters as tables, JSON, a per-second watch line
//! (the views are in [`crate::telemetry::live`]), or an endpoint's latency histogram as
//! `.hgrm`.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::dataplane::Snapshot;
use crate::ipc::protocol::{Answer, Request};
use crate::ipc::socket::request;
use crate::telemetry::live::{Rates, tables};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Print one line per second with rates (Ctrl-C stops).
    #[arg(long)]
    pub watch: bool,
    /// Print JSON (with --watch: one object per line).
    #[arg(long)]
    pub json: bool,
    /// Stop --watch after this many lines.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
    /// Write ENDPOINT's latency histogram in HdrHistogram's .hgrm form (microseconds).
    #[arg(long, value_name = "ENDPOINT", conflicts_with_all = ["watch", "json"])]
    pub histogram: Option<String>,
    /// With --histogram: write to FILE instead of stdout.
    #[arg(long, value_name = "FILE", requires = "histogram")]
    pub out: Option<PathBuf>,
    /// With --histogram: the last stats interval only, not the total since attach.
    #[arg(long, requires = "histogram")]
    pub interval: bool,
}

pub fn main(socket: &Path, args: StatsArgs) -> Result<()> {
    if let Some(endpoint) = args.histogram {
        return histogram(socket, endpoint, args.interval, args.out.as_deref());
    }
    let mut stdout = std::io::stdout().lock();
    if !args.watch {
        let answer: Answer = request(socket, &Request::Stats)?;
        if args.json {
            writeln!(stdout, "{}", serde_json::to_string_pretty(&answer)?)?;
        } else if let Answer::Stats {
            demux,
            uptime_s,
            interfaces,
            detached,
            leases,
        } = &answer
        {
            write!(stdout, "{}", tables(demux, *uptime_s, interfaces))?;
            for gone in detached {
                writeln!(
                    stdout,
                    "\ndetached by the daemon {} s after start: {} on {}: {}",
                    gone.at_uptime_s, gone.endpoint, gone.iface, gone.reason
                )?;
            }
            for lost in leases {
                writeln!(
                    stdout,
                    "\nDHCP lease lost {} s after start: {} ({}): {}",
                    lost.at_uptime_s, lost.endpoint, lost.address, lost.problem
                )?;
            }
        }
        return Ok(());
    }
    crate::sys::catch_interrupts();
    let mut previous: Option<(Instant, Vec<Snapshot>)> = None;
    let mut lines = 0;
    while !crate::sys::interrupted().load(std::sync::atomic::Ordering::Relaxed) {
        let Answer::Stats { interfaces, .. } = request(socket, &Request::Stats)? else {
            bail!("the daemon answered a stats request with something else");
        };
        let now = Instant::now();
        if let Some((then, before)) = &previous {
            let secs = now.duration_since(*then).as_secs_f64();
            for snap in &interfaces {
                let old = before.iter().find(|b| b.interface == snap.interface);
                let rates = Rates::between(old, snap, secs);
                if args.json {
                    writeln!(stdout, "{}", serde_json::to_string(&rates)?)?;
                } else {
                    writeln!(stdout, "{}", rates.line())?;
                }
            }
            if interfaces.is_empty() {
                writeln!(stdout, "no endpoints attached to the fast path")?;
            }
            lines += 1;
            if args.count.is_some_and(|c| lines >= c) {
                break;
            }
        }
        previous = Some((now, interfaces));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(now.elapsed()));
    }
    Ok(())
}

fn histogram(socket: &Path, endpoint: String, interval: bool, out: Option<&Path>) -> Result<()> {
    let Answer::Histogram { hgrm, samples } = request(
        socket,
        &Request::Histogram {
            endpoint: endpoint.clone(),
            interval,
        },
    )?
    else {
        bail!("the daemon answered a histogram request with something else");
    };
    match out {
        Some(path) => {
            std::fs::write(path, &hgrm).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{endpoint}: {samples} latency samples written to {}",
                path.display()
            );
        }
        None => print!("{hgrm}"),
    }
    if samples == 0 {
        eprintln!(
            "note: latency is measured on frames that carry xmacvlan's timestamp (the lab's and \
             the benchmark's generator send them); other frames count as UNTIMED in `xmacvlan stats`"
        );
    }
    Ok(())
}
