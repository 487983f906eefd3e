//! The generator's frame builder: the headers of a test frame and the bytes it sends. The
//! payload layout it writes is the library's (`xmacvlan::frame::Payload`), which the
//! dataplane's consumers and `xmacvlan-sink` read back.
use xmacvlan::abi::Mac;
use xmacvlan::frame::{ETHERTYPE_TEST, PAYLOAD_LEN, Payload, TPID_8021AD, TPID_8021Q};

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
        f.resize(self.len.max(f.len()).max(MIN_FRAME), 0);
        f
    }
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
    fn short_frames_are_padded_and_jumbo_kept() {
        assert_eq!(frame(None, None, 0).len(), MIN_FRAME);
        assert_eq!(frame(Some(1), None, 9000).len(), 9000);
    }
}
