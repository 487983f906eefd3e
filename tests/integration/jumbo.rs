//! Jumbo frames on the fast path, in a lab whose wire runs at MTU 9000: the classifier
//! (multi-buffer) attaches natively, the AF_XDP sockets are bound multi-buffer, and every
//! endpoint gets exactly its 64-, 1500- and 9000-byte frames, each whole: the 9000-byte ones
//! arrive as chains of three UMEM chunks and leave as one frame, into a port (every byte
//! compared with what the generator sent) or the dataplane's own consumer (length and the
//! probe's payload check). None goes to the kernel as too big, none is dropped, and every UMEM
//! chunk comes back. The other way, a port's 9000-byte frames leave the NIC whole, tagged, as
//! chains of chunks. Needs root.
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use xmacvlan::dataplane::port::for_each_piece;
use xmacvlan::dataplane::{AppPort, Dataplane, Finished, RxRefused, TxFrame};
use xmacvlan::frame::{payload_offset, read_payload};
use xmacvlan::modes::{Demux, XdpMode};
use xmacvlan_bench::generator::{Stream, StreamKind};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::capture::Capture;
use xmacvlan_tests::exact::{check_endpoints, sent_where};
use xmacvlan_tests::mem_port::info;
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root, wait_until};

const PER_STREAM: u64 = 200;
const JUMBO: usize = 9000;
const STANDARD: usize = 1500;
const SMALL: usize = 64;
/// A 9000-byte frame in UMEM chunks of 4096 less 256 bytes of headroom.
const JUMBO_CHUNKS: u64 = 3;

/// Per endpoint, a 1500-byte and a 9000-byte stream beside the lab's 64-byte one.
fn sized_streams(lab: &Lab) -> Vec<Stream> {
    let mut streams = Vec::new();
    for (i, ep) in lab.endpoints.iter().enumerate() {
        let frame = |len| TestFrame {
            dst: ep.mac,
            src: lab::GENERATOR_MAC,
            vid: (ep.vid != 0).then_some(ep.vid),
            qinq_outer: None,
            len,
        };
        streams.push(Stream::new(frame(STANDARD), StreamKind::Endpoint(i)));
        streams.push(Stream::new(frame(JUMBO), StreamKind::Endpoint(i)));
    }
    streams
}

/// What a [`CheckPort`] found: frames equal to what was sent, by length sent, and others.
#[derive(Default, Debug)]
struct Checked {
    /// Whole frames of 64, 1500 and 9000 bytes (as sent, tag included).
    whole: [AtomicU64; 3],
    /// Frames that differ from what their stream sent, in length or in any byte.
    bad: AtomicU64,
}

/// A port that compares every frame it is given, byte for byte, with the frame its stream
/// sent (the tag taken off; the per-send sequence number and time left out).
struct CheckPort {
    /// Per stream: the frame as the port should see it, and its length as sent.
    expected: Arc<Vec<(Vec<u8>, usize)>>,
    checked: Arc<Checked>,
    buf: Box<[u8]>,
    /// Frames the application sends.
    tx: Arc<ArrayQueue<Vec<u8>>>,
}

impl AppPort for CheckPort {
    fn rx_push(&mut self, frame: &[&[u8]], strip_tag: bool) -> Result<(), RxRefused> {
        let mut len = 0;
        for_each_piece(frame, strip_tag, |piece| {
            if let Some(dst) = self.buf.get_mut(len..len + piece.len()) {
                dst.copy_from_slice(piece);
            }
            len += piece.len();
        });
        let got = &self.buf[..len.min(self.buf.len())];
        let expected = read_payload(got).and_then(|p| self.expected.get(usize::from(p.stream)));
        let whole = expected.and_then(|(want, sent_len)| {
            let varies = payload_offset(want)? + 8..payload_offset(want)? + 24;
            let same = want.len() == got.len()
                && want[..varies.start] == got[..varies.start]
                && want[varies.end..] == got[varies.end..];
            same.then_some(*sent_len)
        });
        let c = &self.checked;
        match whole {
            Some(SMALL) => c.whole[0].fetch_add(1, Relaxed),
            Some(STANDARD) => c.whole[1].fetch_add(1, Relaxed),
            Some(JUMBO) => c.whole[2].fetch_add(1, Relaxed),
            _ => c.bad.fetch_add(1, Relaxed),
        };
        Ok(())
    }

    fn rx_flush(&mut self) {}

    fn tx_drain(&mut self, max: usize, send: &mut dyn FnMut(TxFrame<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.tx.pop() else { break };
            send(TxFrame::Send(&[&frame]));
            n += 1;
        }
        n
    }

    fn is_connected(&self) -> bool {
        true
    }
}

/// Each stream's frame as an untagging port receives it.
fn expected_frames(streams: &[Stream]) -> Vec<(Vec<u8>, usize)> {
    streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut f = s.bytes(i as u16);
            if s.frame.vid.is_some() {
                f.drain(12..16);
            }
            (f, s.frame.len)
        })
        .collect()
}

struct Run {
    finished: Finished,
    streams: Vec<Stream>,
    sent: Vec<u64>,
    /// Per endpoint: what its port found (every other endpoint has one; the rest are served
    /// by the dataplane's consumer).
    checked: Vec<Option<Arc<Checked>>>,
}

fn run_mixed(demux: Demux) -> Run {
    let topology = Topology {
        kernel_devices: KernelDevices::None,
        mtu: lab::mtu_for(JUMBO),
        ..Topology::default()
    };
    assert_eq!(topology.mtu, Some(9000));
    let lab = Lab::build(&topology).expect("building the lab");
    let mut streams = lab_streams(&lab.endpoints, SMALL, true);
    streams.extend(sized_streams(&lab));
    let expected = Arc::new(expected_frames(&streams));
    let checked: Vec<Option<Arc<Checked>>> = (0..lab.endpoints.len())
        .map(|i| (i % 2 == 0).then(Arc::default))
        .collect();
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(50_000),
        duration: Duration::from_secs(60),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let (finished, sent) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &lab.endpoints)?;
            let snap = dp.snapshot()?;
            assert_eq!(snap.xdp_mode, XdpMode::Native, "attached natively");
            assert!(snap.multi_buffer, "sockets bound with XDP_USE_SG");
            for (e, c) in lab.endpoints.iter().zip(&checked) {
                if let Some(c) = c {
                    let port = CheckPort {
                        expected: expected.clone(),
                        checked: c.clone(),
                        buf: vec![0; 16384].into_boxed_slice(),
                        tx: Arc::new(ArrayQueue::new(1)),
                    };
                    dp.connect_port(&e.name, Box::new(port), info(&e.name))?;
                }
            }
            let sent = run_traffic(&lab, &dp, 1, &streams, &traffic)?;
            Ok((dp.stop()?, sent))
        })
        .expect("running the lab");
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(
        namespaces_named(&prefix).is_empty(),
        "left behind: {:?}",
        namespaces_named(&prefix)
    );
    Run {
        finished,
        streams,
        sent: sent.per_stream,
        checked,
    }
}

fn check_mixed(run: &Run, what: &str) {
    let Run {
        finished,
        streams,
        sent,
        checked,
    } = run;
    assert!(sent.iter().all(|&n| n == PER_STREAM), "{what}: {sent:?}");
    let delivered = check_endpoints(finished, streams, sent);
    for (e, c) in finished.endpoints.iter().zip(checked) {
        let name = &e.spec.name;
        assert_eq!(e.frames, 3 * PER_STREAM, "{what} {name}: all three sizes");
        assert_eq!(
            e.bytes,
            PER_STREAM * (SMALL + STANDARD + JUMBO) as u64,
            "{what} {name}: every frame whole"
        );
        if let Some(c) = c {
            let whole = c.whole.each_ref().map(|n| n.load(Relaxed));
            assert_eq!(
                (whole, c.bad.load(Relaxed)),
                ([PER_STREAM; 3], 0),
                "{what} {name}: its port got each frame whole, byte for byte"
            );
            let port = e.port.as_ref().expect("still connected at stop");
            assert_eq!(port.rx_frames, 3 * PER_STREAM, "{what} {name}: {port:?}");
            assert_eq!(port.rx_dropped(), 0, "{what} {name}: {port:?}");
        }
    }
    let jumbo = sent_where(streams, sent, |s| s.frame.len == JUMBO);
    assert_eq!(jumbo, PER_STREAM * finished.endpoints.len() as u64);
    let x = &finished.xdp;
    assert_eq!(
        x.pass_too_big, 0,
        "{what}: multi-buffer takes them all: {x:?}"
    );
    assert_eq!(x.redirected, delivered, "{what}: {x:?}");
    assert_eq!(x.pass_no_socket, 0, "{what}: {x:?}");
    Ledger::finished(sent.iter().sum(), finished, &[]).assert_balanced(what);
    let sum = |f: fn(&xmacvlan::dataplane::QueueSnapshot) -> u64| -> u64 {
        finished.queues.iter().map(f).sum()
    };
    assert_eq!(
        sum(|q| q.received),
        delivered,
        "{what}: frames counted once"
    );
    assert_eq!(
        sum(|q| q.chunks),
        delivered + (JUMBO_CHUNKS - 1) * jumbo,
        "{what}: a 9000-byte frame is three chunks"
    );
    let checked_jumbo: u64 = checked
        .iter()
        .flatten()
        .map(|c| c.whole[2].load(Relaxed))
        .sum();
    // What the report quotes (shown with --nocapture).
    eprintln!(
        "{what}: {jumbo} frames of 9000 bytes sent, {delivered} frames of all sizes delivered, \
         {checked_jumbo} of 9000 bytes compared whole in ports; chunks {}, too big {}",
        sum(|q| q.chunks),
        x.pass_too_big
    );
    for q in &finished.queues {
        assert_eq!(q.socket.dropped(), 0, "{what}: queue socket drops: {q:?}");
        assert_eq!(
            (
                q.dropped_ring_full,
                q.dropped_unknown,
                q.dropped_broken_chain
            ),
            (0, 0, 0),
            "{what}: {q:?}"
        );
        assert_eq!(
            (q.frames_lost, q.frames_duplicate, q.frames_elsewhere()),
            (0, 0, 0),
            "{what}: every chunk back: {q:?}"
        );
    }
}

#[test]
fn xdp_demux_at_mtu_9000_delivers_every_size_whole() {
    require_root();
    let run = run_mixed(Demux::Xdp);
    check_mixed(&run, "xdp demux");
}

#[test]
fn user_demux_at_mtu_9000_delivers_every_size_whole() {
    require_root();
    let run = run_mixed(Demux::User);
    check_mixed(&run, "user demux");
    let steered: u64 = run.finished.queues.iter().map(|q| q.steered).sum();
    assert_eq!(steered, run.finished.xdp.redirected, "chains steered whole");
}

/// Frames each port sends of each size.
const SENT_PER_SIZE: usize = 20;

/// A frame an application on endpoint `mac` sends: untagged, its bytes counting from `seq`.
fn app_frame(mac: [u8; 6], len: usize, seq: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x99];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.extend((0..len - 14).map(|i| ((i + seq * 7) % 251) as u8));
    f
}

fn ports_send_jumbo_frames(demux: Demux) {
    let what = format!("{demux:?} demux");
    let topology = Topology {
        kernel_devices: KernelDevices::None,
        mtu: lab::mtu_for(JUMBO),
        ..Topology::default()
    };
    let lab = Lab::build(&topology).expect("building the lab");
    let capture = lab.wire.run(|| Capture::open(lab::WIRE)).expect("capture");
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let sizes = [SMALL, STANDARD, JUMBO];
    let per_port = sizes.len() * SENT_PER_SIZE;
    let (ports, queues) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &lab.endpoints)?;
            assert!(dp.snapshot()?.multi_buffer, "{what}: XDP_USE_SG bound");
            for e in &lab.endpoints {
                let tx = Arc::new(ArrayQueue::new(per_port));
                for seq in 0..SENT_PER_SIZE {
                    for len in sizes {
                        tx.push(app_frame(e.mac, len, seq)).unwrap();
                    }
                }
                let port = CheckPort {
                    expected: Arc::default(),
                    checked: Arc::default(),
                    buf: vec![0; 16384].into_boxed_slice(),
                    tx,
                };
                dp.connect_port(&e.name, Box::new(port), info(&e.name))?;
            }
            let sent_all = |dp: &Dataplane| {
                lab.endpoints.iter().all(|e| {
                    dp.port(&e.name)
                        .is_some_and(|p| p.tx_frames + p.tx_dropped() == per_port as u64)
                }) && dp
                    .snapshot()
                    .unwrap()
                    .queues
                    .iter()
                    .all(|q| q.tx_pool_free == q.tx_pool)
            };
            assert!(
                wait_until(Duration::from_secs(10), || sent_all(&dp)),
                "{what}: every frame sent and its chunks completed"
            );
            let ports: Vec<_> = lab.endpoints.iter().map(|e| dp.port(&e.name)).collect();
            let queues = dp.snapshot()?.queues;
            dp.stop()?;
            Ok((ports, queues))
        })
        .expect("running the lab");

    let mut on_wire = vec![Vec::new(); lab.endpoints.len()];
    while let Some(f) = capture.next(Duration::from_millis(500)).unwrap() {
        if let Some(i) = lab.endpoints.iter().position(|e| f[6..12] == e.mac) {
            on_wire[i].push(f);
        }
    }
    let mut chunks = 0;
    for ((e, port), frames) in lab.endpoints.iter().zip(&ports).zip(&on_wire) {
        let name = &e.name;
        let p = port.as_ref().expect("connected");
        assert_eq!(
            (p.tx_frames, p.tx_dropped()),
            (per_port as u64, 0),
            "{what} {name}: {p:?}"
        );
        assert_eq!(frames.len(), per_port, "{what} {name}: frames on the wire");
        for (i, f) in frames.iter().enumerate() {
            let mut want = app_frame(e.mac, sizes[i % sizes.len()], i / sizes.len());
            if e.vid != 0 {
                let tci = e.vid.to_be_bytes();
                want.splice(12..12, [0x81, 0x00, tci[0], tci[1]]);
            }
            assert!(
                *f == want,
                "{what} {name}: frame {i} of {} bytes whole, tagged",
                f.len()
            );
            chunks += f.len().div_ceil(3840);
        }
    }
    let completed: u64 = queues.iter().map(|q| q.tx_completed).sum();
    assert_eq!(
        completed, chunks as u64,
        "{what}: every chunk of every chain back"
    );
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty());
}

#[test]
fn xdp_demux_ports_send_9000_byte_frames_whole() {
    require_root();
    ports_send_jumbo_frames(Demux::Xdp);
}

#[test]
fn user_demux_ports_send_9000_byte_frames_whole() {
    require_root();
    ports_send_jumbo_frames(Demux::User);
}
