//! The fast path next to the kernel's VLAN objects, inside the VM of `cargo xtask vm-test`
//! (the host kernel has no 802.1Q). Three tests on the namespace lab of `bench/src/lab.rs`,
//! whose endpoints get kernel macvlans on `nic0.VID` there:
//!
//! 1. The lab of `cargo xtask run` (default topology) builds with every kernel VLAN object
//!    (no note; `nic0.100`/`nic0.200` read back as vlan devices; each endpoint's macvlan in its
//!    namespace on the right parent), delivers exact counts on the fast path, and the kernel
//!    devices receive exactly the broadcasts of their VLAN.
//! 2. An endpoint on VLAN 100 pings a router on the wire side (ARP and ICMP through the
//!    kernel: the classifier's `pass_control`) while the fast path receives its generated
//!    data frames, in the same time window.
//! 3. VLAN 100 never reaches VLAN 200: not on the fast path (exact counts, 0 misdelivered,
//!    VLAN 200 MACs tagged 100 are misses) and not on the kernel path (VLAN 200 devices count
//!    no received packet while VLAN 100 broadcasts, ARP requests for a VLAN 200-only decoy
//!    address included, flow and reach the VLAN 100 devices).
//!
//! ```text
//!  wire ns                                   host ns                          endpoint ns
//!  generator (AF_XDP TX) ─ wire0 ══ veth ══ nic0 (XDP) ─┬─ nic0.100 ─ macvlan ─ eth0 (v100-i)
//!  router: wire0.100 198.18.100.1/24                    ├─ nic0.200 ─ macvlan ─ eth0 (v200-i)
//!                                                       └─ macvlan ─ eth0 (untag-i)
//! ```
//! IPv6 is turned off in the endpoint namespaces before counting (the wire's is off already),
//! so every frame on the wire and every kernel packet counter is accounted for.
//!
//! Host tests skip these (`#[ignore]`, and `XMACVLAN_IN_VM` unset); the VM harness runs them
//! with `--include-ignored` and `XMACVLAN_IN_VM=1`. Inside the VM, a missing 802.1Q is a
//! failure, never a skip.
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xmacvlan::abi::Counters;
use xmacvlan::dataplane::{Dataplane, EndpointCounters, Finished};
use xmacvlan::frame::{BROADCAST, ETHERTYPE_ARP};
use xmacvlan::modes::Demux;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::Netns;
use xmacvlan_bench::generator::{Stream, StreamKind};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::{check_endpoints, require_8021q, sent_where};
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

/// The router's gateway address on VLAN 100 (on `wire0.100` in the wire namespace).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The VLAN 100 endpoint's address in the gateway's subnet.
const EP_100: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
/// On a VLAN 200 endpoint, in the VLAN 100 subnet: the bait for leaked ARP requests.
const DECOY: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 99);
const ROUTER_DEV: &str = "wire0.100";
const UNKNOWN_MAC: [u8; 6] = [0x02, 0x58, 0x4d, 0xee, 0xee, 0xee];

fn print_kernel() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {}", release.trim());
}

/// The lab, built and checked to have every kernel VLAN object it wanted.
fn build_lab(topology: &Topology) -> Lab {
    let lab = Lab::build(topology).expect("building the lab");
    assert!(
        lab.notes.is_empty(),
        "the lab could not build its kernel objects inside the VM (its kernel must have 802.1Q; \
         check the harness's `guest modules` line): {:?}",
        lab.notes
    );
    lab
}

/// The namespace the lab gave endpoint `name` (`{prefix}-{name}`).
fn endpoint_ns(lab: &Lab, name: &str) -> Netns {
    Netns::open(&format!("{}-{name}", lab.prefix)).expect("the endpoint's namespace")
}

fn endpoint_index(lab: &Lab, name: &str) -> usize {
    lab.endpoints
        .iter()
        .position(|e| e.name == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in the lab"))
}

/// IPv6 off in every endpoint namespace, then a short quiet period, so that from here on the
/// endpoints' macvlans send nothing on their own (no ND, MLD or router solicitations that
/// sibling macvlans in bridge mode would count as received).
fn quiet_endpoints(lab: &Lab) -> Result<()> {
    for ep in &lab.endpoints {
        endpoint_ns(lab, &ep.name).run(|| {
            for scope in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1")
                    .with_context(|| format!("disabling IPv6 ({scope}) for {}", ep.name))?;
            }
            Ok(())
        })?;
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// (rx packets, tx packets) of `dev` in the calling thread's namespace.
fn packets_here(dev: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .context("reading /proc/thread-self/net/dev")?;
    for line in text.lines() {
        if let Some((name, stats)) = line.split_once(':')
            && name.trim() == dev
        {
            let f: Vec<u64> = stats
                .split_whitespace()
                .map(|s| s.parse())
                .collect::<Result<_, _>>()
                .context("parsing /proc/net/dev")?;
            ensure!(f.len() >= 10, "short /proc/net/dev line for {dev}");
            return Ok((f[1], f[9]));
        }
    }
    bail!("no device `{dev}` in this namespace")
}

fn rx_packets(ns: &Netns, dev: &str) -> Result<u64> {
    ns.run(|| packets_here(dev).map(|p| p.0))
        .with_context(|| format!("{dev} in {}", ns.name()))
}

fn tx_packets(ns: &Netns, dev: &str) -> Result<u64> {
    ns.run(|| packets_here(dev).map(|p| p.1))
        .with_context(|| format!("{dev} in {}", ns.name()))
}

/// Poll `read` until it returns `want` (kernel work such as the macvlan broadcast queue is
/// asynchronous); returns the last value read.
fn settle(mut read: impl FnMut() -> Result<u64>, want: u64, limit: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        let v = read()?;
        if v == want || start.elapsed() >= limit {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The router: `wire0.100` in the wire namespace with the gateway address. The generator's
/// own frames leave wire0 through AF_XDP, unaffected.
///
/// wire0's tx VLAN offload is turned off first. With it on (veth's default), the VLAN device
/// leaves the tag in the skb's metadata and veth hands that skb to nic0 as it is: XDP on nic0
/// sees the router's frames untagged (VLAN 0), misses them, and the kernel still delivers
/// them by the metadata (measured in this VM: the echo replies counted as `pass_miss`, not
/// `pass_control`). A real wire carries the tag in the frame; so does wire0 without offload.
fn add_router(lab: &Lab) -> Result<()> {
    lab.wire.run(|| {
        let nl = Netlink::new()?;
        let wire0 = nl.require_link(lab::WIRE)?.index;
        tx_vlan_offload_off_here(lab::WIRE)?;
        let vlan = nl
            .add_vlan(ROUTER_DEV, wire0, 100)
            .context("creating the router's VLAN device in the wire namespace")?;
        nl.add_address(vlan, IpAddr::V4(GATEWAY), 24)?;
        nl.set_up(vlan)?;
        let link = nl.require_link(ROUTER_DEV)?;
        ensure!(
            link.kind.as_deref() == Some("vlan") && link.vlan_id == Some(100),
            "{ROUTER_DEV} is {:?} with VLAN id {:?}",
            link.kind,
            link.vlan_id
        );
        println!(
            "router: {ROUTER_DEV} (kind vlan, id 100, on {}, its tx VLAN offload off) with \
             {GATEWAY}/24",
            lab::WIRE
        );
        Ok(())
    })
}

/// `ethtool -K DEV txvlan off` in the calling thread's namespace, in process (the legacy
/// ETHTOOL_GFLAGS/SFLAGS requests), checked by reading the flags back.
fn tx_vlan_offload_off_here(dev: &str) -> Result<()> {
    const ETHTOOL_GFLAGS: u32 = 0x25;
    const ETHTOOL_SFLAGS: u32 = 0x26;
    const ETH_FLAG_TXVLAN: u32 = 1 << 7;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit Linux).
    #[repr(C)]
    struct IfreqData {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    ensure!(
        dev.len() < libc::IFNAMSIZ,
        "interface name `{dev}` too long"
    );
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ethtool = |cmd: u32, data: u32| -> Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        let mut req = IfreqData {
            name: [0; libc::IFNAMSIZ],
            data: (&raw mut value).cast(),
            _pad: [0; 16],
        };
        req.name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to, both live
        // and correctly laid out for the duration of the call.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("SIOCETHTOOL {cmd:#x} on {dev}"));
        }
        Ok(value.data)
    };
    let flags = ethtool(ETHTOOL_GFLAGS, 0)?;
    ethtool(ETHTOOL_SFLAGS, flags & !ETH_FLAG_TXVLAN)?;
    let now = ethtool(ETHTOOL_GFLAGS, 0)?;
    ensure!(
        now & ETH_FLAG_TXVLAN == 0,
        "tx VLAN offload of {dev} is still on (flags {now:#x})"
    );
    Ok(())
}

fn add_address(ns: &Netns, addr: Ipv4Addr) -> Result<()> {
    ns.run(|| {
        let nl = Netlink::new()?;
        let eth0 = nl.require_link("eth0")?.index;
        Ok(nl.add_address(eth0, IpAddr::V4(addr), 24)?)
    })
}

/// What an in-process ping got back.
#[derive(Debug, Clone, Copy)]
struct Pinged {
    sent: u32,
    received: u32,
}

/// `count` ICMP echo requests to `to` over a raw socket in the calling thread's namespace,
/// one at a time, each waiting up to `wait` for its reply (in process: starting `ping` in
/// the TCG guest costs about a second).
fn ping_here(to: Ipv4Addr, count: u16, wait: Duration) -> Result<Pinged> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET, SOCK_RAW, ICMP)");
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval; pointer and length describe `timeout`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    let dest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut got = Pinged {
        sent: 0,
        received: 0,
    };
    for seq in 1..=count {
        let mut req = [0u8; 8 + 32];
        req[0] = 8; // echo request
        req[4..6].copy_from_slice(&id.to_be_bytes());
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in req[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let sum = inet_checksum(&req);
        req[2..4].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&raw const dest).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        ensure!(
            n == req.len() as isize,
            "sending an echo request to {to}: {}",
            std::io::Error::last_os_error()
        );
        got.sent += 1;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let mut buf = [0u8; 1500];
            // SAFETY: buf is valid for its length; a timeout returns -1 (EAGAIN).
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let pkt = &buf[..n as usize];
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if pkt.len() < ihl + 8 || pkt[12..16] != to.octets() {
                continue;
            }
            let icmp = &pkt[ihl..];
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && icmp[6..8] == seq.to_be_bytes() {
                got.received += 1;
                break;
            }
        }
    }
    Ok(got)
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// XDP saw the `on_wire` frames, each got exactly one verdict and ended delivered, passed or
/// dropped by reason; none was dropped: what XDP redirected is what the endpoints got.
fn check_adds_up(finished: &Finished, on_wire: u64, delivered: u64, what: &str) {
    Ledger::finished(on_wire, finished, &[]).assert_balanced(what);
    let x = &finished.xdp;
    assert_eq!(x.redirected, delivered, "{x:?}");
    assert_eq!(x.hit, x.redirected, "{x:?}");
    assert_eq!(x.pass_no_socket, 0, "{x:?}");
    assert_eq!(x.pass_qinq + x.malformed, 0, "{x:?}");
}

fn assert_nothing_left(lab: Lab) {
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(
        namespaces_named(&prefix).is_empty(),
        "left behind: {:?}",
        namespaces_named(&prefix)
    );
}

#[test]
#[ignore = "needs 802.1Q: runs inside the VM (`sudo -E cargo xtask vm-test`)"]
fn default_lab_has_its_kernel_vlan_objects_and_delivers_exactly() {
    require_8021q("vm_fastpath");
    require_root();
    print_kernel();
    const PER_STREAM: u64 = 200;
    let topology = Topology::default();
    assert_eq!(
        (
            &topology.vlans[..],
            topology.endpoints_per_vlan,
            topology.kernel_devices
        ),
        (&[100, 200, 0][..], 2, KernelDevices::OwnNamespace),
        "the test expects `cargo xtask run`'s default lab"
    );
    let lab = build_lab(&topology);

    // The VLAN devices in the host namespace, read back through netlink.
    let parents = lab
        .host
        .run(|| {
            let nl = Netlink::new()?;
            let nic = nl.require_link(lab::NIC)?;
            let mut parents = vec![(0u16, nic.index)];
            for vid in [100u16, 200] {
                let name = format!("{}.{vid}", lab::NIC);
                let link = nl.require_link(&name)?;
                ensure!(
                    link.kind.as_deref() == Some("vlan")
                        && link.vlan_id == Some(vid)
                        && link.parent_index == Some(nic.index)
                        && link.up,
                    "{name}: kind {:?}, VLAN id {:?}, parent {:?}, up {}: expected an up vlan \
                     device with id {vid} on {} #{}",
                    link.kind,
                    link.vlan_id,
                    link.parent_index,
                    link.up,
                    lab::NIC,
                    nic.index
                );
                println!(
                    "VLAN device: {name} (#{}, kind vlan, id {vid}, on {} #{})",
                    link.index,
                    lab::NIC,
                    nic.index
                );
                parents.push((vid, link.index));
            }
            Ok(parents)
        })
        .expect("reading the lab's VLAN devices");

    // Each endpoint's macvlan, in its own namespace, on the right parent.
    for ep in &lab.endpoints {
        let parent = parents.iter().find(|(v, _)| *v == ep.vid).unwrap().1;
        let ns = endpoint_ns(&lab, &ep.name);
        let (link, addrs) = ns
            .run(|| {
                let nl = Netlink::new()?;
                let link = nl.require_link("eth0")?;
                let addrs = nl.addresses(link.index)?;
                Ok((link, addrs))
            })
            .expect("reading an endpoint's macvlan");
        assert!(
            link.kind.as_deref() == Some("macvlan")
                && link.mac == ep.mac
                && link.parent_index == Some(parent)
                && link.up,
            "{}: eth0 is {link:?}, expected an up macvlan with MAC {} on host link #{parent}",
            ep.name,
            lab::describe_mac(&ep.mac)
        );
        let v4: Vec<String> = addrs
            .iter()
            .filter(|(a, _)| a.is_ipv4())
            .map(|(a, p)| format!("{a}/{p}"))
            .collect();
        assert!(!v4.is_empty(), "{}: eth0 has no IPv4 address", ep.name);
        let parent_name = if ep.vid == 0 {
            lab::NIC.to_string()
        } else {
            format!("{}.{}", lab::NIC, ep.vid)
        };
        println!(
            "endpoint {}: eth0 (macvlan {}, on {parent_name}) in {} with {}",
            ep.name,
            lab::describe_mac(&ep.mac),
            ns.name(),
            v4.join(", ")
        );
    }

    // Traffic with exact counts; the kernel devices count what the classifier passes them.
    quiet_endpoints(&lab).expect("turning IPv6 off in the endpoint namespaces");
    let eps: Vec<(Netns, u16)> = lab
        .endpoints
        .iter()
        .map(|e| (endpoint_ns(&lab, &e.name), e.vid))
        .collect();
    let rx_before: Vec<u64> = eps
        .iter()
        .map(|(ns, _)| rx_packets(ns, "eth0").unwrap())
        .collect();
    let streams = lab_streams(&lab.endpoints, 64, true);
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(10_000),
        duration: Duration::from_secs(60),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let cfg = lab.dataplane_config(&dataplane_config(Demux::Xdp, 1));
    let (finished, sent) = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            let sent = run_traffic(&lab, &dp, 1, &streams, &traffic)?;
            Ok((dp.stop()?, sent.per_stream))
        })
        .expect("running the lab");
    assert!(
        sent.iter().all(|&n| n == PER_STREAM),
        "every stream sent in full: {sent:?}"
    );
    let delivered = check_endpoints(&finished, &streams, &sent);
    let total: u64 = sent.iter().sum();
    check_adds_up(&finished, total, delivered, "the generator's frames");
    let x = &finished.xdp;
    let vlans = 3;
    assert_eq!(
        x.pass_miss,
        PER_STREAM * vlans,
        "unknown MAC per VLAN: {x:?}"
    );
    assert_eq!(
        x.pass_bcast_mcast,
        PER_STREAM * vlans,
        "broadcast per VLAN: {x:?}"
    );
    assert_eq!(x.pass_control, 0, "{x:?}");
    // VLANs 100 and 200: 4 endpoint streams, a broadcast and an unknown-MAC stream each.
    assert_eq!(x.tagged, PER_STREAM * (4 + 2 * 2), "{x:?}");
    for q in &finished.queues {
        assert_eq!(q.socket.dropped(), 0, "queue socket drops: {q:?}");
    }

    // The broadcasts the classifier passed reached each endpoint's macvlan through its VLAN
    // device (or nic0 for untagged), exactly those of its own VLAN.
    for ((ep, (ns, vid)), before) in lab.endpoints.iter().zip(&eps).zip(&rx_before) {
        let want = before
            + sent_where(&streams, &sent, |s| {
                s.kind == StreamKind::Broadcast && s.frame.vid.unwrap_or(0) == *vid
            });
        let got = settle(|| rx_packets(ns, "eth0"), want, Duration::from_secs(3)).unwrap();
        assert_eq!(
            got - before,
            want - before,
            "{}: its kernel macvlan should have received exactly the broadcasts of VLAN {vid}",
            ep.name
        );
    }
    println!(
        "default lab: {total} frames sent, {delivered} delivered on the fast path (exact, 0 \
         misdelivered), {} broadcasts per VLAN received by each endpoint's kernel macvlan; {}",
        PER_STREAM,
        counters_line(x)
    );
    assert_nothing_left(lab);
}

fn counters_line(x: &Counters) -> String {
    format!(
        "XDP: seen {} tagged {} redirected {} miss {} bcast/mcast {} arp/icmp {}",
        x.seen, x.tagged, x.redirected, x.pass_miss, x.pass_bcast_mcast, x.pass_control
    )
}

/// Run the dataplane and `streams` in `lab`, and meanwhile `side(counters of endpoint
/// `watch`)` on another thread once that endpoint's first fast-path frame has arrived.
/// Returns what the dataplane finished with, the frames sent per stream, the side job's
/// result, and the router's tx packets while the dataplane ran.
fn run_with_side_job<T: Send>(
    lab: &Lab,
    streams: &[Stream],
    traffic: &TrafficConfig,
    watch: &str,
    side: impl FnOnce(&EndpointCounters) -> Result<T> + Send,
) -> (Finished, Vec<u64>, T, u64) {
    let cfg = lab.dataplane_config(&dataplane_config(Demux::Xdp, 1));
    lab.host
        .run(|| {
            let router_before = tx_packets(&lab.wire, ROUTER_DEV)?;
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            let counters: Arc<EndpointCounters> = dp
                .endpoint_counters()
                .into_iter()
                .find(|(spec, _)| spec.name == watch)
                .map(|(_, c)| c)
                .context("the watched endpoint")?;
            let traffic_done = AtomicBool::new(false);
            let (sent, side_result) = std::thread::scope(|s| {
                let side_job = s.spawn(|| -> Result<T> {
                    let start = Instant::now();
                    while counters.frames.load(Ordering::Relaxed) == 0 {
                        ensure!(
                            !traffic_done.load(Ordering::Relaxed)
                                && start.elapsed() < Duration::from_secs(20),
                            "{watch} received no fast-path frame: the side job never started"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    side(&counters)
                });
                let sent = run_traffic(lab, &dp, 1, streams, traffic);
                traffic_done.store(true, Ordering::Relaxed);
                (sent, side_job.join().expect("side job panicked"))
            });
            let sent = sent?;
            let side_result = side_result?;
            let router_after = tx_packets(&lab.wire, ROUTER_DEV)?;
            let finished = dp.stop()?;
            Ok((
                finished,
                sent.per_stream,
                side_result,
                router_after - router_before,
            ))
        })
        .expect("running the lab")
}

#[test]
#[ignore = "needs 802.1Q: runs inside the VM (`sudo -E cargo xtask vm-test`)"]
fn endpoint_pings_its_gateway_through_the_kernel_while_its_data_takes_the_fast_path() {
    require_8021q("vm_fastpath");
    require_root();
    print_kernel();
    const PER_STREAM: u64 = 1000;
    const PINGS: u16 = 4;
    let lab = build_lab(&Topology {
        vlans: vec![100, 200],
        ..Topology::default()
    });
    let ep_name = lab::endpoint_name(100, 0);
    let ep = endpoint_index(&lab, &ep_name);
    let ep_ns = endpoint_ns(&lab, &ep_name);
    quiet_endpoints(&lab).expect("turning IPv6 off in the endpoint namespaces");
    add_router(&lab).expect("the router on VLAN 100");
    add_address(&ep_ns, EP_100).expect("the endpoint's address on the gateway's subnet");
    println!("endpoint {ep_name}: eth0 (macvlan on nic0.100) with {EP_100}/24 added");

    // Data to every endpoint (8 streams at 4000/s: about 2 s), pings in the middle of it.
    let streams = lab_streams(&lab.endpoints, 64, true);
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(4_000),
        duration: Duration::from_secs(60),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let (finished, sent, (pinged, frames_at_start, frames_at_end, took), router_tx) =
        run_with_side_job(&lab, &streams, &traffic, &ep_name, |counters| {
            let at_start = counters.frames.load(Ordering::Relaxed);
            let t = Instant::now();
            let pinged = ep_ns.run(|| ping_here(GATEWAY, PINGS, Duration::from_millis(1500)))?;
            let took = t.elapsed();
            Ok((
                pinged,
                at_start,
                counters.frames.load(Ordering::Relaxed),
                took,
            ))
        });

    assert_eq!(
        (pinged.sent, pinged.received),
        (u32::from(PINGS), u32::from(PINGS)),
        "{ep_name} -> gateway {GATEWAY}: every echo request answered"
    );
    let sent_to_ep = sent_where(&streams, &sent, |s| s.kind == StreamKind::Endpoint(ep));
    assert!(
        frames_at_end < sent_to_ep,
        "the fast path had delivered all {sent_to_ep} of {ep_name}'s frames before the pings \
         ended ({frames_at_end}): the two did not overlap; lengthen the traffic"
    );
    assert_eq!(
        finished.endpoints[ep].frames, sent_to_ep,
        "{ep_name}: fast-path frames equal what was sent to it"
    );
    let delivered = check_endpoints(&finished, &streams, &sent);
    let gen_total: u64 = sent.iter().sum();
    // The router's frames (ARP and ICMP to the endpoint, or broadcast ARP) are the only ones
    // on the wire besides the generator's.
    let what = format!("the generator's frames and the router's {router_tx}");
    check_adds_up(&finished, gen_total + router_tx, delivered, &what);
    let x = &finished.xdp;
    let gen_bcast = sent_where(&streams, &sent, |s| s.kind == StreamKind::Broadcast);
    let gen_unknown = sent_where(&streams, &sent, |s| s.kind == StreamKind::UnknownUnicast);
    // A fresh namespace has no neighbour entry: the endpoint ARPs for the gateway first, and
    // the router's ARP reply and every echo reply come to the endpoint's MAC.
    assert!(x.pass_control > 0, "{x:?}");
    assert!(
        x.pass_control > u64::from(pinged.received),
        "the ARP reply and every echo reply to {ep_name}'s MAC go to its kernel device \
         (pass_control): {x:?}"
    );
    // All of the frames on the wire are tagged 100.
    assert_eq!(
        x.tagged,
        gen_total + router_tx,
        "router sent {router_tx}: {x:?}"
    );
    assert_eq!(x.pass_miss, gen_unknown, "{x:?}");
    assert_eq!(
        x.pass_control + x.pass_bcast_mcast - gen_bcast,
        router_tx,
        "the router's frames went to the kernel as ARP/ICMP or broadcast: {x:?}"
    );
    println!(
        "VLAN 100: {ep_name} -> gateway {GATEWAY}: {}/{} replies in {:.2} s, while its fast path \
         went from {frames_at_start} to {frames_at_end} frames (of {sent_to_ep}, all delivered); \
         router sent {router_tx} frames; {}",
        pinged.received,
        pinged.sent,
        took.as_secs_f64(),
        counters_line(x)
    );
    assert_nothing_left(lab);
}

#[test]
#[ignore = "needs 802.1Q: runs inside the VM (`sudo -E cargo xtask vm-test`)"]
fn vlan100_never_reaches_vlan200_on_the_fast_path_or_the_kernel_path() {
    require_8021q("vm_fastpath");
    require_root();
    print_kernel();
    const PER_STREAM: u64 = 600;
    let lab = build_lab(&Topology {
        vlans: vec![100, 200],
        ..Topology::default()
    });
    quiet_endpoints(&lab).expect("turning IPv6 off in the endpoint namespaces");
    add_router(&lab).expect("the router on VLAN 100");
    // The bait: an address of VLAN 100's subnet on a VLAN 200 endpoint. A leaked ARP request
    // for it would be answered.
    let bait = lab::endpoint_name(200, 0);
    add_address(&endpoint_ns(&lab, &bait), DECOY).expect("the decoy address");
    println!("decoy: {DECOY}/24 on {bait} (VLAN 200)");

    // Only VLAN 100 traffic: to the VLAN 100 endpoints (fast path), broadcast test frames,
    // broadcast ARP-typed frames, an unknown MAC, and the VLAN 200 endpoints' MACs tagged 100.
    let frame = |dst, kind| {
        Stream::new(
            TestFrame {
                dst,
                src: lab::GENERATOR_MAC,
                vid: Some(100),
                qinq_outer: None,
                len: 64,
            },
            kind,
        )
    };
    let mut streams = Vec::new();
    let mut vlan200 = Vec::new();
    for (i, e) in lab.endpoints.iter().enumerate() {
        if e.vid == 100 {
            streams.push(frame(e.mac, StreamKind::Endpoint(i)));
        } else {
            vlan200.push((e.name.clone(), endpoint_ns(&lab, &e.name)));
            streams.push(frame(e.mac, StreamKind::Other));
        }
    }
    streams.push(frame(BROADCAST, StreamKind::Broadcast));
    streams.push(frame(BROADCAST, StreamKind::Broadcast).with_ethertype(ETHERTYPE_ARP));
    streams.push(frame(UNKNOWN_MAC, StreamKind::UnknownUnicast));
    let vlan100: Vec<(String, Netns)> = lab
        .endpoints
        .iter()
        .filter(|e| e.vid == 100)
        .map(|e| (e.name.clone(), endpoint_ns(&lab, &e.name)))
        .collect();

    let read_all = |set: &[(String, Netns)]| -> Vec<u64> {
        set.iter()
            .map(|(_, ns)| rx_packets(ns, "eth0").unwrap())
            .collect()
    };
    let nic200 = format!("{}.200", lab::NIC);
    let v200_before = read_all(&vlan200);
    let v100_before = read_all(&vlan100);
    let nic200_before = rx_packets(&lab.host, &nic200).unwrap();

    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(2_000),
        duration: Duration::from_secs(60),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let watch = lab::endpoint_name(100, 0);
    let (finished, sent, decoy_ping, router_tx) =
        run_with_side_job(&lab, &streams, &traffic, &watch, |_| {
            // The router asks VLAN 100 for the decoy: ARP requests, broadcast on VLAN 100.
            lab.wire
                .run(|| ping_here(DECOY, 3, Duration::from_millis(700)))
        });

    // Fast path: exact, nothing on VLAN 200's endpoints, the VLAN 200 MACs tagged 100 missed.
    let delivered = check_endpoints(&finished, &streams, &sent);
    for e in finished.endpoints.iter().filter(|e| e.spec.vid == 200) {
        assert_eq!(
            e.frames, 0,
            "{} received VLAN 100 frames on the fast path",
            e.spec.name
        );
    }
    let gen_total: u64 = sent.iter().sum();
    let what = format!("the generator's frames and the router's {router_tx}");
    check_adds_up(&finished, gen_total + router_tx, delivered, &what);
    let x = &finished.xdp;
    let wrong_vlan = sent_where(&streams, &sent, |s| s.kind == StreamKind::Other);
    let unknown = sent_where(&streams, &sent, |s| s.kind == StreamKind::UnknownUnicast);
    let gen_bcast = sent_where(&streams, &sent, |s| s.kind == StreamKind::Broadcast);
    assert_eq!(wrong_vlan, 2 * PER_STREAM);
    assert_eq!(
        x.pass_miss,
        wrong_vlan + unknown,
        "VLAN 200 MACs tagged 100 are misses, never hits: {x:?}"
    );
    assert_eq!(
        x.tagged, x.seen,
        "everything on the wire was tagged 100: {x:?}"
    );
    assert_eq!(
        x.pass_bcast_mcast,
        gen_bcast + router_tx,
        "the router sent only broadcast ARP requests: {x:?}"
    );

    // Kernel path: the decoy never answered, the router's ARP requests and the broadcasts
    // reached VLAN 100's macvlans, and no VLAN 200 device received a single packet.
    assert_eq!(
        decoy_ping.received, 0,
        "the router on VLAN 100 reached {DECOY}, which exists only on VLAN 200: frames crossed VLANs"
    );
    assert!(
        router_tx > 0,
        "the router sent no ARP request for {DECOY}: the kernel-path check proved nothing"
    );
    for ((name, ns), before) in vlan100.iter().zip(&v100_before) {
        let want = before + gen_bcast + router_tx;
        let got = settle(|| rx_packets(ns, "eth0"), want, Duration::from_secs(3)).unwrap();
        assert_eq!(
            got - before,
            gen_bcast + router_tx,
            "{name}: its kernel macvlan should have received every VLAN 100 broadcast \
             ({gen_bcast} generated, {router_tx} ARP requests from the router)"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    for ((name, ns), before) in vlan200.iter().zip(&v200_before) {
        let after = rx_packets(ns, "eth0").unwrap();
        assert_eq!(
            after - before,
            0,
            "{name}'s kernel macvlan (VLAN 200) received packets while only VLAN 100 talked"
        );
    }
    let nic200_after = rx_packets(&lab.host, &nic200).unwrap();
    assert_eq!(
        nic200_after - nic200_before,
        0,
        "{nic200} received packets while only VLAN 100 talked"
    );
    println!(
        "isolation: {gen_total} VLAN 100 frames generated ({delivered} to VLAN 100 endpoints, \
         {wrong_vlan} to VLAN 200 MACs, {gen_bcast} broadcast), router -> {DECOY}: {} requests, \
         0 answered, {router_tx} ARP requests; VLAN 100 macvlans received {} each, VLAN 200 \
         macvlans and {nic200} 0; fast path: VLAN 200 endpoints 0 frames, 0 misdelivered; {}",
        decoy_ping.sent,
        gen_bcast + router_tx,
        counters_line(x)
    );
    assert_nothing_left(lab);
}
