//! Why the server refuses or cuts off a client. Each reason has two forms: the full one for
//! the daemon's log ([`std::fmt::Display`]), which may name the endpoint, paths and OS
//! errors, and a short one for the DISCONNECT message ([`Refusal::wire`]), which always fits
//! the protocol's 96-byte reason field whole, with the NUL that C clients (DPDK, libmemif)
//! read it up to.
use std::io;
use std::time::Duration;

use super::port::Fault;
use super::wire::{DecodeError, MSG_SIZE, REASON_SIZE};

/// The longest reason sent: the field less its terminating NUL.
pub const MAX_WIRE_REASON: usize = REASON_SIZE - 1;

/// Which of a port's two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    C2S,
    S2C,
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::C2S => "C2S",
            Dir::S2C => "S2C",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("endpoint {endpoint} already has a client (pid {pid}{}): one client per endpoint",
        if client.is_empty() { String::new() } else { format!(", \"{client}\"") })]
    Busy {
        endpoint: String,
        pid: u32,
        client: String,
    },
    #[error(
        "client pid {pid} is not in endpoint {endpoint}'s network namespace: run it inside \
         that namespace (the endpoint's container, or `ip netns exec`)"
    )]
    OtherNamespace { endpoint: String, pid: u32 },
    #[error("cannot read client pid {pid}'s network namespace: {source}")]
    NamespaceUnreadable { pid: u32, source: std::io::Error },
    #[error("malformed message: {len} bytes (every message is {MSG_SIZE}){}",
        if *truncated { ", truncated" } else { "" })]
    Malformed { len: usize, truncated: bool },
    #[error("malformed message: {0}")]
    Undecodable(#[from] DecodeError),
    #[error("a message came with {0} descriptors (at most one)")]
    Descriptors(usize),
    #[error("reading the control socket failed: {0}")]
    SocketRead(std::io::Error),
    #[error("unexpected {kind} {phase}")]
    Unexpected {
        kind: &'static str,
        phase: &'static str,
    },
    #[error("{0} came with a file descriptor it must not carry")]
    UnwantedFd(&'static str),
    #[error("memif version {}.{} is not supported (this server speaks 2.0)", .0 >> 8, .0 & 0xff)]
    Version(u16),
    #[error("interface id {0} does not exist: each endpoint's socket serves one interface, id 0")]
    InterfaceId(u32),
    #[error("interface mode {0} is not served (ethernet only)")]
    Mode(u8),
    #[error("wrong secret")]
    WrongSecret,
    #[error("ADD_REGION came without the region's memfd")]
    RegionWithoutFd,
    #[error("region index {index} out of order (expected {expected})")]
    RegionOrder { index: u16, expected: usize },
    #[error("more than {0} regions")]
    TooManyRegions(u16),
    #[error("regions over {0} bytes in total")]
    RegionsTooLarge(u64),
    #[error("region {index}: {source}")]
    Region { index: u16, source: RegionError },
    #[error("ADD_RING came without the ring's eventfd")]
    RingWithoutFd,
    #[error("{dir} ring index {index}: only ring 0 exists")]
    RingIndex { dir: Dir, index: u16 },
    #[error("{0} ring 0 added twice")]
    RingTwice(Dir),
    #[error("{dir} ring size 2^{log2} is outside 2^1..=2^{max}")]
    RingSize { dir: Dir, log2: u8, max: u8 },
    #[error("{dir} ring in region {region}, which was never added")]
    RingRegion { dir: Dir, region: u16 },
    #[error("{dir} ring: {source}")]
    Ring { dir: Dir, source: RingError },
    #[error("{dir} ring's interrupt descriptor is not an eventfd ({kind})")]
    NotEventfd { dir: Dir, kind: String },
    #[error("{dir} ring's eventfd: {source}")]
    Eventfd { dir: Dir, source: std::io::Error },
    #[error("CONNECT before both rings (C2S 0 and S2C 0) were added")]
    RingsMissing,
    #[error("{dir} ring has cookie {cookie:#x}, not {:#x}", super::wire::COOKIE)]
    Cookie { dir: Dir, cookie: u32 },
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("protocol violation on the rings: {}", .0.reason())]
    RingFault(Fault),
    #[error("the endpoint is no longer served")]
    Unserved,
    #[error("the daemon could not attach the port to the endpoint: {0}")]
    NotAttached(String),
}

impl Refusal {
    /// The reason as the client reads it: at most [`MAX_WIRE_REASON`] bytes, never cut.
    /// Where the full reason names things of unbounded length (endpoint names, OS errors),
    /// this says what is wrong without them and points at the daemon's log.
    pub fn wire(&self) -> String {
        let text = match self {
            Refusal::Busy { endpoint, pid, .. } => fitting(
                format!(
                    "endpoint {endpoint} already has a client (pid {pid}): one client per endpoint"
                ),
                || {
                    format!(
                        "the endpoint already has a client (pid {pid}): one client per endpoint"
                    )
                },
            ),
            Refusal::OtherNamespace { endpoint, pid } => fitting(
                format!(
                    "pid {pid} is not in endpoint {endpoint}'s network namespace: run the client inside it"
                ),
                || {
                    format!(
                        "pid {pid} is not in the endpoint's network namespace: run the client inside it"
                    )
                },
            ),
            Refusal::NamespaceUnreadable { pid, .. } => {
                format!("cannot read pid {pid}'s network namespace (the daemon's log says why)")
            }
            Refusal::SocketRead(_) => {
                "reading the control socket failed (the daemon's log says why)".into()
            }
            Refusal::Region { index, source } => format!("region {index}: {}", source.wire()),
            Refusal::Ring { dir, source } => format!("{dir} ring: {}", source.wire()),
            Refusal::NotEventfd { dir, .. } => {
                format!("{dir} ring's interrupt descriptor is not an eventfd")
            }
            Refusal::Eventfd { dir, .. } => {
                format!("{dir} ring's eventfd cannot be made non-blocking")
            }
            Refusal::NotAttached(_) => {
                "the daemon could not attach the port to the endpoint (its log says why)".into()
            }
            _ => self.to_string(),
        };
        debug_assert!(text.len() <= MAX_WIRE_REASON, "{text:?} is too long");
        text
    }
}

/// Why a client's region cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region size {size} is outside 1..={max} bytes")]
    Size { size: u64, max: u64 },
    #[error(
        "the region's descriptor is not a sealable memfd ({0}): create it with \
         memfd_create(MFD_ALLOW_SEALING) and seal it with F_SEAL_SHRINK"
    )]
    NotMemfd(io::Error),
    #[error(
        "the region's memfd is not sealed with F_SEAL_SHRINK (a client could truncate it \
         under the daemon)"
    )]
    NotSealed,
    #[error("fstat of the region failed: {0}")]
    Fstat(io::Error),
    #[error("the region's memfd has {has} bytes, fewer than the {size} announced")]
    Short { has: u64, size: u64 },
    #[error("mapping the region failed: {0}")]
    Map(io::Error),
}

impl RegionError {
    /// The reason in a DISCONNECT (see `super::refusal`): without OS error text.
    pub fn wire(&self) -> String {
        match self {
            RegionError::NotMemfd(_) => {
                "not a sealable memfd (use memfd_create, F_SEAL_SHRINK)".into()
            }
            RegionError::NotSealed => "the memfd is not sealed with F_SEAL_SHRINK".into(),
            RegionError::Fstat(_) => {
                "fstat of the region failed (the daemon's log says why)".into()
            }
            RegionError::Short { size, .. } => {
                format!("the memfd is shorter than the {size} bytes announced")
            }
            RegionError::Map(_) => "mapping the region failed (the daemon's log says why)".into(),
            RegionError::Size { .. } => self.to_string(),
        }
    }

    #[cfg(test)]
    pub(crate) fn worst_cases() -> Vec<RegionError> {
        let e = || io::Error::from_raw_os_error(libc::ENAMETOOLONG);
        vec![
            RegionError::Size {
                size: u64::MAX,
                max: u64::MAX,
            },
            RegionError::NotMemfd(e()),
            RegionError::NotSealed,
            RegionError::Fstat(e()),
            RegionError::Short {
                has: u64::MAX,
                size: u64::MAX,
            },
            RegionError::Map(e()),
        ]
    }
}

/// Why a ring cannot be placed where a client said it is.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring size 2^{0} is over the protocol's 2^15")]
    TooLarge(u8),
    #[error("ring offset {0} is not 8-byte aligned")]
    Misaligned(u64),
    #[error("a ring of {bytes} bytes at offset {offset} does not fit the {region}-byte region")]
    DoesNotFit {
        bytes: u64,
        offset: u64,
        region: u64,
    },
}

impl RingError {
    /// The reason in a DISCONNECT (see `super::refusal`).
    pub fn wire(&self) -> String {
        match self {
            RingError::DoesNotFit { bytes, offset, .. } => {
                format!("{bytes} bytes at offset {offset} do not fit the region")
            }
            _ => self.to_string(),
        }
    }

    #[cfg(test)]
    pub(crate) fn worst_cases() -> Vec<RingError> {
        vec![
            RingError::TooLarge(u8::MAX),
            RingError::Misaligned(u64::MAX),
            RingError::DoesNotFit {
                bytes: u64::MAX,
                offset: u64::MAX,
                region: u64::MAX,
            },
        ]
    }
}

/// `preferred` if it fits the reason field, else the shorter `fallback`.
fn fitting(preferred: String, fallback: impl FnOnce() -> String) -> String {
    if preferred.len() <= MAX_WIRE_REASON {
        preferred
    } else {
        fallback()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)
    }

    /// Every refusal, with the longest values its fields can carry.
    fn worst_cases() -> Vec<Refusal> {
        let long = "x".repeat(300);
        let mut all = vec![
            Refusal::Busy {
                endpoint: long.clone(),
                pid: u32::MAX,
                client: long.clone(),
            },
            Refusal::OtherNamespace {
                endpoint: long.clone(),
                pid: u32::MAX,
            },
            Refusal::NamespaceUnreadable {
                pid: u32::MAX,
                source: io(),
            },
            Refusal::Malformed {
                len: usize::MAX,
                truncated: true,
            },
            Refusal::Undecodable(DecodeError::Length(usize::MAX)),
            Refusal::Undecodable(DecodeError::Type(u16::MAX)),
            Refusal::Descriptors(usize::MAX),
            Refusal::SocketRead(io()),
            Refusal::Unexpected {
                kind: "ADD_REGION",
                phase: "after CONNECT",
            },
            Refusal::UnwantedFd("CONNECT"),
            Refusal::Version(u16::MAX),
            Refusal::InterfaceId(u32::MAX),
            Refusal::Mode(u8::MAX),
            Refusal::WrongSecret,
            Refusal::RegionWithoutFd,
            Refusal::RegionOrder {
                index: u16::MAX,
                expected: usize::MAX,
            },
            Refusal::TooManyRegions(u16::MAX),
            Refusal::RegionsTooLarge(u64::MAX),
            Refusal::RingWithoutFd,
            Refusal::RingIndex {
                dir: Dir::C2S,
                index: u16::MAX,
            },
            Refusal::RingTwice(Dir::S2C),
            Refusal::RingSize {
                dir: Dir::C2S,
                log2: u8::MAX,
                max: u8::MAX,
            },
            Refusal::RingRegion {
                dir: Dir::S2C,
                region: u16::MAX,
            },
            Refusal::NotEventfd {
                dir: Dir::C2S,
                kind: long.clone(),
            },
            Refusal::Eventfd {
                dir: Dir::C2S,
                source: io(),
            },
            Refusal::RingsMissing,
            Refusal::Cookie {
                dir: Dir::S2C,
                cookie: u32::MAX,
            },
            Refusal::HandshakeTimeout(Duration::MAX),
            Refusal::Unserved,
            Refusal::NotAttached(long.clone()),
        ];
        all.extend(
            RegionError::worst_cases()
                .into_iter()
                .map(|source| Refusal::Region {
                    index: u16::MAX,
                    source,
                }),
        );
        all.extend(
            RingError::worst_cases()
                .into_iter()
                .map(|source| Refusal::Ring {
                    dir: Dir::C2S,
                    source,
                }),
        );
        all.extend(
            [
                Fault::None,
                Fault::BadIndex,
                Fault::BadRegion,
                Fault::OutsideRegion,
            ]
            .map(Refusal::RingFault),
        );
        all
    }

    #[test]
    fn every_refusal_fits_the_reason_field_whole() {
        let all = worst_cases();
        let mut seen = std::collections::BTreeSet::new();
        for r in &all {
            // Exhaustive: a new refusal does not compile until it is listed above.
            seen.insert(match r {
                Refusal::Busy { .. } => 0,
                Refusal::OtherNamespace { .. } => 1,
                Refusal::NamespaceUnreadable { .. } => 2,
                Refusal::Malformed { .. } => 3,
                Refusal::Undecodable(_) => 4,
                Refusal::Descriptors(_) => 5,
                Refusal::SocketRead(_) => 6,
                Refusal::Unexpected { .. } => 7,
                Refusal::UnwantedFd(_) => 8,
                Refusal::Version(_) => 9,
                Refusal::InterfaceId(_) => 10,
                Refusal::Mode(_) => 11,
                Refusal::WrongSecret => 12,
                Refusal::RegionWithoutFd => 13,
                Refusal::RegionOrder { .. } => 14,
                Refusal::TooManyRegions(_) => 15,
                Refusal::RegionsTooLarge(_) => 16,
                Refusal::Region { .. } => 17,
                Refusal::RingWithoutFd => 18,
                Refusal::RingIndex { .. } => 19,
                Refusal::RingTwice(_) => 20,
                Refusal::RingSize { .. } => 21,
                Refusal::RingRegion { .. } => 22,
                Refusal::Ring { .. } => 23,
                Refusal::NotEventfd { .. } => 24,
                Refusal::Eventfd { .. } => 25,
                Refusal::RingsMissing => 26,
                Refusal::Cookie { .. } => 27,
                Refusal::HandshakeTimeout(_) => 28,
                Refusal::RingFault(_) => 29,
                Refusal::Unserved => 30,
                Refusal::NotAttached(_) => 31,
            });
            let wire = r.wire();
            assert!(
                wire.len() <= MAX_WIRE_REASON,
                "{} bytes: {wire:?}",
                wire.len()
            );
            assert!(!wire.is_empty());
            let encoded = super::super::wire::Msg::disconnect(1, &wire);
            let super::super::wire::Msg::Disconnect { reason, .. } = encoded else {
                unreachable!()
            };
            assert_eq!(super::super::wire::field_text(&reason), wire, "sent whole");
        }
        assert_eq!(seen.len(), 32, "every refusal has a worst case");
    }

    #[test]
    fn the_log_keeps_what_the_wire_leaves_out() {
        let r = Refusal::OtherNamespace {
            endpoint: "web1".into(),
            pid: 42,
        };
        assert!(r.to_string().contains("endpoint web1's network namespace"));
        assert!(r.to_string().contains("ip netns exec"));
        assert_eq!(
            r.wire(),
            "pid 42 is not in endpoint web1's network namespace: run the client inside it"
        );
        let long = Refusal::OtherNamespace {
            endpoint: "e".repeat(64),
            pid: 42,
        };
        assert_eq!(
            long.wire(),
            "pid 42 is not in the endpoint's network namespace: run the client inside it",
            "an endpoint name too long for the field is left out"
        );
        let short = Refusal::InterfaceId(7);
        assert_eq!(short.wire(), short.to_string());
    }
}
