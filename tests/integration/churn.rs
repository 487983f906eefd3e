//! Churn: 1000 endpoint add/remove cycles on a running dataplane while traffic flows to the
//! endpoints that stay. Those lose nothing; nothing is misdelivered; every frame is accounted
//! for; and the process holds exactly what it held after warm-up (fds, sockets, BPF programs,
//! maps, links, key-map entries, XDP sockets in the namespace, threads), with resident memory
//! within a small bound. After stopping, it holds what it held before starting. One test runs
//! both demux modes in turn: the counts are per process, so nothing else may run beside it.
//! Needs root.
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use xmacvlan::dataplane::{Dataplane, EndpointSpec, SocketStats};
use xmacvlan::modes::Demux;
use xmacvlan_bench::generator::{self, Pace, PaceSent, Stream, StreamKind};
use xmacvlan_bench::lab;
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::sent_where;
use xmacvlan_tests::pace::{self, Delivered};
use xmacvlan_tests::resources::{Held, held, rss_bytes, settle_to, stable};
use xmacvlan_tests::{bare_lab, dataplane_config, require_root};

const CYCLES: usize = 1000;
/// Readings are compared from here on: first-use allocations (thread stacks touched, the
/// allocator's arenas, the kernel's socket caches) happen before it.
const WARMUP: usize = 100;
/// Resident memory may move this much between warm-up and the end: one cycle's endpoint
/// (sockets, a 4096-entry descriptor ring, a latency histogram) is tens of KiB, so a leak of
/// even a small part of it over 900 cycles would exceed this.
const RSS_SLACK: u64 = 2 << 20;
const CHURN_VLAN: u16 = 200;
/// How long a resource reading may take to reach the expected one: closes of sockets and
/// threads finish asynchronously, and a busy machine delays them.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait (bounded) until the steady endpoints receive: the generator is running.
fn wait_until_delivering(frames: &Delivered) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while frames.frames() == 0 {
        assert!(
            Instant::now() < deadline,
            "the generator sent nothing to the steady endpoints within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

struct Outcome {
    seconds: f64,
    rss_drift: i64,
    frames_sent: u64,
}

fn to(e: &EndpointSpec) -> TestFrame {
    TestFrame {
        dst: e.mac,
        src: lab::GENERATOR_MAC,
        vid: (e.vid != 0).then_some(e.vid),
        qinq_outer: None,
        len: 64,
    }
}

fn churned(n: usize) -> EndpointSpec {
    EndpointSpec {
        name: format!("churn-{n}"),
        vid: CHURN_VLAN,
        mac: lab::endpoint_mac(CHURN_VLAN, n % 4),
    }
}

fn churn(demux: Demux) -> Outcome {
    let steady: Vec<EndpointSpec> = (0..8)
        .map(|i| {
            let vid = [100, 0][i % 2];
            EndpointSpec {
                name: format!("steady-{i}"),
                vid,
                mac: lab::endpoint_mac(vid, i),
            }
        })
        .collect();
    // Traffic to the steady endpoints and to the four MACs the churned endpoints take turns on.
    let mut streams: Vec<Stream> = steady
        .iter()
        .enumerate()
        .map(|(i, e)| Stream::new(to(e), StreamKind::Endpoint(i)))
        .collect();
    streams.extend((0..4).map(|n| Stream::new(to(&churned(n)), StreamKind::Other)));
    let lab = bare_lab::build();
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let gen_cfg = bare_lab::generator_until_stopped(Some(30_000));
    let stop = AtomicBool::new(false);
    let outcome = lab
        .host
        .run(|| {
            let before = stable(SETTLE);
            let mut dp = Dataplane::start(&cfg, &steady)?;
            let started = Instant::now();
            // Paced on the steady endpoints: nothing is lost to a busy CPU, so they get every
            // frame sent to them.
            let steady_frames = Delivered::of(&dp, |_| true);
            let delivered = || steady_frames.frames();
            let pace_sent = PaceSent::default();
            let pace = Pace::delivered(&pace_sent, &delivered, pace::WINDOW);
            let (sent, churn_frames, churn_socket, warm, end, rss) = std::thread::scope(|s| {
                let generator = s.spawn(|| {
                    lab.wire
                        .run(|| generator::run_paced(&gen_cfg, &streams, &stop, Some(pace)))
                });
                let mut frames = 0;
                let mut socket = SocketStats::default();
                let mut warm = (Held::default(), 0);
                let mut rss = Vec::new();
                let stopper = bare_lab::StopOnDrop(&stop);
                // The generator (a thread of this process) holds an AF_XDP socket: it must be
                // open before the warm-up reading, or a busy machine that starts it late
                // shows its socket as growth (`fds: 18, sockets: 2` vs `17, 1`).
                wait_until_delivering(&steady_frames);
                dp.add_endpoint(churned(0))?;
                // Each cycle adds the next endpoint, then removes the previous one: one or two
                // churned endpoints are attached at any time, and slots are reused constantly.
                for n in 1..=CYCLES {
                    dp.add_endpoint(churned(n))?;
                    let gone = dp.remove_endpoint(&churned(n - 1).name)?;
                    assert_eq!(gone.misdelivered, 0, "{demux:?} {}", gone.spec.name);
                    frames += gone.frames;
                    socket.add(&gone.socket_stats);
                    if n == WARMUP {
                        warm = (stable(SETTLE), rss_bytes());
                    }
                    if n % 100 == 0 {
                        rss.push(rss_bytes());
                    }
                }
                // Same point in the cycle as the warm-up reading: one churned endpoint attached.
                // The last removal's socket closes asynchronously: wait for it (bounded).
                let end = (settle_to(&warm.0, SETTLE), rss_bytes());
                let last = dp.remove_endpoint(&churned(CYCLES).name)?;
                frames += last.frames;
                socket.add(&last.socket_stats);
                let only_steady = held();
                assert_eq!(
                    only_steady.hash_map_entries,
                    steady.len(),
                    "{demux:?}: the key map holds exactly the attached endpoints"
                );
                drop(stopper);
                let sent = generator.join().expect("generator panicked")?;
                anyhow::Ok((sent, frames, socket, warm, end, rss))
            })?;
            let seconds = started.elapsed().as_secs_f64();
            bare_lab::drain(&dp);
            let finished = dp.stop()?;
            if let Err(after) = settle_to(&before, SETTLE) {
                panic!(
                    "{demux:?}: a stopped dataplane holds nothing: still held {SETTLE:?} after \
                     stopping {after:?}, before starting {before:?}"
                );
            }
            let end = match end {
                (Ok(held), rss) => (held, rss),
                (Err(end), _) => panic!(
                    "{demux:?}: grew during churn: {end:?} after {CYCLES} cycles (and {SETTLE:?} \
                     for closes to finish), {:?} at warm-up",
                    warm.0
                ),
            };
            let rss_drift = end.1 as i64 - warm.1 as i64;
            assert!(
                rss_drift <= RSS_SLACK as i64,
                "{demux:?}: resident memory grew {rss_drift} bytes over {} cycles; per 100: {rss:?}",
                CYCLES - WARMUP
            );
            let endpoints = finished
                .endpoints
                .iter()
                .map(|e| (e.frames, e.socket_stats))
                .chain([(churn_frames, churn_socket)]);
            let ledger = Ledger::new(sent.total(), finished.xdp, endpoints, &finished.queues);
            ledger.assert_balanced(&format!("{demux:?} churn"));
            // The steady endpoints got everything sent to them, and only that.
            for (i, e) in finished.endpoints.iter().enumerate() {
                let expected = sent_where(&streams, &sent.per_stream, |s| {
                    s.kind == StreamKind::Endpoint(i)
                });
                assert_eq!(
                    e.frames, expected,
                    "{demux:?} {}: lost frames (its drops: {}); {ledger:?}",
                    e.spec.name, e.dropped
                );
                assert_eq!((e.misdelivered, e.dropped), (0, 0), "{demux:?} {}", e.spec.name);
            }
            println!(
                "churn {demux:?}: {CYCLES} cycles in {seconds:.1} s, {} frames sent, held {:?}, \
                 RSS {} KiB at warm-up, drift {rss_drift} B; {ledger:?}",
                sent.total(),
                end.0,
                warm.1 >> 10
            );
            anyhow::Ok(Outcome {
                seconds,
                rss_drift,
                frames_sent: sent.total(),
            })
        })
        .expect("running the lab");
    bare_lab::tear_down(lab);
    outcome
}

#[test]
fn churn_1000_cycles_under_traffic_leaks_nothing() {
    require_root();
    for demux in [Demux::Xdp, Demux::User] {
        let o = churn(demux);
        assert!(o.frames_sent > 0 && o.seconds > 0.0);
        println!(
            "churn {demux:?}: {CYCLES} cycles, {:.1} ms a cycle, RSS drift {} B",
            o.seconds * 1000.0 / CYCLES as f64,
            o.rss_drift
        );
    }
}
