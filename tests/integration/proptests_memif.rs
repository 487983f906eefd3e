//! Property tests for the memif port, the daemon's most exposed input: control messages from
//! any local process in the endpoint's namespace, and ring descriptors the client can rewrite
//! at any moment. Random records never panic the decoder or the handshake; random indices and
//! descriptors never make the port read or write outside the client's region: each either
//! works within bounds or cuts the client off. Sized for CI; no root needed.
use std::sync::Arc;

use proptest::prelude::*;
use xmacvlan::dataplane::{AppPort, MAX_FRAME, RxRefused, TxFrame, TxRefused};
use xmacvlan::memif::chain::gather;
use xmacvlan::memif::handshake::Handshake;
use xmacvlan::memif::shm::{DESC_FLAG_NEXT, Desc, Region, Ring};
use xmacvlan::memif::wire::{MSG_SIZE, Msg};
use xmacvlan_tests::raw_memif::{handshake_port, server};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const REGION: u64 = 1 << 16;
const LOG2: u8 = 4;

/// A port connected by the handshake over a real sealed memfd; the rings are returned so the
/// test can play the client.
fn connected() -> (xmacvlan::memif::ServerPort, Ring, Ring, Arc<Region>) {
    handshake_port(LOG2, REGION, 4096)
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
            if port.rx_push(&[&frame], false).is_ok() {
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
            if let TxFrame::Send(segments) = f {
                let len: usize = segments.iter().map(|s| s.len()).sum();
                assert!(len <= MAX_FRAME);
                total += len;
            }
        });
        prop_assert!(sent <= 16);
        if head > 16 {
            prop_assert!(!port.is_connected(), "an index past the ring is a fault");
        }
    }
}

/// Chains: rings of 256 descriptors, C2S at 0, S2C at 8192, buffer `i` of a ring in its own
/// 4 KiB slot from `BUFFERS` (C2S) or `BUFFERS + 1 MiB` (S2C).
const CHAIN_LOG2: u8 = 8;
const SLOTS: usize = 1 << CHAIN_LOG2;
const SLOT: u32 = 4096;
const BUFFERS: u32 = 16384;
const S2C_BUFFERS: u32 = BUFFERS + SLOTS as u32 * SLOT;

fn chain_port() -> (xmacvlan::memif::ServerPort, Ring, Ring, Arc<Region>) {
    handshake_port(CHAIN_LOG2, (S2C_BUFFERS + SLOTS as u32 * SLOT) as u64, 8192)
}

fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

proptest! {
    #![proptest_config(config(200))]

    /// A received frame of any length, into buffers of any sizes the client offers: the port
    /// fills each buffer before the next, flags all but the last "next", and reading the
    /// chain back gives the frame (its tag left out when stripped). When the buffers are too
    /// few, nothing is written, published or changed, and the reason is right.
    #[test]
    fn rx_chains_split_and_reassemble(
        len in prop_oneof![0usize..200, 0usize..=MAX_FRAME],
        sizes in proptest::collection::vec(prop_oneof![1u32..=128, 1u32..=SLOT], SLOTS),
        offered in 1u16..=SLOTS as u16,
        strip in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let (mut port, _c2s, s2c, region) = chain_port();
        let descs: Vec<Desc> = sizes
            .iter()
            .enumerate()
            .map(|(i, &length)| Desc {
                flags: 0,
                region: 0,
                length,
                offset: S2C_BUFFERS + i as u32 * SLOT,
                metadata: 0,
            })
            .collect();
        for (i, d) in descs.iter().enumerate() {
            s2c.set_desc(i as u16, *d);
        }
        s2c.set_head(offered);
        let frame = test_frame(len, seed);
        let mut want = frame.clone();
        if strip && len >= 16 {
            want.drain(12..16);
        }
        // The buffers the frame needs, filled in order.
        let mut needed = 0usize;
        let mut room = 0usize;
        while room < want.len() || needed == 0 {
            room += sizes[needed] as usize;
            needed += 1;
            if needed == SLOTS {
                break;
            }
        }
        let fits = room >= want.len() && needed <= offered as usize;
        let result = port.rx_push(&[&frame], strip);
        port.rx_flush();
        if fits {
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(s2c.tail(), needed as u16);
            let mut out = vec![0u8; MAX_FRAME];
            let got = gather(&s2c, std::slice::from_ref(&region), 0, s2c.tail(), &mut out).unwrap();
            prop_assert_eq!(got.slots as usize, needed);
            prop_assert_eq!(got.frame, Ok(want.len()));
            prop_assert_eq!(&out[..want.len()], &want[..]);
            for i in 0..needed {
                let d = s2c.desc(i as u16);
                let last = i + 1 == needed;
                prop_assert_eq!(d.flags & DESC_FLAG_NEXT != 0, !last, "descriptor {}", i);
                prop_assert_eq!((d.region, d.offset), (0, descs[i].offset));
                if !last {
                    prop_assert_eq!(d.length, sizes[i], "filled before the next");
                }
            }
        } else {
            let too_big = want.len() > SLOTS * sizes[0] as usize;
            let reason = if too_big { RxRefused::TooBig } else { RxRefused::NoBuffer };
            prop_assert_eq!(result, Err(reason));
            prop_assert_eq!(s2c.tail(), 0, "nothing published");
            for (i, d) in descs.iter().enumerate() {
                prop_assert_eq!(s2c.desc(i as u16), *d, "descriptor {} untouched", i);
            }
        }
        prop_assert!(port.is_connected());
    }

    /// A frame the client sends in a chain of any split, followed by a one-buffer frame: the
    /// port hands over the chain joined (or refuses it when longer than the largest frame),
    /// then the next frame; a chain whose last descriptor says "next" is refused, and the
    /// port stays up either way.
    #[test]
    fn tx_chains_reassemble_or_are_refused(
        len in prop_oneof![0usize..300, 0usize..=MAX_FRAME + 300],
        cuts in proptest::collection::vec(prop_oneof![1u32..=16, 40u32..=128, 1u32..=SLOT], 1..8),
        unterminated in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let (mut port, c2s, _s2c, region) = chain_port();
        let frame = test_frame(len, seed);
        // Split into parts of the `cuts` sizes in turn (the last part takes what is left).
        let mut parts = Vec::new();
        let mut at = 0usize;
        for &cut in cuts.iter().cycle() {
            let end = (at + cut as usize).min(len);
            parts.push(&frame[at..end]);
            at = end;
            if at == len || parts.len() == SLOTS {
                break;
            }
        }
        prop_assume!(at == len && parts.len() < SLOTS, "more parts than the ring holds");
        for (i, part) in parts.iter().enumerate() {
            let offset = BUFFERS + i as u32 * SLOT;
            region.write(offset as u64, part);
            let last = i + 1 == parts.len();
            c2s.set_desc(i as u16, Desc {
                flags: if last && !unterminated { 0 } else { DESC_FLAG_NEXT },
                region: 0,
                length: part.len() as u32,
                offset,
                metadata: 0,
            });
        }
        let mut head = parts.len() as u16;
        let next = test_frame(60, !seed);
        if !unterminated {
            let offset = BUFFERS + head as u32 * SLOT;
            region.write(offset as u64, &next);
            c2s.set_desc(head, Desc { flags: 0, region: 0, length: 60, offset, metadata: 0 });
            head += 1;
        }
        c2s.set_head(head);
        let mut items = Vec::new();
        let taken = port.tx_drain(64, &mut |item| items.push(match item {
            TxFrame::Send(segments) => Ok(segments.concat()),
            TxFrame::Refused(why) => Err(why),
        }));
        let first = if unterminated {
            Err(TxRefused::Unterminated)
        } else if len > MAX_FRAME {
            Err(TxRefused::TooLong)
        } else {
            Ok(frame.clone())
        };
        let mut want = vec![first];
        if !unterminated {
            want.push(Ok(next));
        }
        prop_assert_eq!(taken, want.len());
        prop_assert_eq!(items, want);
        prop_assert_eq!(c2s.tail(), head, "every buffer went back");
        prop_assert!(port.is_connected());
    }
}
