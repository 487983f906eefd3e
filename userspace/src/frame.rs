//! Frame layouts: the classifier's key as userspace parses it (the twin of the C code in
//! `ebpf/classifier.bpf.c`), and the test payload the generator writes and consumers check.
//! The payload's layout (write, read, patch) has its one home here, because the dataplane's
//! consumers and `xmacvlan-sink` read it; the generator's frame builder (`TestFrame`) is
//! lab-only and lives in the bench crate (`xmacvlan_bench::test_frame`).
//!
//! Test frames use EtherType 0x88B5 (IEEE "local experimental"), which no kernel protocol
//! handler claims, so frames that reach the kernel path are seen only by packet sockets. A
//! NIC's RSS hashes only IP headers, though: where a test needs its frames spread over a
//! NIC's queues, the generator sends the same payload as IPv4/UDP to port [`TEST_UDP_PORT`].
use crate::abi::{Key, Mac};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const ETHERTYPE_TEST: u16 = 0x88b5;
pub const BROADCAST: Mac = [0xff; 6];

/// What the classifier does with a frame, mirrored from the C program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Unicast data frame with this key: looked up in the slot map.
    Unicast(Key),
    /// Unicast ARP, ICMP or ICMPv6 (or an IP header too short to tell) with this key: an
    /// endpoint's own such frames go to its kernel device, so its addresses keep working.
    Control(Key),
    /// Group-bit destination (broadcast, multicast): to the kernel.
    Group,
    /// 802.1ad outer tag or stacked tags: to the kernel.
    Stacked,
    /// Shorter than its own headers.
    Malformed,
}

/// Classify a frame exactly as `xmv_classify` does (minus the map lookup).
#[inline]
pub fn classify(frame: &[u8]) -> Class {
    if frame.len() < ETH_HLEN {
        return Class::Malformed;
    }
    let mut key = Key {
        vid: 0,
        mac: [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]],
    };
    let mut proto = u16::from_be_bytes([frame[12], frame[13]]);
    let mut l3 = ETH_HLEN;
    if proto == TPID_8021AD {
        return Class::Stacked;
    }
    if proto == TPID_8021Q {
        if frame.len() < ETH_HLEN + VLAN_HLEN {
            return Class::Malformed;
        }
        let inner = u16::from_be_bytes([frame[16], frame[17]]);
        if inner == TPID_8021Q || inner == TPID_8021AD {
            return Class::Stacked;
        }
        key.vid = u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff;
        proto = inner;
        l3 += VLAN_HLEN;
    }
    if key.mac[0] & 1 != 0 {
        return Class::Group;
    }
    if is_control(proto, &frame[l3..]) {
        Class::Control(key)
    } else {
        Class::Unicast(key)
    }
}

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// The DHCP client's UDP port: a lease's unicast answers go to the endpoint's kernel device.
const DHCP_CLIENT_PORT: [u8; 2] = 68u16.to_be_bytes();

/// ARP, ICMP, ICMPv6, UDP to the DHCP client port, or an IP or UDP header too short (or an
/// IPv4 header length too small) to tell: the C program's `is_control`.
#[inline]
fn is_control(proto: u16, l3: &[u8]) -> bool {
    match proto {
        ETHERTYPE_ARP => true,
        ETHERTYPE_IPV4 => match l3.get(9) {
            None | Some(1) => true,
            Some(17) => {
                let ihl = usize::from(l3[0] & 0x0f) * 4;
                ihl < 20
                    || l3
                        .get(ihl + 2..ihl + 4)
                        .is_none_or(|p| p == DHCP_CLIENT_PORT)
            }
            Some(_) => false,
        },
        ETHERTYPE_IPV6 => l3.get(6).is_none_or(|&p| p == 58),
        _ => false,
    }
}

/// The generator's payload, right after the (optional) VLAN tag and the EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// VLAN the generator meant the frame for (survives tag stripping on the kernel path).
    pub vid: u16,
    /// Index of the generator's frame template (one per destination).
    pub stream: u16,
    /// Per-stream sequence number, from 0.
    pub seq: u64,
    /// `sys::monotonic_ns()` when the frame was handed to the TX ring.
    pub tx_ns: u64,
}

pub const PAYLOAD_MAGIC: u32 = 0x584d_5631; // "XMV1"
pub const PAYLOAD_LEN: usize = 4 + 2 + 2 + 8 + 8;

impl Payload {
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&PAYLOAD_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&self.vid.to_le_bytes());
        out[6..8].copy_from_slice(&self.stream.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.tx_ns.to_le_bytes());
    }

    pub fn read(bytes: &[u8]) -> Option<Payload> {
        let b = bytes.get(..PAYLOAD_LEN)?;
        if u32::from_le_bytes(b[0..4].try_into().unwrap()) != PAYLOAD_MAGIC {
            return None;
        }
        Some(Payload {
            vid: u16::from_le_bytes(b[4..6].try_into().unwrap()),
            stream: u16::from_le_bytes(b[6..8].try_into().unwrap()),
            seq: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            tx_ns: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        })
    }
}

/// UDP destination port of test frames sent as IPv4/UDP flows (so that a NIC's RSS spreads
/// them over its queues): the payload follows the UDP header.
pub const TEST_UDP_PORT: u16 = ETHERTYPE_TEST;
/// IPv4 header without options, and UDP header.
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// Offset of the test payload in a frame: after the tag (if any) and the EtherType, or, in
/// an IPv4/UDP test frame, after the UDP header. None if the frame is not a test frame.
#[inline]
pub fn payload_offset(frame: &[u8]) -> Option<usize> {
    let mut off = 12;
    let mut proto = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    if proto == TPID_8021Q {
        off += VLAN_HLEN;
        proto = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    }
    let l3 = off + 2;
    match proto {
        ETHERTYPE_TEST => Some(l3),
        ETHERTYPE_IPV4 => {
            let ip = frame.get(l3..l3 + IPV4_HLEN + UDP_HLEN)?;
            let udp = &ip[IPV4_HLEN..];
            let is_test = ip[0] == 0x45
                && ip[9] == 17
                && u16::from_be_bytes([udp[2], udp[3]]) == TEST_UDP_PORT;
            is_test.then_some(l3 + IPV4_HLEN + UDP_HLEN)
        }
        _ => None,
    }
}

/// Read the test payload of a frame, if it carries one.
#[inline]
pub fn read_payload(frame: &[u8]) -> Option<Payload> {
    Payload::read(&frame[payload_offset(frame)?..])
}

/// Overwrite seq and timestamp of a test frame whose payload starts at `payload_at` (as
/// [`payload_offset`] finds it).
#[inline]
pub fn patch_payload(frame: &mut [u8], payload_at: usize, seq: u64, tx_ns: u64) {
    frame[payload_at + 8..payload_at + 16].copy_from_slice(&seq.to_le_bytes());
    frame[payload_at + 16..payload_at + 24].copy_from_slice(&tx_ns.to_le_bytes());
}

/// A 64-byte test frame (payload `stream`, seq 0, tx_ns 0) for the library's unit tests.
/// The generator's builder, with QinQ and any length, is the bench crate's `TestFrame`.
#[cfg(test)]
pub(crate) fn sample_frame(dst: Mac, vid: Option<u16>, stream: u16) -> Vec<u8> {
    let mut f = [dst, [0x02, 0, 0, 0, 0, 0xfe]].concat();
    if let Some(vid) = vid {
        f.extend_from_slice(&TPID_8021Q.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    let mut payload = [0; PAYLOAD_LEN];
    let vid = vid.unwrap_or(0);
    Payload {
        vid,
        stream,
        seq: 0,
        tx_ns: 0,
    }
    .write(&mut payload);
    f.extend_from_slice(&payload);
    f.resize(64, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: Mac = [0x02, 0, 0, 0, 0, 1];

    fn frame(vid: Option<u16>, dst: Mac) -> Vec<u8> {
        sample_frame(dst, vid, 3)
    }

    #[test]
    fn tagged_and_untagged_unicast() {
        assert_eq!(
            classify(&frame(Some(100), EP)),
            Class::Unicast(Key { vid: 100, mac: EP })
        );
        assert_eq!(
            classify(&frame(None, EP)),
            Class::Unicast(Key { vid: 0, mac: EP })
        );
        // Priority bits and CFI are not part of the VLAN id.
        let mut f = frame(Some(100), EP);
        f[14] |= 0xf0;
        assert_eq!(classify(&f), Class::Unicast(Key { vid: 100, mac: EP }));
    }

    #[test]
    fn group_stacked_and_malformed() {
        assert_eq!(classify(&frame(Some(100), BROADCAST)), Class::Group);
        assert_eq!(
            classify(&frame(None, [0x01, 0, 0x5e, 0, 0, 1])),
            Class::Group
        );
        // An 802.1ad outer tag (id 7) before the 802.1Q one.
        let mut qinq = frame(Some(100), EP);
        qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x07]);
        assert_eq!(classify(&qinq), Class::Stacked);
        let mut double = frame(Some(100), EP);
        double[16..18].copy_from_slice(&TPID_8021Q.to_be_bytes());
        assert_eq!(classify(&double), Class::Stacked);
        assert_eq!(classify(&[]), Class::Malformed);
        assert_eq!(classify(&frame(None, EP)[..13]), Class::Malformed);
        // A tag cut short is malformed; the same length untagged is fine.
        assert_eq!(classify(&frame(Some(100), EP)[..17]), Class::Malformed);
        assert!(matches!(
            classify(&frame(None, EP)[..17]),
            Class::Unicast(_)
        ));
    }

    #[test]
    fn control_protocols_are_told_apart() {
        let mut f = frame(Some(100), EP);
        let key = Key { vid: 100, mac: EP };
        f[16..18].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(classify(&f), Class::Control(key));
        f[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[18 + 9] = 1; // ICMP
        assert_eq!(classify(&f), Class::Control(key));
        f[18] = 0x45; // IPv4, 20-byte header
        f[18 + 9] = 17; // UDP
        f[18 + 22..18 + 24].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(classify(&f), Class::Unicast(key));
        f[18 + 22..18 + 24].copy_from_slice(&68u16.to_be_bytes());
        assert_eq!(classify(&f), Class::Control(key), "DHCP to the client");
        f[18] = 0x44;
        assert_eq!(classify(&f), Class::Control(key), "header length too small");
        f[18] = 0x4f; // 60-byte header: the UDP header lies past the frame's end
        assert_eq!(
            classify(&f),
            Class::Control(key),
            "UDP header past the end: too short"
        );
        f[18] = 0x45;
        f[18 + 22..18 + 24].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            classify(&f[..18 + 9]),
            Class::Control(key),
            "too short to tell"
        );
        f[16..18].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f[18 + 6] = 58; // ICMPv6
        assert_eq!(classify(&f), Class::Control(key));
        f[18 + 6] = 6; // TCP
        assert_eq!(classify(&f), Class::Unicast(key));
        // Untagged too.
        let mut u = frame(None, EP);
        u[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(classify(&u), Class::Control(Key { vid: 0, mac: EP }));
    }

    #[test]
    fn payload_roundtrip_and_patch() {
        for vid in [None, Some(200)] {
            let mut f = frame(vid, EP);
            assert_eq!(f.len(), 64);
            let at = payload_offset(&f).unwrap();
            assert_eq!(at, if vid.is_some() { 18 } else { 14 });
            patch_payload(&mut f, at, 41, 123_456);
            let p = read_payload(&f).unwrap();
            assert_eq!(
                p,
                Payload {
                    vid: vid.unwrap_or(0),
                    stream: 3,
                    seq: 41,
                    tx_ns: 123_456
                }
            );
        }
    }

    #[test]
    fn non_test_frames_have_no_payload() {
        let mut f = frame(None, EP);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(read_payload(&f), None);
        let mut f = frame(None, EP);
        f[14] ^= 0xff; // bad magic
        assert_eq!(read_payload(&f), None);
        assert_eq!(read_payload(&frame(None, EP)[..20]), None);
    }
}
