//! Isolation: 64 endpoints on four VLANs (some sharing a MAC across VLANs, so only the tag
//! tells them apart) under randomized traffic with spoofed, unknown, group, stacked, cut and
//! control frames mixed in. Every endpoint gets exactly its own frames, nobody gets a foreign
//! one, and every other frame is passed to the kernel under the reason the test predicted.
//! Then slot reuse: an endpoint removed under traffic and replaced in its slot by another MAC
//! never hands its in-flight frames to the newcomer. Both demux modes; 64 endpoints is where
//! a pass starts visiting only endpoints with work, so the isolation runs cover that too, in
//! both thread layouts. Needs root.
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use xmacvlan::abi::Mac;
use xmacvlan::dataplane::{Dataplane, EndpointResult, EndpointSpec, Finished};
use xmacvlan::frame::{BROADCAST, ETHERTYPE_ARP};
use xmacvlan::modes::{Demux, Threads};
use xmacvlan_bench::generator::{self, Pace, PaceSent, Stream, StreamKind};
use xmacvlan_bench::lab;
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, run_traffic};
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::{check_endpoints, sent_where};
use xmacvlan_tests::pace::{self, Delivered};
use xmacvlan_tests::resources::slot_of;
use xmacvlan_tests::rng::Rng;
use xmacvlan_tests::{bare_lab, dataplane_config, require_root};

const VLANS: [u16; 4] = [0, 100, 200, 300];
const PER_VLAN: usize = 16;
/// Endpoints `0..SHARED` of every VLAN share their MAC with their peers on the other VLANs.
const SHARED: usize = 4;
const UNKNOWN: Mac = [0x02, 0x58, 0x4d, 0xee, 0xee, 0xee];
const PER_STREAM: u64 = 400;
const ADVERSARIAL: usize = 64;

/// What the classifier must do with a stream's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver(usize),
    Miss,
    Group,
    Stacked,
    Malformed,
    Control,
}

fn endpoints() -> Vec<EndpointSpec> {
    let mut out = Vec::new();
    for vid in VLANS {
        for i in 0..PER_VLAN {
            let mac = if i < SHARED {
                [0x02, 0x58, 0xaa, 0, 0, i as u8 + 1]
            } else {
                lab::endpoint_mac(vid, i)
            };
            out.push(EndpointSpec {
                name: lab::endpoint_name(vid, i),
                vid,
                mac,
            });
        }
    }
    out
}

fn to(dst: Mac, vid: Option<u16>, len: usize) -> TestFrame {
    TestFrame {
        dst,
        src: lab::GENERATOR_MAC,
        vid,
        qinq_outer: None,
        len,
    }
}

fn tag(vid: u16) -> Option<u16> {
    (vid != 0).then_some(vid)
}

/// The fate of a plain test frame, from the endpoint table alone (the test's own oracle).
fn unicast_fate(eps: &[EndpointSpec], vid: Option<u16>, dst: Mac) -> Fate {
    if dst[0] & 1 != 0 {
        return Fate::Group;
    }
    let vid = vid.unwrap_or(0) & 0x0fff;
    eps.iter()
        .position(|e| e.vid == vid && e.mac == dst)
        .map_or(Fate::Miss, Fate::Deliver)
}

fn stream(frame: TestFrame, fate: Fate) -> (Stream, Fate) {
    let kind = match fate {
        Fate::Deliver(i) => StreamKind::Endpoint(i),
        Fate::Miss => StreamKind::UnknownUnicast,
        Fate::Group => StreamKind::Broadcast,
        _ => StreamKind::Other,
    };
    (Stream::new(frame, kind), fate)
}

/// One to three streams per endpoint (random sizes, so endpoints get different amounts),
/// broadcast and an unknown MAC per VLAN, and randomly aimed hostile frames; shuffled.
fn random_traffic(eps: &[EndpointSpec], rng: &mut Rng) -> Vec<(Stream, Fate)> {
    let mut out = Vec::new();
    for (i, e) in eps.iter().enumerate() {
        for _ in 0..1 + rng.below(3) {
            let len = 60 + rng.below(1340);
            out.push(stream(to(e.mac, tag(e.vid), len), Fate::Deliver(i)));
        }
    }
    for vid in VLANS {
        out.push(stream(to(BROADCAST, tag(vid), 64), Fate::Group));
        out.push(stream(to(UNKNOWN, tag(vid), 64), Fate::Miss));
    }
    for _ in 0..ADVERSARIAL {
        let target = rng.below(eps.len());
        let e = &eps[target];
        let some_vid = VLANS[rng.below(VLANS.len())];
        let plain =
            |dst: Mac, vid: Option<u16>| stream(to(dst, vid, 64), unicast_fate(eps, vid, dst));
        out.push(match rng.below(9) {
            // The right MAC on another VLAN: only a peer with that MAC there may get it.
            0 => plain(e.mac, tag(some_vid)),
            // One bit away from a real MAC (never the group bit).
            1 => {
                let mut mac = e.mac;
                let byte = 1 + rng.below(5);
                mac[byte] ^= 1 << rng.below(8);
                plain(mac, tag(e.vid))
            }
            // The MAC with its group bit set.
            2 => {
                let mut mac = e.mac;
                mac[0] |= 1;
                plain(mac, tag(e.vid))
            }
            // VLAN 4095 (reserved) to a real MAC.
            3 => plain(e.mac, Some(4095)),
            // A spoofed source (another endpoint's MAC) changes nothing: delivered to dst.
            4 => {
                let mut s = plain(e.mac, tag(e.vid));
                s.0.frame.src = eps[rng.below(eps.len())].mac;
                s
            }
            // QinQ around the right tag.
            5 => stream(
                TestFrame {
                    qinq_outer: Some(some_vid),
                    ..to(e.mac, Some(e.vid), 64)
                },
                Fate::Stacked,
            ),
            // Cut inside the 802.1Q tag.
            6 => {
                let (s, fate) = stream(to(e.mac, Some(some_vid.max(1)), 64), Fate::Malformed);
                (s.truncated(16 + rng.below(2)), fate)
            }
            // ARP to the endpoint: its kernel device answers it.
            7 => {
                let (s, fate) = stream(to(e.mac, tag(e.vid), 64), Fate::Control);
                (s.with_ethertype(ETHERTYPE_ARP), fate)
            }
            // A priority tag (802.1Q, VLAN 0) is untagged traffic to the VLAN-0 endpoint.
            _ => plain(eps[rng.below(PER_VLAN)].mac, Some(0)),
        });
    }
    rng.shuffle(&mut out);
    out
}

fn isolation(demux: Demux, threads: Threads) {
    let mut rng = Rng::seeded(&format!("isolation {demux:?}"));
    let eps = endpoints();
    assert!(
        eps.len() >= xmacvlan::dataplane::SPARSE_FROM,
        "enough endpoints that passes visit only those with work"
    );
    let traffic = random_traffic(&eps, &mut rng);
    let (streams, fates): (Vec<Stream>, Vec<Fate>) = traffic.into_iter().unzip();
    // The lab's own endpoints are not used: only its NIC and wire.
    let lab = bare_lab::build();
    let mut cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    cfg.layout = xmacvlan::dataplane::Layout::for_cores(Some(threads), 1);
    let config = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(100_000),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let (finished, sent) = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &eps)?;
            let sent = run_traffic(&lab, &dp, 1, &streams, &config)?;
            anyhow::Ok((dp.stop()?, sent))
        })
        .expect("running the lab");
    bare_lab::tear_down(lab);

    let per = &sent.per_stream;
    assert!(
        per.iter().all(|&n| n == PER_STREAM),
        "every stream sent in full"
    );
    let delivered = check_endpoints(&finished, &streams, per);
    let of = |want: Fate| {
        fates
            .iter()
            .zip(per)
            .filter(|(f, _)| **f == want)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let x = &finished.xdp;
    let to_endpoints = sent_where(&streams, per, |s| matches!(s.kind, StreamKind::Endpoint(_)));
    assert_eq!(delivered, to_endpoints, "{demux:?}");
    assert_eq!(x.redirected, delivered, "{demux:?}: {x:?}");
    assert_eq!(
        x.pass_miss,
        of(Fate::Miss),
        "{demux:?}: unknown keys: {x:?}"
    );
    assert_eq!(x.pass_bcast_mcast, of(Fate::Group), "{demux:?}: {x:?}");
    assert_eq!(x.pass_qinq, of(Fate::Stacked), "{demux:?}: {x:?}");
    assert_eq!(x.malformed, of(Fate::Malformed), "{demux:?}: {x:?}");
    assert_eq!(x.pass_control, of(Fate::Control), "{demux:?}: {x:?}");
    assert_eq!(x.pass_no_socket, 0, "{demux:?}: {x:?}");
    assert!(
        of(Fate::Miss) > 0 && of(Fate::Group) > 0,
        "hostile traffic was sent"
    );
    let ledger = Ledger::finished(sent.total(), &finished, &[]);
    ledger.assert_balanced(&format!("{demux:?}"));
    assert_eq!(ledger.dropped_total(), 0, "{demux:?}: {ledger:#?}");
    if demux == Demux::User {
        let steered: u64 = finished.queues.iter().map(|q| q.steered).sum();
        assert_eq!(
            steered, delivered,
            "the userspace demux steered each frame once"
        );
    }
    println!(
        "isolation {demux:?}, {threads}: {} endpoints, {} streams, {} frames: {delivered} delivered, {} passed, 0 misdelivered",
        eps.len(),
        streams.len(),
        sent.total(),
        x.passed()
    );
}

#[test]
fn xdp_demux_isolates_64_endpoints_on_4_vlans() {
    require_root();
    isolation(Demux::Xdp, Threads::RunToCompletion);
}

#[test]
fn user_demux_isolates_64_endpoints_on_4_vlans() {
    require_root();
    isolation(Demux::User, Threads::RunToCompletion);
}

/// Split threads: `xdp` demux still visits only readable sockets (epoll), `user` demux
/// sweeps every ring (its worker thread's hints are not the consumer's to read).
#[test]
fn xdp_demux_isolates_64_endpoints_with_split_threads() {
    require_root();
    isolation(Demux::Xdp, Threads::Split);
}

#[test]
fn user_demux_isolates_64_endpoints_with_split_threads() {
    require_root();
    isolation(Demux::User, Threads::Split);
}

const REUSE_CYCLES: usize = 20;

/// Endpoint "a" (one MAC) and "b" (another) take turns in one slot while frames to both
/// flow: each removal leaves the holder's frames in flight, and the next add takes the freed
/// slot (read back from the classifier's key map).
fn slot_reuse(demux: Demux) {
    let steady: Vec<EndpointSpec> = (0..6)
        .map(|i| EndpointSpec {
            name: format!("steady-{i}"),
            vid: [100, 0][i % 2],
            mac: lab::endpoint_mac(7, i),
        })
        .collect();
    let turn = |n: usize| EndpointSpec {
        name: format!("{}-{n}", ["a", "b"][n % 2]),
        vid: 100,
        mac: lab::endpoint_mac(9, n % 2),
    };
    // Streams: the steady endpoints, then "a" and "b" (their MACs, whoever is attached).
    let mut streams: Vec<Stream> = steady
        .iter()
        .enumerate()
        .map(|(i, e)| stream(to(e.mac, tag(e.vid), 64), Fate::Deliver(i)).0)
        .collect();
    for n in 0..2 {
        streams.push(Stream::new(
            to(turn(n).mac, Some(100), 64),
            StreamKind::Other,
        ));
    }
    let lab = bare_lab::build();
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let gen_cfg = bare_lab::generator_until_stopped(Some(100_000));
    let stop = AtomicBool::new(false);
    let mut first = steady.clone();
    first.push(turn(0));
    let (sent, finished, removed) = lab
        .host
        .run(|| {
            let mut dp = Dataplane::start(&cfg, &first)?;
            let mut removed = Vec::new();
            // Paced on the steady endpoints, which stay attached throughout.
            let steady_frames = Delivered::of(&dp, |n| n.starts_with("steady-"));
            let delivered = || steady_frames.frames();
            let pace_sent = PaceSent::default();
            let pace = Pace::delivered(&pace_sent, &delivered, pace::WINDOW);
            std::thread::scope(|s| {
                let generator = s.spawn(|| {
                    lab.wire
                        .run(|| generator::run_paced(&gen_cfg, &streams, &stop, Some(pace)))
                });
                let stopper = bare_lab::StopOnDrop(&stop);
                for n in 0..REUSE_CYCLES {
                    std::thread::sleep(Duration::from_millis(40));
                    wait_for_frames(&dp, &turn(n).name);
                    let slot = slot_of(turn(n).key()).expect("an attached endpoint has a slot");
                    removed.push(dp.remove_endpoint(&turn(n).name)?);
                    assert_eq!(slot_of(turn(n).key()), None, "the old key is gone");
                    dp.add_endpoint(turn(n + 1))?;
                    assert_eq!(
                        slot_of(turn(n + 1).key()),
                        Some(slot),
                        "{demux:?}: the newcomer took the freed slot"
                    );
                }
                wait_for_frames(&dp, &turn(REUSE_CYCLES).name);
                drop(stopper);
                let sent = generator.join().expect("generator panicked")?;
                bare_lab::drain(&dp);
                anyhow::Ok((sent, dp.stop()?, removed))
            })
        })
        .expect("running the lab");
    bare_lab::tear_down(lab);
    check_reuse(demux, &streams, &sent.per_stream, &finished, &removed);
    let ledger = Ledger::finished(sent.total(), &finished, &removed);
    ledger.assert_balanced(&format!("{demux:?}"));
    println!("slot reuse {demux:?}: {ledger:?}");
}

/// Wait (up to 5 s: a loaded machine may start the generator late) until the endpoint has
/// received a frame, so it is removed with its traffic flowing.
fn wait_for_frames(dp: &Dataplane, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let counters = dp.endpoint_counters();
        let (_, c) = counters
            .iter()
            .find(|(e, _)| e.name == name)
            .expect("attached");
        if c.frames.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn check_reuse(
    demux: Demux,
    streams: &[Stream],
    sent: &[u64],
    finished: &Finished,
    removed: &[EndpointResult],
) {
    let (steady, last) = finished.endpoints.split_at(finished.endpoints.len() - 1);
    // The untouched endpoints lost nothing and got nothing foreign.
    for (i, e) in steady.iter().enumerate() {
        let expected = sent_where(streams, sent, |s| s.kind == StreamKind::Endpoint(i));
        assert_eq!(e.frames, expected, "{demux:?} {}: lost frames", e.spec.name);
        assert_eq!(
            (e.misdelivered, e.dropped),
            (0, 0),
            "{demux:?} {}",
            e.spec.name
        );
    }
    // Every incarnation of "a" and "b" received while attached, and only its own frames:
    // a frame of the previous holder of the slot would carry the other MAC.
    assert_eq!(removed.len(), REUSE_CYCLES);
    for e in removed.iter().chain(last) {
        assert_eq!(
            e.misdelivered, 0,
            "{demux:?} {}: got the previous holder's frames",
            e.spec.name
        );
        assert!(
            e.frames > 0,
            "{demux:?} {}: no traffic while attached",
            e.spec.name
        );
    }
    for (n, mac_stream) in [(0, streams.len() - 2), (1, streams.len() - 1)] {
        let got: u64 = removed
            .iter()
            .chain(last)
            .filter(|e| e.spec.name.starts_with(["a-", "b-"][n]))
            .map(|e| e.frames)
            .sum();
        assert!(
            got <= sent[mac_stream],
            "{demux:?}: more frames than were sent"
        );
    }
    println!(
        "slot reuse {demux:?}: {REUSE_CYCLES} removals under traffic, slot handed over each time, 0 misdelivered"
    );
}

#[test]
fn xdp_demux_reused_slot_never_gets_old_frames() {
    require_root();
    slot_reuse(Demux::Xdp);
}

#[test]
fn user_demux_reused_slot_never_gets_old_frames() {
    require_root();
    slot_reuse(Demux::User);
}
