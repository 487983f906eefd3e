//! A DHCP lease as recorded in an endpoint's state: what the server granted, when, and the
//! RFC 2131 times that follow (T1: renew with the server, T2: rebind with any server,
//! expiry: the address is no longer ours). Wall-clock seconds, so a daemon started later
//! picks up the schedule where the last one left it.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::abi::Mac;

/// A lease time of all ones: the address is granted for ever (RFC 2131 3.3).
pub const INFINITE: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// Routers, first preferred (option 3).
    #[serde(default)]
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The server's identifier (option 54): where renewals and the release go.
    pub server: Ipv4Addr,
    /// The Ethernet source of the server's ACK: the next hop towards it (a relay's router).
    #[serde(with = "crate::ether::mac_text")]
    pub server_mac: Mac,
    pub lease_s: u32,
    pub t1_s: u32,
    pub t2_s: u32,
    /// Unix seconds at which the server granted (or last extended) it.
    pub granted_at: u64,
    /// How many times it was extended since it was first granted.
    #[serde(default)]
    pub renewals: u32,
}

/// Where a lease stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Bound,
    /// Past T1: ask the granting server.
    Renewing,
    /// Past T2: ask any server (broadcast).
    Rebinding,
    /// Past the lease time: the address is no longer ours.
    Expired,
}

impl Lease {
    /// T1 and T2 as the server gave them, else RFC 2131's defaults (0.5 and 0.875 of the
    /// lease), clamped into order: T1 ≤ T2 ≤ lease.
    pub fn times(lease_s: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
        if lease_s == INFINITE {
            return (INFINITE, INFINITE);
        }
        let t2 = t2
            .unwrap_or((u64::from(lease_s) * 7 / 8) as u32)
            .min(lease_s);
        let t1 = t1.unwrap_or(lease_s / 2).min(t2);
        (t1, t2)
    }

    fn at(&self, offset: u32) -> u64 {
        if offset == INFINITE {
            u64::MAX
        } else {
            self.granted_at.saturating_add(u64::from(offset))
        }
    }

    pub fn renew_at(&self) -> u64 {
        self.at(self.t1_s)
    }

    pub fn rebind_at(&self) -> u64 {
        self.at(self.t2_s)
    }

    pub fn expires_at(&self) -> u64 {
        self.at(self.lease_s)
    }

    pub fn phase(&self, now: u64) -> Phase {
        if now >= self.expires_at() {
            Phase::Expired
        } else if now >= self.rebind_at() {
            Phase::Rebinding
        } else if now >= self.renew_at() {
            Phase::Renewing
        } else {
            Phase::Bound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(lease_s: u32, t1: u32, t2: u32) -> Lease {
        Lease {
            address: Ipv4Addr::new(198, 18, 0, 5),
            prefix: 24,
            routers: vec![],
            dns: vec![],
            domain: None,
            server: Ipv4Addr::new(198, 18, 0, 1),
            server_mac: [2, 0, 0, 0, 0, 1],
            lease_s,
            t1_s: t1,
            t2_s: t2,
            granted_at: 1000,
            renewals: 0,
        }
    }

    #[test]
    fn default_and_clamped_times() {
        assert_eq!(Lease::times(30, None, None), (15, 26));
        assert_eq!(Lease::times(30, Some(40), Some(50)), (30, 30));
        assert_eq!(Lease::times(30, Some(20), Some(10)), (10, 10));
        assert_eq!(Lease::times(INFINITE, Some(5), None), (INFINITE, INFINITE));
    }

    #[test]
    fn phases_follow_the_clock() {
        let l = lease(30, 15, 26);
        assert_eq!(l.phase(1000), Phase::Bound);
        assert_eq!(l.phase(1015), Phase::Renewing);
        assert_eq!(l.phase(1026), Phase::Rebinding);
        assert_eq!(l.phase(1030), Phase::Expired);
        let forever = lease(INFINITE, INFINITE, INFINITE);
        assert_eq!(forever.phase(u64::MAX - 1), Phase::Bound);
    }
}
