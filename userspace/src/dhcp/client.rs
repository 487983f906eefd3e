//! The client's exchanges (RFC 2131 4.4), each a short blocking conversation run inside the
//! endpoint's network namespace, on its macvlan, with its MAC: that is the station the server
//! must see. Each opens its own raw socket ([`crate::sys::packet`]) and closes it again, so
//! nothing is held between exchanges: the link may move between namespaces (Docker moves it
//! into the sandbox after CreateEndpoint) and another process (the daemon after a restart)
//! may do the next one from the lease recorded in the state.
//!
//! Raw frames rather than a UDP socket: the first exchange happens before the link has an
//! address, the release after Docker took it away, and a raw socket binds no UDP port in the
//! host's namespace, where the host's own DHCP client may hold port 68.
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::lease::Lease;
use super::message::{Message, MessageType, prefix_of};
use super::{CLIENT_PORT, DhcpError, SERVER_PORT};
use crate::abi::Mac;
use crate::ether::Mac as MacText;
use crate::netlink::Netlink;
use crate::netns::Netns;
use crate::sys::packet::PacketSocket;

const BROADCAST_MAC: Mac = [0xff; 6];
/// First retransmission interval; it doubles up to [`MAX_RETRY`] (RFC 2131 4.1 starts at 4 s
/// and randomizes; a container waiting to start is better served by 1 s).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(4);

/// The endpoint's link, as the state records it.
#[derive(Debug, Clone)]
pub struct Link {
    /// A name under /run/netns or a path.
    pub netns: String,
    pub ifname: String,
    pub mac: Mac,
    /// Sent as the host name option (cut to 63 bytes): what the server's lease list shows.
    pub host_name: String,
    /// Where the link's frames go out: the parent and its VLAN, for messages.
    pub segment: String,
}

/// Get a lease: DHCPDISCOVER, the first DHCPOFFER, DHCPREQUEST, DHCPACK, within `timeout`.
/// `wanted`: the address to ask for (the one held before), which the server may refuse.
pub fn acquire(
    link: &Link,
    timeout: Duration,
    wanted: Option<Ipv4Addr>,
) -> Result<Lease, DhcpError> {
    on_link(link, None, |wire| {
        let deadline = Instant::now() + timeout;
        let xid = random_xid();
        let mut discover = wire.message(MessageType::Discover, xid);
        discover.broadcast = true;
        discover.options.requested_ip = wanted;
        let (offer, _) = wire
            .exchange(
                &discover,
                Path::broadcast(Ipv4Addr::UNSPECIFIED),
                deadline,
                |m| m.kind() == Some(MessageType::Offer) && !m.yiaddr.is_unspecified(),
            )?
            .ok_or_else(|| DhcpError::NoServer {
                segment: link.segment.clone(),
                mac: MacText(link.mac).to_string(),
                waited: timeout,
            })?;
        let server = offer.options.server_id.ok_or_else(|| DhcpError::BadLease {
            server: offer.siaddr,
            why: "its DHCPOFFER has no server identifier (option 54)".into(),
        })?;
        let mut request = wire.message(MessageType::Request, xid);
        request.broadcast = true;
        request.options.requested_ip = Some(offer.yiaddr);
        request.options.server_id = Some(server);
        let answer = wire.exchange(
            &request,
            Path::broadcast(Ipv4Addr::UNSPECIFIED),
            deadline,
            |m| {
                matches!(m.kind(), Some(MessageType::Ack | MessageType::Nak))
                    && m.options.server_id.is_none_or(|s| s == server)
            },
        )?;
        match answer {
            None => Err(DhcpError::NoAck {
                server,
                offered: offer.yiaddr,
                segment: link.segment.clone(),
            }),
            Some((m, _)) if m.kind() == Some(MessageType::Nak) => Err(refused(server, &m)),
            Some((ack, from)) => lease_of(&ack, from, server, 0),
        }
    })
}

/// What a renewal or rebinding came to.
#[derive(Debug)]
pub enum Extended {
    /// The server extended the lease (same address).
    Lease(Lease),
    /// No server answered in time: try again later.
    NoAnswer,
}

/// Extend `lease`: unicast to its server (RENEWING, past T1) or broadcast to any server
/// (`rebinding`, past T2). A DHCPNAK, or an ACK for another address, is an error: the
/// caller must never change the endpoint's address silently.
pub fn extend(
    link: &Link,
    lease: &Lease,
    rebinding: bool,
    wait: Duration,
) -> Result<Extended, DhcpError> {
    on_link(link, Some(lease.address), |wire| {
        let xid = random_xid();
        let mut request = wire.message(MessageType::Request, xid);
        request.ciaddr = lease.address;
        let path = if rebinding {
            Path::broadcast(lease.address)
        } else {
            Path::to_server(lease)
        };
        let answer = wire.exchange(&request, path, Instant::now() + wait, |m| {
            matches!(m.kind(), Some(MessageType::Ack | MessageType::Nak))
        })?;
        let Some((m, from)) = answer else {
            return Ok(Extended::NoAnswer);
        };
        let server = m.options.server_id.unwrap_or(lease.server);
        if m.kind() == Some(MessageType::Nak) {
            return Err(refused(server, &m));
        }
        if m.yiaddr != lease.address {
            return Err(DhcpError::AddressChanged {
                server,
                held: lease.address,
                offered: m.yiaddr,
            });
        }
        lease_of(&m, from, server, lease.renewals + 1).map(Extended::Lease)
    })
}

/// Give the address back (DHCPRELEASE, unicast to the server; no answer comes).
pub fn release(link: &Link, lease: &Lease) -> Result<(), DhcpError> {
    on_link(link, Some(lease.address), |wire| {
        let mut msg = wire.message(MessageType::Release, random_xid());
        msg.ciaddr = lease.address;
        msg.options.server_id = Some(lease.server);
        wire.send(&msg, Path::to_server(lease))
            .map_err(|e| wire.io(e))
    })
}

fn refused(server: Ipv4Addr, nak: &Message) -> DhcpError {
    DhcpError::Refused {
        server,
        message: nak
            .options
            .message
            .clone()
            .unwrap_or_else(|| "no reason given".into()),
    }
}

/// The lease an ACK grants, checked: a server identifier, a lease time, a contiguous mask.
fn lease_of(ack: &Message, from: Mac, server: Ipv4Addr, renewals: u32) -> Result<Lease, DhcpError> {
    let bad = |why: &str| DhcpError::BadLease {
        server,
        why: why.into(),
    };
    let o = &ack.options;
    let lease_s = o
        .lease_time
        .ok_or_else(|| bad("its DHCPACK has no lease time (option 51)"))?;
    let mask = o
        .subnet_mask
        .ok_or_else(|| bad("its DHCPACK has no subnet mask (option 1)"))?;
    let prefix = prefix_of(mask)
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("its subnet mask is empty or not contiguous"))?;
    if ack.yiaddr.is_unspecified() || ack.yiaddr.is_broadcast() || ack.yiaddr.is_multicast() {
        return Err(bad("it granted no usable address"));
    }
    let (t1_s, t2_s) = Lease::times(lease_s, o.renewal_t1, o.rebinding_t2);
    Ok(Lease {
        address: ack.yiaddr,
        prefix,
        routers: o.routers.clone(),
        dns: o.dns.clone(),
        domain: o.domain_name.clone().filter(|d| !d.is_empty()),
        server,
        server_mac: from,
        lease_s,
        t1_s,
        t2_s,
        granted_at: crate::sys::unix_now(),
        renewals,
    })
}

fn random_xid() -> u32 {
    u32::from_ne_bytes(crate::sys::random_bytes::<4>())
}

/// Where a message goes: the frame's destination MAC, and the IP header's addresses.
#[derive(Debug, Clone, Copy)]
struct Path {
    dst_mac: Mac,
    dst_ip: Ipv4Addr,
    src_ip: Ipv4Addr,
}

impl Path {
    /// To every server on the segment, from `src_ip` (0.0.0.0 while we have no address).
    fn broadcast(src_ip: Ipv4Addr) -> Self {
        Path {
            dst_mac: BROADCAST_MAC,
            dst_ip: Ipv4Addr::BROADCAST,
            src_ip,
        }
    }

    /// To the lease's server, through the next hop its ACK came from.
    fn to_server(lease: &Lease) -> Self {
        Path {
            dst_mac: lease.server_mac,
            dst_ip: lease.server,
            src_ip: lease.address,
        }
    }
}

/// One exchange's socket on the link.
struct Wire<'a> {
    link: &'a Link,
    socket: PacketSocket,
}

impl Wire<'_> {
    fn io(&self, e: std::io::Error) -> DhcpError {
        DhcpError::Io {
            netns: self.link.netns.clone(),
            ifname: self.link.ifname.clone(),
            source: e,
        }
    }

    fn message(&self, kind: MessageType, xid: u32) -> Message {
        let mut m = Message::request(kind, xid, self.link.mac);
        let mut id = vec![1u8];
        id.extend_from_slice(&self.link.mac);
        m.options.client_id = Some(id);
        if kind != MessageType::Release {
            let name = &self.link.host_name;
            m.options.host_name = Some(name[..name.len().min(63)].to_string());
        }
        m
    }

    fn send(&self, msg: &Message, path: Path) -> std::io::Result<()> {
        let payload = msg.encode();
        let builder = PacketBuilder::ethernet2(self.link.mac, path.dst_mac)
            .ipv4(path.src_ip.octets(), path.dst_ip.octets(), 64)
            .udp(CLIENT_PORT, SERVER_PORT);
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut frame, &payload)
            .map_err(std::io::Error::other)?;
        self.socket.send(&frame)
    }

    /// Send `msg` and wait for a reply to it that `wanted` accepts, resending with doubling
    /// intervals until `deadline`. The reply and the Ethernet source it came from.
    fn exchange(
        &self,
        msg: &Message,
        path: Path,
        deadline: Instant,
        wanted: impl Fn(&Message) -> bool,
    ) -> Result<Option<(Message, Mac)>, DhcpError> {
        let mut retry = FIRST_RETRY;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            self.send(msg, path).map_err(|e| self.io(e))?;
            let resend = (Instant::now() + retry).min(deadline);
            retry = (retry * 2).min(MAX_RETRY);
            while let Some(n) = self.socket.recv(&mut buf, resend).map_err(|e| self.io(e))? {
                let Some((reply, from)) = parse_reply(&buf[..n]) else {
                    continue;
                };
                if reply.reply
                    && reply.xid == msg.xid
                    && reply.chaddr == self.link.mac
                    && wanted(&reply)
                {
                    return Ok(Some((reply, from)));
                }
            }
        }
        Ok(None)
    }
}

/// A server's DHCP message in an Ethernet frame (UDP 67 → 68), with the frame's source MAC.
fn parse_reply(frame: &[u8]) -> Option<(Message, Mac)> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &packet.link else {
        return None;
    };
    if !matches!(packet.net, Some(NetSlice::Ipv4(_))) {
        return None;
    }
    let Some(TransportSlice::Udp(udp)) = &packet.transport else {
        return None;
    };
    if udp.source_port() != SERVER_PORT || udp.destination_port() != CLIENT_PORT {
        return None;
    }
    Some((Message::decode(udp.payload()).ok()?, eth.source()))
}

/// Run `f` with a socket on the link, inside its namespace. A link that is down (Docker's,
/// in the host namespace before it joins a sandbox) is brought up for the exchange and down
/// again after. `address`: the leased address, if the link may carry it: a UDP socket bound
/// to it on port 68 keeps the kernel from answering the server's unicast replies with ICMP
/// port-unreachable while the raw socket reads them.
fn on_link<T: Send>(
    link: &Link,
    address: Option<Ipv4Addr>,
    f: impl FnOnce(&Wire) -> Result<T, DhcpError> + Send,
) -> Result<T, DhcpError> {
    let ns = Netns::open(&link.netns).map_err(|e| DhcpError::Namespace {
        netns: link.netns.clone(),
        source: e.into(),
    })?;
    let result = ns.run(|| {
        let nl = Netlink::new()?;
        let Some(dev) = nl.link_by_name(&link.ifname)? else {
            return Ok(Err(DhcpError::NoLink {
                netns: link.netns.clone(),
                ifname: link.ifname.clone(),
            }));
        };
        if !dev.up {
            nl.set_up(dev.index)?;
        }
        let _quiet = address.and_then(|a| UdpSocket::bind((a, CLIENT_PORT)).ok());
        let outcome = match PacketSocket::open_udp_port(dev.index, CLIENT_PORT) {
            Ok(socket) => f(&Wire { link, socket }),
            Err(e) => Err(DhcpError::Io {
                netns: link.netns.clone(),
                ifname: link.ifname.clone(),
                source: e,
            }),
        };
        if !dev.up {
            nl.set_down(dev.index).ok();
        }
        Ok(outcome)
    });
    match result {
        Ok(outcome) => outcome,
        Err(e) => Err(DhcpError::Namespace {
            netns: link.netns.clone(),
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_servers_udp_reply_is_read() {
        let mac = [2, 0x42, 0, 0, 0, 9];
        let mut ack = Message::request(MessageType::Ack, 5, mac);
        ack.reply = true;
        let frame = |src_port: u16, dst_port: u16| {
            let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], mac)
                .ipv4([198, 18, 0, 1], [198, 18, 0, 9], 64)
                .udp(src_port, dst_port);
            let mut out = Vec::new();
            b.write(&mut out, &ack.encode()).unwrap();
            out
        };
        let (m, from) = parse_reply(&frame(67, 68)).unwrap();
        assert_eq!((m.xid, from), (5, [2, 0, 0, 0, 0, 1]));
        assert!(parse_reply(&frame(68, 67)).is_none());
        assert!(parse_reply(&frame(67, 69)).is_none());
        assert!(parse_reply(&frame(67, 68)[..30]).is_none());
    }

    #[test]
    fn an_ack_without_what_a_lease_needs_is_refused() {
        let mut ack = Message::request(MessageType::Ack, 1, [2, 0, 0, 0, 0, 2]);
        ack.yiaddr = Ipv4Addr::new(198, 18, 0, 7);
        let server = Ipv4Addr::new(198, 18, 0, 1);
        let e = lease_of(&ack, [2; 6], server, 0).unwrap_err();
        assert!(e.to_string().contains("no lease time"), "{e}");
        ack.options.lease_time = Some(30);
        ack.options.subnet_mask = Some(Ipv4Addr::new(255, 0, 255, 0));
        let e = lease_of(&ack, [2; 6], server, 0).unwrap_err();
        assert!(e.to_string().contains("not contiguous"), "{e}");
        ack.options.subnet_mask = Some(Ipv4Addr::UNSPECIFIED);
        assert!(lease_of(&ack, [2; 6], server, 0).is_err(), "a /0 lease");
        ack.options.subnet_mask = Some(Ipv4Addr::new(255, 255, 255, 0));
        ack.options.routers = vec![server];
        let l = lease_of(&ack, [2; 6], server, 3).unwrap();
        assert_eq!((l.prefix, l.t1_s, l.t2_s, l.renewals), (24, 15, 26, 3));
        assert_eq!(l.cidr().to_string(), "198.18.0.7/24");
    }
}
