//! What a process holds, counted from /proc and the kernel: open fds by kind (BPF programs,
//! maps and links named by their fdinfo, sockets), entries of the BPF hash maps it holds (the
//! classifier's key map), XDP sockets and interfaces in the calling thread's network
//! namespace, threads, and resident memory. Leak tests compare two readings.
use std::os::fd::RawFd;

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
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        // The directory listing's own fd is gone by now: skip fds that vanished.
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        h.fds += 1;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("prog_type:").is_some() {
            h.bpf_programs += 1;
        } else if let Some(map_type) = field("map_type:") {
            h.bpf_maps += 1;
            if map_type.parse() == Ok(BPF_MAP_TYPE_HASH) {
                let key_size = field("key_size:").and_then(|k| k.parse().ok()).unwrap_or(0);
                h.hash_map_entries += map_keys(fd, key_size);
            }
        } else if field("link_type:").is_some() {
            h.bpf_links += 1;
        } else if std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        {
            h.sockets += 1;
        }
    }
    h
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

/// Keys of a BPF map, walked with BPF_MAP_GET_NEXT_KEY.
fn map_keys(fd: RawFd, key_size: usize) -> usize {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut count = 0;
    loop {
        // union bpf_attr for MAP_*_ELEM: map_fd (u32), pad, key (u64 ptr), next_key (u64 ptr).
        let mut attr = [0u64; 8];
        attr[0] = fd as u32 as u64;
        attr[1] = if count == 0 { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: attr is a valid bpf_attr for this command, the key buffers are key_size
        // bytes and outlive the call; a bad fd only makes the call fail.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r < 0 || count > 1 << 20 {
            return count;
        }
        count += 1;
        key.copy_from_slice(&next);
    }
}
