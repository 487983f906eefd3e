//! The server's half of the memif handshake, message by message: HELLO (sent at accept),
//! then INIT, ADD_REGION…, ADD_RING…, CONNECT from the client, each answered with ACK, the
//! last with CONNECTED. Anything out of order, malformed or beyond the limits ends the
//! handshake with a reason (sent to the client as DISCONNECT and logged by the caller).
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::port::{PortShared, ServerPort};
use super::refusal::{Dir, Refusal};
use super::shm::{Region, Ring};
use super::sock;
use super::wire::{self, ADD_RING_FLAG_C2S, Hello, Msg, NAME_SIZE, SECRET_SIZE, VERSION};

/// What a client may ask for. The HELLO announces them; a request beyond them is refused.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_regions: u16,
    pub max_region_size: u64,
    pub max_total_size: u64,
    pub max_log2_ring_size: u8,
}

impl Default for Limits {
    fn default() -> Self {
        // 2^14 descriptors of 2 KiB buffers each way fit in 64 MiB; DPDK's and libmemif's
        // defaults (1024 descriptors, one or two regions) are far below.
        Limits {
            max_regions: 4,
            max_region_size: 256 << 20,
            max_total_size: 512 << 20,
            max_log2_ring_size: 14,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The endpoint's name: sent in HELLO and CONNECTED.
    pub name: String,
    /// If set, INIT must carry this secret.
    pub secret: Option<[u8; SECRET_SIZE]>,
    pub limits: Limits,
}

impl ServerConfig {
    pub fn hello(&self) -> Msg {
        Msg::Hello(Hello {
            name: wire::name_field(&self.name),
            min_version: VERSION,
            max_version: VERSION,
            max_region: self.limits.max_regions - 1,
            // One queue pair per port: ring index 0 each way.
            max_c2s_ring: 0,
            max_s2c_ring: 0,
            max_log2_ring_size: self.limits.max_log2_ring_size,
        })
    }
}

struct RingRequest {
    ring: Ring,
    eventfd: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitInit,
    Setup,
    Connected,
}

/// What the caller does after a message.
pub enum Step {
    /// Send this answer and go on.
    Reply(Msg),
    /// Send CONNECTED (the message) and hand the port to the dataplane.
    Connected {
        reply: Msg,
        port: ServerPort,
        shared: Arc<PortShared>,
        client: String,
    },
    /// The client said DISCONNECT, with this reason.
    ClientLeft(String),
}

pub struct Handshake {
    cfg: ServerConfig,
    phase: Phase,
    client: String,
    regions: Vec<Arc<Region>>,
    total: u64,
    c2s: Option<RingRequest>,
    s2c: Option<RingRequest>,
}

fn no_fd(fd: &Option<OwnedFd>, what: &'static str) -> Result<(), Refusal> {
    match fd {
        Some(_) => Err(Refusal::UnwantedFd(what)),
        None => Ok(()),
    }
}

impl Handshake {
    pub fn new(cfg: ServerConfig) -> Handshake {
        Handshake {
            cfg,
            phase: Phase::AwaitInit,
            client: String::new(),
            regions: Vec::new(),
            total: 0,
            c2s: None,
            s2c: None,
        }
    }

    /// The name the client gave in INIT (empty before).
    pub fn client(&self) -> &str {
        &self.client
    }

    pub fn on_message(&mut self, msg: Msg, fd: Option<OwnedFd>) -> Result<Step, Refusal> {
        let kind = msg.kind();
        match (self.phase, msg) {
            (_, Msg::Disconnect { code, reason }) => Ok(Step::ClientLeft(format!(
                "code {code}: {}",
                wire::field_text(&reason)
            ))),
            (Phase::AwaitInit, Msg::Init(init)) => {
                no_fd(&fd, "INIT")?;
                if init.version != VERSION {
                    return Err(Refusal::Version(init.version));
                }
                if init.id != 0 {
                    return Err(Refusal::InterfaceId(init.id));
                }
                if init.mode != wire::MODE_ETHERNET {
                    return Err(Refusal::Mode(init.mode));
                }
                if let Some(secret) = &self.cfg.secret
                    && *secret != init.secret
                {
                    return Err(Refusal::WrongSecret);
                }
                self.client = wire::field_text(&init.name);
                self.phase = Phase::Setup;
                Ok(Step::Reply(Msg::Ack))
            }
            (Phase::Setup, Msg::AddRegion(r)) => {
                let fd = fd.ok_or(Refusal::RegionWithoutFd)?;
                let limits = self.cfg.limits;
                if r.index as usize != self.regions.len() {
                    return Err(Refusal::RegionOrder {
                        index: r.index,
                        expected: self.regions.len(),
                    });
                }
                if r.index >= limits.max_regions {
                    return Err(Refusal::TooManyRegions(limits.max_regions));
                }
                if self.total.saturating_add(r.size) > limits.max_total_size {
                    return Err(Refusal::RegionsTooLarge(limits.max_total_size));
                }
                let region =
                    Region::from_client(fd, r.size, limits.max_region_size).map_err(|source| {
                        Refusal::Region {
                            index: r.index,
                            source,
                        }
                    })?;
                self.total += r.size;
                self.regions.push(Arc::new(region));
                Ok(Step::Reply(Msg::Ack))
            }
            (Phase::Setup, Msg::AddRing(r)) => {
                let eventfd = fd.ok_or(Refusal::RingWithoutFd)?;
                let c2s = r.flags & ADD_RING_FLAG_C2S != 0;
                let dir = if c2s { Dir::C2S } else { Dir::S2C };
                if r.index != 0 {
                    return Err(Refusal::RingIndex {
                        dir,
                        index: r.index,
                    });
                }
                let slot = if c2s { &mut self.c2s } else { &mut self.s2c };
                if slot.is_some() {
                    return Err(Refusal::RingTwice(dir));
                }
                let max = self.cfg.limits.max_log2_ring_size;
                if r.log2_ring_size == 0 || r.log2_ring_size > max {
                    return Err(Refusal::RingSize {
                        dir,
                        log2: r.log2_ring_size,
                        max,
                    });
                }
                let region = self
                    .regions
                    .get(r.region as usize)
                    .ok_or(Refusal::RingRegion {
                        dir,
                        region: r.region,
                    })?;
                let ring = Ring::new(region.clone(), r.offset as u64, r.log2_ring_size)
                    .map_err(|source| Refusal::Ring { dir, source })?;
                let kind = sock::fd_kind(eventfd.as_fd());
                if kind != "anon_inode:[eventfd]" {
                    return Err(Refusal::NotEventfd { dir, kind });
                }
                sock::set_nonblocking(eventfd.as_fd())
                    .map_err(|source| Refusal::Eventfd { dir, source })?;
                *slot = Some(RingRequest { ring, eventfd });
                Ok(Step::Reply(Msg::Ack))
            }
            (Phase::Setup, Msg::Connect { .. }) => {
                no_fd(&fd, "CONNECT")?;
                let (Some(c2s), Some(s2c)) = (self.c2s.take(), self.s2c.take()) else {
                    return Err(Refusal::RingsMissing);
                };
                for (dir, r) in [(Dir::C2S, &c2s.ring), (Dir::S2C, &s2c.ring)] {
                    if r.cookie() != wire::COOKIE {
                        return Err(Refusal::Cookie {
                            dir,
                            cookie: r.cookie(),
                        });
                    }
                }
                let shared = PortShared::new();
                let port = ServerPort::new(
                    (s2c.ring, s2c.eventfd),
                    (c2s.ring, c2s.eventfd),
                    std::mem::take(&mut self.regions),
                    shared.clone(),
                );
                self.phase = Phase::Connected;
                let if_name: [u8; NAME_SIZE] = wire::name_field(&self.cfg.name);
                Ok(Step::Connected {
                    reply: Msg::Connected { if_name },
                    port,
                    shared,
                    client: self.client.clone(),
                })
            }
            (phase, _) => Err(Refusal::Unexpected {
                kind,
                phase: match phase {
                    Phase::AwaitInit => "before INIT",
                    Phase::Setup => "during setup",
                    Phase::Connected => "after CONNECT",
                },
            }),
        }
    }
}
