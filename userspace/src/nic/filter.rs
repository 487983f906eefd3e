//! The NIC's receive filters, which drop frames before XDP sees them: the unicast filter
//! (frames to MACs the NIC does not own, unless it is promiscuous) and, with `rx-vlan-filter`
//! on (fixed on for igb and virtio-net), the VLAN filter (frames of VLAN ids nothing
//! registered). Kernel macvlan and VLAN devices add their MAC and id themselves; an endpoint
//! served by xmacvlan alone (`xmacvlan run`) has neither, so [`ReceiveFilter`] adds them for
//! as long as the endpoint is served:
//!
//! - a MAC through an `AF_PACKET` membership (`dev_uc_add`, a reference of its own: the
//!   kernel takes it out when the socket closes, however the process ends; one a macvlan also
//!   holds stays for it);
//! - a VLAN id by a VLAN device on the NIC (registering an id with the NIC's filter is what
//!   creating one does; nothing else in the kernel's interface does it), left down and named
//!   `xmv<parent index>v<VID>` with an alias that names the process. Only when no VLAN device
//!   of that id exists on the NIC yet, and removed when the last endpoint of that id leaves.
//!   A process killed before that leaves it behind: the next one finds it by its alias, sees
//!   its process gone and removes it.
//!
//! Promiscuous mode would also let every frame through, for everyone on the NIC, and is not
//! used.
use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::RX_VLAN_FILTER;
use crate::ether::Mac;
use crate::netlink::Netlink;
use crate::sys::membership::UnicastMemberships;

/// The alias of the VLAN devices made to register an id, followed by the process's pid.
const ALIAS_PREFIX: &str = "xmacvlan VLAN filter entry, pid ";

/// Drivers with no receive filter of their own (software devices): every frame reaches XDP,
/// and adding an address would only make the kernel put the device in promiscuous mode.
const NO_FILTER: &[&str] = &["veth", "tun", "dummy", "bridge", "netkit"];

/// The endpoints' MACs and VLAN ids admitted to one NIC's filters while they are served.
pub struct ReceiveFilter {
    ifname: String,
    ifindex: u32,
    /// None when the device has no unicast filter.
    unicast: Option<UnicastMemberships>,
    /// Some when the NIC filters VLAN ids (`rx-vlan-filter` on): netlink in its namespace.
    vlans: Option<Netlink>,
    /// Endpoints per VLAN id, and the VLAN device made for the id, if one was.
    vids: BTreeMap<u16, (usize, Option<FilterDevice>)>,
}

/// A VLAN device made only to register its id with the NIC's filter; deleted on drop.
struct FilterDevice {
    index: u32,
    name: String,
}

impl ReceiveFilter {
    /// The filters of `ifname` (index `ifindex`) in the calling thread's namespace, whose
    /// driver is `driver`. A VLAN device left by a killed xmacvlan process is removed here.
    pub fn new(ifname: &str, ifindex: u32, driver: Option<&str>) -> Result<Self> {
        let has_filters = !driver.is_some_and(|d| NO_FILTER.contains(&d));
        let unicast = has_filters
            .then(|| {
                UnicastMemberships::open()
                    .context("opening a packet socket for the NIC's unicast filter")
            })
            .transpose()?;
        let filters_vlans = has_filters
            && crate::sys::ethtool::Ethtool::new()
                .and_then(|e| e.features(ifname))
                .ok()
                .and_then(|f| f.get(RX_VLAN_FILTER))
                .is_some_and(|f| f.active);
        let vlans = filters_vlans.then(Netlink::new).transpose()?;
        let filter = Self {
            ifname: ifname.to_string(),
            ifindex,
            unicast,
            vlans,
            vids: BTreeMap::new(),
        };
        if let Some(nl) = &filter.vlans {
            filter.remove_leftovers(nl)?;
        }
        Ok(filter)
    }

    /// Let frames to `mac` on VLAN `vid` (0: untagged) through; undone by [`Self::release`].
    pub fn admit(&mut self, mac: [u8; 6], vid: u16) -> Result<()> {
        if let Some(u) = &self.unicast {
            u.add(self.ifindex, mac).with_context(|| {
                format!(
                    "adding {} to the unicast filter of {}",
                    Mac(mac),
                    self.ifname
                )
            })?;
        }
        if let Err(e) = self.admit_vid(vid) {
            if let Some(u) = &self.unicast {
                u.drop_address(self.ifindex, mac).ok();
            }
            return Err(e);
        }
        Ok(())
    }

    fn admit_vid(&mut self, vid: u16) -> Result<()> {
        let Some(nl) = &self.vlans else {
            return Ok(());
        };
        if vid == 0 {
            return Ok(());
        }
        if let Some((endpoints, _)) = self.vids.get_mut(&vid) {
            *endpoints += 1;
            return Ok(());
        }
        let registered = nl
            .links()?
            .iter()
            .any(|l| l.parent_index == Some(self.ifindex) && l.vlan_id == Some(vid));
        let device = if registered {
            None
        } else {
            let name = format!("xmv{}v{vid}", self.ifindex);
            let alias = format!("{ALIAS_PREFIX}{}", std::process::id());
            let index = nl
                .add_vlan_aliased(&name, self.ifindex, vid, &alias)
                .with_context(|| {
                    format!(
                        "registering VLAN {vid} in the VLAN filter of {} (rx-vlan-filter is on: \
                         without it the NIC drops the VLAN's frames before XDP)",
                        self.ifname
                    )
                })?;
            crate::logging::info(format_args!(
                "registered VLAN {vid} in the VLAN filter of {} with VLAN device {name} (down; \
                 removed when the VLAN's last endpoint leaves)",
                self.ifname
            ));
            Some(FilterDevice { index, name })
        };
        self.vids.insert(vid, (1, device));
        Ok(())
    }

    /// Stop letting frames to `mac` on `vid` through (one [`Self::admit`] undone).
    pub fn release(&mut self, mac: [u8; 6], vid: u16) {
        if let Some(u) = &self.unicast
            && let Err(e) = u.drop_address(self.ifindex, mac)
        {
            crate::logging::warn(format_args!(
                "removing {} from the unicast filter of {}: {e}",
                Mac(mac),
                self.ifname
            ));
        }
        if let Some((endpoints, _)) = self.vids.get_mut(&vid) {
            *endpoints -= 1;
            if *endpoints == 0
                && let Some((_, Some(device))) = self.vids.remove(&vid)
            {
                self.delete(device);
            }
        }
    }

    fn delete(&self, device: FilterDevice) {
        let Some(nl) = &self.vlans else { return };
        match nl.del_link(device.index) {
            Ok(()) => crate::logging::info(format_args!(
                "removed VLAN device {} (its VLAN's last endpoint left {})",
                device.name, self.ifname
            )),
            Err(e) => crate::logging::warn(format_args!(
                "removing VLAN device {}: {e:#}; remove it with `ip link del {}`",
                device.name, device.name
            )),
        }
    }

    /// Remove the VLAN devices on this NIC that a dead xmacvlan process made.
    fn remove_leftovers(&self, nl: &Netlink) -> Result<()> {
        for link in nl.links()? {
            if link.parent_index != Some(self.ifindex) {
                continue;
            }
            let Some(pid) = link
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            nl.del_link(link.index).with_context(|| {
                format!("removing {}, left by xmacvlan process {pid}", link.name)
            })?;
            crate::logging::info(format_args!(
                "removed VLAN device {} that xmacvlan process {pid} left on {}",
                link.name, self.ifname
            ));
        }
        Ok(())
    }
}

impl Drop for ReceiveFilter {
    fn drop(&mut self) {
        // The unicast memberships go with the socket; the VLAN devices are deleted here.
        let devices: Vec<FilterDevice> = std::mem::take(&mut self.vids)
            .into_values()
            .filter_map(|(_, d)| d)
            .collect();
        for device in devices {
            self.delete(device);
        }
    }
}
