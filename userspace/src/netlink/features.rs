//! What the kernel says a network device can do for XDP and AF_XDP: the `netdev` generic
//! netlink family's `dev-get` (Linux 6.3+; `ynl --family netdev --do dev-get`). Drivers fill
//! these flags themselves, so they replace any list of drivers kept by hand.
//!
//! The messages are a handful of fixed fields and attributes, built and read here over a
//! plain `NETLINK_GENERIC` socket.
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use serde::Serialize;

/// `enum netdev_xdp_act` bits of `xdp-features`.
pub mod xdp_act {
    /// XDP_ABORTED/DROP/PASS/TX in the driver: native XDP.
    pub const BASIC: u64 = 1;
    pub const REDIRECT: u64 = 2;
    pub const NDO_XMIT: u64 = 4;
    pub const XSK_ZEROCOPY: u64 = 8;
    pub const HW_OFFLOAD: u64 = 16;
    /// Frames in several buffers (XDP multi-buffer, `xdp.frags` programs).
    pub const RX_SG: u64 = 32;
    pub const NDO_XMIT_SG: u64 = 64;
}

/// `enum netdev_xdp_rx_metadata` bits of `xdp-rx-metadata-features`.
pub mod rx_metadata {
    pub const TIMESTAMP: u64 = 1;
    pub const HASH: u64 = 2;
    /// `bpf_xdp_metadata_rx_vlan_tag()`: the tag a NIC stripped, read from XDP.
    pub const VLAN_TAG: u64 = 4;
}

/// The device's XDP and AF_XDP features as the kernel reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct XdpFeatures {
    /// `xdp-features` ([`xdp_act`] bits).
    pub xdp: u64,
    /// `xdp-rx-metadata-features` ([`rx_metadata`] bits; None before Linux 6.5).
    pub rx_metadata: Option<u64>,
    /// `xsk-features` (`enum netdev_xsk_flags`: TX timestamps, TX checksum; None before 6.8).
    pub xsk: Option<u64>,
    /// `xdp-zc-max-segs`: buffers one zero-copy frame may span (None when not reported).
    pub zc_max_segs: Option<u32>,
}

impl XdpFeatures {
    /// The driver runs XDP itself (native mode); otherwise only generic (skb) XDP works.
    pub fn native_xdp(&self) -> bool {
        self.xdp & xdp_act::BASIC != 0
    }

    pub fn redirect(&self) -> bool {
        self.xdp & xdp_act::REDIRECT != 0
    }

    /// AF_XDP sockets can bind in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.xdp & xdp_act::XSK_ZEROCOPY != 0
    }

    /// XDP programs that take frames in several buffers can attach natively (large MTUs).
    pub fn multi_buffer(&self) -> bool {
        self.xdp & xdp_act::RX_SG != 0
    }

    /// The driver hands XDP the 802.1Q tag it stripped (`bpf_xdp_metadata_rx_vlan_tag`).
    pub fn vlan_tag_metadata(&self) -> bool {
        self.rx_metadata.unwrap_or(0) & rx_metadata::VLAN_TAG != 0
    }
}

/// Why the kernel could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum FeatureQueryError {
    #[error("generic netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("the kernel answered {what} with error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel { what: &'static str, errno: i32 },
    #[error("malformed generic netlink answer to {0}")]
    Malformed(&'static str),
}

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_ZC_MAX_SEGS: u16 = 4;
const NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: u16 = 5;
const NETDEV_A_DEV_XSK_FEATURES: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Ask the kernel (in the calling thread's network namespace) what device `ifindex` can do.
/// `Ok(None)`: this kernel has no `netdev` family (before Linux 6.3); fall back to what is
/// known about the driver, and say so.
pub fn xdp_features(ifindex: u32) -> Result<Option<XdpFeatures>, FeatureQueryError> {
    let mut socket = Socket::new(NETLINK_GENERIC).map_err(FeatureQueryError::Socket)?;
    socket.bind_auto().map_err(FeatureQueryError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(FeatureQueryError::Socket)?;
    let family = request(
        &socket,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
        "the netdev family lookup",
    );
    let family = match family {
        Ok(attrs) => attrs
            .iter()
            .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
            .ok_or(FeatureQueryError::Malformed("the netdev family lookup"))?,
        Err(FeatureQueryError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    let attrs = request(
        &socket,
        family,
        NETDEV_CMD_DEV_GET,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
        "netdev dev-get",
    )?;
    Ok(Some(parse_device(&attrs)))
}

/// One request, its one answer's attributes.
fn request(
    socket: &Socket,
    family: u16,
    cmd: u8,
    attrs: &[(u16, &[u8])],
    what: &'static str,
) -> Result<Vec<(u16, Vec<u8>)>, FeatureQueryError> {
    let message = build(family, cmd, attrs);
    socket
        .send(&message, 0)
        .map_err(FeatureQueryError::Socket)?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = socket
        .recv(&mut &mut buf[..], 0)
        .map_err(FeatureQueryError::Socket)?;
    parse_answer(&buf[..n.min(buf.len())], what)
}

/// A generic netlink request: netlink header, genl header, attributes.
fn build(family: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    m.extend_from_slice(&[cmd, 1, 0, 0]); // cmd, version, reserved
    for (kind, value) in attrs {
        m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// The attributes of one answer, or the kernel's error.
fn parse_answer(buf: &[u8], what: &'static str) -> Result<Vec<(u16, Vec<u8>)>, FeatureQueryError> {
    let malformed = FeatureQueryError::Malformed(what);
    let header = buf.get(..16).ok_or(FeatureQueryError::Malformed(what))?;
    let len = u32::from_ne_bytes(header[..4].try_into().unwrap()) as usize;
    let kind = u16::from_ne_bytes(header[4..6].try_into().unwrap());
    let body = buf.get(16..len).ok_or(malformed)?;
    if kind == NLMSG_ERROR {
        let code = body
            .get(..4)
            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
            .ok_or(FeatureQueryError::Malformed(what))?;
        return Err(FeatureQueryError::Kernel { what, errno: -code });
    }
    let mut attrs = Vec::new();
    let mut rest = body.get(4..).ok_or(FeatureQueryError::Malformed(what))?; // genl header
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes(rest[..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(rest[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        let value = rest.get(4..len).ok_or(FeatureQueryError::Malformed(what))?;
        attrs.push((kind, value.to_vec()));
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(attrs)
}

fn parse_device(attrs: &[(u16, Vec<u8>)]) -> XdpFeatures {
    let u64_of = |kind: u16| {
        attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, v)| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
    };
    let zc_max_segs = attrs
        .iter()
        .find(|(k, _)| *k == NETDEV_A_DEV_XDP_ZC_MAX_SEGS)
        .and_then(|(_, v)| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
    XdpFeatures {
        xdp: u64_of(NETDEV_A_DEV_XDP_FEATURES).unwrap_or(0),
        rx_metadata: u64_of(NETDEV_A_DEV_XDP_RX_METADATA_FEATURES),
        xsk: u64_of(NETDEV_A_DEV_XSK_FEATURES),
        zc_max_segs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as the kernel builds it: netlink header, genl header, attributes.
    fn answer(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        build(0x20, NETDEV_CMD_DEV_GET, attrs)
    }

    #[test]
    fn a_device_answer_gives_every_feature() {
        let xdp = xdp_act::BASIC | xdp_act::REDIRECT | xdp_act::XSK_ZEROCOPY | xdp_act::RX_SG;
        let buf = answer(&[
            (NETDEV_A_DEV_IFINDEX, &7u32.to_ne_bytes()),
            (NETDEV_A_DEV_XDP_FEATURES, &xdp.to_ne_bytes()),
            (NETDEV_A_DEV_XDP_ZC_MAX_SEGS, &1u32.to_ne_bytes()),
            (
                NETDEV_A_DEV_XDP_RX_METADATA_FEATURES,
                &rx_metadata::VLAN_TAG.to_ne_bytes(),
            ),
        ]);
        let f = parse_device(&parse_answer(&buf, "test").unwrap());
        assert!(f.native_xdp() && f.redirect() && f.zero_copy() && f.multi_buffer());
        assert!(f.vlan_tag_metadata());
        assert_eq!((f.xsk, f.zc_max_segs), (None, Some(1)));
    }

    #[test]
    fn a_generic_only_device_reports_nothing_native() {
        let f = parse_device(&parse_answer(&answer(&[]), "test").unwrap());
        assert!(!f.native_xdp() && !f.zero_copy() && !f.vlan_tag_metadata());
    }

    #[test]
    fn kernel_errors_and_truncated_answers_are_errors() {
        let mut err = answer(&[]);
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert!(matches!(
            parse_answer(&err, "test"),
            Err(FeatureQueryError::Kernel { errno, .. }) if errno == libc::ENODEV
        ));
        let full = answer(&[(NETDEV_A_DEV_XDP_FEATURES, &1u64.to_ne_bytes())]);
        for cut in [0, 10, 17, full.len() - 3] {
            assert!(parse_answer(&full[..cut], "test").is_err(), "cut at {cut}");
        }
    }
}
