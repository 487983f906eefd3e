//! The latency probe: for frames carrying xmacvlan's timestamp payload (the lab's, the
//! benchmark's and `xmacvlan-bench generate`'s), one-way latency into an HDR histogram, and a
//! check that each frame really is the endpoint's (VLAN and destination MAC). Off the product
//! path: an endpoint has a probe only when the dataplane was started with one
//! ([`super::DataplaneConfig::probe`]); without, a frame's bytes are never parsed.
use hdrhistogram::Histogram;

use crate::abi::Key;
use crate::frame;

/// Nanosecond latency histogram: 1 ns to 60 s, 2 significant digits (values within 1%).
/// Every endpoint has one and the daemon keeps two more for its intervals: at 3 digits each
/// would take 221 KB, at 2 they take 30 KB, which is what a thousand endpoints can afford.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("static bounds are valid")
}

/// What the probe found in one batch, published with the endpoint's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounts {
    /// Frames whose (VLAN, destination MAC) is not the endpoint's.
    pub misdelivered: u64,
    /// Frames without the timestamp payload (no latency sample).
    pub untimed: u64,
}

/// One endpoint's probe.
pub struct Probe {
    key: Key,
    pub latency: Histogram<u64>,
}

impl Probe {
    pub fn new(key: Key) -> Self {
        Self {
            key,
            latency: latency_histogram(),
        }
    }

    /// Look at one frame; `now_ns` is read once per batch by the caller.
    #[inline]
    pub fn observe(&mut self, bytes: &[u8], now_ns: u64, counts: &mut ProbeCounts) {
        let payload = frame::read_payload(bytes);
        if !is_mine(&self.key, bytes, payload.as_ref()) {
            counts.misdelivered += 1;
        }
        match payload {
            Some(p) if p.tx_ns != 0 && now_ns >= p.tx_ns => {
                // Saturates at the histogram's top instead of failing.
                self.latency.saturating_record((now_ns - p.tx_ns).max(1));
            }
            _ => counts.untimed += 1,
        }
    }
}

/// The frame's destination MAC and VLAN must be the endpoint's. A tag on the frame is checked
/// directly; the kernel path strips tags, so there the payload's intended VLAN is used.
#[inline]
pub fn is_mine(key: &Key, bytes: &[u8], payload: Option<&frame::Payload>) -> bool {
    if bytes.len() < frame::ETH_HLEN || bytes[..6] != key.mac {
        return false;
    }
    let tagged = u16::from_be_bytes([bytes[12], bytes[13]]) == frame::TPID_8021Q;
    let frame_vid = if tagged && bytes.len() >= 16 {
        Some(u16::from_be_bytes([bytes[14], bytes[15]]) & 0x0fff)
    } else {
        None
    };
    match (frame_vid, payload) {
        (Some(vid), _) => vid == key.vid,
        (None, Some(p)) => p.vid == key.vid,
        (None, None) => key.vid == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Mac;

    const KEY: Key = Key {
        vid: 100,
        mac: [2, 0, 0, 0, 0, 1],
    };

    fn frame_to(vid: Option<u16>, mac: Mac, tx_ns: u64) -> Vec<u8> {
        let mut f = frame::sample_frame(mac, vid, 0);
        let at = frame::payload_offset(&f).unwrap();
        frame::patch_payload(&mut f, at, 0, tx_ns);
        f
    }

    #[test]
    fn times_own_frames() {
        let mut p = Probe::new(KEY);
        let mut c = ProbeCounts::default();
        p.observe(&frame_to(Some(100), KEY.mac, 1_000), 1_500, &mut c);
        p.observe(&frame_to(Some(100), KEY.mac, 1_000), 3_000, &mut c);
        assert_eq!(c, ProbeCounts::default());
        assert_eq!(p.latency.len(), 2);
        // Two significant digits: values come back within 1%.
        assert!(p.latency.min().abs_diff(500) <= 5, "{}", p.latency.min());
        assert!(p.latency.max().abs_diff(2_000) <= 20, "{}", p.latency.max());
    }

    #[test]
    fn flags_foreign_vlan_or_mac() {
        let mut p = Probe::new(KEY);
        let mut c = ProbeCounts::default();
        p.observe(&frame_to(Some(200), KEY.mac, 1), 2, &mut c);
        p.observe(&frame_to(Some(100), [2, 0, 0, 0, 0, 2], 1), 2, &mut c);
        p.observe(&frame_to(None, KEY.mac, 1), 2, &mut c); // untagged, payload says vid 0
        p.observe(&[0u8; 10], 2, &mut c);
        assert_eq!(c.misdelivered, 4);
        assert_eq!(c.untimed, 1);
    }

    #[test]
    fn stripped_tag_checked_against_payload() {
        let mut p = Probe::new(KEY);
        let mut c = ProbeCounts::default();
        let mut f = frame_to(Some(100), KEY.mac, 5);
        f.drain(12..16); // what a VLAN device hands to the macvlan above it
        p.observe(&f, 10, &mut c);
        assert_eq!(c.misdelivered, 0);
        assert_eq!(p.latency.len(), 1);
    }
}
