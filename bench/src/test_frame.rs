//! The generator's frame builder: the headers of a test frame and the bytes it sends. The
//! payload layout it writes is the library's (`xmacvlan::frame::Payload`), which the
//! dataplane's consumers and `xmacvlan-sink` read back.
use xmacvlan::abi::Mac;
use xmacvlan::frame::{
    ETHERTYPE_IPV4, ETHERTYPE_TEST, IPV4_HLEN, PAYLOAD_LEN, Payload, TEST_UDP_PORT, TPID_8021AD,
    TPID_8021Q, UDP_HLEN, payload_offset,
};

/// Shortest Ethernet frame without FCS; shorter test frames are padded to it.
pub const MIN_FRAME: usize = 60;

/// A test frame's headers: builds the bytes the generator sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFrame {
    pub dst: Mac,
    pub src: Mac,
    /// 802.1Q VLAN id; None = untagged.
    pub vid: Option<u16>,
    /// Outer 802.1ad tag (QinQ) before the 802.1Q one.
    pub qinq_outer: Option<u16>,
    /// Total frame length without FCS (padded up to `MIN_FRAME`).
    pub len: usize,
}

impl TestFrame {
    /// Frame bytes with payload `stream`, seq 0, tx_ns 0; `frame::patch_payload` updates
    /// them per send (frames without QinQ).
    pub fn build(&self, stream: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(self.len.max(MIN_FRAME));
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        if let Some(outer) = self.qinq_outer {
            f.extend_from_slice(&TPID_8021AD.to_be_bytes());
            f.extend_from_slice(&(outer & 0x0fff).to_be_bytes());
        }
        if let Some(vid) = self.vid {
            f.extend_from_slice(&TPID_8021Q.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
        let mut payload = [0u8; PAYLOAD_LEN];
        Payload {
            vid: self.vid.unwrap_or(0),
            stream,
            seq: 0,
            tx_ns: 0,
        }
        .write(&mut payload);
        f.extend_from_slice(&payload);
        // Padding that counts, so a frame put back together out of order (a jumbo frame
        // crosses several buffers on its way) does not compare equal.
        let end = f.len();
        f.resize(self.len.max(end).max(MIN_FRAME), 0);
        for (i, b) in f[end..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        f
    }
}

/// The IPv4 addresses of UDP test flows: to 198.18.0.1, from 198.19.F/8 for flow F (test
/// ranges of RFC 2544), source port [`FLOW_PORT_BASE`] + F.
const FLOW_DST: [u8; 4] = [198, 18, 0, 1];
const FLOW_SRC_NET: [u8; 2] = [198, 19];
pub const FLOW_PORT_BASE: u16 = 49152;

impl TestFrame {
    /// The same frame as IPv4/UDP (flow 0): the tags, then an IPv4 and a UDP header to
    /// [`TEST_UDP_PORT`], then the payload; padded to `len` if longer. A NIC's RSS hashes
    /// the addresses (and ports, where configured); [`set_flow`] moves it to another flow.
    pub fn build_udp(&self, stream: u16) -> Vec<u8> {
        let plain = self.build(stream);
        let l3 = payload_offset(&plain).expect("a test frame") - 2;
        let payload = &plain[l3 + 2..l3 + 2 + PAYLOAD_LEN];
        let mut f = plain[..l3].to_vec();
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_len = (IPV4_HLEN + UDP_HLEN + PAYLOAD_LEN) as u16;
        let mut ip = [0u8; IPV4_HLEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[16..20].copy_from_slice(&FLOW_DST);
        f.extend_from_slice(&ip);
        let udp_len = (UDP_HLEN + PAYLOAD_LEN) as u16;
        f.extend_from_slice(&FLOW_PORT_BASE.to_be_bytes());
        f.extend_from_slice(&TEST_UDP_PORT.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        // No UDP checksum (allowed over IPv4): the per-send patches need not update one.
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f.resize(self.len.max(f.len()).max(MIN_FRAME), 0);
        set_flow(&mut f, l3 + 2, 0);
        f
    }
}

/// Move an IPv4/UDP test frame (from [`TestFrame::build_udp`], IPv4 header at `ip_at`) to
/// flow `flow`: its source address, header checksum and source port.
pub fn set_flow(frame: &mut [u8], ip_at: usize, flow: u16) {
    let ip = &mut frame[ip_at..ip_at + IPV4_HLEN + UDP_HLEN];
    ip[12..14].copy_from_slice(&FLOW_SRC_NET);
    ip[14..16].copy_from_slice(&flow.to_be_bytes());
    ip[10..12].fill(0);
    let sum = ip[..IPV4_HLEN]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let port = FLOW_PORT_BASE.wrapping_add(flow);
    ip[IPV4_HLEN..IPV4_HLEN + 2].copy_from_slice(&port.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use xmacvlan::frame::{Class, classify, payload_offset, read_payload};

    const EP: Mac = [0x02, 0, 0, 0, 0, 1];
    const SRC: Mac = [0x02, 0, 0, 0, 0, 0xfe];

    fn frame(vid: Option<u16>, qinq_outer: Option<u16>, len: usize) -> Vec<u8> {
        TestFrame {
            dst: EP,
            src: SRC,
            vid,
            qinq_outer,
            len,
        }
        .build(3)
    }

    #[test]
    fn built_frames_carry_their_stream_after_the_tags() {
        for (vid, at) in [(None, 14), (Some(200), 18)] {
            let f = frame(vid, None, 64);
            assert_eq!(payload_offset(&f), Some(at));
            let want = Payload {
                vid: vid.unwrap_or(0),
                stream: 3,
                seq: 0,
                tx_ns: 0,
            };
            assert_eq!(read_payload(&f), Some(want));
        }
        assert_eq!(classify(&frame(Some(100), Some(7), 64)), Class::Stacked);
    }

    #[test]
    fn udp_flows_carry_the_payload_behind_valid_headers() {
        let t = TestFrame {
            dst: EP,
            src: SRC,
            vid: Some(100),
            qinq_outer: None,
            len: 64,
        };
        let mut f = t.build_udp(5);
        // 14 + 4 (tag) + 20 (IPv4) + 8 (UDP) + 24 (payload).
        assert_eq!(f.len(), 70);
        assert_eq!(payload_offset(&f), Some(46));
        assert_eq!(read_payload(&f).map(|p| (p.vid, p.stream)), Some((100, 5)));
        assert_eq!(
            classify(&f),
            Class::Unicast(xmacvlan::abi::Key { vid: 100, mac: EP })
        );
        let ip_at = 18;
        let parsed = etherparse::Ipv4HeaderSlice::from_slice(&f[ip_at..]).unwrap();
        assert_eq!(
            parsed.header_checksum(),
            parsed.to_header().calc_header_checksum()
        );
        assert_eq!(parsed.source(), [198, 19, 0, 0]);
        set_flow(&mut f, ip_at, 300);
        let parsed = etherparse::Ipv4HeaderSlice::from_slice(&f[ip_at..]).unwrap();
        assert_eq!(parsed.source(), [198, 19, 1, 44]);
        assert_eq!(
            parsed.header_checksum(),
            parsed.to_header().calc_header_checksum()
        );
        let udp = etherparse::UdpHeaderSlice::from_slice(&f[ip_at + 20..]).unwrap();
        assert_eq!(
            (udp.source_port(), udp.destination_port()),
            (49452, TEST_UDP_PORT)
        );
        assert_eq!(
            read_payload(&f).map(|p| p.stream),
            Some(5),
            "payload unchanged"
        );
    }

    #[test]
    fn short_frames_are_padded_and_jumbo_kept() {
        assert_eq!(frame(None, None, 0).len(), MIN_FRAME);
        assert_eq!(frame(Some(1), None, 9000).len(), 9000);
    }
}
