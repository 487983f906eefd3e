//! The ethtool ioctl (`SIOCETHTOOL`): a device's channels (`ethtool -l`) and its features
//! (`ethtool -k` / `-K`), asked of the kernel directly, with no `ethtool` binary (whose start
//! alone takes seconds in the test VMs). Features are named as the kernel names them
//! (`rx-vlan-hw-parse`, which `ethtool -k` shows as `rx-vlan-offload`; `rx-vlan-filter`),
//! because their bit positions differ between kernel versions.
use std::io;
use std::os::fd::AsRawFd;

use super::check;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// `struct ethtool_channels` of linux/ethtool.h.
#[repr(C)]
#[derive(Default)]
struct Channels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    counts: [u32; 5],
}

/// `struct ethtool_sset_info` asking for one string set (its `data[]` holds one count).
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    count: u32,
}

/// What is read of a `struct ethtool_get_features_block` (available, requested, active,
/// never_changed).
#[derive(Debug, Clone, Copy, Default)]
struct GetBlock {
    available: u32,
    active: u32,
}

/// One feature of a device, as `ethtool -k` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// In effect now.
    pub active: bool,
    /// The driver lets it be switched (`ethtool -k` shows the others as `[fixed]`).
    pub changeable: bool,
}

/// Every feature of a device at one moment.
#[derive(Debug, Clone)]
pub struct Features {
    names: Vec<String>,
    blocks: Vec<GetBlock>,
}

impl Features {
    /// The feature the kernel calls `name`, or None if this kernel has no such feature.
    pub fn get(&self, name: &str) -> Option<Feature> {
        let bit = self.names.iter().position(|n| n == name)?;
        let block = self.blocks.get(bit / 32)?;
        let mask = 1u32 << (bit % 32);
        Some(Feature {
            active: block.active & mask != 0,
            changeable: block.available & mask != 0,
        })
    }
}

/// The ethtool ioctl in one network namespace: the one of the thread that made it (the
/// ioctl names devices, and names are per namespace), whichever thread uses it later.
#[derive(Debug)]
pub struct Ethtool {
    /// Any socket takes the ioctl; this one needs no address.
    socket: std::net::UdpSocket,
}

impl Ethtool {
    /// For devices of the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")
            .or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
        Ok(Self { socket })
    }

    /// `SIOCETHTOOL` on interface `name` with `data` as the command block; the ioctl's
    /// non-negative return value.
    ///
    /// # Safety
    /// `data` must point at a live, writable block of the layout the command in its first
    /// `u32` reads and writes, for the duration of the call.
    unsafe fn ioctl(&self, name: &str, data: *mut libc::c_void) -> io::Result<i32> {
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.is_empty() || name.len() >= ifr.ifr_name.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a valid interface name"),
            ));
        }
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = data.cast();
        // SAFETY: `ifr` names the interface and points at `data`, as the caller guarantees.
        let ret = unsafe { libc::ioctl(self.socket.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
        check(ret)?;
        Ok(ret)
    }

    /// Receive queues interface `name` uses now (rx-only plus combined channels, as
    /// `ethtool -l` shows them).
    pub fn active_rx_queues(&self, name: &str) -> io::Result<u32> {
        let mut channels = Channels {
            cmd: ETHTOOL_GCHANNELS,
            ..Default::default()
        };
        // SAFETY: `channels` is live and has the layout ETHTOOL_GCHANNELS writes.
        unsafe { self.ioctl(name, (&mut channels as *mut Channels).cast())? };
        Ok((channels.rx_count + channels.combined_count).max(1))
    }

    /// The driver of interface `name` as `ethtool -i` names it (`igb`, `veth`, `802.1Q VLAN
    /// Support`).
    pub fn driver(&self, name: &str) -> io::Result<String> {
        let mut info = DrvInfo {
            cmd: ETHTOOL_GDRVINFO,
            driver: [0; 32],
            version: [0; 32],
            fw_version: [0; 32],
            bus_info: [0; 32],
            erom_version: [0; 32],
            reserved2: [0; 12],
            counts: [0; 5],
        };
        // SAFETY: `info` is live and has the layout ETHTOOL_GDRVINFO writes.
        unsafe { self.ioctl(name, (&mut info as *mut DrvInfo).cast())? };
        let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
        Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
    }

    /// The features of interface `name`, with their names.
    pub fn features(&self, name: &str) -> io::Result<Features> {
        let mut info = SsetInfo {
            cmd: ETHTOOL_GSSET_INFO,
            reserved: 0,
            sset_mask: 1 << ETH_SS_FEATURES,
            count: 0,
        };
        // SAFETY: `info` is live and has room for the one count the mask asks for.
        unsafe { self.ioctl(name, (&mut info as *mut SsetInfo).cast())? };
        if info.sset_mask & (1 << ETH_SS_FEATURES) == 0 || info.count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lists no device features",
            ));
        }
        let count = info.count as usize;

        // struct ethtool_gstrings: cmd, string_set, len, then `len` names of 32 bytes.
        let header = 3 * 4;
        let mut strings = vec![0u8; header + count * ETH_GSTRING_LEN];
        strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
        strings[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
        strings[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
        // SAFETY: the buffer holds the header and `count` names, as ETHTOOL_GSTRINGS writes.
        unsafe { self.ioctl(name, strings.as_mut_ptr().cast())? };
        let names = strings[header..]
            .chunks(ETH_GSTRING_LEN)
            .map(|raw| {
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                String::from_utf8_lossy(&raw[..end]).into_owned()
            })
            .collect();

        // struct ethtool_gfeatures: cmd, size, then `size` blocks of four u32.
        let size = count.div_ceil(32);
        let mut raw = vec![0u32; 2 + 4 * size];
        raw[0] = ETHTOOL_GFEATURES;
        raw[1] = size as u32;
        // SAFETY: the buffer holds the header and `size` blocks, as ETHTOOL_GFEATURES writes.
        unsafe { self.ioctl(name, raw.as_mut_ptr().cast())? };
        let blocks = raw[2..]
            .chunks(4)
            .map(|b| GetBlock {
                available: b[0],
                active: b[2],
            })
            .collect();
        Ok(Features { names, blocks })
    }

    /// Switch feature `feature` of interface `name` on or off (`ethtool -K`), and check that
    /// it took effect: a driver may accept the request and still leave it as it was.
    pub fn set_feature(&self, name: &str, feature: &str, on: bool) -> io::Result<()> {
        let before = self.features(name)?;
        let bit = before
            .names
            .iter()
            .position(|n| n == feature)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("this kernel has no feature `{feature}`"),
                )
            })?;
        // struct ethtool_sfeatures: cmd, size, then `size` blocks of (valid, requested).
        let size = before.blocks.len();
        let mut raw = vec![0u32; 2 + 2 * size];
        raw[0] = ETHTOOL_SFEATURES;
        raw[1] = size as u32;
        let mask = 1u32 << (bit % 32);
        raw[2 + 2 * (bit / 32)] = mask;
        raw[3 + 2 * (bit / 32)] = if on { mask } else { 0 };
        // SAFETY: the buffer holds the header and `size` blocks, as ETHTOOL_SFEATURES reads.
        unsafe { self.ioctl(name, raw.as_mut_ptr().cast())? };
        match self.features(name)?.get(feature) {
            Some(f) if f.active == on => Ok(()),
            _ => Err(io::Error::other(format!(
                "the driver kept `{feature}` {}",
                if on { "off" } else { "on" }
            ))),
        }
    }
}

/// Receive queues interface `name` uses now, in the calling thread's namespace. This is what
/// AF_XDP binds against; the netlink queue count is what was allocated, which can be more
/// (veth allocates one per CPU and uses one).
pub fn active_rx_queues(name: &str) -> io::Result<u32> {
    Ethtool::new()?.active_rx_queues(name)
}
