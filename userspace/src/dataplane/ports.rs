//! The dataplane side of application ports: when an endpoint's frames are claimed, what a
//! connected port is counted by, and the checks every frame a port transmits must pass.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::port::{AppPort, PortInfo};
use crate::abi::Mac;
use crate::frame::{ETH_HLEN, TPID_8021Q};

/// When the classifier claims an endpoint's frames for the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimPolicy {
    /// From the moment the endpoint is added; the dataplane's own consumer counts and times
    /// its frames (the lab, the benchmark, `xmacvlan run`).
    #[default]
    Always,
    /// Only while an application port is connected; otherwise its frames go to its kernel
    /// macvlan device, as with Docker's driver.
    WhileConnected,
}

/// One connection's counters. Written by the thread serving the endpoint, once per batch.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Received frames the application had too few free buffers for (its ring full).
    pub drop_ring_full: AtomicU64,
    /// Received frames longer than the application's whole receive ring holds, chained.
    pub drop_rx_too_big: AtomicU64,
    /// Received frames that arrived after the port disconnected, before it was reaped.
    pub drop_not_connected: AtomicU64,
    /// Transmitted frames whose source MAC is not the endpoint's.
    pub drop_spoofed: AtomicU64,
    /// Transmitted frames longer than the NIC's MTU allows (14-byte header + MTU).
    pub drop_too_big: AtomicU64,
    /// Transmitted frames shorter than an Ethernet header (14 bytes).
    pub drop_runt: AtomicU64,
    /// Transmitted frames that already carry an 802.1Q or 802.1ad tag.
    pub drop_tagged: AtomicU64,
    /// Transmitted frames for which the queue had no free UMEM frame.
    pub drop_no_frame: AtomicU64,
    /// Transmitted chains of buffers the port refused: unterminated, or longer than the
    /// largest frame ([`super::port::TxRefused`]).
    pub drop_bad_chain: AtomicU64,
    /// False once the serving thread saw `is_connected()` turn false.
    pub live: AtomicBool,
}

impl PortCounters {
    /// Frames the port has taken so far: copied into the application's ring, or dropped there
    /// (counted): what a paced generator waits for.
    pub fn received(&self) -> u64 {
        self.rx_frames.load(Relaxed)
            + self.drop_ring_full.load(Relaxed)
            + self.drop_rx_too_big.load(Relaxed)
            + self.drop_not_connected.load(Relaxed)
    }
}

/// A port's numbers at one moment (`stats`, Prometheus, and what reaping returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSnapshot {
    pub client: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub connected_since: u64,
    /// False once the application disconnected (the port waits to be reaped).
    pub connected: bool,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drop_ring_full: u64,
    /// Absent from the stats of a daemon that predates chained buffers.
    #[serde(default)]
    pub drop_rx_too_big: u64,
    pub drop_not_connected: u64,
    pub drop_spoofed: u64,
    pub drop_too_big: u64,
    pub drop_runt: u64,
    pub drop_tagged: u64,
    pub drop_no_frame: u64,
    #[serde(default)]
    pub drop_bad_chain: u64,
}

impl PortSnapshot {
    pub fn read(info: &PortInfo, c: &PortCounters) -> Self {
        Self {
            client: info.client.clone(),
            pid: info.pid,
            connected_since: info
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            connected: c.live.load(Relaxed),
            rx_frames: c.rx_frames.load(Relaxed),
            rx_bytes: c.rx_bytes.load(Relaxed),
            tx_frames: c.tx_frames.load(Relaxed),
            tx_bytes: c.tx_bytes.load(Relaxed),
            drop_ring_full: c.drop_ring_full.load(Relaxed),
            drop_rx_too_big: c.drop_rx_too_big.load(Relaxed),
            drop_not_connected: c.drop_not_connected.load(Relaxed),
            drop_spoofed: c.drop_spoofed.load(Relaxed),
            drop_too_big: c.drop_too_big.load(Relaxed),
            drop_runt: c.drop_runt.load(Relaxed),
            drop_tagged: c.drop_tagged.load(Relaxed),
            drop_no_frame: c.drop_no_frame.load(Relaxed),
            drop_bad_chain: c.drop_bad_chain.load(Relaxed),
        }
    }

    /// Received frames not delivered to the application, by any reason.
    pub fn rx_dropped(&self) -> u64 {
        self.drop_ring_full + self.drop_rx_too_big + self.drop_not_connected
    }

    /// The application's frames that did not leave, by any reason.
    pub fn tx_dropped(&self) -> u64 {
        self.drop_spoofed
            + self.drop_too_big
            + self.drop_runt
            + self.drop_tagged
            + self.drop_no_frame
            + self.drop_bad_chain
    }

    pub fn connected_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.connected_since)
    }
}

/// Why a frame from the application may not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    Send,
    Runt,
    Tagged,
    Spoofed,
    TooBig,
}

/// The checks on a frame the application wants to send from endpoint `mac`: at least an
/// Ethernet header, no tag of its own (the dataplane inserts the endpoint's), the endpoint's
/// source MAC, and no longer than `14 + mtu` bytes.
#[inline]
pub fn check_tx(frame: &[u8], mac: &Mac, mtu: usize) -> TxVerdict {
    if frame.len() < ETH_HLEN {
        return TxVerdict::Runt;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        return TxVerdict::Tagged;
    }
    if frame[6..12] != mac[..] {
        return TxVerdict::Spoofed;
    }
    if frame.len() > ETH_HLEN + mtu {
        return TxVerdict::TooBig;
    }
    TxVerdict::Send
}

const TPID_8021AD: u16 = 0x88a8;

/// The 802.1Q tag for VLAN `vid` (priority 0), as it goes on the wire.
pub fn vlan_tag(vid: u16) -> [u8; 4] {
    let tpid = TPID_8021Q.to_be_bytes();
    let tci = (vid & 0x0fff).to_be_bytes();
    [tpid[0], tpid[1], tci[0], tci[1]]
}

/// A connected port as the serving thread holds it.
pub struct ServedPort {
    pub port: Box<dyn AppPort>,
    pub counters: std::sync::Arc<PortCounters>,
    /// Batch-local counts, published once per batch.
    pub batch: PortBatch,
    /// Where a frame the application sends in several segments is joined before it is
    /// staged; made the first time one comes (memif ports hand over one segment).
    pub joined: Option<Box<[u8]>>,
}

#[derive(Default)]
pub struct PortBatch {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub ring_full: u64,
    pub rx_too_big: u64,
    pub not_connected: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub spoofed: u64,
    pub too_big: u64,
    pub runt: u64,
    pub tagged: u64,
    pub no_frame: u64,
    pub bad_chain: u64,
}

impl ServedPort {
    pub fn new(port: Box<dyn AppPort>, counters: std::sync::Arc<PortCounters>) -> Self {
        counters.live.store(true, Relaxed);
        Self {
            port,
            counters,
            batch: PortBatch::default(),
            joined: None,
        }
    }

    /// Whether the port is still usable; the first time it is not, say so to the control side.
    #[inline]
    pub fn check_live(&mut self) -> bool {
        if !self.counters.live.load(Relaxed) {
            return false;
        }
        if self.port.is_connected() {
            return true;
        }
        self.counters.live.store(false, Relaxed);
        false
    }

    #[inline]
    pub fn publish(&mut self) {
        let b = std::mem::take(&mut self.batch);
        let c = &self.counters;
        for (counter, n) in [
            (&c.rx_frames, b.rx_frames),
            (&c.rx_bytes, b.rx_bytes),
            (&c.drop_ring_full, b.ring_full),
            (&c.drop_rx_too_big, b.rx_too_big),
            (&c.drop_not_connected, b.not_connected),
            (&c.tx_frames, b.tx_frames),
            (&c.tx_bytes, b.tx_bytes),
            (&c.drop_spoofed, b.spoofed),
            (&c.drop_too_big, b.too_big),
            (&c.drop_runt, b.runt),
            (&c.drop_tagged, b.tagged),
            (&c.drop_no_frame, b.no_frame),
            (&c.drop_bad_chain, b.bad_chain),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [2, 0, 0, 0, 0, 1];

    fn frame(src: Mac, ethertype: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(14)];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f.truncate(len);
        f
    }

    #[test]
    fn tx_checks_in_order() {
        assert_eq!(
            check_tx(&frame(MAC, 0x0800, 60), &MAC, 1500),
            TxVerdict::Send
        );
        assert_eq!(
            check_tx(&frame(MAC, 0x0800, 14), &MAC, 1500),
            TxVerdict::Send
        );
        assert_eq!(
            check_tx(&frame(MAC, 0x0800, 13), &MAC, 1500),
            TxVerdict::Runt
        );
        assert_eq!(check_tx(&[], &MAC, 1500), TxVerdict::Runt);
        assert_eq!(
            check_tx(&frame(MAC, 0x8100, 64), &MAC, 1500),
            TxVerdict::Tagged
        );
        assert_eq!(
            check_tx(&frame(MAC, 0x88a8, 64), &MAC, 1500),
            TxVerdict::Tagged
        );
        let other = [2, 0, 0, 0, 0, 2];
        assert_eq!(
            check_tx(&frame(other, 0x0800, 64), &MAC, 1500),
            TxVerdict::Spoofed
        );
        assert_eq!(
            check_tx(&frame(MAC, 0x0800, 1514), &MAC, 1500),
            TxVerdict::Send
        );
        assert_eq!(
            check_tx(&frame(MAC, 0x0800, 1515), &MAC, 1500),
            TxVerdict::TooBig
        );
    }

    #[test]
    fn tag_bytes() {
        assert_eq!(vlan_tag(100), [0x81, 0x00, 0x00, 100]);
        assert_eq!(vlan_tag(4094), [0x81, 0x00, 0x0f, 0xfe]);
    }
}
