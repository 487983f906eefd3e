//! `xmacvlan-reflect SOCKET`: a memif client that sends every frame it receives back with
//! its source and destination MACs swapped (testpmd's macswap), for round trips. A frame
//! longer than its buffers (`--buffer-size`) comes and goes in a chain of them. Run it
//! inside the endpoint's network namespace.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use xmacvlan::config::parse_duration;
use xmacvlan::memif::client::ClientArgs;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Send an endpoint's frames back with MACs swapped, through its memif port"
)]
struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long ("10s").
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut client = args.client.connect("xmacvlan-reflect")?;
    eprintln!(
        "connected to endpoint {} ({}): reflecting",
        client.server,
        args.client.socket.display()
    );
    xmacvlan::sys::catch_interrupts();
    let (mut received, mut sent) = (0u64, 0u64);
    let start = Instant::now();
    let mut idle_rounds = 0u32;
    let mut why = None;
    while !xmacvlan::sys::interrupted().load(Ordering::Relaxed) {
        let (r, s) = client.forward(|f| {
            if f.len() >= 12 {
                let (dst, src) = f[..12].split_at_mut(6);
                dst.swap_with_slice(src);
            }
        });
        received += r as u64;
        sent += s as u64;
        if args.count.is_some_and(|c| received >= c)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if r == 0 {
            idle_rounds += 1;
            if idle_rounds.is_multiple_of(64)
                && let Some(w) = client.disconnected()
            {
                why = Some(w);
                break;
            }
            client.wait(Duration::from_millis(50))?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let c = client.counters;
    if args.json {
        let summary = serde_json::json!({
            "received": received,
            "reflected": sent,
            "not_sent": received - sent,
            "chained": {"received": c.rx_chained, "sent": c.tx_chained, "broken": c.rx_broken},
            "seconds": seconds,
            "disconnected": why,
        });
        println!("{summary}");
    } else {
        let chains = if c.rx_chained + c.tx_chained + c.rx_broken > 0 {
            format!(
                " | chained: received {} sent {} broken {}",
                c.rx_chained, c.tx_chained, c.rx_broken
            )
        } else {
            String::new()
        };
        println!(
            "received {received} reflected {sent} not sent (transmit ring full) {} in {seconds:.1} s{chains}",
            received - sent,
        );
        if let Some(w) = &why {
            println!("the daemon ended the connection: {w}");
        }
    }
    if why.is_none() {
        client.close("xmacvlan-reflect done");
    }
    Ok(())
}
