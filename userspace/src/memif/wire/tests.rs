//! Byte-for-byte checks against the layout in DPDK's `drivers/net/memif/memif.h` (packed
//! structs after a 16-bit type): each expected record is written out by hand, offset by offset.
use super::*;

fn record(fill: &[(usize, &[u8])]) -> [u8; MSG_SIZE] {
    let mut b = [0u8; MSG_SIZE];
    for (at, bytes) in fill {
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    b
}

#[test]
fn constants_match_the_published_header() {
    assert_eq!(VERSION, 0x0200);
    assert_eq!(COOKIE, 0x03E3_1F20);
    assert_eq!((NAME_SIZE, SECRET_SIZE, REASON_SIZE), (32, 24, 96));
}

#[test]
fn hello_layout() {
    let msg = Msg::Hello(Hello {
        name: name_field("xmacvlan"),
        min_version: VERSION,
        max_version: VERSION,
        max_region: 0x0102,
        max_c2s_ring: 0x0304,
        max_s2c_ring: 0x0506,
        max_log2_ring_size: 14,
    });
    let want = record(&[
        (0, &[2, 0]),
        (2, b"xmacvlan"),
        (34, &[0x00, 0x02]),
        (36, &[0x00, 0x02]),
        (38, &[0x02, 0x01]),
        (40, &[0x04, 0x03]),
        (42, &[0x06, 0x05]),
        (44, &[14]),
    ]);
    assert_eq!(msg.encode(), want);
    assert_eq!(Msg::decode(&want).unwrap(), msg);
}

#[test]
fn init_layout() {
    let msg = Msg::Init(Init {
        version: VERSION,
        id: 0x0A0B_0C0D,
        mode: MODE_ETHERNET,
        secret: name_field("s3cret"),
        name: name_field("DPDK 22.11.0"),
    });
    let want = record(&[
        (0, &[3, 0]),
        (2, &[0x00, 0x02]),
        (4, &[0x0D, 0x0C, 0x0B, 0x0A]),
        (8, &[0]),
        (9, b"s3cret"),
        (33, b"DPDK 22.11.0"),
    ]);
    assert_eq!(msg.encode(), want);
    assert_eq!(Msg::decode(&want).unwrap(), msg);
    // The name ends at 65: the last byte of a full 32-byte name lands at offset 64.
    let full = Msg::Init(Init {
        version: 0,
        id: 0,
        mode: 0,
        secret: [0; 24],
        name: [b'n'; 32],
    });
    let enc = full.encode();
    assert_eq!((enc[32], enc[33], enc[64], enc[65]), (0, b'n', b'n', 0));
}

#[test]
fn add_region_and_add_ring_layout() {
    let region = Msg::AddRegion(AddRegion {
        index: 3,
        size: 0x0102_0304_0506_0708,
    });
    let want = record(&[(0, &[4, 0]), (2, &[3, 0]), (4, &[8, 7, 6, 5, 4, 3, 2, 1])]);
    assert_eq!(region.encode(), want);
    assert_eq!(Msg::decode(&want).unwrap(), region);

    let ring = Msg::AddRing(AddRing {
        flags: ADD_RING_FLAG_C2S,
        index: 2,
        region: 1,
        offset: 0x1122_3344,
        log2_ring_size: 10,
        private_hdr_size: 0x0506,
    });
    let want = record(&[
        (0, &[5, 0]),
        (2, &[1, 0]),
        (4, &[2, 0]),
        (6, &[1, 0]),
        (8, &[0x44, 0x33, 0x22, 0x11]),
        (12, &[10]),
        (13, &[0x06, 0x05]),
    ]);
    assert_eq!(ring.encode(), want);
    assert_eq!(Msg::decode(&want).unwrap(), ring);
}

#[test]
fn connect_connected_disconnect_ack_layout() {
    let c = Msg::Connect {
        if_name: name_field("memif0"),
    };
    assert_eq!(c.encode(), record(&[(0, &[6, 0]), (2, b"memif0")]));
    let c = Msg::Connected {
        if_name: name_field("ep1"),
    };
    assert_eq!(c.encode(), record(&[(0, &[7, 0]), (2, b"ep1")]));
    let d = Msg::disconnect(5, "refused: wrong namespace");
    let want = record(&[
        (0, &[8, 0]),
        (2, &[5, 0, 0, 0]),
        (6, b"refused: wrong namespace"),
    ]);
    assert_eq!(d.encode(), want);
    assert_eq!(Msg::decode(&want).unwrap(), d);
    assert_eq!(Msg::Ack.encode(), record(&[(0, &[1, 0])]));
    // A reason is cut at 95 bytes, so that a NUL ends it (C clients read a string): its last
    // byte is at offset 100.
    let long = Msg::disconnect(0, &"x".repeat(200)).encode();
    assert_eq!((long[100], long[101]), (b'x', 0));
    // Never inside a character: "é" is two bytes, and the 48th would straddle byte 95.
    let accents = Msg::disconnect(0, &"é".repeat(60)).encode();
    assert_eq!(&accents[6 + 92..6 + 96], &[0xc3, 0xa9, 0, 0]);
}

#[test]
fn decode_rejects_wrong_length_and_unknown_types() {
    assert_eq!(Msg::decode(&[0u8; 127]), Err(DecodeError::Length(127)));
    assert_eq!(Msg::decode(&[0u8; 129]), Err(DecodeError::Length(129)));
    assert_eq!(Msg::decode(&[0u8; 128]), Err(DecodeError::Type(0)));
    assert_eq!(
        Msg::decode(&record(&[(0, &[9, 0])])),
        Err(DecodeError::Type(9))
    );
}

#[test]
fn field_text_stops_at_nul_and_masks_control_bytes() {
    assert_eq!(field_text(b"abc\0def"), "abc");
    assert_eq!(field_text(b"a\nb"), "a?b");
}
