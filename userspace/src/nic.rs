//! The NIC under a dataplane: the facts that decide whether the fast path sees its frames
//! (receive queues, 802.1Q tag stripping, the NIC's receive filters, a foreign XDP program),
//! and what xmacvlan changes on it while a dataplane runs, each change undone when the
//! dataplane stops ([`NicChanges`]):
//!
//! - [`vlan`]: tagged endpoints need the tag in the frame; a NIC that strips it (rx VLAN
//!   offload) has that turned off while they are served, and back on after.
//! - [`filter`]: a NIC drops frames for MACs it does not own and for VLAN ids nothing
//!   registered before XDP sees them; the endpoints' MACs and VLAN ids are added.
//! - [`busy_poll`]: the receive threads poll the NIC's queues themselves (when asked), with
//!   the device's interrupt deferral set for that time.
use anyhow::Result;

pub mod busy_poll;
mod changes;
pub mod filter;
pub mod vlan;

pub use busy_poll::BusyPoll;
pub use changes::NicChanges;
pub use vlan::{VlanStrategy, VlanTags, vlan_strategy};

/// The kernel's name of rx VLAN offload (`ethtool -k` shows it as `rx-vlan-offload`,
/// `ethtool -K` takes `rxvlan`): the NIC strips the 802.1Q tag before XDP sees the frame.
pub const RX_VLAN_OFFLOAD: &str = "rx-vlan-hw-parse";
/// The NIC drops frames of VLAN ids no VLAN device registered.
pub const RX_VLAN_FILTER: &str = "rx-vlan-filter";

/// Whether the NIC strips 802.1Q tags before XDP sees the frame (`rx-vlan-offload: on`), in
/// the calling thread's namespace. None when the device cannot be asked or has no such
/// feature.
pub fn rx_vlan_offload(ifname: &str) -> Option<bool> {
    let features = crate::sys::ethtool::Ethtool::new()
        .ok()?
        .features(ifname)
        .ok()?;
    Some(features.get(RX_VLAN_OFFLOAD)?.active)
}

/// `rx-vlan-offload` in `ethtool -k` text.
pub fn parse_rx_vlan_offload(ethtool_k: &str) -> Option<bool> {
    ethtool_k.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("rx-vlan-offload:")?;
        Some(rest.trim_start().starts_with("on"))
    })
}

/// Whether rx VLAN offload on a link of this kind (netlink's IFLA_INFO_KIND) or driver can
/// take tags out of frames before XDP. veth has no hardware: a tag inside the frame reaches
/// XDP whatever the flag says (tests/integration/fastpath.rs and tests/integration/cli_run.rs
/// deliver tagged frames through veth with the default offloads on).
pub fn offload_can_strip_tags(kind_or_driver: Option<&str>) -> bool {
    kind_or_driver != Some("veth")
}

/// Detach whatever XDP program is attached to link `index` (netlink IFLA_XDP with fd -1).
pub fn detach_xdp(nl: &crate::netlink::Netlink, index: u32) -> Result<()> {
    use rtnetlink::LinkUnspec;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp};
    let msg = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::Xdp(vec![LinkXdp::Fd(-1)]))
        .build();
    nl.run(nl.handle().link().set(msg).execute()).map_err(|e| {
        crate::netlink::NetlinkError::new(format!("detaching XDP from link #{index}"), e).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ethtool_feature_lines() {
        let text =
            "Features for eth1:\nrx-checksumming: on\nrx-vlan-offload: on\ntx-vlan-offload: on\n";
        assert_eq!(parse_rx_vlan_offload(text), Some(true));
        let fixed = "rx-vlan-offload: off [fixed]\n";
        assert_eq!(parse_rx_vlan_offload(fixed), Some(false));
        assert_eq!(parse_rx_vlan_offload("rx-checksumming: on\n"), None);
    }
}
