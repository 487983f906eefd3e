//! Busy polling on igb: the same stream twice through the library's dataplane (zero-copy, 4
//! queues on one thread), once on interrupts and once busy polling. Busy polling must take
//! effect, seen where the kernel counts it: every queue's owner runs the queue's NAPI itself
//! (its `busy_polls`), the device's `napi_defer_hard_irqs` / `gro_flush_timeout` are set
//! while it runs and restored after, and each queue's wake-up interrupts fall
//! (`/proc/interrupts`; igb gives each queue a receive and a transmit vector, `xmvnic0-rx-N`
//! / `xmvnic0-tx-N`). Every count stays exact either way.
//!
//! Which interrupts fall here: on interrupts, each wake-up the fill ring asks for
//! (need_wakeup) makes igb raise the queue's transmit vector by software (`igb_xsk_wakeup`);
//! busy polling needs no wake-up, so those go (one run: 461-622 a queue on interrupts, 21-32
//! busy polling; summed they must fall at least 4x). The receive vectors do not fall reliably
//! under QEMU (runs: 2,940 to 2,328; 1,740 to 1,740; 2,178 to 4,586 for 8,000 frames; the
//! spinning thread changes the timing of QEMU's interrupt throttling): the driver keeps a
//! vector quiet by leaving it masked after its interrupt (the 82576's auto-mask, GPIE.EIAME)
//! until NAPI completes, and QEMU's igb does not mask it (with EIAME set it clears EIAM
//! instead of the vector's EIMS bit), so the NAPI deferral that keeps a real NIC's receive
//! interrupts off while the thread polls cannot hold them back here.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use xmacvlan::dataplane::{Dataplane, EndpointSpec};
use xmacvlan::modes::{BindMode, Bound, Demux};
use xmacvlan::nic::BusyPoll;
use xmacvlan::nic::busy_poll::{GRO_FLUSH_TIMEOUT_NS, NAPI_DEFER_HARD_IRQS};
use xmacvlan_tests::nic_guest::{NicGuest, delta, nic_stats, rx_queue_packets};
use xmacvlan_tests::{dataplane_config, require_root};

use super::{QUEUES, Scratch, endpoints, generate};

/// The NIC's interrupt vectors (`/proc/interrupts` lines whose name starts with the NIC's:
/// `xmvnic0-TxRx-N` per queue with MSI-X), each summed over the CPUs.
fn nic_interrupts(nic: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/interrupts").expect("/proc/interrupts");
    let vectors: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().last()?;
            name.starts_with(nic).then(|| {
                let count = line
                    .split_whitespace()
                    .skip(1)
                    .map_while(|field| field.parse::<u64>().ok())
                    .sum();
                (name.to_string(), count)
            })
        })
        .collect();
    assert!(
        !vectors.is_empty(),
        "no interrupt of {nic} in /proc/interrupts:\n{text}"
    );
    vectors
}

/// What each vector took between two readings.
fn interrupts_since(before: &BTreeMap<String, u64>, nic: &str) -> BTreeMap<String, u64> {
    nic_interrupts(nic)
        .into_iter()
        .map(|(name, n)| {
            let was = before.get(&name).copied().unwrap_or(0);
            (name, n - was)
        })
        .collect()
}

fn sysfs(nic: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{nic}/{file}"))
        .unwrap_or_else(|e| panic!("reading {file} of {nic}: {e}"))
        .trim()
        .to_string()
}

/// One stream through the dataplane, busy polling or not: the interrupts per queue it took,
/// and a line for the log.
fn one_stream(
    guest: &NicGuest,
    scratch: &Scratch,
    busy: Option<BusyPoll>,
) -> (BTreeMap<String, u64>, String) {
    let (name, vid, mac) = endpoints().remove(0);
    let spec = EndpointSpec {
        name,
        vid,
        mac: mac.parse::<xmacvlan::ether::Mac>().expect("a MAC").0,
    };
    let mut cfg = dataplane_config(Demux::Xdp, QUEUES as u32);
    cfg.ifname = guest.nic.clone();
    cfg.cores = vec![1];
    cfg.queue.bind = BindMode::Zerocopy;
    cfg.busy_poll = busy;
    if busy.is_none() {
        // On interrupts the thread blocks as soon as its queues are empty: every frame after
        // a pause comes by interrupt (busy polling keeps it polling instead).
        cfg.idle.spin = Duration::ZERO;
    }
    let dp = Dataplane::start(&cfg, &[spec]).expect("the dataplane in zero-copy");
    assert_eq!(dp.bound, Bound::Zerocopy);
    assert_eq!(dp.busy_poll, busy, "warnings: {:?}", dp.warnings);
    if busy.is_some() {
        assert_eq!(
            sysfs(&guest.nic, "napi_defer_hard_irqs"),
            NAPI_DEFER_HARD_IRQS.to_string()
        );
        assert_eq!(
            sysfs(&guest.nic, "gro_flush_timeout"),
            GRO_FLUSH_TIMEOUT_NS.to_string()
        );
    }
    let before = nic_stats(&guest.nic).unwrap();
    let irqs_before = nic_interrupts(&guest.nic);
    let label = if busy.is_some() { "busy" } else { "irq" };
    let sent = generate(
        guest,
        std::slice::from_ref(&mac),
        None,
        ("4000", "2"),
        &scratch.path(&format!("gen-{label}.log")),
    )[0]
    .1;
    let counters = dp.endpoint_counters().remove(0).1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.frames.load(Relaxed) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let irqs = interrupts_since(&irqs_before, &guest.nic);
    let after = nic_stats(&guest.nic).unwrap();
    let finished = dp.stop().expect("stopping the dataplane");
    let nic_queues = delta(&rx_queue_packets(&before), &rx_queue_packets(&after));
    let polls: Vec<u64> = finished.queues.iter().map(|q| q.busy_polls).collect();
    let ep = &finished.endpoints[0];
    let line = format!(
        "{label}: sent {sent}, igb rx per queue {nic_queues:?}, delivered {}, XDP seen {}; \
         interrupts {irqs:?}; busy polls per queue {polls:?}",
        ep.frames, finished.xdp.seen
    );
    println!("{line}");
    assert_eq!(nic_queues.iter().sum::<u64>(), sent, "{line}");
    assert_eq!(finished.xdp.seen, sent, "{line}");
    assert_eq!(finished.xdp.redirected, sent, "{line}");
    assert_eq!(ep.frames, sent, "{line}");
    assert_eq!((ep.dropped, ep.misdelivered), (0, 0), "{line}");
    assert_eq!(
        polls.iter().all(|&p| p > 0),
        busy.is_some(),
        "every queue's owner drives its NAPI when busy polling, none otherwise: {line}"
    );
    for q in &finished.queues {
        assert_eq!((q.frames_lost, q.frames_duplicate), (0, 0), "{line}");
    }
    (irqs, line)
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn busy_polling_cuts_the_queues_interrupts_and_keeps_every_count() {
    require_root();
    let guest = NicGuest::from_env("vm_nic::busy_poll");
    let scratch = Scratch::new("nic-busy");
    let defaults = (
        sysfs(&guest.nic, "napi_defer_hard_irqs"),
        sysfs(&guest.nic, "gro_flush_timeout"),
    );
    let (on_interrupts, _) = one_stream(&guest, &scratch, None);
    let (busy_polling, _) = one_stream(&guest, &scratch, BusyPoll::with_budget(64));
    assert_eq!(
        (
            sysfs(&guest.nic, "napi_defer_hard_irqs"),
            sysfs(&guest.nic, "gro_flush_timeout")
        ),
        defaults,
        "restored when the dataplane stopped"
    );
    let (off, on): (u64, u64) = (on_interrupts.values().sum(), busy_polling.values().sum());
    println!(
        "interrupts of {}: {off} on interrupts, {on} busy polling",
        guest.nic
    );
    let versus = format!("{on_interrupts:?} vs {busy_polling:?}");
    // The wake-up interrupts: each queue's transmit vector (igb gives each ring its own
    // vector when it has enough of them, as with the guest's 4 queues). The receive vectors
    // are shown, not asserted: QEMU raises them per frame whatever the driver defers (above).
    let wake_ups = |per_vector: &BTreeMap<String, u64>| -> Vec<u64> {
        (0..QUEUES)
            .map(|q| {
                let vector = format!("{}-tx-{q}", guest.nic);
                *per_vector
                    .get(&vector)
                    .unwrap_or_else(|| panic!("no vector {vector}: {versus}"))
            })
            .collect()
    };
    let (off, on) = (wake_ups(&on_interrupts), wake_ups(&busy_polling));
    println!("wake-up interrupts per queue: {off:?} on interrupts, {on:?} busy polling");
    assert!(
        on.iter().sum::<u64>() * 4 <= off.iter().sum::<u64>(),
        "busy polling did not cut the wake-up interrupts: {versus}"
    );
}
