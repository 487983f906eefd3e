//! DHCPv4 messages (RFC 2131 and the options of RFC 2132 a client needs): encoded for
//! sending, decoded from whatever arrives. Decoding treats its input as hostile: every length
//! is checked, unknown options are skipped, nothing panics.
use std::net::Ipv4Addr;

use crate::abi::Mac;

/// BOOTP's fixed part: op … file, before the magic cookie.
const FIXED: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
/// The flags bit asking the server to broadcast its reply (we have no address yet).
const FLAG_BROADCAST: u16 = 0x8000;

mod code {
    pub(super) const PAD: u8 = 0;
    pub(super) const SUBNET_MASK: u8 = 1;
    pub(super) const ROUTER: u8 = 3;
    pub(super) const DNS: u8 = 6;
    pub(super) const HOST_NAME: u8 = 12;
    pub(super) const DOMAIN_NAME: u8 = 15;
    pub(super) const INTERFACE_MTU: u8 = 26;
    pub(super) const REQUESTED_IP: u8 = 50;
    pub(super) const LEASE_TIME: u8 = 51;
    pub(super) const MESSAGE_TYPE: u8 = 53;
    pub(super) const SERVER_ID: u8 = 54;
    pub(super) const PARAMETERS: u8 = 55;
    pub(super) const MESSAGE: u8 = 56;
    pub(super) const RENEWAL_T1: u8 = 58;
    pub(super) const REBINDING_T2: u8 = 59;
    pub(super) const CLIENT_ID: u8 = 61;
    pub(super) const END: u8 = 255;
}

/// What a client asks the server to include.
const PARAMETERS: [u8; 6] = [
    code::SUBNET_MASK,
    code::ROUTER,
    code::DNS,
    code::DOMAIN_NAME,
    code::INTERFACE_MTU,
    code::LEASE_TIME,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        use MessageType::*;
        [Discover, Offer, Request, Decline, Ack, Nak, Release, Inform]
            .into_iter()
            .find(|t| *t as u8 == v)
    }
}

/// The options this client reads or writes; others are skipped when decoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub message_type: Option<MessageType>,
    pub server_id: Option<Ipv4Addr>,
    pub requested_ip: Option<Ipv4Addr>,
    pub lease_time: Option<u32>,
    pub renewal_t1: Option<u32>,
    pub rebinding_t2: Option<u32>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub mtu: Option<u16>,
    /// The server's explanation (option 56), e.g. with a NAK.
    pub message: Option<String>,
    pub client_id: Option<Vec<u8>>,
    pub host_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// True for the server's replies (BOOTREPLY).
    pub reply: bool,
    pub xid: u32,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: Mac,
    pub options: Options,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is too short for a DHCP message")]
    TooShort(usize),
    #[error("not a DHCP message (no magic cookie)")]
    NoCookie,
    #[error("not an Ethernet DHCP message (htype {0}, hlen {1})")]
    NotEthernet(u8, u8),
    #[error("option {code} runs past the end of the message")]
    Truncated { code: u8 },
    #[error("option {code} has a bad length {len}")]
    BadLength { code: u8, len: usize },
}

impl Message {
    /// A client's message from `mac` with transaction id `xid`, all addresses zero.
    pub fn request(kind: MessageType, xid: u32, mac: Mac) -> Self {
        Message {
            reply: false,
            xid,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            options: Options {
                message_type: Some(kind),
                ..Options::default()
            },
        }
    }

    pub fn kind(&self) -> Option<MessageType> {
        self.options.message_type
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; FIXED];
        out[0] = if self.reply { BOOTREPLY } else { BOOTREQUEST };
        out[1] = HTYPE_ETHERNET;
        out[2] = 6;
        out[4..8].copy_from_slice(&self.xid.to_be_bytes());
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        out[10..12].copy_from_slice(&flags.to_be_bytes());
        for (at, ip) in [
            (12, self.ciaddr),
            (16, self.yiaddr),
            (20, self.siaddr),
            (24, self.giaddr),
        ] {
            out[at..at + 4].copy_from_slice(&ip.octets());
        }
        out[28..34].copy_from_slice(&self.chaddr);
        out.extend_from_slice(&MAGIC_COOKIE);
        let o = &self.options;
        let mut put = |code: u8, value: &[u8]| {
            // Every value written here is far below 255 bytes (names are cut by the caller).
            out.push(code);
            out.push(value.len().min(255) as u8);
            out.extend_from_slice(&value[..value.len().min(255)]);
        };
        if let Some(t) = o.message_type {
            put(code::MESSAGE_TYPE, &[t as u8]);
        }
        if let Some(id) = &o.client_id {
            put(code::CLIENT_ID, id);
        }
        if let Some(ip) = o.requested_ip {
            put(code::REQUESTED_IP, &ip.octets());
        }
        if let Some(ip) = o.server_id {
            put(code::SERVER_ID, &ip.octets());
        }
        if let Some(name) = &o.host_name {
            put(code::HOST_NAME, name.as_bytes());
        }
        for (c, v) in [
            (code::LEASE_TIME, o.lease_time),
            (code::RENEWAL_T1, o.renewal_t1),
            (code::REBINDING_T2, o.rebinding_t2),
        ] {
            if let Some(v) = v {
                put(c, &v.to_be_bytes());
            }
        }
        if let Some(mask) = o.subnet_mask {
            put(code::SUBNET_MASK, &mask.octets());
        }
        for (c, list) in [(code::ROUTER, &o.routers), (code::DNS, &o.dns)] {
            if !list.is_empty() {
                let bytes: Vec<u8> = list.iter().flat_map(|ip| ip.octets()).collect();
                put(c, &bytes);
            }
        }
        if let Some(d) = &o.domain_name {
            put(code::DOMAIN_NAME, d.as_bytes());
        }
        if let Some(mtu) = o.mtu {
            put(code::INTERFACE_MTU, &mtu.to_be_bytes());
        }
        if let Some(m) = &o.message {
            put(code::MESSAGE, m.as_bytes());
        }
        if !self.reply && o.message_type != Some(MessageType::Release) {
            put(code::PARAMETERS, &PARAMETERS);
        }
        out.push(code::END);
        // BOOTP relays expect at least 300 bytes.
        if out.len() < 300 {
            out.resize(300, code::PAD);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < FIXED + MAGIC_COOKIE.len() {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        if bytes[1] != HTYPE_ETHERNET || bytes[2] != 6 {
            return Err(DecodeError::NotEthernet(bytes[1], bytes[2]));
        }
        if bytes[FIXED..FIXED + 4] != MAGIC_COOKIE {
            return Err(DecodeError::NoCookie);
        }
        let ip = |at: usize| Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&bytes[28..34]);
        Ok(Message {
            reply: bytes[0] == BOOTREPLY,
            xid: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            broadcast: u16::from_be_bytes([bytes[10], bytes[11]]) & FLAG_BROADCAST != 0,
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr,
            options: decode_options(&bytes[FIXED + 4..])?,
        })
    }
}

fn decode_options(mut rest: &[u8]) -> Result<Options, DecodeError> {
    let mut o = Options::default();
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            code::PAD => {
                rest = tail;
                continue;
            }
            code::END => break,
            _ => {}
        }
        let (&len, tail) = tail.split_first().ok_or(DecodeError::Truncated { code })?;
        let len = usize::from(len);
        if tail.len() < len {
            return Err(DecodeError::Truncated { code });
        }
        let (value, tail) = tail.split_at(len);
        rest = tail;
        let bad = || DecodeError::BadLength { code, len };
        let addr = || -> Result<Ipv4Addr, DecodeError> {
            <[u8; 4]>::try_from(value)
                .map(Ipv4Addr::from)
                .map_err(|_| bad())
        };
        let addrs = || -> Result<Vec<Ipv4Addr>, DecodeError> {
            if len == 0 || len % 4 != 0 {
                return Err(bad());
            }
            Ok(value
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect())
        };
        let secs = || -> Result<u32, DecodeError> {
            <[u8; 4]>::try_from(value)
                .map(u32::from_be_bytes)
                .map_err(|_| bad())
        };
        let text = || {
            String::from_utf8_lossy(value)
                .trim_end_matches('\0')
                .to_string()
        };
        match code {
            code::MESSAGE_TYPE => {
                let [t] = value else { return Err(bad()) };
                o.message_type = MessageType::from_u8(*t);
            }
            code::SERVER_ID => o.server_id = Some(addr()?),
            code::REQUESTED_IP => o.requested_ip = Some(addr()?),
            code::SUBNET_MASK => o.subnet_mask = Some(addr()?),
            code::ROUTER => o.routers = addrs()?,
            code::DNS => o.dns = addrs()?,
            code::LEASE_TIME => o.lease_time = Some(secs()?),
            code::RENEWAL_T1 => o.renewal_t1 = Some(secs()?),
            code::REBINDING_T2 => o.rebinding_t2 = Some(secs()?),
            code::DOMAIN_NAME => o.domain_name = Some(text()),
            code::HOST_NAME => o.host_name = Some(text()),
            code::MESSAGE => o.message = Some(text()),
            code::CLIENT_ID => o.client_id = Some(value.to_vec()),
            code::INTERFACE_MTU => {
                let v = <[u8; 2]>::try_from(value).map_err(|_| bad())?;
                o.mtu = Some(u16::from_be_bytes(v));
            }
            _ => {}
        }
    }
    Ok(o)
}

/// The prefix length of a contiguous netmask (`255.255.255.0` → 24); None if it has holes.
pub fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    (bits.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x42, 0xc6, 0x12, 0x00, 0x05];

    fn ack() -> Message {
        let mut m = Message::request(MessageType::Ack, 0xdead_beef, MAC);
        m.reply = true;
        m.yiaddr = Ipv4Addr::new(198, 18, 0, 5);
        m.options = Options {
            message_type: Some(MessageType::Ack),
            server_id: Some(Ipv4Addr::new(198, 18, 0, 1)),
            lease_time: Some(30),
            renewal_t1: Some(15),
            rebinding_t2: Some(26),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![Ipv4Addr::new(198, 18, 0, 1)],
            dns: vec![Ipv4Addr::new(198, 18, 0, 53), Ipv4Addr::new(198, 18, 0, 54)],
            domain_name: Some("lab.example".into()),
            mtu: Some(9000),
            message: None,
            client_id: None,
            host_name: None,
            requested_ip: None,
        };
        m
    }

    #[test]
    fn round_trips_and_pads_to_bootp_size() {
        let m = ack();
        let bytes = m.encode();
        assert!(bytes.len() >= 300);
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        let mut d = Message::request(MessageType::Discover, 7, MAC);
        d.broadcast = true;
        d.options.client_id = Some(vec![1, 2, 0x42, 0xc6, 0x12, 0, 5]);
        d.options.host_name = Some("web1".into());
        let back = Message::decode(&d.encode()).unwrap();
        assert!(back.broadcast && !back.reply);
        assert_eq!(back.options.host_name.as_deref(), Some("web1"));
        assert_eq!(back.options.client_id, d.options.client_id);
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        let good = ack().encode();
        for cut in 0..good.len() {
            Message::decode(&good[..cut]).ok();
        }
        assert_eq!(
            Message::decode(&good[..100]),
            Err(DecodeError::TooShort(100))
        );
        let mut bad = good.clone();
        bad[FIXED] = 0;
        assert_eq!(Message::decode(&bad), Err(DecodeError::NoCookie));
        // An option whose length runs past the end.
        let mut bad = good[..FIXED + 4].to_vec();
        bad.extend_from_slice(&[code::ROUTER, 200, 1, 2]);
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::Truncated { code: code::ROUTER })
        );
        let mut bad = good[..FIXED + 4].to_vec();
        bad.extend_from_slice(&[code::SERVER_ID, 3, 1, 2, 3, code::END]);
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::BadLength {
                code: code::SERVER_ID,
                len: 3
            })
        );
        // Unknown options and padding are skipped; no END is tolerated.
        let mut ok = good[..FIXED + 4].to_vec();
        ok.extend_from_slice(&[0, 0, 200, 2, 9, 9, code::MESSAGE_TYPE, 1, 6]);
        assert_eq!(Message::decode(&ok).unwrap().kind(), Some(MessageType::Nak));
    }

    #[test]
    fn netmask_prefixes() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
