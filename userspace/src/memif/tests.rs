//! The Rust client against the real server over real sockets and shared memory, the port
//! driven the way the dataplane drives it (no dataplane needed), and hostile clients.
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::handshake::Limits;
use super::port::ServerPort;
use super::shm::{Desc, Region, Ring, ring_bytes};
use super::sock::{self, Received};
use super::wire::{self, AddRegion, AddRing, Init, MSG_SIZE, Msg, VERSION};
use super::*;
use crate::dataplane::{AppPort, RxRefused, TxFrame};

mod chains;

/// A frame the port handed over, joined; a refused one fails the test.
fn joined(item: TxFrame<'_>) -> Vec<u8> {
    match item {
        TxFrame::Send(segments) => segments.concat(),
        TxFrame::Refused(why) => panic!("refused: {why:?}"),
    }
}

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("xmacvlan-memif-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        Dir(d)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

const OWN_NS: &str = "/proc/self/ns/net";

fn server(dir: &Dir, timeout: Duration) -> PortServer {
    let mut cfg = PortServerConfig::new(&dir.0);
    cfg.handshake_timeout = timeout;
    PortServer::start(cfg).unwrap()
}

fn connected_port(srv: &PortServer) -> Box<ServerPort> {
    match srv.next_event(Duration::from_secs(5)) {
        Some(PortEvent::Connected { port, info, .. }) => {
            assert_eq!(info.pid, std::process::id());
            port
        }
        Some(PortEvent::Disconnected { reason, .. }) => panic!("disconnected: {reason}"),
        None => panic!("no Connected event"),
    }
}

fn frame(i: u32, len: usize, tagged: bool) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    if tagged {
        f[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        f[16..18].copy_from_slice(&[0x88, 0xb5]);
    } else {
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
    }
    f[len - 4..].copy_from_slice(&i.to_be_bytes());
    f
}

#[test]
fn client_and_server_exchange_frames_both_ways() {
    let dir = Dir::new("exchange");
    let srv = server(&dir, HANDSHAKE_TIMEOUT_TEST);
    let path = srv.serve("ep1", Path::new(OWN_NS)).unwrap();
    assert_eq!(path, dir.0.join("ep1.sock"));
    let cfg = ClientConfig {
        name: "unit".into(),
        log2_ring_size: 4,
        ..Default::default()
    };
    let mut client = Client::connect(&path, &cfg).unwrap();
    assert_eq!(client.server, "ep1");
    let mut port = connected_port(&srv);
    let status = srv.status();
    assert_eq!(status[0].client.as_ref().unwrap().client, "unit");

    // Server → client, tag stripped; a ring of 16 takes 16 and drops the 17th.
    let mut pushed = 0;
    for i in 0..17 {
        match port.rx_push(&[&frame(i, 100, true)], true) {
            Ok(()) => pushed += 1,
            Err(e) => assert_eq!(e, RxRefused::NoBuffer),
        }
    }
    assert_eq!(pushed, 16, "the 17th frame finds the ring full");
    assert_eq!(client.recv(|_| panic!("nothing before the flush")), 0);
    port.rx_flush();
    client.wait(Duration::from_secs(1)).unwrap();
    let mut got = Vec::new();
    client.recv(|f| got.push(f.to_vec()));
    assert_eq!(got.len(), 16);
    for (i, f) in got.iter().enumerate() {
        let mut want = frame(i as u32, 100, true);
        want.drain(12..16);
        assert_eq!(f, &want, "frame {i}");
    }
    // The buffers came back: 16 more fit.
    assert!((0..16).all(|i| port.rx_push(&[&frame(i, 60, false)], false).is_ok()));
    port.rx_flush();
    assert_eq!(client.recv(|f| assert_eq!(f.len(), 60)), 16);

    // Client → server.
    for i in 0..10 {
        assert!(client.send(&frame(i, 64 + i as usize, false)));
    }
    client.flush();
    let mut sent = Vec::new();
    assert_eq!(port.tx_drain(4, &mut |f| sent.push(joined(f))), 4);
    assert_eq!(port.tx_drain(64, &mut |f| sent.push(joined(f))), 6);
    assert_eq!(
        sent,
        (0..10)
            .map(|i| frame(i, 64 + i as usize, false))
            .collect::<Vec<_>>()
    );
    assert_eq!(client.tx_in_flight(), 0);

    // A second client is refused while the first is connected.
    // The client tells a refusal (with the server's reason) from a failure of its own.
    match Client::connect(&path, &cfg).err().unwrap() {
        MemifError::Refused { code, reason } => {
            assert_eq!(code, super::control::CODE_REFUSED);
            assert!(reason.contains("already has a client"), "{reason}");
        }
        other => panic!("not a refusal: {other:#}"),
    }

    // Leaving: the port is told, the endpoint is free again.
    client.close("done");
    match srv.next_event(Duration::from_secs(5)) {
        Some(PortEvent::Disconnected { endpoint, reason }) => {
            assert_eq!(endpoint, "ep1");
            assert!(reason.contains("done"), "{reason}");
        }
        _ => panic!("no Disconnected event"),
    }
    assert!(!port.is_connected());
    assert_eq!(
        port.rx_push(&[&frame(0, 60, false)], false),
        Err(RxRefused::NotConnected)
    );
    let _again = Client::connect(&path, &cfg).unwrap();
    connected_port(&srv);
    srv.unserve("ep1");
    assert!(!path.exists(), "the socket file goes with the endpoint");
}

const HANDSHAKE_TIMEOUT_TEST: Duration = Duration::from_millis(500);

/// A raw client speaking the wire format by hand, for the hostile cases.
struct Raw(std::os::fd::OwnedFd);
impl Raw {
    fn connect(path: &Path) -> Raw {
        let r = Raw(sock::connect(path).unwrap());
        match r.recv() {
            Some(Msg::Hello(h)) => {
                assert_eq!((h.min_version, h.max_version), (VERSION, VERSION));
                assert_eq!(h.max_log2_ring_size, Limits::default().max_log2_ring_size);
            }
            other => panic!("expected HELLO, got {other:?}"),
        }
        r
    }
    fn send(&self, m: &Msg, fd: Option<std::os::fd::BorrowedFd<'_>>) {
        sock::send(self.0.as_fd(), &m.encode(), fd).unwrap();
    }
    fn recv(&self) -> Option<Msg> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; MSG_SIZE + 1];
        while Instant::now() < deadline {
            match sock::recv(self.0.as_fd(), &mut buf).unwrap() {
                Received::Record { len: MSG_SIZE, .. } => {
                    return Some(Msg::decode(&buf[..MSG_SIZE]).unwrap());
                }
                Received::Record { len, .. } => panic!("{len}-byte record"),
                Received::Closed => return None,
                Received::Empty => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        panic!("no answer from the server");
    }
    /// The server's DISCONNECT reason, after which it closes the socket.
    fn refusal(&self) -> String {
        loop {
            match self.recv() {
                Some(Msg::Disconnect { reason, .. }) => {
                    assert!(
                        reason.contains(&0),
                        "the reason fits its field whole, NUL-terminated: {:?}",
                        wire::field_text(&reason)
                    );
                    assert!(
                        self.recv().is_none(),
                        "the socket is closed after DISCONNECT"
                    );
                    return wire::field_text(&reason);
                }
                Some(Msg::Ack) => continue,
                other => panic!("expected DISCONNECT, got {other:?}"),
            }
        }
    }
    fn init(&self, id: u32) {
        let init = Init {
            version: VERSION,
            id,
            mode: 0,
            secret: [0; 24],
            name: wire::name_field("raw"),
        };
        self.send(&Msg::Init(init), None);
    }
}

fn expect_refusal(path: &Path, steps: impl FnOnce(&Raw), want: &str) {
    let raw = Raw::connect(path);
    steps(&raw);
    let reason = raw.refusal();
    assert!(reason.contains(want), "expected {want:?} in {reason:?}");
}

fn sealed(size: usize) -> Region {
    Region::create("t", size).unwrap()
}

#[test]
fn hostile_clients_are_refused_with_a_reason() {
    let dir = Dir::new("hostile");
    let srv = server(&dir, HANDSHAKE_TIMEOUT_TEST);
    let path = srv.serve("ep1", Path::new(OWN_NS)).unwrap();

    expect_refusal(&path, |r| r.init(7), "interface id 7 does not exist");
    expect_refusal(
        &path,
        |r| {
            let init = Init {
                version: 0x0100,
                id: 0,
                mode: 0,
                secret: [0; 24],
                name: [0; 32],
            };
            r.send(&Msg::Init(init), None);
        },
        "memif version 1.0 is not supported",
    );
    expect_refusal(
        &path,
        |r| {
            r.send(
                &Msg::AddRegion(AddRegion {
                    index: 0,
                    size: 4096,
                }),
                Some(sealed(4096).fd()),
            )
        },
        "unexpected ADD_REGION before INIT",
    );
    expect_refusal(
        &path,
        |r| r.send(&Msg::Connect { if_name: [0; 32] }, None),
        "before INIT",
    );
    expect_refusal(
        &path,
        |r| {
            let mut m = [0u8; MSG_SIZE];
            m[0] = 42;
            sock::send(r.0.as_fd(), &m, None).unwrap();
        },
        "unknown control message type 42",
    );
    // A short record.
    expect_refusal(
        &path,
        |r| {
            // A write on a SOCK_SEQPACKET socket is one record: 10 bytes here.
            let f = std::fs::File::from(r.0.as_fd().try_clone_to_owned().unwrap());
            use std::io::Write;
            (&f).write_all(&[1u8; 10]).unwrap();
        },
        "malformed message: 10 bytes",
    );
    expect_refusal(
        &path,
        |r| {
            r.init(0);
            r.send(
                &Msg::AddRegion(AddRegion {
                    index: 0,
                    size: 4096,
                }),
                None,
            );
        },
        "without the region's memfd",
    );
    expect_refusal(
        &path,
        |r| {
            r.init(0);
            let memfd = std::fs::File::open("/proc/self/exe").unwrap();
            r.send(
                &Msg::AddRegion(AddRegion {
                    index: 0,
                    size: 4096,
                }),
                Some(memfd.as_fd()),
            );
        },
        "not a sealable memfd",
    );
    expect_refusal(
        &path,
        |r| {
            r.init(0);
            r.send(
                &Msg::AddRegion(AddRegion {
                    index: 0,
                    size: 1 << 20,
                }),
                Some(sealed(4096).fd()),
            );
        },
        "shorter than",
    );
    expect_refusal(
        &path,
        |r| {
            r.init(0);
            r.send(
                &Msg::AddRegion(AddRegion {
                    index: 0,
                    size: 1 << 40,
                }),
                Some(sealed(4096).fd()),
            );
        },
        "regions over",
    );
    let ring = |flags, log2, offset| {
        Msg::AddRing(AddRing {
            flags,
            index: 0,
            region: 0,
            offset,
            log2_ring_size: log2,
            private_hdr_size: 0,
        })
    };
    let region = sealed(1 << 16);
    let ev = sock::eventfd().unwrap();
    let setup = |r: &Raw| {
        r.init(0);
        r.send(
            &Msg::AddRegion(AddRegion {
                index: 0,
                size: 1 << 16,
            }),
            Some(region.fd()),
        );
    };
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 15, 0), Some(ev.as_fd()));
        },
        "ring size 2^15 is outside",
    );
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 12, 0), Some(ev.as_fd()));
        },
        "not fit",
    );
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 4, 65_280), Some(ev.as_fd()));
        },
        "not fit",
    );
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 4, 0), Some(region.fd()));
        },
        "not an eventfd",
    );
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 4, 0), Some(ev.as_fd()));
            r.send(&ring(1, 4, 4096), Some(ev.as_fd()));
        },
        "added twice",
    );
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 4, 0), Some(ev.as_fd()));
            r.send(&Msg::Connect { if_name: [0; 32] }, None);
        },
        "before both rings",
    );
    // Rings without the cookie.
    expect_refusal(
        &path,
        |r| {
            setup(r);
            r.send(&ring(1, 4, 0), Some(ev.as_fd()));
            r.send(&ring(0, 4, 4096), Some(ev.as_fd()));
            r.send(&Msg::Connect { if_name: [0; 32] }, None);
        },
        "cookie",
    );
    // A client that says nothing.
    let t = Instant::now();
    expect_refusal(&path, |_| {}, "handshake not completed");
    assert!(t.elapsed() >= HANDSHAKE_TIMEOUT_TEST);
    // After all that, a well-behaved client still gets in.
    let _ok = Client::connect(&path, &ClientConfig::default()).unwrap();
    connected_port(&srv);
}

/// A client connected by hand, so that it can then corrupt its own rings.
fn raw_connected(path: &Path) -> (Raw, Ring, Ring, u64) {
    let raw = Raw::connect(path);
    let size = 1u64 << 16;
    let region = std::sync::Arc::new(sealed(size as usize));
    let c2s = Ring::new(region.clone(), 0, 4).unwrap();
    let s2c = Ring::new(region.clone(), 4096, 4).unwrap();
    c2s.init();
    s2c.init();
    let ev = sock::eventfd().unwrap();
    raw.init(0);
    raw.send(
        &Msg::AddRegion(AddRegion { index: 0, size }),
        Some(region.fd()),
    );
    for (flags, offset) in [(1, 0), (0, 4096)] {
        let m = AddRing {
            flags,
            index: 0,
            region: 0,
            offset,
            log2_ring_size: 4,
            private_hdr_size: 0,
        };
        raw.send(&Msg::AddRing(m), Some(ev.as_fd()));
    }
    raw.send(
        &Msg::Connect {
            if_name: wire::name_field("raw"),
        },
        None,
    );
    for _ in 0..4 {
        assert_eq!(raw.recv(), Some(Msg::Ack));
    }
    assert!(matches!(raw.recv(), Some(Msg::Connected { .. })));
    assert!(ring_bytes(4) <= 4096);
    (raw, c2s, s2c, size)
}

fn assert_cut_off(srv: &PortServer, port: &ServerPort, raw: &Raw, want: &str) {
    assert!(!port.is_connected(), "the port is given up at once");
    let reason = raw.refusal();
    assert!(reason.contains(want), "expected {want:?} in {reason:?}");
    assert!(matches!(
        srv.next_event(Duration::from_secs(5)),
        Some(PortEvent::Disconnected { .. })
    ));
}

#[test]
fn hostile_rings_cut_the_client_off() {
    let dir = Dir::new("badring");
    let srv = server(&dir, HANDSHAKE_TIMEOUT_TEST);
    let path = srv.serve("ep1", Path::new(OWN_NS)).unwrap();

    // An S2C buffer ending past the region.
    let (raw, _c2s, s2c, size) = raw_connected(&path);
    let mut port = connected_port(&srv);
    s2c.set_desc(
        0,
        Desc {
            flags: 0,
            region: 0,
            length: 2048,
            offset: (size - 100) as u32,
            metadata: 0,
        },
    );
    s2c.set_head(1);
    assert_eq!(
        port.rx_push(&[&frame(0, 200, false)], false),
        Err(RxRefused::NotConnected)
    );
    assert_cut_off(&srv, &port, &raw, "outside its region");
    drop(raw);

    // A C2S descriptor in a region that does not exist.
    let (raw, c2s, _s2c, _) = raw_connected(&path);
    let mut port = connected_port(&srv);
    c2s.set_desc(
        0,
        Desc {
            flags: 0,
            region: 3,
            length: 60,
            offset: 0,
            metadata: 0,
        },
    );
    c2s.set_head(1);
    assert_eq!(port.tx_drain(64, &mut |_| panic!("nothing is sent")), 0);
    assert_cut_off(&srv, &port, &raw, "never added");
    drop(raw);

    // A C2S head further ahead than the ring is long.
    let (raw, c2s, _s2c, _) = raw_connected(&path);
    let mut port = connected_port(&srv);
    c2s.set_head(17);
    assert_eq!(port.tx_drain(64, &mut |_| panic!("nothing is sent")), 0);
    assert_cut_off(&srv, &port, &raw, "past the ring's size");
    drop(raw);
}
