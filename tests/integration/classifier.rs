//! The XDP classifier loaded for real (root: it loads BPF) and run with BPF_PROG_TEST_RUN:
//! claiming, counters and the kernel's event budget. Moved here from the library's unit tests,
//! which run without root.
use xmacvlan::abi::{self, EventKind, Key};
use xmacvlan::xdp::{Classifier, Program, Steering};

/// A frame to `mac` on VLAN 100 carrying UDP (not control traffic), `len` bytes long.
fn tagged_udp(mac: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(64)];
    f[..6].copy_from_slice(&mac);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe]);
    f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    f[14..16].copy_from_slice(&100u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 0x45;
    f[18 + 9] = 17;
    f.truncate(len);
    f
}

#[test]
fn unclaimed_endpoints_pass_to_the_kernel_until_claimed() {
    assert!(xmacvlan::sys::is_root(), "loads BPF: run as root");
    let mut classifier = Classifier::load(Program::Classify, Steering::PerEndpoint, 1).unwrap();
    let mac = [2, 0x42, 0, 0, 0, 2];
    classifier
        .insert_key_with(Key { vid: 100, mac }, 3, false)
        .unwrap();
    assert_eq!(classifier.test_run(&tagged_udp(mac, 64)).unwrap(), 2);
    let c = classifier.counters().unwrap();
    assert_eq!((c.pass_unclaimed, c.hit, c.verdicts()), (1, 0, c.seen));
    // Claimed: a hit (no socket in this test, so still passed, as pass_no_socket).
    classifier.set_claimed(3, true).unwrap();
    classifier.test_run(&tagged_udp(mac, 64)).unwrap();
    let c = classifier.counters().unwrap();
    assert_eq!((c.pass_unclaimed, c.hit, c.pass_no_socket), (1, 1, 1));
    classifier.set_claimed(3, false).unwrap();
    classifier.test_run(&tagged_udp(mac, 64)).unwrap();
    assert_eq!(classifier.counters().unwrap().pass_unclaimed, 2);
    // A reused slot starts from what its new key asks for, not the old flag.
    classifier.remove_key(&Key { vid: 100, mac }).unwrap();
    classifier.insert_key(Key { vid: 100, mac }, 3).unwrap();
    classifier.test_run(&tagged_udp(mac, 64)).unwrap();
    assert_eq!(classifier.counters().unwrap().hit, 2);
    assert!(classifier.set_claimed(abi::MAX_SLOTS, true).is_err());
}

#[test]
fn kernel_events_report_malformed_frames_and_failed_redirects_within_budget() {
    assert!(xmacvlan::sys::is_root(), "loads BPF: run as root");
    // One CPU, so one per-CPU budget is in play.
    core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    let mut classifier = Classifier::load(Program::Classify, Steering::PerEndpoint, 1).unwrap();
    let mac = [2, 0x42, 0, 0, 0, 1];
    classifier.insert_key(Key { vid: 100, mac }, 0).unwrap();

    // Claimed but no socket: passed on, and reported.
    assert_eq!(classifier.test_run(&tagged_udp(mac, 64)).unwrap(), 2);
    let mut events = Vec::new();
    classifier.drain_events(|e| events.push(e));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind(), EventKind::RedirectFailed);
    assert_eq!(
        (events[0].vid, events[0].mac, events[0].len),
        (100, mac, 64)
    );

    // A flood of frames cut inside their tag: the budget's worth of events in this second
    // (one already spent), the rest counted as suppressed in the next second's first event.
    for _ in 0..100 {
        assert_eq!(classifier.test_run(&tagged_udp(mac, 16)).unwrap(), 2);
    }
    events.clear();
    classifier.drain_events(|e| events.push(e));
    let budget = xmacvlan::abi::c::EVENTS_PER_SEC as usize;
    assert_eq!(events.len(), budget - 1);
    assert!(
        events
            .iter()
            .all(|e| e.kind() == EventKind::Malformed && e.len == 16)
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    classifier.test_run(&tagged_udp(mac, 16)).unwrap();
    events.clear();
    classifier.drain_events(|e| events.push(e));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].suppressed as usize, 100 - (budget - 1));
    assert_eq!(
        classifier.counters().unwrap().malformed,
        101,
        "every frame still counted"
    );
}

#[test]
fn a_jumbo_frame_is_classified_from_its_first_buffer() {
    assert!(xmacvlan::sys::is_root(), "loads BPF: run as root");
    core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    let mut classifier = Classifier::load(Program::Classify, Steering::PerEndpoint, 1).unwrap();
    let mac = [2, 0x42, 0, 0, 0, 3];
    classifier.insert_key(Key { vid: 100, mac }, 0).unwrap();
    // 9018 bytes: a 9000-byte MTU's tagged frame, three pages' worth of buffers.
    assert_eq!(classifier.test_run(&tagged_udp(mac, 9018)).unwrap(), 2);
    let c = classifier.counters().unwrap();
    assert_eq!((c.tagged, c.hit, c.pass_no_socket), (1, 1, 1), "{c:?}");
    let mut events = Vec::new();
    classifier.drain_events(|e| events.push(e));
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind(), events[0].len),
        (EventKind::RedirectFailed, 9018),
        "the length of every buffer"
    );
}
