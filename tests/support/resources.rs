//! What a process holds, counted from /proc and the kernel: open fds by kind (BPF programs,
//! maps and links named by their fdinfo, sockets), entries of the BPF hash maps it holds (the
//! classifier's key map), XDP sockets and interfaces in the calling thread's network
//! namespace, threads, and resident memory. Leak tests compare two readings.
use std::os::fd::RawFd;

use xmacvlan::abi::Key;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub fds: usize,
    pub sockets: usize,
    pub bpf_programs: usize,
    pub bpf_maps: usize,
    pub bpf_links: usize,
    /// Keys in every BPF hash map this process has open.
    pub hash_map_entries: usize,
    /// XDP sockets in use in this thread's network namespace (the kernel's own count).
    pub xdp_sockets_in_netns: usize,
    /// Network interfaces in this thread's namespace.
    pub interfaces: usize,
    pub threads: usize,
}

const BPF_MAP_TYPE_HASH: u32 = 1;

/// Read everything now (from the calling thread, for the namespace count).
pub fn held() -> Held {
    let mut h = Held {
        threads: count_dir("/proc/self/task"),
        xdp_sockets_in_netns: xdp_sockets_in_netns(),
        // Listed first: its netlink socket is closed again before the fds are counted.
        interfaces: xmacvlan::netlink::Netlink::new()
            .and_then(|nl| nl.links())
            .expect("listing interfaces")
            .len(),
        ..Held::default()
    };
    for (fd, info) in fds_with_info() {
        h.fds += 1;
        if field(&info, "prog_type:").is_some() {
            h.bpf_programs += 1;
        } else if let Some(map_type) = field(&info, "map_type:") {
            h.bpf_maps += 1;
            if map_type.parse() == Ok(BPF_MAP_TYPE_HASH) {
                let key_size = field(&info, "key_size:").and_then(|k| k.parse().ok());
                h.hash_map_entries += map_keys(fd, key_size.unwrap_or(0)).len();
            }
        } else if field(&info, "link_type:").is_some() {
            h.bpf_links += 1;
        } else if std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        {
            h.sockets += 1;
        }
    }
    h
}

/// Read [`held`] until it equals `want` or `limit` passes: closes finish asynchronously (an
/// AF_XDP socket's release waits for an RCU grace period, a stopped thread for its exit), so
/// one reading right after a close can see what is about to go. The last reading is the
/// error.
pub fn settle_to(want: &Held, limit: std::time::Duration) -> Result<Held, Held> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = held();
        if &now == want {
            return Ok(now);
        }
        if std::time::Instant::now() >= deadline {
            return Err(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A reading that no longer changes: the same twice 50 ms apart (at most `limit`, then the
/// last one), for a baseline taken while closes may still be finishing.
pub fn stable(limit: std::time::Duration) -> Held {
    let deadline = std::time::Instant::now() + limit;
    let mut last = held();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = held();
        if now == last || std::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident pages");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// This process's open fds with their /proc fdinfo text.
fn fds_with_info() -> impl Iterator<Item = (RawFd, String)> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory listing's own fd is gone by now: fds that vanished are skipped.
    fds.into_iter().filter_map(|fd| {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        Some((fd, info))
    })
}

/// A `name:\tvalue` line of an fdinfo text.
fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// The `sockets` column of the XDP row of this thread's /proc/net/protocols.
fn xdp_sockets_in_netns() -> usize {
    let text = std::fs::read_to_string("/proc/thread-self/net/protocols").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("XDP "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .expect("an XDP row in /proc/net/protocols (CONFIG_XDP_SOCKETS)")
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// One `bpf(2)` map-element command: union bpf_attr's map_fd (u32), pad, key and
/// value/next_key pointers. Returns whether it succeeded.
fn map_call(cmd: libc::c_long, fd: RawFd, key: Option<&[u8]>, out: &mut [u8]) -> bool {
    let mut attr = [0u64; 8];
    attr[0] = fd as u32 as u64;
    attr[1] = key.map_or(0, |k| k.as_ptr() as u64);
    attr[2] = out.as_mut_ptr() as u64;
    // SAFETY: attr is a valid bpf_attr for the command; the buffers are the map's key and
    // value sizes (checked by the callers against its fdinfo) and outlive the call; a bad fd
    // only makes the call fail.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    r == 0
}

/// Keys of a BPF map, walked with BPF_MAP_GET_NEXT_KEY.
fn map_keys(fd: RawFd, key_size: usize) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut next = vec![0u8; key_size.max(1)];
        let previous = keys.last().map(Vec::as_slice);
        if !map_call(BPF_MAP_GET_NEXT_KEY, fd, previous, &mut next) || keys.len() > 1 << 20 {
            return keys;
        }
        keys.push(next);
    }
}

/// The slot the classifier's key map (the process's BPF hash map from `struct xmv_key` to a
/// u32 slot) holds for `key`, if any: how a test sees which slot an endpoint got.
pub fn slot_of(key: Key) -> Option<u32> {
    let mut wanted = key.vid.to_ne_bytes().to_vec();
    wanted.extend_from_slice(&key.mac);
    fds_with_info()
        .filter(|(_, info)| {
            field(info, "map_type:") == Some(BPF_MAP_TYPE_HASH.to_string())
                && field(info, "key_size:").as_deref() == Some("8")
                && field(info, "value_size:").as_deref() == Some("4")
        })
        .find_map(|(fd, _)| {
            let mut slot = [0u8; 4];
            map_call(BPF_MAP_LOOKUP_ELEM, fd, Some(&wanted), &mut slot)
                .then(|| u32::from_ne_bytes(slot))
        })
}
