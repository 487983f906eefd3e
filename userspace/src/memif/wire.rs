//! The memif control messages: every message is one 128-byte SOCK_SEQPACKET record, a
//! little-endian `u16` type at offset 0 and a packed body from offset 2 (DPDK's and VPP's
//! `memif.h`, protocol version 2.0). Decoding checks the type and nothing else; what a field
//! may hold is the handshake's business ([`super::handshake`]).

/// Every control message is exactly this long.
pub const MSG_SIZE: usize = 128;
/// Protocol version 2.0 (`major << 8 | minor`).
pub const VERSION: u16 = 2 << 8;
/// Written by the client into every ring header; a ring without it is not a ring.
pub const COOKIE: u32 = 0x3E31F20;
pub const NAME_SIZE: usize = 32;
pub const SECRET_SIZE: usize = 24;
pub const REASON_SIZE: usize = 96;
/// ADD_RING flag: the ring carries frames client → server (C2S, "S2M" in older texts).
pub const ADD_RING_FLAG_C2S: u16 = 1;

/// `memif_interface_mode_t`: only ethernet frames are served here.
pub const MODE_ETHERNET: u8 = 0;

const TYPE_ACK: u16 = 1;
const TYPE_HELLO: u16 = 2;
const TYPE_INIT: u16 = 3;
const TYPE_ADD_REGION: u16 = 4;
const TYPE_ADD_RING: u16 = 5;
const TYPE_CONNECT: u16 = 6;
const TYPE_CONNECTED: u16 = 7;
const TYPE_DISCONNECT: u16 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: [u8; NAME_SIZE],
    pub min_version: u16,
    pub max_version: u16,
    /// Highest region index the server accepts (count − 1).
    pub max_region: u16,
    /// Highest C2S ring index (count − 1).
    pub max_c2s_ring: u16,
    /// Highest S2C ring index (count − 1).
    pub max_s2c_ring: u16,
    pub max_log2_ring_size: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    pub version: u16,
    /// The interface id the client asks for.
    pub id: u32,
    pub mode: u8,
    pub secret: [u8; SECRET_SIZE],
    pub name: [u8; NAME_SIZE],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddRegion {
    pub index: u16,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddRing {
    pub flags: u16,
    pub index: u16,
    pub region: u16,
    pub offset: u32,
    pub log2_ring_size: u8,
    pub private_hdr_size: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Ack,
    Hello(Hello),
    Init(Init),
    AddRegion(AddRegion),
    AddRing(AddRing),
    Connect {
        if_name: [u8; NAME_SIZE],
    },
    Connected {
        if_name: [u8; NAME_SIZE],
    },
    Disconnect {
        code: u32,
        reason: [u8; REASON_SIZE],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a control message is {MSG_SIZE} bytes, this one was {0}")]
    Length(usize),
    #[error("unknown control message type {0}")]
    Type(u16),
}

/// A fixed-size byte field from text: cut at the field's size, zero-padded.
pub fn name_field<const N: usize>(text: &str) -> [u8; N] {
    let mut field = [0u8; N];
    let bytes = text.as_bytes();
    let n = bytes.len().min(N);
    field[..n].copy_from_slice(&bytes[..n]);
    field
}

/// A byte field as text: up to its first NUL, non-printable bytes replaced, for logs.
pub fn field_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().expect("N bytes")
}

impl Msg {
    pub fn encode(&self) -> [u8; MSG_SIZE] {
        let mut b = [0u8; MSG_SIZE];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        match self {
            Msg::Ack => put(0, &TYPE_ACK.to_le_bytes()),
            Msg::Hello(h) => {
                put(0, &TYPE_HELLO.to_le_bytes());
                put(2, &h.name);
                put(34, &h.min_version.to_le_bytes());
                put(36, &h.max_version.to_le_bytes());
                put(38, &h.max_region.to_le_bytes());
                put(40, &h.max_c2s_ring.to_le_bytes());
                put(42, &h.max_s2c_ring.to_le_bytes());
                put(44, &[h.max_log2_ring_size]);
            }
            Msg::Init(i) => {
                put(0, &TYPE_INIT.to_le_bytes());
                put(2, &i.version.to_le_bytes());
                put(4, &i.id.to_le_bytes());
                put(8, &[i.mode]);
                put(9, &i.secret);
                put(33, &i.name);
            }
            Msg::AddRegion(r) => {
                put(0, &TYPE_ADD_REGION.to_le_bytes());
                put(2, &r.index.to_le_bytes());
                put(4, &r.size.to_le_bytes());
            }
            Msg::AddRing(r) => {
                put(0, &TYPE_ADD_RING.to_le_bytes());
                put(2, &r.flags.to_le_bytes());
                put(4, &r.index.to_le_bytes());
                put(6, &r.region.to_le_bytes());
                put(8, &r.offset.to_le_bytes());
                put(12, &[r.log2_ring_size]);
                put(13, &r.private_hdr_size.to_le_bytes());
            }
            Msg::Connect { if_name } => {
                put(0, &TYPE_CONNECT.to_le_bytes());
                put(2, if_name);
            }
            Msg::Connected { if_name } => {
                put(0, &TYPE_CONNECTED.to_le_bytes());
                put(2, if_name);
            }
            Msg::Disconnect { code, reason } => {
                put(0, &TYPE_DISCONNECT.to_le_bytes());
                put(2, &code.to_le_bytes());
                put(6, reason);
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Msg, DecodeError> {
        if b.len() != MSG_SIZE {
            return Err(DecodeError::Length(b.len()));
        }
        Ok(match u16_at(b, 0) {
            TYPE_ACK => Msg::Ack,
            TYPE_HELLO => Msg::Hello(Hello {
                name: array_at(b, 2),
                min_version: u16_at(b, 34),
                max_version: u16_at(b, 36),
                max_region: u16_at(b, 38),
                max_c2s_ring: u16_at(b, 40),
                max_s2c_ring: u16_at(b, 42),
                max_log2_ring_size: b[44],
            }),
            TYPE_INIT => Msg::Init(Init {
                version: u16_at(b, 2),
                id: u32_at(b, 4),
                mode: b[8],
                secret: array_at(b, 9),
                name: array_at(b, 33),
            }),
            TYPE_ADD_REGION => Msg::AddRegion(AddRegion {
                index: u16_at(b, 2),
                size: u64_at(b, 4),
            }),
            TYPE_ADD_RING => Msg::AddRing(AddRing {
                flags: u16_at(b, 2),
                index: u16_at(b, 4),
                region: u16_at(b, 6),
                offset: u32_at(b, 8),
                log2_ring_size: b[12],
                private_hdr_size: u16_at(b, 13),
            }),
            TYPE_CONNECT => Msg::Connect {
                if_name: array_at(b, 2),
            },
            TYPE_CONNECTED => Msg::Connected {
                if_name: array_at(b, 2),
            },
            TYPE_DISCONNECT => Msg::Disconnect {
                code: u32_at(b, 2),
                reason: array_at(b, 6),
            },
            other => return Err(DecodeError::Type(other)),
        })
    }

    /// A DISCONNECT carrying `reason`, NUL-terminated: C clients read the field as a
    /// string. The server's reasons fit (`super::refusal`); longer text is cut at a
    /// character boundary.
    pub fn disconnect(code: u32, reason: &str) -> Msg {
        let mut end = reason.len().min(REASON_SIZE - 1);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Msg::Disconnect {
            code,
            reason: name_field(&reason[..end]),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Ack => "ACK",
            Msg::Hello(_) => "HELLO",
            Msg::Init(_) => "INIT",
            Msg::AddRegion(_) => "ADD_REGION",
            Msg::AddRing(_) => "ADD_RING",
            Msg::Connect { .. } => "CONNECT",
            Msg::Connected { .. } => "CONNECTED",
            Msg::Disconnect { .. } => "DISCONNECT",
        }
    }
}

#[cfg(test)]
mod tests;
