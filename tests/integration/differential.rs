//! Differential test: the XDP classifier, run in the kernel with BPF_PROG_TEST_RUN, and its
//! userspace twin (`frame::classify` plus the endpoint table of the `user` demux) agree on
//! every frame: random and adversarial, 0 to 9000 bytes, no/one/two tags, 802.1Q and 802.1ad,
//! VLAN ids 0 and 4095, group bits, truncation inside the tag. Needs root (loads BPF).
use std::collections::HashMap;

use xmacvlan::abi::{Counters, Key};
use xmacvlan::frame::{Class, classify};
use xmacvlan::xdp::{Classifier, Program, Steering};
use xmacvlan_tests::require_root;

const FRAMES: usize = 120_000;

/// Which verdict counter a frame moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Verdict {
    Hit,
    Control,
    Miss,
    Group,
    Stacked,
    Malformed,
}

fn kernel_verdict(before: &Counters, after: &Counters) -> Verdict {
    let moved = [
        (after.pass_no_socket - before.pass_no_socket, Verdict::Hit),
        (after.pass_miss - before.pass_miss, Verdict::Miss),
        (
            after.pass_bcast_mcast - before.pass_bcast_mcast,
            Verdict::Group,
        ),
        (after.pass_qinq - before.pass_qinq, Verdict::Stacked),
        (after.malformed - before.malformed, Verdict::Malformed),
        (after.pass_control - before.pass_control, Verdict::Control),
    ];
    assert_eq!(after.seen - before.seen, 1, "one frame, one run");
    let hits: Vec<Verdict> = moved
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "exactly one verdict counter moved: {before:?} -> {after:?}"
    );
    hits[0]
}

fn user_verdict(frame: &[u8], table: &HashMap<Key, u32>) -> Verdict {
    match classify(frame) {
        Class::Unicast(key) if table.contains_key(&key) => Verdict::Hit,
        Class::Unicast(_) => Verdict::Miss,
        Class::Control(key) if table.contains_key(&key) => Verdict::Control,
        Class::Control(_) => Verdict::Miss,
        Class::Group => Verdict::Group,
        Class::Stacked => Verdict::Stacked,
        Class::Malformed => Verdict::Malformed,
    }
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_frame(rng: &mut Rng, endpoints: &[Key]) -> Vec<u8> {
    let ep = rng.pick(endpoints);
    let dst: [u8; 6] = match rng.below(6) {
        0..=2 => ep.mac,
        3 => [0xff; 6],
        4 => [0x01, 0x00, 0x5e, rng.next() as u8, 1, 2],
        _ => {
            let mut m = rng.next().to_be_bytes();
            m[0] &= !1; // unicast, unknown
            [m[0], m[1], m[2], m[3], m[4], m[5]]
        }
    };
    let vid = match rng.below(5) {
        0 | 1 => ep.vid,
        2 => 0,
        3 => 4095,
        _ => rng.below(4096) as u16,
    };
    let tci = |vid: u16, prio: u64| (((prio & 7) as u16) << 13 | (vid & 0x0fff)).to_be_bytes();
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
    match rng.below(7) {
        0 | 1 => {} // untagged
        2 | 3 => {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci(vid, rng.next()));
        }
        4 => {
            // QinQ: 802.1ad outer, 802.1Q inner.
            f.extend_from_slice(&0x88a8u16.to_be_bytes());
            f.extend_from_slice(&tci(rng.below(4096) as u16, 0));
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci(vid, 0));
        }
        5 => {
            // Two 802.1Q tags.
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci(vid, 0));
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci(vid, 0));
        }
        _ => {
            // 802.1Q outer with an 802.1ad inner.
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci(vid, 0));
            f.extend_from_slice(&0x88a8u16.to_be_bytes());
            f.extend_from_slice(&tci(vid, 0));
        }
    }
    f.extend_from_slice(&rng.pick(&[0x0800u16, 0x86dd, 0x0806, 0x88b5]).to_be_bytes());
    // An IP header's protocol byte: ICMP, ICMPv6, UDP, TCP or noise.
    let mut l3 = [0u8; 10];
    let noise = rng.next() as u8;
    let proto = rng.pick(&[1u8, 58, 17, 6, noise]);
    l3[9] = proto; // IPv4 protocol
    l3[6] = proto; // IPv6 next header
    f.extend_from_slice(&l3);
    let len = match rng.below(10) {
        0 => rng.below(14) as usize,          // shorter than an Ethernet header
        1 => 14 + rng.below(5) as usize,      // cut inside the tag
        2 => 3000 + rng.below(6001) as usize, // big, up to 9000
        _ => 60 + rng.below(1455) as usize,
    };
    f.truncate(len);
    while f.len() < len {
        f.push(rng.next() as u8);
    }
    f
}

#[test]
fn kernel_and_userspace_classifiers_agree() {
    require_root();
    let classifier_queues = 1;
    let mut classifier =
        Classifier::load(Program::Classify, Steering::PerEndpoint, classifier_queues).unwrap();
    // 64 endpoints over VLANs 0 (untagged), 1, 100 and 4094.
    let endpoints: Vec<Key> = (0..64u16)
        .map(|i| Key {
            vid: [0, 1, 100, 4094][(i % 4) as usize],
            mac: [0x02, 0x58, 0, 0, (i >> 8) as u8, i as u8 + 1],
        })
        .collect();
    let table: HashMap<Key, u32> = endpoints
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i as u32))
        .collect();
    for (k, slot) in &table {
        classifier.insert_key(*k, *slot).unwrap();
    }

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut agreed: HashMap<Verdict, u64> = HashMap::new();
    let (mut refused_short, mut refused_long) = (0u64, 0u64);
    let mut before = classifier.counters().unwrap();
    for n in 0..FRAMES {
        let frame = random_frame(&mut rng, &endpoints);
        let user = user_verdict(&frame, &table);
        match classifier.test_run(&frame) {
            Ok(verdict) => {
                // No sockets are bound, so a hit falls back to XDP_PASS like everything else.
                assert_eq!(verdict, 2, "frame {n}: XDP_PASS expected");
                let after = classifier.counters().unwrap();
                let kernel = kernel_verdict(&before, &after);
                before = after;
                assert_eq!(
                    kernel,
                    user,
                    "frame {n} ({} bytes) {:02x?}",
                    frame.len(),
                    &frame[..frame.len().min(22)]
                );
                *agreed.entry(kernel).or_default() += 1;
            }
            // The kernel only test-runs frames from an Ethernet header up to about a page.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                if frame.len() < 14 {
                    assert_eq!(
                        user,
                        Verdict::Malformed,
                        "userspace must call a runt malformed"
                    );
                    refused_short += 1;
                } else {
                    // Kernels without XDP multi-buffer test runs refuse frames over a page.
                    assert!(
                        frame.len() > 3000,
                        "kernel refused a {}-byte frame",
                        frame.len()
                    );
                    refused_long += 1;
                }
            }
            Err(e) => panic!("frame {n}: BPF_PROG_TEST_RUN failed: {e}"),
        }
    }
    let compared: u64 = agreed.values().sum();
    println!(
        "{FRAMES} frames: {compared} compared in the kernel {agreed:?}; refused by BPF_PROG_TEST_RUN: {refused_short} runts, {refused_long} over a page"
    );
    assert!(
        compared >= 100_000,
        "at least 100k frames compared, got {compared}"
    );
    for v in [
        Verdict::Hit,
        Verdict::Miss,
        Verdict::Group,
        Verdict::Stacked,
        Verdict::Malformed,
    ] {
        assert!(
            agreed.get(&v).copied().unwrap_or(0) > 1_000,
            "too few {v:?} frames: {agreed:?}"
        );
    }
}
