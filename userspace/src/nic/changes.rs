//! Everything xmacvlan changes on one NIC for one dataplane, each change made when it is
//! first needed and undone when the dataplane stops (this is dropped last, after XDP is
//! detached and the sockets are closed; also when the dataplane fails to start).
use anyhow::Result;

use super::busy_poll::NapiDeferral;
use super::filter::ReceiveFilter;
use super::vlan::{self, RxVlanOffloadOff};

pub struct NicChanges {
    ifname: String,
    ifindex: u32,
    filter: ReceiveFilter,
    /// Whether tags were made to reach XDP (checked with the first tagged endpoint).
    tags_in_frames: bool,
    /// rx VLAN offload turned off (restored on drop).
    rx_vlan_off: Option<RxVlanOffloadOff>,
    /// Interrupt deferral for busy polling (restored on drop).
    napi: Option<NapiDeferral>,
}

impl NicChanges {
    /// Nothing changed yet on `ifname` (index `ifindex`, calling thread's namespace).
    pub fn new(ifname: &str, ifindex: u32) -> Result<Self> {
        let driver = crate::sys::ethtool::Ethtool::new()
            .and_then(|e| e.driver(ifname))
            .ok();
        Ok(Self {
            ifname: ifname.to_string(),
            ifindex,
            filter: ReceiveFilter::new(ifname, ifindex, driver.as_deref())?,
            tags_in_frames: false,
            rx_vlan_off: None,
            napi: None,
        })
    }

    /// Before an endpoint with `mac` on VLAN `vid` is claimed: its frames must reach XDP, with
    /// their tag (rx VLAN offload off on a NIC that strips it) and through the NIC's unicast
    /// and VLAN filters. Undone by [`Self::release`] (the offload only when the dataplane
    /// stops). An error leaves nothing of this endpoint behind.
    pub fn admit(&mut self, mac: [u8; 6], vid: u16) -> Result<()> {
        if vid != 0 && !self.tags_in_frames {
            self.rx_vlan_off = vlan::keep_tags_in_frames(&self.ifname)?;
            self.tags_in_frames = true;
        }
        self.filter.admit(mac, vid)
    }

    /// An endpoint admitted with `mac` on `vid` left.
    pub fn release(&mut self, mac: [u8; 6], vid: u16) {
        self.filter.release(mac, vid);
    }

    /// Set the device's interrupt deferral for busy polling, until the dataplane stops.
    pub fn defer_interrupts(&mut self) -> Result<()> {
        if self.napi.is_none() {
            self.napi = Some(NapiDeferral::set(&self.ifname, self.ifindex)?);
        }
        Ok(())
    }
}
