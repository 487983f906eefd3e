//! 802.1Q tags and the NIC. The classifier keys a frame by the tag in the frame; a NIC with rx
//! VLAN offload on (the default of igb, ixgbe, i40e, ice, mlx5, ...) strips the tag before XDP
//! runs, and tagged endpoints then match nothing.
//!
//! Two ways out: read the stripped tag in XDP (`bpf_xdp_metadata_rx_vlan_tag()`, Linux 6.8+,
//! drivers that implement it: ice, mlx5, veth), or have the NIC leave the tag in the frame.
//! xmacvlan does the second: rx VLAN offload is turned off while tagged endpoints are served
//! and turned back on when the dataplane stops. The kfunc needs a device-bound program, which
//! aya 0.14 cannot load (it would take a second loader for the classifier, whose maps, pins
//! and attachment the rest of the crate holds through aya); igb, the real NIC the tests run
//! on, does not implement it, so that branch would go untested on hardware; and user demux and
//! the ports read the tag from the frame, so a stripped tag would have to travel to userspace
//! as metadata. Offload off costs the kernel a software untag of the frames it keeps; the
//! fast path's frames pay nothing. docs/nic.md has the whole reasoning.
use std::fmt;
use std::io;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::RX_VLAN_OFFLOAD;
use crate::sys::ethtool::{Ethtool, Feature};

/// Where a tagged frame's 802.1Q tag is when XDP sees it, and what xmacvlan does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanTags {
    /// In the frame: nothing to do.
    InFrame,
    /// Stripped by the NIC (rx VLAN offload on): turned off while tagged endpoints are
    /// served, back on when the dataplane stops.
    TurnOffOffload,
    /// Stripped, and the driver does not let that be turned off: tagged endpoints cannot be
    /// served on the fast path of this NIC.
    Stripped,
}

/// Which [`VlanTags`] case applies to an interface, and why (for `doctor` and the logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VlanStrategy {
    pub tags: VlanTags,
    pub why: String,
}

impl fmt::Display for VlanStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

/// The strategy for interface `ifname` of the calling thread's namespace, from its driver
/// and its rx VLAN offload as the kernel reports them now.
pub fn vlan_strategy(ifname: &str) -> io::Result<VlanStrategy> {
    let ethtool = Ethtool::new()?;
    let driver = ethtool.driver(ifname).ok();
    let offload = ethtool.features(ifname)?.get(RX_VLAN_OFFLOAD);
    Ok(decide(ifname, driver.as_deref(), offload))
}

/// [`vlan_strategy`] from the facts: the driver's name and the offload feature (None: the
/// kernel has no such feature for the device).
pub fn decide(ifname: &str, driver: Option<&str>, offload: Option<Feature>) -> VlanStrategy {
    let named = match driver {
        Some(d) => format!("{ifname} ({d})"),
        None => ifname.to_string(),
    };
    let (tags, why) = match offload {
        _ if !super::offload_can_strip_tags(driver) => (
            VlanTags::InFrame,
            format!(
                "{named} has no hardware: a tag in the frame reaches XDP whatever \
                 rx-vlan-offload says (a veth peer sending with tx-vlan-offload on hands the tag \
                 over beside the frame, where XDP does not see it: turn that off on the sender)"
            ),
        ),
        None => (
            VlanTags::InFrame,
            format!("{named} cannot strip VLAN tags: they reach XDP in the frame"),
        ),
        Some(f) if !f.active => (
            VlanTags::InFrame,
            format!("{named} leaves VLAN tags in the frame (rx-vlan-offload off)"),
        ),
        Some(f) if f.changeable => (
            VlanTags::TurnOffOffload,
            format!(
                "{named} strips VLAN tags before XDP (rx-vlan-offload on): xmacvlan turns that \
                 off while it serves tagged endpoints and back on when it stops (the XDP \
                 VLAN-tag kfunc is not used: docs/nic.md says why)"
            ),
        ),
        Some(_) => (
            VlanTags::Stripped,
            format!(
                "{named} strips VLAN tags before XDP and its driver does not let that be turned \
                 off (rx-vlan-offload on [fixed]): tagged endpoints cannot be served on its fast \
                 path; use untagged parents on it, or another NIC"
            ),
        ),
    };
    VlanStrategy { tags, why }
}

/// rx VLAN offload turned off on a device, turned back on when dropped (at a dataplane's
/// stop, also on error), through the namespace it was turned off in.
#[derive(Debug)]
pub struct RxVlanOffloadOff {
    ethtool: Ethtool,
    ifname: String,
}

impl RxVlanOffloadOff {
    /// Turn it off on `ifname` (calling thread's namespace).
    pub fn turn_off(ifname: &str) -> Result<Self> {
        let ethtool = Ethtool::new().context("opening a socket for the ethtool ioctl")?;
        ethtool
            .set_feature(ifname, RX_VLAN_OFFLOAD, false)
            .with_context(|| {
                format!(
                    "turning rx VLAN offload off on {ifname} (`ethtool -K {ifname} rxvlan off`)"
                )
            })?;
        Ok(Self {
            ethtool,
            ifname: ifname.to_string(),
        })
    }
}

impl Drop for RxVlanOffloadOff {
    fn drop(&mut self) {
        let name = &self.ifname;
        match self.ethtool.set_feature(name, RX_VLAN_OFFLOAD, true) {
            Ok(()) => crate::logging::info(format_args!("rx VLAN offload on {name} restored (on)")),
            Err(e) => crate::logging::warn(format_args!(
                "could not turn rx VLAN offload back on on {name}: {e}; run `ethtool -K {name} \
                 rxvlan on`"
            )),
        }
    }
}

/// Make sure tags reach XDP on `ifname` for a tagged endpoint: None when they already do,
/// the guard that restores the offload when xmacvlan turned it off, an error when the NIC
/// strips them for good.
pub fn keep_tags_in_frames(ifname: &str) -> Result<Option<RxVlanOffloadOff>> {
    let strategy =
        vlan_strategy(ifname).with_context(|| format!("reading the VLAN offload of {ifname}"))?;
    match strategy.tags {
        VlanTags::InFrame => Ok(None),
        VlanTags::Stripped => bail!("{strategy}"),
        VlanTags::TurnOffOffload => {
            let guard = RxVlanOffloadOff::turn_off(ifname)?;
            crate::logging::info(format_args!(
                "turned rx VLAN offload off on {ifname} so tagged endpoints' frames reach XDP \
                 with their tag; it is turned back on when the dataplane stops"
            ));
            Ok(Some(guard))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Feature = Feature {
        active: true,
        changeable: true,
    };

    #[test]
    fn each_nic_gets_its_case() {
        let igb = decide("eth1", Some("igb"), Some(ON));
        assert_eq!(igb.tags, VlanTags::TurnOffOffload);
        assert!(igb.why.starts_with("eth1 (igb) strips VLAN tags"), "{igb}");
        let off = decide(
            "eth1",
            Some("igb"),
            Some(Feature {
                active: false,
                changeable: true,
            }),
        );
        assert_eq!(off.tags, VlanTags::InFrame);
        let fixed = decide(
            "eth2",
            Some("odd"),
            Some(Feature {
                active: true,
                changeable: false,
            }),
        );
        assert_eq!(fixed.tags, VlanTags::Stripped);
        assert!(fixed.why.contains("[fixed]"), "{fixed}");
        // veth's flag is on and changeable, but it has no hardware to strip anything.
        let veth = decide("v0", Some("veth"), Some(ON));
        assert_eq!(veth.tags, VlanTags::InFrame);
        assert!(veth.why.contains("tx-vlan-offload"), "{veth}");
        assert_eq!(decide("d0", None, None).tags, VlanTags::InFrame);
    }
}
