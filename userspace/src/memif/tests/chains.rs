//! Chained buffers between the real client and server, and hostile chains from a client
//! playing its rings by hand.
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::dataplane::TxRefused;

/// Hand-written C2S descriptors: `(flags, length)` from `slot` on, each in its own 2 KiB
/// buffer of the raw client's region.
fn queue_c2s(c2s: &Ring, slot: u16, descs: &[(u16, u32)]) -> u16 {
    for (i, &(flags, length)) in descs.iter().enumerate() {
        let at = slot.wrapping_add(i as u16);
        c2s.set_desc(
            at,
            Desc {
                flags,
                region: 0,
                length,
                offset: 8192 + (at as u32 % 16) * 2048,
                metadata: 0,
            },
        );
    }
    let head = slot.wrapping_add(descs.len() as u16);
    c2s.set_head(head);
    head
}

fn drained(port: &mut ServerPort) -> Vec<Result<usize, TxRefused>> {
    let mut items = Vec::new();
    port.tx_drain(64, &mut |item| {
        items.push(match item {
            TxFrame::Send(segments) => Ok(segments.concat().len()),
            TxFrame::Refused(why) => Err(why),
        })
    });
    items
}

#[test]
fn hostile_chains_are_refused_and_the_port_stays_up() {
    let dir = Dir::new("badchain");
    let srv = server(&dir, HANDSHAKE_TIMEOUT_TEST);
    let path = srv.serve("ep1", Path::new(OWN_NS)).unwrap();
    let (raw, c2s, _s2c, _) = raw_connected(&path);
    let mut port = connected_port(&srv);
    const NEXT: u16 = super::shm::DESC_FLAG_NEXT;

    // "Next" on the last descriptor published: the chain's end is missing.
    let head = queue_c2s(&c2s, 0, &[(NEXT, 100), (NEXT, 100), (NEXT, 100)]);
    assert_eq!(drained(&mut port), [Err(TxRefused::Unterminated)]);
    assert_eq!(c2s.tail(), head, "its buffers go back");

    // The whole ring, wrapping around, every descriptor "next": a loop with no end.
    let head = queue_c2s(&c2s, head, &[(NEXT, 60); 16]);
    assert_eq!(drained(&mut port), [Err(TxRefused::Unterminated)]);
    assert_eq!(c2s.tail(), head);

    // Longer than the largest frame, then a good frame behind it.
    let mut descs = vec![(NEXT, 2048); 5];
    descs.push((0, 2048));
    descs.push((0, 60));
    let head = queue_c2s(&c2s, head, &descs);
    assert_eq!(
        drained(&mut port),
        [Err(TxRefused::TooLong), Ok(60)],
        "6 x 2048 bytes is over {}",
        crate::dataplane::MAX_FRAME
    );
    assert_eq!(c2s.tail(), head);

    // A good chain still passes, and the client was never cut off.
    let head = queue_c2s(&c2s, head, &[(NEXT, 2048), (NEXT, 2048), (0, 904)]);
    assert_eq!(drained(&mut port), [Ok(5000)]);
    assert_eq!(c2s.tail(), head);
    assert!(port.is_connected());
    drop(raw);
    assert!(matches!(
        srv.next_event(Duration::from_secs(5)),
        Some(PortEvent::Disconnected { .. })
    ));
}

fn small_buffers(log2_ring_size: u8) -> ClientConfig {
    ClientConfig {
        name: "chains".into(),
        log2_ring_size,
        buffer_size: 256,
        ..Default::default()
    }
}

#[test]
fn chained_frames_cross_both_ways_whole() {
    let dir = Dir::new("chains");
    let srv = server(&dir, HANDSHAKE_TIMEOUT_TEST);
    let path = srv.serve("ep1", Path::new(OWN_NS)).unwrap();
    let mut client = Client::connect(&path, &small_buffers(7)).unwrap();
    let mut port = connected_port(&srv);
    let max = crate::dataplane::MAX_FRAME;
    let lens = [60, 256, 260, 261, 1500, 4000, max];

    // Server to client, tag stripped: 260 bytes are 256 untagged, one buffer.
    for (i, &len) in lens.iter().enumerate() {
        assert_eq!(port.rx_push(&[&frame(i as u32, len, true)], true), Ok(()));
    }
    port.rx_flush();
    let mut got = Vec::new();
    assert_eq!(client.recv(|f| got.push(f.to_vec())), lens.len());
    for (i, (f, &len)) in got.iter().zip(&lens).enumerate() {
        let mut want = frame(i as u32, len, true);
        want.drain(12..16);
        assert_eq!(f, &want, "frame {i} ({len} bytes) whole");
    }
    assert_eq!(client.counters.rx_chained, 4, "261, 1500, 4000 and {max}");
    assert_eq!(client.counters.rx_broken, 0);

    // Client to server: every length but the largest is sent in a chain of 256-byte buffers.
    for (i, &len) in lens.iter().enumerate() {
        assert!(client.send(&frame(i as u32, len, false)), "{len} bytes");
    }
    assert!(!client.send(&vec![0u8; max + 1]), "longer than any frame");
    client.flush();
    let mut sent = Vec::new();
    while sent.len() < lens.len() {
        assert!(port.tx_drain(64, &mut |f| sent.push(joined(f))) > 0);
    }
    for (i, (f, &len)) in sent.iter().zip(&lens).enumerate() {
        assert_eq!(
            f,
            &frame(i as u32, len, false),
            "frame {i} ({len} bytes) whole"
        );
    }
    assert_eq!(client.counters.tx_chained, 5);
    assert_eq!(client.tx_in_flight(), 0);
}

#[test]
fn a_frame_reaches_the_client_whole_or_not_at_all() {
    let dir = Dir::new("whole");
    let srv = server(&dir, HANDSHAKE_TIMEOUT_TEST);
    let path = srv.serve("ep1", Path::new(OWN_NS)).unwrap();
    // 16 buffers of 256 bytes: a 1500-byte frame takes 6.
    let mut client = Client::connect(&path, &small_buffers(4)).unwrap();
    let mut port = connected_port(&srv);
    let push =
        |port: &mut ServerPort, i: u32, len: usize| port.rx_push(&[&frame(i, len, false)], false);
    assert_eq!(push(&mut port, 0, 1500), Ok(()));
    assert_eq!(push(&mut port, 1, 1500), Ok(()));
    assert_eq!(push(&mut port, 2, 1500), Err(RxRefused::NoBuffer), "4 left");
    assert_eq!(push(&mut port, 3, 1024), Ok(()), "exactly the 4 left");
    assert_eq!(push(&mut port, 4, 60), Err(RxRefused::NoBuffer));
    port.rx_flush();
    let mut got = Vec::new();
    client.recv(|f| got.push(f.to_vec()));
    assert_eq!(
        got,
        [
            frame(0, 1500, false),
            frame(1, 1500, false),
            frame(3, 1024, false)
        ]
    );
    // More than the whole ring holds (16 x 256): never deliverable.
    assert_eq!(push(&mut port, 5, 4097), Err(RxRefused::TooBig));
    assert_eq!(push(&mut port, 6, 4096), Ok(()), "the whole ring");
    port.rx_flush();
    got.clear();
    client.recv(|f| got.push(f.to_vec()));
    assert_eq!(got, [frame(6, 4096, false)]);
    assert_eq!(client.counters.rx_broken, 0);
}
