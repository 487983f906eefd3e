//! Synchronous rtnetlink: one request, one answer, errors carrying the kernel's errno.
//!
//! A [`Netlink`] talks to the network namespace of the thread that created it (a netlink
//! socket is bound to its creator's namespace), so create it inside [`crate::netns::Netns::run`]
//! to manage another namespace.
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
    XdpAttached,
};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, LinkVeth, LinkVlan};

mod error;
pub mod features;
mod route;
pub use error::{KernelError, NetlinkError, errno_of};
pub use features::{FeatureQueryError, XdpFeatures, xdp_features};

/// What every request here returns.
pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;
pub use route::{Route, route_message};
/// Re-exported so callers need not depend on rtnetlink for the mode.
pub use rtnetlink::packet_route::link::MacVlanMode;

/// What xmacvlan reads back about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub up: bool,
    pub promiscuous: bool,
    /// IFF_LOOPBACK: `lo` (no macvlan can hang off it).
    pub loopback: bool,
    /// Index of the lower device (macvlan/vlan parent, veth peer), in its own namespace.
    pub parent_index: Option<u32>,
    pub macvlan_mode: Option<MacVlanMode>,
    pub vlan_id: Option<u16>,
    /// Id of the attached XDP program, if any.
    pub xdp_prog_id: Option<u32>,
    /// That program runs in generic (skb) mode, not in the driver.
    pub xdp_generic: bool,
    /// Receive queues allocated (IFLA_NUM_RX_QUEUES); see [`Link::active_rx_queues`].
    pub rx_queues: u32,
    /// IFLA_IFALIAS (`ip link set DEV alias TEXT`).
    pub alias: Option<String>,
}

impl Link {
    /// Receive queues in use, the ones AF_XDP can bind to (ethtool's channel count; the
    /// allocated count when the driver does not report channels). Call in the link's
    /// namespace.
    pub fn active_rx_queues(&self) -> u32 {
        crate::sys::active_rx_queues(&self.name)
            .map(|n| n.min(self.rx_queues))
            .unwrap_or(self.rx_queues)
    }
}

pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Connect to rtnetlink in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetlinkError::Connect {
                what: "starting the netlink runtime",
                source,
            })?;
        let (connection, handle) = runtime
            .block_on(async { rtnetlink::new_connection() })
            .map(|(connection, handle, _)| (connection, handle))
            .map_err(|source| NetlinkError::Connect {
                what: "opening a NETLINK_ROUTE socket",
                source,
            })?;
        runtime.spawn(connection);
        Ok(Self { runtime, handle })
    }

    fn block<T>(&self, fut: impl Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }

    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut request = std::pin::pin!(
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
        );
        match self.block(request.try_next()) {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::new(format!("reading link `{name}`"), e)),
        }
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut request = std::pin::pin!(self.handle.link().get().match_index(index).execute());
        match self.block(request.try_next()) {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::new(format!("reading link #{index}"), e)),
        }
    }

    /// The link named `name`, or an error that says it is missing.
    pub fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink {
                name: name.to_string(),
            })
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        let stream = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> = self
            .block(stream.try_collect())
            .map_err(|e| NetlinkError::new("listing links", e))?;
        Ok(messages.iter().map(Link::from_message).collect())
    }

    /// Create a veth pair with `queues` rx/tx queues on each end; returns the index of `name`.
    pub fn add_veth(&self, name: &str, peer: &str, queues: u32) -> Result<u32> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(
                rtnetlink::packet_route::link::InfoVeth::Peer(peer_msg),
            ))
            .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
            .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
            .build();
        self.add(msg, &format!("creating veth pair {name}/{peer}"))?;
        self.index_of(name)
    }

    /// Create a macvlan device on `parent` (index), with an optional MAC; returns its index.
    pub fn add_macvlan(
        &self,
        name: &str,
        parent: u32,
        mode: MacVlanMode,
        mac: Option<[u8; 6]>,
    ) -> Result<u32> {
        let mut builder = LinkMacVlan::new(name, parent, mode);
        if let Some(mac) = mac {
            builder = builder.address(mac.to_vec());
        }
        self.add(builder.build(), &format!("creating macvlan `{name}`"))?;
        self.index_of(name)
    }

    /// Create a macvlan device on `parent` (index, in this namespace) directly inside the
    /// namespace `netns` under its final name: the device never appears in this namespace,
    /// so there is nothing to clean up here if a later step fails.
    pub fn add_macvlan_in(
        &self,
        name: &str,
        parent: u32,
        mode: MacVlanMode,
        mac: Option<[u8; 6]>,
        netns: &File,
    ) -> Result<()> {
        let mut builder = LinkMacVlan::new(name, parent, mode).setns_by_fd(netns.as_raw_fd());
        if let Some(mac) = mac {
            builder = builder.address(mac.to_vec());
        }
        match self.block(self.handle.link().add(builder.build()).execute()) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Err(NetlinkError::NameTaken {
                name: name.to_string(),
            }),
            Err(e) => Err(NetlinkError::new(format!("creating macvlan `{name}`"), e)),
        }
    }

    /// Create the 802.1Q sub-interface `name` with VLAN id `vid` on `parent`; returns its index.
    pub fn add_vlan(&self, name: &str, parent: u32, vid: u16) -> Result<u32> {
        self.add_vlan_link(name, vlan_message(name, parent, vid))
    }

    /// [`Self::add_vlan`] with an alias (IFLA_IFALIAS) that says who made it and why (the
    /// kernel takes an alias only from a link that exists: it is set right after).
    pub fn add_vlan_aliased(&self, name: &str, parent: u32, vid: u16, alias: &str) -> Result<u32> {
        let index = self.add_vlan_link(name, vlan_message(name, parent, vid))?;
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        if let Err(e) = self.set(msg, &format!("setting the alias of `{name}`")) {
            self.del_link(index).ok();
            return Err(e);
        }
        Ok(index)
    }

    fn add_vlan_link(&self, name: &str, msg: LinkMessage) -> Result<u32> {
        let asked = Link::from_message(&msg);
        match self.block(self.handle.link().add(msg).execute()) {
            Ok(()) => self.index_of(name),
            Err(e) if errno_of(&e) == Some(libc::EOPNOTSUPP) => Err(NetlinkError::NoVlanSupport {
                name: name.to_string(),
            }),
            Err(e) => {
                let holder = asked
                    .parent_index
                    .zip(asked.vlan_id)
                    .filter(|_| errno_of(&e) == Some(libc::EEXIST))
                    .and_then(|(parent, vid)| self.vlan_holder(parent, vid, name));
                Err(match holder {
                    Some(holder) => NetlinkError::VlanTaken {
                        name: name.to_string(),
                        holder,
                    },
                    None => NetlinkError::new(format!("creating VLAN `{name}`"), e),
                })
            }
        }
    }

    /// The device other than `name` that has VLAN `vid` on link `parent`, described for an
    /// error message (with its alias, which may say who made it).
    fn vlan_holder(&self, parent: u32, vid: u16, name: &str) -> Option<String> {
        let other =
            self.links().ok()?.into_iter().find(|l| {
                l.parent_index == Some(parent) && l.vlan_id == Some(vid) && l.name != name
            })?;
        Some(match &other.alias {
            Some(alias) => format!(
                "`{}` already has VLAN {vid} on that parent (its alias: \"{alias}\"; if the \
                 process it names is gone, remove it with `ip link del {}`)",
                other.name, other.name
            ),
            None => format!("`{}` already has VLAN {vid} on that parent", other.name),
        })
    }

    fn add(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.block(self.handle.link().add(msg).execute())
            .map_err(|e| NetlinkError::new(what, e))
    }

    fn index_of(&self, name: &str) -> Result<u32> {
        Ok(self.require_link(name)?.index)
    }

    fn set(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.block(self.handle.link().set(msg).execute())
            .map_err(|e| NetlinkError::new(what, e))
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            &format!("setting link #{index} up"),
        )
    }

    pub fn set_down(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).down().build(),
            &format!("setting link #{index} down"),
        )
    }

    pub fn set_name(&self, index: u32, name: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .build(),
            &format!("renaming link #{index} to `{name}`"),
        )
    }

    pub fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            &format!("setting the MAC of link #{index}"),
        )
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            &format!("setting the MTU of link #{index}"),
        )
    }

    /// Move link `index` into the namespace whose file is `netns`.
    pub fn set_netns(&self, index: u32, netns: &File) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
            &format!("moving link #{index} to another namespace"),
        )
    }

    /// Delete link `index`. A link that is already gone counts as deleted.
    pub fn del_link(&self, index: u32) -> Result<()> {
        match self.block(self.handle.link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(NetlinkError::new(format!("deleting link #{index}"), e)),
        }
    }

    pub fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        self.block(self.handle.address().add(index, addr, prefix).execute())
            .map_err(|e| NetlinkError::new(format!("adding {addr}/{prefix} to link #{index}"), e))
    }

    /// Addresses (with prefix length) on link `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<_> = self
            .block(stream.try_collect())
            .map_err(|e| NetlinkError::new(format!("listing addresses of link #{index}"), e))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Underlying handle, for requests this wrapper does not cover (routes).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run a request built on [`Self::handle`].
    pub fn run<T>(&self, fut: impl Future<Output = T>) -> T {
        self.block(fut)
    }
}

/// The RTM_NEWLINK request for an 802.1Q sub-interface (kind `vlan`, IFLA_LINK = parent).
pub fn vlan_message(name: &str, parent: u32, vid: u16) -> LinkMessage {
    LinkVlan::new(name, parent, vid).build()
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: [0; 6],
            up: msg.header.flags.contains(LinkFlags::Up),
            promiscuous: msg.header.flags.contains(LinkFlags::Promisc),
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
            parent_index: None,
            macvlan_mode: None,
            vlan_id: None,
            xdp_prog_id: None,
            xdp_generic: false,
            rx_queues: 1,
            alias: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::NumRxQueues(n) => link.rx_queues = (*n).max(1),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
                LinkAttribute::Link(p) => link.parent_index = Some(*p),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::Xdp(xdp) => {
                    link.xdp_prog_id = xdp.iter().find_map(|x| match x {
                        LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                        _ => None,
                    });
                    link.xdp_generic = xdp
                        .iter()
                        .any(|x| matches!(x, LinkXdp::Attached(XdpAttached::SocketBuffer)));
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                            LinkInfo::Data(InfoData::MacVlan(data)) => {
                                link.macvlan_mode = data.iter().find_map(|d| match d {
                                    InfoMacVlan::Mode(m) => Some(*m),
                                    _ => None,
                                })
                            }
                            LinkInfo::Data(InfoData::Vlan(data)) => {
                                link.vlan_id = data.iter().find_map(|d| match d {
                                    rtnetlink::packet_route::link::InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                })
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_request_names_kind_parent_and_id() {
        let msg = vlan_message("v0.100", 4, 100);
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("v0.100".into()))
        );
        assert!(msg.attributes.contains(&LinkAttribute::Link(4)));
        let info = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .expect("IFLA_LINKINFO");
        assert!(info.contains(&LinkInfo::Kind(InfoKind::Vlan)));
        assert!(info.contains(&LinkInfo::Data(InfoData::Vlan(vec![
            rtnetlink::packet_route::link::InfoVlan::Id(100)
        ]))));
        // Read back as a link, the request describes a VLAN 100 device on #4.
        let link = Link::from_message(&msg);
        assert_eq!((link.vlan_id, link.parent_index), (Some(100), Some(4)));
        assert_eq!(link.kind.as_deref(), Some("vlan"));
    }
}
