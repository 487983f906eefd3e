//! Soak: the dataplane at the generator's full rate for 60 seconds in each demux mode
//! (`SOAK_SECS` shortens it for local iteration; CI runs 60). Resident memory, sampled every
//! second, stays within 5 % after warm-up, and every frame is accounted for from the
//! dataplane's live snapshot and again from its final numbers: delivered + passed +
//! dropped-by-reason = sent, with 0 misdelivered. One test runs both modes in turn: RSS is
//! per process, so nothing else may run beside it. Needs root.
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{Dataplane, EndpointSpec};
use xmacvlan::modes::Demux;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent};
use xmacvlan_bench::lab;
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::pace::{self, Delivered};
use xmacvlan_tests::resources::rss_bytes;
use xmacvlan_tests::{bare_lab, dataplane_config, require_root};

/// Samples before this are warm-up: rings, UMEM pages and histograms get touched first.
const WARMUP_SECS: u64 = 10;
const RSS_TOLERANCE: f64 = 0.05;

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

struct Outcome {
    sent: u64,
    delivered: u64,
    dropped: u64,
    /// Largest distance of a post-warm-up sample from the first one, as a fraction.
    rss_drift: f64,
    rss_first: u64,
}

fn soak(demux: Demux, secs: u64) -> Outcome {
    let endpoints: Vec<EndpointSpec> = (0..8)
        .map(|i| {
            let vid = [100, 0][i % 2];
            EndpointSpec {
                name: lab::endpoint_name(vid, i),
                vid,
                mac: lab::endpoint_mac(vid, i),
            }
        })
        .collect();
    // Endpoint streams, and broadcast and an unknown MAC on each VLAN (passed to the kernel).
    let streams = lab_streams(&endpoints, 64, true);
    let lab = bare_lab::build();
    let cfg = lab.dataplane_config(&dataplane_config(demux, 1));
    let gen_cfg = GeneratorConfig {
        amount: Amount::For(Duration::from_secs(secs)),
        ..bare_lab::generator_until_stopped(None)
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    let outcome = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &endpoints)?;
            // As fast as the receive path takes them: flow control instead of a fixed rate, so
            // a busy CPU slows the soak down instead of losing frames before XDP.
            let frames = Delivered::of(&dp, |_| true);
            let delivered = || frames.frames();
            let pace_sent = PaceSent::default();
            let pace = Pace::delivered(&pace_sent, &delivered, pace::WINDOW);
            let (sent, samples) = std::thread::scope(|s| {
                let generator = s.spawn(|| {
                    lab.wire
                        .run(|| generator::run_paced(&gen_cfg, &streams, &never, Some(pace)))
                });
                let start = Instant::now();
                let mut samples = Vec::new();
                let mut tick = 1;
                while !generator.is_finished() {
                    std::thread::sleep(Duration::from_millis(20));
                    if start.elapsed() >= Duration::from_secs(tick) {
                        // Not in the last second: the generator (in this process) then frees
                        // its own UMEM, which is not the dataplane's doing.
                        if tick < secs {
                            samples.push(rss_bytes());
                        }
                        tick += 1;
                    }
                }
                let sent = generator.join().expect("generator panicked")?;
                anyhow::Ok((sent, samples))
            })?;
            bare_lab::drain(&dp);
            let live = dp.snapshot()?;
            let endpoints = live.endpoints.iter().map(|e| (e.frames, e.socket));
            let from_snapshot = Ledger::new(sent.total(), live.xdp, endpoints, &live.queues);
            from_snapshot.assert_balanced(&format!("{demux:?} soak, live snapshot"));
            let finished = dp.stop()?;
            let ledger = Ledger::finished(sent.total(), &finished, &[]);
            ledger.assert_balanced(&format!("{demux:?} soak, final"));
            assert_eq!(
                (ledger.delivered, ledger.dropped_total()),
                (from_snapshot.delivered, from_snapshot.dropped_total()),
                "{demux:?}: the live snapshot after the drain is the final count"
            );
            for e in &finished.endpoints {
                assert_eq!(e.misdelivered, 0, "{demux:?} {}", e.spec.name);
                assert!(e.frames > 0, "{demux:?} {}: nothing delivered", e.spec.name);
            }
            let after_warmup = &samples[(WARMUP_SECS as usize).min(samples.len() - 1)..];
            let first = after_warmup[0];
            let rss_drift = after_warmup
                .iter()
                .map(|&r| (r as f64 - first as f64).abs() / first as f64)
                .fold(0.0, f64::max);
            assert!(
                rss_drift <= RSS_TOLERANCE,
                "{demux:?}: RSS moved {:.1} % after warm-up: {samples:?}",
                rss_drift * 100.0
            );
            println!(
                "soak {demux:?}: {secs} s, {} frames sent ({:.0}/s), {} delivered, {} passed, \
                 dropped {:?}, RSS {} KiB after warm-up, drift {:.2} %",
                sent.total(),
                sent.total() as f64 / sent.elapsed.as_secs_f64(),
                ledger.delivered,
                ledger.xdp.passed(),
                ledger.dropped,
                first >> 10,
                rss_drift * 100.0
            );
            anyhow::Ok(Outcome {
                sent: sent.total(),
                delivered: ledger.delivered,
                dropped: ledger.dropped_total(),
                rss_drift,
                rss_first: first,
            })
        })
        .expect("running the lab");
    bare_lab::tear_down(lab);
    outcome
}

#[test]
fn soak_at_full_rate_keeps_memory_flat_and_accounts_every_frame() {
    require_root();
    let secs = soak_secs();
    assert!(
        secs > WARMUP_SECS,
        "SOAK_SECS must exceed the {WARMUP_SECS} s warm-up"
    );
    for demux in [Demux::Xdp, Demux::User] {
        let o = soak(demux, secs);
        assert!(o.delivered > 0 && o.rss_first > 0);
        println!(
            "soak {demux:?}: {} sent, {} delivered, {} dropped after XDP, RSS drift {:.2} %",
            o.sent,
            o.delivered,
            o.dropped,
            o.rss_drift * 100.0
        );
    }
}
