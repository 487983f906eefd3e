//! How generated frames reach the lab NIC (`--ingress`). The two differ in what the NIC's
//! receive path is handed, which decides who pays for the skb (see docs/benchmark.md, "Ingress"):
//! - `skb`: the generator's AF_XDP TX sends straight into the wire. Each frame reaches the NIC
//!   as an skb: veth must copy it into an xdp_buff before XDP sees it, while the kernel path
//!   takes the skb for free. The opposite of a NIC, against the XDP modes.
//! - `xdp-frame`: the generator sends into a feed veth whose XDP program redirects every frame
//!   into the wire; the wire's `ndo_xdp_xmit` hands it to the NIC as an xdp_frame with no skb,
//!   as a NIC's DMA buffer arrives. XDP reads it in place; the kernel path builds the skb.
//!   The copy the skb ingress puts on the receive core moves to the generator's core.
use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use xmacvlan::netlink::Netlink;

use crate::lab::{Lab, WIRE, command_in};

static FEED_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/feed.bpf.o"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ingress {
    /// AF_XDP TX into the wire: frames reach the NIC as skbs.
    #[default]
    Skb,
    /// Through the feed's XDP_REDIRECT: frames reach the NIC as xdp_frames, like a NIC's.
    XdpFrame,
}

impl Ingress {
    pub fn name(self) -> &'static str {
        match self {
            Ingress::Skb => "skb",
            Ingress::XdpFrame => "xdp-frame",
        }
    }

    /// The wire-namespace device the generator sends on.
    pub fn generator_device(self) -> &'static str {
        match self {
            Ingress::Skb => WIRE,
            Ingress::XdpFrame => GENERATOR_PORT,
        }
    }
}

/// The feed's veth pair, in the wire namespace: the generator sends on `GENERATOR_PORT`, the
/// feed program on its peer `FEED` redirects each frame into the wire.
pub const GENERATOR_PORT: &str = "gen0";
pub const FEED: &str = "feed0";
const FEED_PROGRAM: &str = "feed_wire";
const FEED_GLOBAL_WIRE: &str = "wire_ifindex";

/// The feed program, attached to `FEED` while this lives (a bpf_link: dropping it detaches,
/// deleting the wire namespace does too).
pub struct Feed {
    _ebpf: Ebpf,
}

impl Feed {
    /// Build the feed from a thread in the wire namespace: the veth pair, up, and the program
    /// on `FEED` redirecting into the interface `wire`.
    pub fn install(nl: &Netlink, wire: u32) -> Result<Feed> {
        let port = nl.add_veth(GENERATOR_PORT, FEED, 1)?;
        let feed = nl.require_link(FEED)?.index;
        nl.set_up(port)?;
        nl.set_up(feed)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(FEED_GLOBAL_WIRE, &wire, true)
            .load(FEED_OBJECT)
            .context("loading the lab's feed program (needs root and a kernel with BPF)")?;
        let program: &mut Xdp = ebpf
            .program_mut(FEED_PROGRAM)
            .ok_or_else(|| anyhow!("program {FEED_PROGRAM} missing from the feed object"))?
            .try_into()?;
        program
            .load()
            .context("loading the feed's XDP program into the kernel")?;
        program
            .attach_to_if_index(feed, XdpMode::Driver)
            .with_context(|| format!("attaching the feed program to {FEED} (native XDP)"))?;
        Ok(Feed { _ebpf: ebpf })
    }
}

/// Check a lab topology can use `ingress`: the feed reaches one receive queue only (veth's
/// `ndo_xdp_xmit` picks the NIC's queue by the sending CPU, and the generator has one core).
pub fn check(ingress: Ingress, queues: u32) -> Result<()> {
    if ingress == Ingress::XdpFrame && queues > 1 {
        bail!(
            "--ingress xdp-frame feeds one receive queue (veth picks it by the sending CPU), \
             but the lab has {queues}: use --queues 1 or --ingress skb"
        );
    }
    Ok(())
}

/// What the wire has handed the NIC with `ndo_xdp_xmit` (the `xdp-frame` ingress), from the
/// wire's ethtool statistics: frames placed in the NIC's receive ring, and frames refused
/// because that ring was full (the NIC's overflow, a NIC's `rx_missed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCounts {
    pub placed: u64,
    pub ring_full: u64,
}

impl WireCounts {
    /// Frames that reached the NIC: placed, or refused by its full ring.
    pub fn reached_nic(&self) -> u64 {
        self.placed + self.ring_full
    }

    pub fn since(&self, earlier: &WireCounts) -> WireCounts {
        WireCounts {
            placed: self.placed.saturating_sub(earlier.placed),
            ring_full: self.ring_full.saturating_sub(earlier.ring_full),
        }
    }
}

/// The wire's counts so far (`ethtool -S` in the wire namespace); None with the `skb` ingress,
/// whose frames reach the NIC without `ndo_xdp_xmit`.
pub fn wire_counts(lab: &Lab) -> Result<Option<WireCounts>> {
    if lab.ingress == Ingress::Skb {
        return Ok(None);
    }
    let text = command_in(&lab.wire, &["ethtool", "-S", WIRE])
        .context("reading the wire's statistics (ethtool)")?;
    parse_wire_counts(&text).map(Some)
}

/// Sum `tx_queue_N_xdp_xmit` and `tx_queue_N_xdp_xmit_errors` over the wire's queues.
fn parse_wire_counts(text: &str) -> Result<WireCounts> {
    let mut counts = WireCounts::default();
    let mut found = false;
    for line in text.lines() {
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(stat) = name
            .strip_prefix("tx_queue_")
            .and_then(|r| r.split_once('_'))
        else {
            continue;
        };
        let value: u64 = value
            .trim()
            .parse()
            .with_context(|| format!("ethtool -S {WIRE}: `{}` is not a count", line.trim()))?;
        match stat.1 {
            "xdp_xmit" => {
                counts.placed += value;
                found = true;
            }
            "xdp_xmit_errors" => counts.ring_full += value,
            _ => {}
        }
    }
    if !found {
        bail!("ethtool -S {WIRE} shows no tx_queue_N_xdp_xmit: is it a veth?");
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_counts_sum_the_queues() {
        let text = "NIC statistics:\n     peer_ifindex: 3\n     tx_queue_0_xdp_xmit: 411279\n     \
                    tx_queue_0_xdp_xmit_errors: 21\n     tx_queue_1_xdp_xmit: 9\n";
        let c = parse_wire_counts(text).unwrap();
        assert_eq!(
            c,
            WireCounts {
                placed: 411288,
                ring_full: 21
            }
        );
        assert_eq!(c.reached_nic(), 411309);
        assert!(parse_wire_counts("NIC statistics:\n     peer_ifindex: 3\n").is_err());
        assert!(parse_wire_counts("tx_queue_0_xdp_xmit: many\n").is_err());
    }

    #[test]
    fn the_feed_serves_one_queue() {
        assert!(check(Ingress::XdpFrame, 1).is_ok());
        assert!(check(Ingress::Skb, 4).is_ok());
        let e = check(Ingress::XdpFrame, 2).unwrap_err().to_string();
        assert!(e.contains("--queues 1 or --ingress skb"), "{e}");
    }
}
