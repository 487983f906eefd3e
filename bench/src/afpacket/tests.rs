//! Root tests in throw-away network namespaces: frames written on one veth end with a plain
//! AF_PACKET socket must come out of the other end's ring byte for byte, counted exactly.
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{PacketRing, RingConfig, RingStats};
use xmacvlan::netlink::{MacVlanMode, Netlink};
use xmacvlan::netns::NetnsGuard;

const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const MACVLAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// IEEE local experimental EtherType: no stack on the way reacts to it.
const ETHERTYPE: u16 = 0x88b5;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A namespace unique to this process and test, holding a veth pair `a`/`b`, both up and with
/// IPv6 off so the kernel sends nothing of its own (router/neighbour solicitations) on them.
struct Lab {
    ns: NetnsGuard,
    a: String,
    b: String,
}

fn lab() -> Result<Lab> {
    static N: AtomicU32 = AtomicU32::new(0);
    let (pid, n) = (std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let ns = NetnsGuard::create(&format!("xmv-afp-{pid}-{n}"))?;
    let (a, b) = (format!("xa{pid}{n}"), format!("xb{pid}{n}"));
    ns.run(|| {
        for key in ["all", "default"] {
            // Absent without IPv6 support: then there is nothing to silence.
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"), "1").ok();
        }
        let nl = Netlink::new()?;
        let ia = nl.add_veth(&a, &b, 1)?;
        let ib = nl.require_link(&b)?.index;
        nl.set_mac(ia, SRC)?;
        nl.set_mac(ib, DST)?;
        nl.set_up(ia)?;
        Ok(nl.set_up(ib)?)
    })?;
    Ok(Lab { ns, a, b })
}

/// A frame of exactly `len` bytes: Ethernet header, sequence number, then a pattern derived
/// from it, so a frame delivered twice, out of order or corrupted is caught.
fn frame(dst: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&SRC);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend((0..len - f.len()).map(|i| (i as u32 ^ seq) as u8));
    f
}

/// Writes raw frames out of one interface through a plain (ring-less) AF_PACKET socket.
struct Sender {
    fd: std::os::fd::OwnedFd,
    addr: libc::sockaddr_ll,
}

impl Sender {
    fn open(ifindex: u32) -> Result<Sender> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket() takes plain integers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            bail!("sender socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor, owned by nothing else; sockaddr_ll is plain data.
        let (fd, mut addr) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(raw),
                std::mem::zeroed::<libc::sockaddr_ll>(),
            )
        };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        Ok(Sender { fd, addr })
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: `frame` and `addr` are valid for the lengths passed during the call.
        let ret = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if ret != frame.len() as isize {
            bail!("sendto: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Read from `ring` until `want` frames arrived (or 5 s passed), then make sure no further
/// frame turns up and no block is left in userspace's hands.
fn drain(ring: &mut PacketRing, want: usize) -> Result<Vec<Vec<u8>>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < deadline {
        // Every frame was delivered to the socket during its sendto(); with a 1 ms retire
        // timeout, 100 ms of silence means nothing more is coming (the full-ring test).
        if ring.poll_block(100, |f| got.push(f.to_vec()))? == 0 && !got.is_empty() {
            break;
        }
    }
    // Longer than the retire timeout: a straggler in a half-filled block would show up.
    for _ in 0..3 {
        ring.poll_block(20, |f| got.push(f.to_vec()))?;
    }
    assert!(
        !ring.block_ready(),
        "a block is still waiting after draining"
    );
    Ok(got)
}

fn link_index(lab: &Lab, name: &str) -> Result<u32> {
    Netlink::new()?
        .require_link(name)
        .map(|link| link.index)
        .with_context(|| format!("looking up {name} in {}", lab.ns.name()))
}

#[test]
fn delivers_exact_frames_60_and_1500_bytes() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let lab = lab()?;
    lab.ns.run(|| {
        let mut ring = PacketRing::open(link_index(&lab, &lab.b)?, RingConfig::default())?;
        let tx = Sender::open(link_index(&lab, &lab.a)?)?;
        let sent: Vec<Vec<u8>> = (0..1000u32)
            .map(|seq| frame(DST, seq, if seq % 2 == 0 { 60 } else { 1500 }))
            .collect();
        for f in &sent {
            tx.send(f)?;
        }
        let got = drain(&mut ring, sent.len())?;
        assert_eq!(got.len(), sent.len(), "frame count");
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert!(
                g == s,
                "frame {i} differs: {} bytes vs {} sent",
                g.len(),
                s.len()
            );
        }
        let stats = ring.stats()?;
        assert_eq!(
            stats,
            RingStats {
                packets: 1000,
                ..RingStats::default()
            }
        );
        // Counters are cumulative across reads (the kernel resets its own).
        assert_eq!(ring.stats()?.packets, 1000);
        Ok(())
    })
}

#[test]
fn small_blocks_wrap_the_ring_many_times() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let lab = lab()?;
    lab.ns.run(|| {
        // Two 1500-byte frames fill a 4 KiB block: 150 frames walk ~19 times around 4 blocks.
        let config = RingConfig {
            block_size: 4096,
            block_count: 4,
            ..RingConfig::default()
        };
        let mut ring = PacketRing::open(link_index(&lab, &lab.b)?, config)?;
        let tx = Sender::open(link_index(&lab, &lab.a)?)?;
        let mut seq = 0;
        for _ in 0..30 {
            let sent: Vec<Vec<u8>> = (0..5)
                .map(|_| {
                    seq += 1;
                    frame(DST, seq, 1500)
                })
                .collect();
            for f in &sent {
                tx.send(f)?;
            }
            assert_eq!(drain(&mut ring, sent.len())?, sent);
        }
        let stats = ring.stats()?;
        assert_eq!((stats.packets, stats.drops, stats.truncated), (150, 0, 0));
        Ok(())
    })
}

#[test]
fn full_ring_drops_are_counted_by_the_kernel() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let lab = lab()?;
    lab.ns.run(|| {
        let config = RingConfig {
            block_size: 4096,
            block_count: 2,
            ..RingConfig::default()
        };
        let mut ring = PacketRing::open(link_index(&lab, &lab.b)?, config)?;
        let tx = Sender::open(link_index(&lab, &lab.a)?)?;
        // Nobody reads while 20 frames arrive; the ring holds about four of them.
        for seq in 0..20 {
            tx.send(&frame(DST, seq, 1500))?;
        }
        let got = drain(&mut ring, 20)?;
        let stats = ring.stats()?;
        assert!(
            got.len() < 20 && stats.drops > 0,
            "{} delivered, {stats:?}",
            got.len()
        );
        assert_eq!(got.len() as u64 + stats.drops, 20, "{stats:?}");
        assert_eq!(stats.packets, 20);
        assert!(stats.freeze_q_cnt > 0, "{stats:?}");
        // What was delivered is the first frames, intact and in order.
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, frame(DST, i as u32, 1500));
        }
        Ok(())
    })
}

#[test]
fn macvlan_ring_sees_only_its_own_mac() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let lab = lab()?;
    lab.ns.run(|| {
        let nl = Netlink::new()?;
        let parent = nl.require_link(&lab.b)?.index;
        let name = format!("xm{}", std::process::id());
        let mv = nl.add_macvlan(&name, parent, MacVlanMode::Bridge, Some(MACVLAN_MAC))?;
        nl.set_up(mv)?;
        let mut ring = PacketRing::open(mv, RingConfig::default())?;
        let tx = Sender::open(nl.require_link(&lab.a)?.index)?;
        let mut mine = Vec::new();
        for seq in 0..200u32 {
            let to_me = seq % 2 == 0;
            let f = frame(if to_me { MACVLAN_MAC } else { OTHER_MAC }, seq, 60);
            tx.send(&f)?;
            if to_me {
                mine.push(f);
            }
        }
        let got = drain(&mut ring, mine.len())?;
        assert_eq!(got.len(), 100);
        assert_eq!(got, mine);
        assert_eq!(ring.stats()?.packets, 100);
        Ok(())
    })
}

#[test]
fn errors_name_the_problem() -> Result<()> {
    let small = RingConfig {
        block_size: 1000,
        ..RingConfig::default()
    };
    let err = PacketRing::open(1, small)
        .err()
        .expect("unaligned block size accepted");
    assert!(format!("{err:#}").contains("page size"), "{err:#}");
    let no_timeout = RingConfig {
        retire_timeout_ms: 0,
        ..RingConfig::default()
    };
    assert!(PacketRing::open(1, no_timeout).is_err());
    if !is_root() {
        return Ok(());
    }
    let lab = lab()?;
    lab.ns.run(|| {
        let err = PacketRing::open(999_999, RingConfig::default())
            .err()
            .expect("bound to a missing interface");
        assert!(
            format!("{err:#}").contains("no interface with index 999999"),
            "{err:#}"
        );
        Ok(())
    })
}

#[test]
fn raw_socket_receives_in_batches_and_sends_back() -> Result<()> {
    use super::raw::{BATCH, Frames, RawSocket};
    if !is_root() {
        eprintln!("skipped: needs root");
        return Ok(());
    }
    let lab = lab()?;
    lab.ns.run(|| {
        // `b` reflects what `a` sends; `a`'s ring sees it come back.
        let mut back = PacketRing::open(link_index(&lab, &lab.a)?, RingConfig::default())?;
        let reflector = RawSocket::open(link_index(&lab, &lab.b)?)?;
        let tx = Sender::open(link_index(&lab, &lab.a)?)?;
        let sent: Vec<Vec<u8>> = (0..100u32)
            .map(|seq| frame(DST, seq, 60 + seq as usize))
            .collect();
        for f in &sent {
            tx.send(f)?;
        }
        let mut frames = Frames::default();
        let (mut received, mut reflected) = (Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.len() < sent.len() && Instant::now() < deadline {
            let n = reflector.recv(&mut frames)?;
            assert!(n <= BATCH);
            for i in 0..n {
                let f = frames.frame_mut(i);
                received.push(f.to_vec());
                let (dst, src) = f[..12].split_at_mut(6);
                dst.swap_with_slice(src);
            }
            reflected += reflector.send(&mut frames)?;
        }
        assert_eq!(received, sent, "every frame once, in order, byte for byte");
        assert_eq!(reflected, sent.len());
        // Its own transmissions are not received (PACKET_IGNORE_OUTGOING).
        assert_eq!(reflector.recv(&mut frames)?, 0);
        let returned = drain(&mut back, sent.len())?;
        assert_eq!(returned.len(), sent.len());
        for (r, s) in returned.iter().zip(&sent) {
            assert_eq!(
                (&r[..6], &r[6..12], &r[12..]),
                (&SRC[..], &DST[..], &s[12..])
            );
        }
        let err = RawSocket::open(0)
            .err()
            .expect("index 0 refused")
            .to_string();
        assert!(err.contains("index 0 names no interface"), "{err}");
        Ok(())
    })
}
