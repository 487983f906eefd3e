//! Receive buffers running short on igb in zero-copy, with xmacvlan's own counters: a
//! socket's RX ring full (the consumer paused) and a starved fill ring (a tiny UMEM). The
//! finding behind them: a probe's XDP counters counted 1-4 % more frames than were sent when
//! receive buffers ran short. The suspects: a frame delivered twice, the generator sending
//! more than it says, or the driver running XDP on a frame twice. Measured: the generator
//! sends what it says (igb's MAC counts as many or fewer), a full socket ring drops a frame
//! once, and a starved fill ring makes igb complete more frames than its MAC received (stale
//! descriptors); xmacvlan's counters follow the driver exactly in both.
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{Dataplane, EndpointSpec};
use xmacvlan::modes::{BindMode, Bound, Demux};
use xmacvlan::xsk::QueueConfig;
use xmacvlan_tests::nic_guest::{NicGuest, changed, delta, nic_stats, rx_queue_packets};
use xmacvlan_tests::{dataplane_config, require_root};

use super::{QUEUES, Scratch, delivered_so_far, endpoints, generate, start_run, stop_run};

/// XDP's counters on a full socket ring, with xmacvlan's own counters: the finding that a
/// probe's XDP counters counted 1-4 % more frames than were sent when receive buffers ran
/// short. A suspect was igb's zero-copy path: with need_wakeup (as xmacvlan binds), a
/// redirect that finds the socket's RX ring full (`-ENOBUFS`) makes `igb_clean_rx_irq_zc`
/// leave the frame in the hardware ring (`IGB_XDP_EXIT`) for the next poll to run XDP on
/// again, which the classifier would count twice. Measured here (Debian's 7.3.4 igb), it does
/// not: the frame is dropped and counted in the socket's `rx_ring_full`, once. So, exactly:
/// `seen = frames the driver completed`, `redirected = frames placed in sockets +
/// rx_ring_full`, and every placed frame is delivered once.
///
/// The consumer is paused (SIGSTOP on `xmacvlan run`, xdp demux: the endpoint's socket on
/// each queue has a 2048-entry RX ring) while the peer sends ~2,600 frames a queue; then
/// resumed.
#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn a_full_socket_ring_drops_counted_once_in_rx_ring_full_and_nothing_twice() {
    const TEST: &str = "vm_nic::full_socket_ring";
    require_root();
    let guest = NicGuest::from_env(TEST);
    let scratch = Scratch::new("nic-full");
    let ep = &endpoints()[0];
    let config = scratch.path("endpoints.json");
    std::fs::write(
        &config,
        serde_json::json!({"endpoints": [{"name": ep.0, "vid": ep.1, "mac": ep.2}]}).to_string(),
    )
    .unwrap();
    let json = scratch.path("report.json");
    let run = start_run(&guest, &scratch, (&config, &json), ("xdp", "1"), false);
    let before = nic_stats(&guest.nic).unwrap();
    // SAFETY: kill(2) on the child's pid, which is running (not reaped).
    let signal = |sig| unsafe { libc::kill(run.pid() as libc::pid_t, sig) };
    assert_eq!(signal(libc::SIGSTOP), 0, "SIGSTOP xmacvlan run");
    // More than the 4 rings (2048 each) and igb's own rings (256 each) hold, whatever rate
    // the loaded guest reaches: bursts until the driver has completed that many.
    let completed_now = || -> u64 {
        let now = nic_stats(&guest.nic).unwrap();
        delta(&rx_queue_packets(&before), &rx_queue_packets(&now))
            .iter()
            .sum()
    };
    let mut sent_total = 0;
    for burst in 0..4 {
        let sent = generate(
            &guest,
            std::slice::from_ref(&ep.2),
            None,
            ("8000", "1.3"),
            &scratch.path(&format!("gen{burst}.log")),
        );
        sent_total += sent[0].1;
        if completed_now() > (QUEUES as u64) * (2048 + 256) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(signal(libc::SIGCONT), 0, "SIGCONT xmacvlan run");
    // What the full rings dropped is known only at the end: wait until the delivered count
    // stops moving.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1500));
        let now = delivered_so_far(&run.stdout_lines());
        if now.is_some() && now == last {
            break;
        }
        last = now;
    }
    let after = nic_stats(&guest.nic).unwrap();
    let report = stop_run(run, &json);
    let nic_queues = delta(&rx_queue_packets(&before), &rx_queue_packets(&after));
    let completed: u64 = nic_queues.iter().sum();

    let x = &report["xdp"];
    let xdp = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("xdp.{k} in {x}"));
    let row = &report["endpoints"][0];
    let full = row["socket"]["rx_ring_full"]
        .as_u64()
        .expect("rx_ring_full")
        + report["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .map(|q| q["socket"]["rx_ring_full"].as_u64().unwrap_or(0))
            .sum::<u64>();
    let delivered = row["frames"].as_u64().unwrap();
    let summary = format!(
        "sent {sent_total}; igb completed {completed} per queue {nic_queues:?} (igb counters \
         that moved: {:?}); socket rx_ring_full {full}; delivered {delivered}; XDP seen {} \
         redirected {}",
        changed(&before, &after)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("rx_queue_") && !k.starts_with("tx_"))
            .collect::<Vec<_>>(),
        xdp("seen"),
        xdp("redirected"),
    );
    println!("{summary}");
    assert!(
        full > 0,
        "no socket RX ring filled while xmacvlan was stopped: the test proved nothing; {summary}"
    );
    assert_eq!(
        xdp("seen"),
        completed,
        "XDP ran once per frame the driver completed, never again on a retry: {summary}"
    );
    assert_eq!(xdp("redirected"), completed, "{summary}");
    assert_eq!(
        delivered + full,
        completed,
        "every frame placed in a socket delivered once, the rest counted in rx_ring_full: \
         {summary}"
    );
    assert_eq!(row["misdelivered"], 0, "{summary}");
    assert!(completed <= sent_total, "{summary}");
}

/// A starved fill ring: the library's dataplane with 64 frames a queue (60 for receiving,
/// fill ring 64, RX rings 64), zero-copy on igb's 4 queues, one thread, while the peer sends
/// as fast as it can (20,000 frames a second asked; TCG reaches less), more than the guest's
/// consumer follows. xmacvlan's counters follow the driver exactly: XDP runs once per frame
/// the driver completes, and each is delivered once or counted as ring-full.
///
/// The driver, though, may complete more frames than its MAC received: the over-count of
/// the finding (one run: 6,500 completions for 6,244 received, +256 on one queue, 4.1 %; and
/// 6,304 delivered). igb's zero-copy refill (`igb_alloc_rx_buffers_zc`), when the pool runs
/// dry in the part of the ring before its end, leaves through `exit` without zeroing the
/// length of the next descriptor to use; the clean loop then reads that descriptor's stale
/// write-back as a new frame and walks on through the ring's stale descriptors, running XDP
/// on buffers it already handed over (here a whole ring, 256 descriptors). The test prints
/// that excess; it asserts what is xmacvlan's.
#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn a_starved_fill_ring_drops_in_the_nic_and_every_frame_xdp_saw_is_counted_once() {
    const TEST: &str = "vm_nic::starvation::fill_ring";
    require_root();
    let guest = NicGuest::from_env(TEST);
    let scratch = Scratch::new("nic-starve");
    let (name, vid, mac) = endpoints().remove(0);
    let spec = EndpointSpec {
        name,
        vid,
        mac: mac.parse::<xmacvlan::ether::Mac>().expect("a MAC").0,
    };
    let mut cfg = dataplane_config(Demux::Xdp, 4);
    cfg.ifname = guest.nic.clone();
    cfg.cores = vec![1];
    cfg.queue = QueueConfig {
        frames: 64,
        rx_ring: 64,
        bind: BindMode::Zerocopy,
        ..QueueConfig::default()
    };
    let dp = Dataplane::start(&cfg, &[spec]).expect("the dataplane in zero-copy");
    assert_eq!(dp.bound, Bound::Zerocopy);
    // Read igb's per-queue counters while the sockets hold the queues (binding zeroes them).
    let before = nic_stats(&guest.nic).unwrap();
    let sent = generate(
        &guest,
        std::slice::from_ref(&mac),
        None,
        ("20000", "1.5"),
        &scratch.path("gen.log"),
    );
    // Let the consumer catch up: until the delivered count stops moving.
    let counters = dp.endpoint_counters().remove(0).1;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = counters.frames.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let after = nic_stats(&guest.nic).unwrap();
    let flood = dp
        .snapshot()
        .expect("the dataplane's numbers after the flood");
    let nic_queues = delta(&rx_queue_packets(&before), &rx_queue_packets(&after));
    let completed: u64 = nic_queues.iter().sum();
    let sent_total = sent[0].1;
    let ep = &flood.endpoints[0];
    let x = &flood.xdp;
    let mut sockets = ep.socket;
    for q in &flood.queues {
        sockets.add(&q.socket);
    }
    let duplicates: u64 = flood.queues.iter().map(|q| q.frames_duplicate).sum();
    let wakeups: Vec<u64> = flood.queues.iter().map(|q| q.fill_wakeups).collect();
    let summary = format!(
        "sent {sent_total}; igb completed {completed} per queue {nic_queues:?} (igb counters \
         that moved: {:?}); delivered {}, {duplicates} dropped as delivered twice; sockets \
         {sockets:?}; fill-ring wake-ups per queue {wakeups:?}; XDP seen {} redirected {}",
        changed(&before, &after)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("rx_queue_") && !k.starts_with("tx_"))
            .collect::<Vec<_>>(),
        ep.frames,
        x.seen,
        x.redirected,
    );
    println!("{summary}");
    // The fill ring ran dry: the driver found no buffer for frames, and asked to be woken
    // once there were (need_wakeup), which the queue's owner did.
    assert!(
        sockets.rx_fill_ring_empty_descs > 0,
        "the fill ring never ran dry: the test proved nothing; {summary}"
    );
    assert!(
        wakeups.iter().sum::<u64>() > 0,
        "the driver never asked for a fill-ring wake-up: {summary}"
    );
    // xmacvlan counts what the driver hands it, exactly: XDP ran once per completion, and
    // every redirect was placed in a socket and delivered once, or counted: ring-full, or a
    // buffer the driver handed over a second time (dropped, never served twice).
    assert_eq!(
        x.seen, completed,
        "XDP runs = the driver's completions: {summary}"
    );
    assert_eq!(x.redirected, completed, "{summary}");
    assert_eq!(
        ep.frames + duplicates + sockets.rx_ring_full + sockets.rx_dropped,
        completed,
        "every frame placed in a socket delivered once: {summary}"
    );
    // What the driver completed beyond what the MAC received is the over-count: igb's
    // zero-copy refill, when the pool runs dry at the ring's end, skips zeroing the next
    // descriptor's length, and the clean loop then takes stale write-backs for new frames
    // (here up to a ring, 256 a queue). Not xmacvlan's: shown, not asserted away.
    let received = after.get("rx_packets").copied().unwrap_or(0)
        - before.get("rx_packets").copied().unwrap_or(0);
    println!(
        "over-count: the driver completed {completed} frames for {received} the MAC received \
         ({} more, {:.1} %)",
        completed.saturating_sub(received),
        (completed as f64 / received.max(1) as f64 - 1.0) * 100.0
    );
    assert!(received <= sent_total, "{summary}");
    // A buffer the driver hands back while xmacvlan still holds it is dropped (counted above);
    // one it hands back after xmacvlan refilled it cannot be told from a new frame, so the
    // endpoint may get up to the over-count more than the MAC received.
    println!(
        "delivered {} of {received} received; {duplicates} caught as handed over twice",
        ep.frames
    );
    assert_eq!(ep.misdelivered, 0, "{summary}");

    // The queues recover: a stream the consumer keeps up with (50 frames a second a queue,
    // the fill ring never dry) arrives whole, every frame once, nothing dropped.
    let gentle = generate(
        &guest,
        std::slice::from_ref(&mac),
        None,
        ("200", "2"),
        &scratch.path("gen-gentle.log"),
    )[0]
    .1;
    let want = ep.frames + gentle;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.frames.load(std::sync::atomic::Ordering::Relaxed) < want
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered = nic_stats(&guest.nic).unwrap();
    let finished = dp.stop().expect("stopping the dataplane");
    let again: u64 = delta(&rx_queue_packets(&after), &rx_queue_packets(&recovered))
        .iter()
        .sum();
    let last = &finished.endpoints[0];
    let duplicates_after: u64 = finished.queues.iter().map(|q| q.frames_duplicate).sum();
    let recovery = format!(
        "recovery: sent {gentle}, igb completed {again}, delivered {}, XDP seen {}, ring-full \
         {}, duplicates {}",
        last.frames - ep.frames,
        finished.xdp.seen - x.seen,
        last.socket_stats.rx_ring_full - ep.socket.rx_ring_full,
        duplicates_after - duplicates,
    );
    println!("{recovery}");
    assert_eq!(again, gentle, "{recovery}");
    assert_eq!(finished.xdp.seen - x.seen, gentle, "{recovery}");
    assert_eq!(last.frames - ep.frames, gentle, "{recovery}");
    assert_eq!(duplicates_after, duplicates, "{recovery}");
    // And every frame is back: free or with the kernel, none lost, per queue.
    for q in &finished.queues {
        assert_eq!(q.frames_lost, 0, "queue {q:?}");
        assert_eq!(q.frames_elsewhere(), 0, "queue {q:?}");
    }
}
