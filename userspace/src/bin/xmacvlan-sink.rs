//! `xmacvlan-sink SOCKET`: a memif client that receives an endpoint's frames, counts and
//! checks them (destination MAC, no 802.1Q tag, per-stream order) and times the lab's
//! timestamped ones into an HDR histogram. A frame longer than its buffers (`--buffer-size`)
//! arrives in a chain of them and is counted whole. Run it inside the endpoint's network
//! namespace.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use xmacvlan::config::parse_duration;
use xmacvlan::ether::Mac;
use xmacvlan::frame::{TPID_8021Q, read_payload};
use xmacvlan::memif::client::ClientArgs;
use xmacvlan::telemetry::hgrm::{HgrmOptions, to_hgrm};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Receive an endpoint's frames through its memif port: count, check, time"
)]
struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// Count frames whose destination is not this MAC as misdelivered.
    #[arg(long)]
    mac: Option<Mac>,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long ("10s").
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Once a frame came, stop when none came for this long.
    #[arg(long, value_parser = parse_duration)]
    idle: Option<Duration>,
    /// Write the latency histogram (microseconds) in HdrHistogram's .hgrm form here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default, serde::Serialize)]
struct Summary {
    frames: u64,
    bytes: u64,
    timed: u64,
    untimed: u64,
    misdelivered: u64,
    tagged: u64,
    out_of_order: u64,
    /// Frames that came in a chain of buffers, and chains dropped as broken.
    chained: u64,
    broken: u64,
    latency_us_p50: f64,
    latency_us_p99: f64,
    latency_us_p999: f64,
    latency_us_max: f64,
    seconds: f64,
    disconnected: Option<String>,
    /// The latency histogram's recorded values, `[nanoseconds, count]`, so a caller can merge
    /// several sinks' histograms exactly (in `--json` only).
    latency_ns_histogram: Vec<[u64; 2]>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut client = args.client.connect("xmacvlan-sink")?;
    eprintln!(
        "connected to endpoint {} ({})",
        client.server,
        args.client.socket.display()
    );
    xmacvlan::sys::catch_interrupts();
    let mut hist = xmacvlan::dataplane::latency_histogram();
    let mut s = Summary::default();
    let mut next_seq: std::collections::HashMap<u16, u64> = Default::default();
    let start = Instant::now();
    let mut last_frame = None;
    let mut checks = 0u32;
    while !xmacvlan::sys::interrupted().load(Ordering::Relaxed) {
        let now_ns = xmacvlan::sys::monotonic_ns();
        let n = client.recv(|f| {
            s.frames += 1;
            s.bytes += f.len() as u64;
            if let Some(mac) = &args.mac
                && f.get(..6) != Some(&mac[..])
            {
                s.misdelivered += 1;
            }
            if f.len() >= 14 && u16::from_be_bytes([f[12], f[13]]) == TPID_8021Q {
                s.tagged += 1;
            }
            match read_payload(f) {
                Some(p) => {
                    s.timed += 1;
                    hist.record(now_ns.saturating_sub(p.tx_ns).max(1)).ok();
                    let want = next_seq.entry(p.stream).or_insert(0);
                    if p.seq < *want {
                        s.out_of_order += 1;
                    }
                    *want = p.seq + 1;
                }
                None => s.untimed += 1,
            }
        });
        if n > 0 {
            last_frame = Some(Instant::now());
        }
        if args.count.is_some_and(|c| s.frames >= c)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
            || args
                .idle
                .zip(last_frame)
                .is_some_and(|(d, t)| t.elapsed() >= d)
        {
            break;
        }
        if n == 0 {
            checks += 1;
            if checks.is_multiple_of(64)
                && let Some(why) = client.disconnected()
            {
                s.disconnected = Some(why);
                break;
            }
            client.wait(Duration::from_millis(50))?;
        }
    }
    s.seconds = start.elapsed().as_secs_f64();
    (s.chained, s.broken) = (client.counters.rx_chained, client.counters.rx_broken);
    if !hist.is_empty() {
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        (s.latency_us_p50, s.latency_us_p99, s.latency_us_p999) = (us(0.5), us(0.99), us(0.999));
        s.latency_us_max = hist.max() as f64 / 1000.0;
        if args.json {
            s.latency_ns_histogram = hist
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect();
        }
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, to_hgrm(&hist, &HgrmOptions::NS_TO_US))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "{} frames {} bytes in {:.1} s ({:.0} frames/s) | timed {} untimed {} | misdelivered {} tagged {} out-of-order {}{} | latency us p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
            s.frames,
            s.bytes,
            s.seconds,
            s.frames as f64 / s.seconds.max(1e-9),
            s.timed,
            s.untimed,
            s.misdelivered,
            s.tagged,
            s.out_of_order,
            chains(s.chained, s.broken),
            s.latency_us_p50,
            s.latency_us_p99,
            s.latency_us_p999,
            s.latency_us_max
        );
        if let Some(why) = &s.disconnected {
            println!("the daemon ended the connection: {why}");
        }
    }
    if s.disconnected.is_none() {
        client.close("xmacvlan-sink done");
    }
    Ok(())
}

/// ` | chained N broken M`, when frames came in chains of buffers (else nothing).
fn chains(chained: u64, broken: u64) -> String {
    if chained + broken == 0 {
        return String::new();
    }
    format!(" | chained {chained} broken {broken}")
}
