//! Routes in the main table: add one, and read them back (what `ip route` / `ip -6 route` show).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

use super::{Netlink, NetlinkError, Result, errno_of};

/// A route as xmacvlan reads it back. A default route has destination `0.0.0.0/0` or `::/0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

impl Route {
    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_default() {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.destination, self.prefix)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        Ok(())
    }
}

/// The RTM_NEWROUTE message for `destination/prefix` [via `gateway`] out of link `oif`, in the
/// main table; without a gateway the route is on-link (scope link, as `ip route add … dev`).
pub fn route_message(
    destination: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    oif: u32,
) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match destination {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if gateway.is_none() && destination.is_ipv4() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    if prefix > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(destination.into()));
    }
    if let Some(gw) = gateway {
        msg.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg
}

impl Netlink {
    /// Add a route (see [`route_message`]).
    pub fn add_route(
        &self,
        destination: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> Result<()> {
        let msg = route_message(destination, prefix, gateway, oif);
        let shown = Route {
            destination,
            prefix,
            gateway,
            oif: Some(oif),
        };
        self.run(self.handle().route().add(msg).execute())
            .map_err(|e| {
                let hint = match errno_of(&e) {
                    Some(libc::EEXIST) => " (an equal route already exists: remove it first)",
                    Some(libc::ENETUNREACH) => {
                        " (the gateway is not on a subnet of the interface: give it an address in the gateway's subnet first)"
                    }
                    _ => "",
                };
                NetlinkError::new(format!("adding route `{shown}` on link #{oif}{hint}"), e)
            })
    }

    /// Routes of the main table of one family (IPv4 when `v6` is false).
    pub fn routes(&self, v6: bool) -> Result<Vec<Route>> {
        let mut query = RouteMessage::default();
        query.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let stream = self.handle().route().get(query).execute();
        let messages: Vec<RouteMessage> = self
            .run(stream.try_collect())
            .map_err(|e| NetlinkError::new("listing routes", e))?;
        Ok(messages.iter().filter_map(|m| parse(m, v6)).collect())
    }

    /// Main-table routes (both families) that leave through link `index`.
    pub fn routes_of(&self, index: u32) -> Result<Vec<Route>> {
        let mut all = self.routes(false)?;
        all.extend(self.routes(true)?);
        all.retain(|r| r.oif == Some(index));
        Ok(all)
    }
}

fn parse(msg: &RouteMessage, v6: bool) -> Option<Route> {
    let mut table = u32::from(msg.header.table);
    let mut route = Route {
        destination: if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        },
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => route.destination = ip_of(a)?,
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN) && msg.header.kind == RouteType::Unicast)
        .then_some(route)
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_via_gateway() {
        let gw: IpAddr = "198.18.0.1".parse().unwrap();
        let msg = route_message("0.0.0.0".parse().unwrap(), 0, Some(gw), 7);
        assert_eq!(msg.header.address_family, AddressFamily::Inet);
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert_eq!(msg.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Gateway(gw.into())));
        assert!(msg.attributes.contains(&RouteAttribute::Oif(7)));
        assert_eq!(
            parse(&msg, false).unwrap().to_string(),
            "default via 198.18.0.1"
        );
    }

    #[test]
    fn on_link_route() {
        let dst: IpAddr = "198.18.0.128".parse().unwrap();
        let msg = route_message(dst, 25, None, 3);
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Destination(dst.into()))
        );
        let v6 = route_message("2001:db8::".parse().unwrap(), 64, None, 3);
        assert_eq!(v6.header.address_family, AddressFamily::Inet6);
        assert_eq!(parse(&v6, true).unwrap().to_string(), "2001:db8::/64");
    }
}
