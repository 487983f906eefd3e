//! Facts about a real NIC that decide whether the fast path can see its frames: receive
//! queue count, VLAN tag stripping (rx VLAN offload), and a foreign XDP program.
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Whether the NIC strips 802.1Q tags before XDP sees the frame (`rx-vlan-offload: on`).
/// None when ethtool is missing or does not know the feature.
pub fn rx_vlan_offload(ifname: &str) -> Option<bool> {
    let out = Command::new("ethtool")
        .arg("-k")
        .arg(ifname)
        .output()
        .ok()?;
    parse_rx_vlan_offload(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_rx_vlan_offload(ethtool_k: &str) -> Option<bool> {
    ethtool_k.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("rx-vlan-offload:")?;
        Some(rest.trim_start().starts_with("on"))
    })
}

/// Turn rx VLAN offload off so tags reach XDP (`ethtool -K IF rxvlan off`).
pub fn disable_rx_vlan_offload(ifname: &str) -> Result<()> {
    set_rx_vlan_offload(ifname, false)
}

/// `ethtool -K IF rxvlan on|off`.
pub fn set_rx_vlan_offload(ifname: &str, on: bool) -> Result<()> {
    let value = if on { "on" } else { "off" };
    let status = Command::new("ethtool")
        .args(["-K", ifname, "rxvlan", value])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running ethtool (install it: apt-get install -y ethtool)")?;
    if !status.success() {
        bail!(
            "`ethtool -K {ifname} rxvlan {value}` failed ({status}); the driver may not allow it"
        );
    }
    Ok(())
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
