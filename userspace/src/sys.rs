//! Thin, checked wrappers over the few raw syscalls the crate needs that no dependency offers.
//! One of the crate's few `unsafe` modules: every call's invariants are stated where it is made.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub mod ethtool;
pub mod membership;
pub mod packet;

pub use ethtool::active_rx_queues;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Move the calling thread into a new network namespace.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// Move the calling thread into the network namespace `fd` refers to.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call (borrowed).
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
}

pub fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    let (src, dst) = (cstring(source)?, cstring(target)?);
    // SAFETY: both strings are NUL-terminated and outlive the call; fstype and data may be null.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

pub fn make_shared(target: &Path) -> io::Result<()> {
    let dst = cstring(target)?;
    // SAFETY: as for bind_mount; source and fstype are ignored for a propagation change.
    check(unsafe {
        libc::mount(
            c"none".as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    })
}

pub fn unmount_detach(target: &Path) -> io::Result<()> {
    let dst = cstring(target)?;
    // SAFETY: `dst` is NUL-terminated and outlives the call.
    check(unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) })
}

/// Whether `path` is the root of a mounted BPF file system (statfs magic `BPF_FS_MAGIC`).
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    let p = cstring(path)?;
    // SAFETY: `p` is NUL-terminated and outlives the call; `st` is a plain struct the call
    // fills, zero-initialised so no field is read uninitialised.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: both pointers are valid for the call.
    check(unsafe { libc::statfs(p.as_ptr(), &mut st) })?;
    Ok(st.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// Mount a BPF file system on `target` (`mount -t bpf bpf TARGET`).
pub fn mount_bpffs(target: &Path) -> io::Result<()> {
    let dst = cstring(target)?;
    // SAFETY: every string is NUL-terminated and outlives the call; data may be null.
    check(unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            dst.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
}

/// Wait until every CPU has left the RCU read-side sections it was in, NAPI polls included:
/// a frame XDP redirected before a map change is then in its socket's ring (an AF_XDP RX
/// descriptor becomes visible only at the poll's flush). `membarrier(MEMBARRIER_CMD_GLOBAL)`
/// is `synchronize_rcu()`; where the kernel refuses it (nohz_full), a pause far longer than
/// a NAPI poll stands in.
pub fn synchronize_rcu() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret != 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Monotonic clock in nanoseconds (vDSO: no syscall). The generator stamps frames with it and
/// consumers subtract it, so both sides must use this one function.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The kernel's USER_HZ, the unit of /proc/stat's CPU times; 0 if unknown.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(0) as u64
}

/// Index of interface `name` in the calling thread's namespace, or None.
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Raise a resource limit's soft (and, if allowed, hard) value to `value`; best effort.
pub fn raise_rlimit(resource: libc::__rlimit_resource_t, value: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of both calls.
    unsafe {
        if libc::getrlimit(resource, &mut limit) != 0 {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: value,
            rlim_max: value.max(limit.rlim_max),
        };
        if libc::setrlimit(resource, &wanted) != 0 {
            // Not allowed to raise the hard limit: take the soft one up to it.
            let capped = libc::rlimit {
                rlim_cur: value.min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(resource, &capped);
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // Only an atomic store and a write(2): async-signal-safe.
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    signal_wake_fd();
}

/// The eventfd of [`signal_eventfd`], for the handlers; -1 until it exists.
static SIGNAL_WAKE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// An eventfd that SIGINT, SIGTERM and SIGHUP write after setting their flags, so a loop
/// blocked in poll(2) on it wakes at once. Made on the first call and never closed: a
/// handler may write it at any moment, and a closed number could be reused by another file.
pub fn signal_eventfd() -> io::Result<std::os::fd::RawFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    static EVENTFD: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = EVENTFD.get() {
        return Ok(fd.as_raw_fd());
    }
    // SAFETY: eventfd takes integers; on success the descriptor is fresh and ours.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor with no other owner.
    let fresh = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = EVENTFD.get_or_init(|| fresh).as_raw_fd();
    SIGNAL_WAKE_FD.store(fd, std::sync::atomic::Ordering::SeqCst);
    Ok(fd)
}

fn signal_wake_fd() {
    let fd = SIGNAL_WAKE_FD.load(std::sync::atomic::Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: errno is thread-local; saved and restored so the interrupted code never sees
    // the handler's write change it.
    let errno = unsafe { *libc::__errno_location() };
    let one = 1u64.to_ne_bytes();
    // SAFETY: write(2) is async-signal-safe; 8 bytes from a live buffer to an eventfd.
    let _ = unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Route SIGINT and SIGTERM to a flag ([`interrupted`]) so long runs stop cleanly and remove
/// what they created instead of dying mid-way.
pub fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only performs an atomic store and a write(2), both async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// Whether SIGINT/SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> &'static std::sync::atomic::AtomicBool {
    &INTERRUPTED
}

static HANGUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_hangup(_: libc::c_int) {
    // Only an atomic add and a write(2): async-signal-safe.
    HANGUPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    signal_wake_fd();
}

/// Count SIGHUPs ([`hangups`]) instead of dying on them: the daemon reloads its config.
pub fn catch_hangups() {
    let handler: extern "C" fn(libc::c_int) = on_hangup;
    // SAFETY: the handler only performs an atomic add and a write(2), both async-signal-safe.
    unsafe { libc::signal(libc::SIGHUP, handler as libc::sighandler_t) };
}

/// How many SIGHUPs arrived since [`catch_hangups`].
pub fn hangups() -> usize {
    HANGUPS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Linux capability numbers xmacvlan needs (see capabilities(7)).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// The capabilities in `wanted` that the process does not have in its effective set.
pub fn missing_capabilities(wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    wanted
        .iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Pin another task (e.g. a NAPI kernel thread) to `core`.
pub fn set_task_affinity(pid: i32, core: usize) -> std::io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "core out of range",
        ));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, filled with CPU_SET below.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` is below CPU_SETSIZE (checked above), so CPU_SET stays in bounds.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    check(unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) })
}

/// Send `signal` to process `pid` (a child program that prints its summary on SIGINT).
pub fn signal_process(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes plain integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) })
}

/// Set the nice value of task (thread) `tid`: higher is a smaller share of a contended core.
pub fn set_task_nice(tid: i32, nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) })
}

/// Credentials of the process at the other end of a Unix socket (SO_PEERCRED), taken when
/// it connected: (pid, uid, gid).
pub fn peer_credentials(socket: &impl AsRawFd) -> std::io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid and writable, and `len` holds cred's size.
    check(unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.pid, cred.uid, cred.gid))
}

/// Change the calling *thread's* user id (raw setresuid, which unlike libc's wrapper does not
/// broadcast to the other threads). Tests use it to act as an unprivileged peer.
pub fn set_thread_uid(uid: u32) -> std::io::Result<()> {
    // SAFETY: the raw syscall takes three integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Local wall-clock time of `unix_secs`, broken down (syslog's RFC 3164 timestamps are local).
pub fn local_time(unix_secs: i64) -> Option<libc::tm> {
    let t: libc::time_t = unix_secs;
    // SAFETY: tm is plain data; zeroed is a valid value that localtime_r overwrites.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then_some(tm)
}

/// Whether this kernel offers AF_XDP sockets: open one (and close it at once).
/// `EAFNOSUPPORT` means CONFIG_XDP_SOCKETS is off; `EPERM` means the caller lacks CAP_NET_RAW.
pub fn probe_af_xdp() -> io::Result<()> {
    // SAFETY: socket takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    Ok(())
}

/// poll(2) for readability (or hangup/error) on `fds`, up to `timeout_ms` (-1: no limit).
/// Which of them are ready, in order; an interrupting signal reads as "none ready". A
/// descriptor closed meanwhile shows as ready (POLLNVAL); the caller's next call on it then
/// fails or finds nothing, so that is harmless.
pub fn poll_readable(fds: &[std::os::fd::RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd structs.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Random bytes from the kernel (ids, MACs, DHCP transaction ids).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
