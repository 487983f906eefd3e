//! Property tests for the memif port, the daemon's most exposed input: control messages from
//! any local process in the endpoint's namespace, and ring descriptors the client can rewrite
//! at any moment. Random records never panic the decoder or the handshake; random indices and
//! descriptors never make the port read or write outside the client's region: each either
//! works within bounds or cuts the client off. Sized for CI; no root needed.
use std::sync::Arc;

use proptest::prelude::*;
use xmacvlan::dataplane::AppPort;
use xmacvlan::memif::handshake::{Handshake, Limits, ServerConfig, Step};
use xmacvlan::memif::shm::{Desc, Region, Ring};
use xmacvlan::memif::sock;
use xmacvlan::memif::wire::{self, AddRegion, AddRing, Init, MSG_SIZE, Msg, VERSION};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn server() -> ServerConfig {
    ServerConfig {
        name: "ep".into(),
        secret: None,
        limits: Limits::default(),
    }
}

const REGION: u64 = 1 << 16;
const LOG2: u8 = 4;

/// A port connected by the handshake over a real sealed memfd; the rings are returned so the
/// test can play the client.
fn connected() -> (xmacvlan::memif::ServerPort, Ring, Ring, Arc<Region>) {
    let region = Arc::new(Region::create("prop", REGION as usize).unwrap());
    let c2s = Ring::new(region.clone(), 0, LOG2).unwrap();
    let s2c = Ring::new(region.clone(), 4096, LOG2).unwrap();
    c2s.init();
    s2c.init();
    let mut hs = Handshake::new(server());
    let init = Init {
        version: VERSION,
        id: 0,
        mode: 0,
        secret: [0; 24],
        name: wire::name_field("p"),
    };
    assert!(matches!(
        hs.on_message(Msg::Init(init), None),
        Ok(Step::Reply(Msg::Ack))
    ));
    let fd = region.fd().try_clone_to_owned().unwrap();
    hs.on_message(
        Msg::AddRegion(AddRegion {
            index: 0,
            size: REGION,
        }),
        Some(fd),
    )
    .unwrap();
    for (flags, offset) in [(1, 0), (0, 4096)] {
        let ring = AddRing {
            flags,
            index: 0,
            region: 0,
            offset,
            log2_ring_size: LOG2,
            private_hdr_size: 0,
        };
        hs.on_message(Msg::AddRing(ring), Some(sock::eventfd().unwrap()))
            .unwrap();
    }
    match hs.on_message(Msg::Connect { if_name: [0; 32] }, None) {
        Ok(Step::Connected { port, .. }) => (port, c2s, s2c, region),
        _ => panic!("no connection"),
    }
}

fn arb_desc() -> impl Strategy<Value = Desc> {
    (
        0u16..4,
        0u16..3,
        prop_oneof![0u32..4096, any::<u32>()],
        prop_oneof![0u32..70_000, any::<u32>()],
    )
        .prop_map(|(flags, region, length, offset)| Desc {
            flags: flags & 1,
            region,
            length,
            offset,
            metadata: 0,
        })
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any 128-byte record decodes or is refused; what decodes encodes back to a record that
    /// decodes to the same message.
    #[test]
    fn records_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), MSG_SIZE), kind in 0u16..10) {
        let mut b = bytes;
        b[0..2].copy_from_slice(&kind.to_le_bytes());
        if let Ok(m) = Msg::decode(&b) {
            prop_assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
    }

    /// Any lengths around 128 are refused unless exactly 128.
    #[test]
    fn only_128_byte_records_decode(len in 0usize..300) {
        // Type 1 (ACK) where there is room for a type.
        let mut b = vec![0u8; len];
        if len >= 1 {
            b[0] = 1;
        }
        prop_assert_eq!(Msg::decode(&b).is_ok(), len == MSG_SIZE);
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// A random sequence of messages (with or without a descriptor) never panics the
    /// handshake; after a refusal the caller closes, so we stop there.
    #[test]
    fn random_message_sequences_are_answered_or_refused(
        seq in proptest::collection::vec((proptest::collection::vec(any::<u8>(), MSG_SIZE), 1u16..9, any::<bool>()), 1..8)
    ) {
        let mut hs = Handshake::new(server());
        let region = Region::create("prop", 4096).unwrap();
        for (bytes, kind, with_fd) in seq {
            let mut b = bytes;
            b[0..2].copy_from_slice(&kind.to_le_bytes());
            let Ok(msg) = Msg::decode(&b) else { continue };
            let fd = with_fd.then(|| region.fd().try_clone_to_owned().unwrap());
            if hs.on_message(msg, fd).is_err() {
                break;
            }
        }
    }

    /// Whatever the client writes into its S2C descriptors and head, rx_push stays inside the
    /// region: bytes outside the descriptor's buffer are never touched.
    #[test]
    fn rx_descriptors_never_reach_outside_their_buffer(descs in proptest::collection::vec(arb_desc(), 16), head in any::<u16>(), len in 14usize..3000) {
        let (mut port, _c2s, s2c, region) = connected();
        // A canary pattern over the buffer area.
        let canary = vec![0xA5u8; (REGION - 8192) as usize];
        region.write(8192, &canary);
        for (i, d) in descs.iter().enumerate() {
            s2c.set_desc(i as u16, *d);
        }
        s2c.set_head(head);
        let frame = vec![0x11u8; len];
        let mut pushed = Vec::new();
        for i in 0..20u16 {
            if port.rx_push(&frame, false) {
                pushed.push(i);
            }
            if !port.is_connected() {
                break;
            }
        }
        port.rx_flush();
        // Every byte that changed lies in a buffer the port was allowed to fill.
        let mut now = vec![0u8; canary.len()];
        region.read(8192, &mut now);
        for (at, (&was, &is)) in canary.iter().zip(&now).enumerate() {
            if was != is {
                let at = at as u64 + 8192;
                let inside = pushed.iter().any(|&slot| {
                    let d = descs[slot as usize % 16];
                    (d.offset as u64..d.offset as u64 + len as u64).contains(&at) && d.length as usize >= len
                });
                prop_assert!(inside, "byte {} written outside any offered buffer", at);
            }
        }
        prop_assert!(pushed.len() <= 16.min(head as usize));
    }

    /// Whatever the client queues on C2S, tx_drain hands over only bytes from inside the
    /// region, never more than the longest frame, or cuts the client off.
    #[test]
    fn tx_descriptors_are_validated(descs in proptest::collection::vec(arb_desc(), 16), head in any::<u16>()) {
        let (mut port, c2s, _s2c, region) = connected();
        let _ = region.len();
        for (i, d) in descs.iter().enumerate() {
            c2s.set_desc(i as u16, *d);
        }
        c2s.set_head(head);
        let mut total = 0usize;
        let sent = port.tx_drain(64, &mut |f| {
            assert!(f.len() <= xmacvlan::memif::port::MAX_TX_FRAME);
            total += f.len();
        });
        prop_assert!(sent <= 16);
        if head > 16 {
            prop_assert!(!port.is_connected(), "an index past the ring is a fault");
        }
    }
}
