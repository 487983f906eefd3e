//! Zero-copy AF_XDP on a real NIC driver, inside the igb guest of `cargo xtask vm-test`: an
//! igb NIC (`xmvnic0`, 4 queue pairs, one per vCPU) and a virtio-net peer (`xmvwire0` in
//! namespace `xmvwire`) on one QEMU hub. Everything runs as a user would run it:
//! `xmacvlan run --iface xmvnic0 --bind zerocopy --json …` on the NIC, and
//! `xmacvlan-bench generate --udp-flows 64` on the peer, one stream per endpoint MAC, first
//! untagged, then tagged VLAN 100.
//!
//! ```text
//!  namespace xmvwire                       guest root namespace
//!  generate ── xmvwire0 (virtio-net) ══ QEMU hub ══ xmvnic0 (igb, XDP native) ── xmacvlan run
//! ```
//!
//! The frames are IPv4/UDP over 64 flows (source address and port per flow), so igb's RSS
//! spreads every endpoint's stream over the 4 queues; each queue has its own UMEM bound in
//! zero-copy mode. Each test checks, with exact counts (never speed: TCG does 20-40 kpps):
//! every endpoint got exactly its frames, nothing else reached XDP, every queue carried some
//! (the driver's own `rx_queue_N_packets`, which add up to what was sent), the report says
//! zero-copy, native XDP and 4 queues.
//!
//! igb drops frames before XDP that a veth never would, and `xmacvlan run` gets them through
//! by itself, with nothing made by hand: the endpoints' MACs go into the NIC's unicast filter
//! (igb drops frames to MACs it does not own), VLAN 100 into its VLAN filter (`rx-vlan-filter`
//! is fixed on: a VLAN id no VLAN device registered is dropped), and rx VLAN offload is turned
//! off (igb strips the tag before XDP). The tests check each while the run holds the NIC, and
//! that all of it is gone or restored after, also when the run fails half-way.
//!
//! Host tests skip these (`#[ignore]`); the harness runs them in the igb guest
//! (`IGB_VM_TESTS`). Anywhere else they fail, saying why.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use xmacvlan_tests::nic_guest::{
    NicGuest, Program, bench_bin, changed, delta, nic_stats, rx_queue_packets, sent_per_mac,
    unicast_addresses, vlan_devices_on,
};
use xmacvlan_tests::{require_root, xmacvlan_bin};

mod busy_poll;
mod restart;
mod starvation;

/// Untagged endpoints, and endpoints on VLAN [`VID`].
const UNTAGGED: usize = 3;
const TAGGED: usize = 2;
const VID: u16 = 100;
/// Flows per stream: with 64, RSS leaves no queue of 4 empty but by a ~1e-8 chance.
const FLOWS: &str = "64";
/// Each generator run: frames per second over all its streams, and seconds.
const RATE: &str = "1500";
const SECONDS: &str = "2";
/// The queues igb opens with the guest's 4 vCPUs.
const QUEUES: usize = 4;

fn mac(i: usize) -> String {
    format!("02:58:4d:45:00:{:02x}", i + 1)
}

/// (name, vid, MAC) of every endpoint.
fn endpoints() -> Vec<(String, u16, String)> {
    (0..UNTAGGED + TAGGED)
        .map(|i| {
            if i < UNTAGGED {
                (format!("plain{i}"), 0, mac(i))
            } else {
                (format!("vlan{}", i - UNTAGGED), VID, mac(i))
            }
        })
        .collect()
}

/// A scratch directory under the guest's /tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xmv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `xmacvlan-bench generate` on the peer to `macs` (tagged `vid` if given) at `rate` frames
/// per second for `seconds`; frames per MAC.
fn generate(
    guest: &NicGuest,
    macs: &[String],
    vid: Option<u16>,
    (rate, seconds): (&str, &str),
    log: &Path,
) -> Vec<(String, u64)> {
    let mut args: Vec<String> = [
        "generate",
        "--iface",
        &guest.wire,
        "--dst",
        &macs.join(","),
        "--udp-flows",
        FLOWS,
        "--rate",
        rate,
        "--duration",
        seconds,
    ]
    .map(str::to_string)
    .to_vec();
    if let Some(vid) = vid {
        args.extend(["--vlan".to_string(), vid.to_string()]);
    }
    let generator = Program::start(Some(&guest.wire_ns), &bench_bin(), &args, log)
        .expect("starting the generator");
    let out = generator
        .finish(None, Duration::from_secs(120))
        .expect("the generator");
    let sent = sent_per_mac(&out);
    assert_eq!(
        sent.len(),
        macs.len(),
        "the generator reported a count per MAC: {out:?}"
    );
    sent
}

/// The last `delivered N` of `xmacvlan run`'s progress lines.
fn delivered_so_far(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        let rest = l.split_once("delivered")?.1;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The arguments of `xmacvlan run` on the NIC in zero-copy with `demux` and `cores`.
fn run_args(
    guest: &NicGuest,
    (config, json): (&Path, &Path),
    (demux, cores): (&str, &str),
) -> Vec<String> {
    [
        "run",
        "--iface",
        &guest.nic,
        "--config",
        config.to_str().unwrap(),
        "--bind",
        "zerocopy",
        "--demux",
        demux,
        "--cores",
        cores,
        "--json",
        json.to_str().unwrap(),
    ]
    .map(str::to_string)
    .to_vec()
}

/// `xmacvlan run` on the NIC in zero-copy with `demux` and `cores`, started and checked to
/// say so: zero-copy, native XDP, 4 queues, and with `tagged` endpoints rx VLAN offload
/// turned off.
fn start_run(
    guest: &NicGuest,
    scratch: &Scratch,
    files: (&Path, &Path),
    modes: (&str, &str),
    tagged: bool,
) -> Program {
    let args = run_args(guest, files, modes);
    let mut run = Program::start(None, &xmacvlan_bin(), &args, &scratch.path("run.log"))
        .expect("starting xmacvlan run");
    run.wait_stderr(Duration::from_secs(90), |t| t.contains("Ctrl-C to stop"))
        .expect("xmacvlan run starting");
    let started = run.stderr();
    assert!(
        started.contains(&format!("({QUEUES} queues)"))
            && started.contains("XDP native, AF_XDP zerocopy"),
        "xmacvlan run: {started}"
    );
    assert_eq!(
        xmacvlan::nic::rx_vlan_offload(&guest.nic),
        Some(!tagged),
        "rx VLAN offload is turned off while running, for tagged endpoints only: {started}"
    );
    assert_eq!(
        started.contains(&format!("turned rx VLAN offload off on {}", guest.nic)),
        tagged,
        "{started}"
    );
    run
}

/// What a run may add to the NIC's filters is not there (before a run, and after it).
fn assert_filters_clean(guest: &NicGuest, macs: &[String], when: &str) {
    let listed = unicast_addresses(&guest.nic).unwrap();
    assert!(
        macs.iter().all(|m| !listed.contains(m)),
        "{when}: endpoint MACs in {}'s unicast filter: {listed:?}",
        guest.nic
    );
    let vlans = vlan_devices_on(&guest.nic).unwrap();
    assert!(
        vlans.is_empty(),
        "{when}: VLAN devices on {}: {vlans:?}",
        guest.nic
    );
}

/// While a run serves `macs` (with `vid` tagged ones): each MAC in the NIC's unicast filter,
/// and `vid` registered by a VLAN device of the run's own.
fn assert_filters_admit(guest: &NicGuest, macs: &[String], vid: Option<u16>) {
    let listed = unicast_addresses(&guest.nic).unwrap();
    for m in macs {
        assert!(
            listed.contains(m),
            "{m} not in {}'s unicast filter: {listed:?}",
            guest.nic
        );
    }
    let vlans = vlan_devices_on(&guest.nic).unwrap();
    let registered: Vec<u16> = vlans
        .iter()
        .filter(|(_, _, alias)| {
            alias
                .as_deref()
                .is_some_and(|a| a.starts_with("xmacvlan VLAN filter entry, pid "))
        })
        .map(|(_, v, _)| *v)
        .collect();
    assert_eq!(
        registered,
        Vec::from_iter(vid),
        "VLAN devices on {}: {vlans:?}",
        guest.nic
    );
}

/// Wait until the run's progress line shows `total()` delivered (delivery is asynchronous).
fn wait_delivered(run: &Program, total: impl Fn() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered_so_far(&run.stdout_lines()) != Some(total()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stop the run with SIGINT; its JSON report.
/// Stop the run with SIGINT; its JSON report. What it printed (stderr, then stdout: progress
/// and the report) goes to the test's log, as a user would see it.
fn stop_run(run: Program, json: &Path) -> Value {
    let log = run.log.clone();
    let stdout = run
        .finish(Some(libc::SIGINT), Duration::from_secs(90))
        .expect("xmacvlan run stopping on SIGINT");
    println!(
        "xmacvlan run said:\n{}{}",
        std::fs::read_to_string(log).unwrap_or_default(),
        stdout.join("\n")
    );
    serde_json::from_str(&std::fs::read_to_string(json).expect("the JSON report"))
        .expect("the JSON report parses")
}

/// One zero-copy run: `xmacvlan run` with `demux` and `cores`, traffic to every endpoint,
/// and every count checked. Returns a line for the log.
fn zero_copy_run(test: &str, demux: &str, cores: &str) -> String {
    require_root();
    let guest = NicGuest::from_env(test);
    let scratch = Scratch::new(&format!("nic-{demux}"));
    let eps = endpoints();
    let file: Vec<Value> = eps
        .iter()
        .map(|(name, vid, mac)| serde_json::json!({"name": name, "vid": vid, "mac": mac}))
        .collect();
    let config = scratch.path("endpoints.json");
    std::fs::write(
        &config,
        serde_json::json!({ "endpoints": file }).to_string(),
    )
    .unwrap();
    let json = scratch.path("report.json");
    assert_eq!(
        xmacvlan::nic::rx_vlan_offload(&guest.nic),
        Some(true),
        "igb strips tags by default: the test would not show the offload turned off"
    );
    let all_macs: Vec<String> = eps.iter().map(|(_, _, m)| m.clone()).collect();
    assert_filters_clean(&guest, &all_macs, "before the run");

    let run = start_run(&guest, &scratch, (&config, &json), (demux, cores), true);
    assert_filters_admit(&guest, &all_macs, Some(VID));
    // igb zeroes a queue's counters when a socket binds to it or leaves it: read them while
    // the run holds the queues.
    let stats_before = nic_stats(&guest.nic).unwrap();
    let before = rx_queue_packets(&stats_before);
    assert_eq!(before.len(), QUEUES, "igb opened one queue per vCPU");
    let macs = |range: std::ops::Range<usize>| -> Vec<String> {
        eps[range].iter().map(|(_, _, m)| m.clone()).collect()
    };
    let mut sent = generate(
        &guest,
        &macs(0..UNTAGGED),
        None,
        (RATE, SECONDS),
        &scratch.path("gen-plain.log"),
    );
    sent.extend(generate(
        &guest,
        &macs(UNTAGGED..UNTAGGED + TAGGED),
        Some(VID),
        (RATE, SECONDS),
        &scratch.path("gen-vlan.log"),
    ));
    let total: u64 = sent.iter().map(|(_, n)| n).sum();
    assert!(total > 0, "the generator sent nothing");

    wait_delivered(&run, || total);
    let stats_after = nic_stats(&guest.nic).unwrap();
    let report = stop_run(run, &json);
    let nic_queues = delta(&before, &rx_queue_packets(&stats_after));
    println!(
        "igb counters that moved: {:?}\nreport: {report}",
        changed(&stats_before, &stats_after)
    );
    assert_eq!(
        xmacvlan::nic::rx_vlan_offload(&guest.nic),
        Some(true),
        "xmacvlan run restores rx VLAN offload at exit"
    );
    assert_filters_clean(&guest, &all_macs, "after the run");

    // What the run says it was.
    assert_eq!(report["bind"], "zerocopy", "{report}");
    assert_eq!(report["xdp_mode"], "native", "{report}");
    assert_eq!(report["demux"], demux, "{report}");
    let queues = report["queues"].as_array().expect("queues in the report");
    assert_eq!(queues.len(), QUEUES, "{report}");

    // Every endpoint exactly its frames, nothing dropped or misdelivered.
    let rows = report["endpoints"].as_array().expect("endpoints");
    let mut delivered = Vec::new();
    for (mac, n) in &sent {
        let row = rows
            .iter()
            .find(|r| r["mac"].as_str() == Some(mac))
            .unwrap_or_else(|| panic!("no endpoint {mac} in the report"));
        let got = row["frames"].as_u64().unwrap();
        assert_eq!(
            got, *n,
            "endpoint {} ({mac}): frames of {n} sent",
            row["name"]
        );
        assert_eq!(row["dropped"], 0, "{row}");
        assert_eq!(row["misdelivered"], 0, "{row}");
        delivered.push(got);
    }

    // XDP saw exactly the generator's frames (IPv6 is off in the guest: nothing else is on
    // the wire) and redirected every one.
    let x = &report["xdp"];
    let count = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("xdp.{k} in {x}"));
    let tagged: u64 = sent[UNTAGGED..].iter().map(|(_, n)| n).sum();
    assert_eq!(count("seen"), total, "{x}");
    assert_eq!(
        count("tagged"),
        tagged,
        "tags reach XDP with rxvlan off: {x}"
    );
    assert_eq!(count("hit"), total, "{x}");
    assert_eq!(count("redirected"), total, "{x}");

    // RSS spread the flows: the driver's own per-queue counts add up to what was sent and
    // every queue carried frames.
    assert_eq!(
        nic_queues.iter().sum::<u64>(),
        total,
        "igb's rx_queue_N_packets {nic_queues:?}"
    );
    assert!(
        nic_queues.iter().all(|&n| n > 0),
        "RSS left a queue empty: {nic_queues:?} (the flows vary source address and port)"
    );
    let field = |q: &Value, k: &str| q[k].as_u64().unwrap_or_else(|| panic!("queues[].{k}"));
    let report_rx: Vec<u64> = queues.iter().map(|q| field(q, "rx")).collect();
    let refilled: Vec<u64> = queues.iter().map(|q| field(q, "refilled")).collect();
    for q in queues {
        let socket = &q["socket"];
        for k in ["rx_dropped", "rx_ring_full", "rx_invalid_descs"] {
            assert_eq!(socket[k], 0, "queue socket {k}: {q}");
        }
    }
    if demux == "user" {
        // The user demux reads each queue's own socket: its counts are the NIC's.
        assert_eq!(
            report_rx, nic_queues,
            "per-queue rx of the report vs the driver"
        );
        for q in queues {
            assert_eq!(field(q, "rx"), field(q, "steered"), "{q}");
            assert_eq!(
                field(q, "dropped_unknown") + field(q, "dropped_ring_full"),
                0,
                "{q}"
            );
        }
    }
    // Frames go back to the fill ring as they are freed: never more than were received.
    for (q, (&r, &n)) in refilled.iter().zip(&nic_queues).enumerate() {
        assert!(r <= n, "queue {q} refilled {r} of {n} received");
    }
    format!(
        "demux {demux}, --cores {cores}: {} / {} / {QUEUES} queues; sent {total} ({} untagged, \
         {tagged} tagged {VID}) per endpoint {:?}; delivered {delivered:?}; igb rx per queue \
         {nic_queues:?}; report per queue rx {report_rx:?} refilled {refilled:?}",
        report["bind"],
        report["xdp_mode"],
        total - tagged,
        sent.iter().map(|(_, n)| n).collect::<Vec<_>>()
    )
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn xdp_demux_zero_copy_four_queues_each_with_its_worker() {
    let line = zero_copy_run("vm_nic::xdp_demux_four_workers", "xdp", "0,1,2,3");
    println!("{line}");
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn xdp_demux_zero_copy_four_queues_on_one_thread() {
    let line = zero_copy_run("vm_nic::xdp_demux_one_thread", "xdp", "1");
    println!("{line}");
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn user_demux_zero_copy_four_queues_each_with_its_worker() {
    let line = zero_copy_run("vm_nic::user_demux_four_workers", "user", "0,1,2,3");
    println!("{line}");
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn user_demux_zero_copy_four_queues_on_one_thread() {
    let line = zero_copy_run("vm_nic::user_demux_one_thread", "user", "1");
    println!("{line}");
}

/// A run that fails half-way leaves the NIC as it found it: its first endpoint (untagged) is
/// admitted, then the tagged one fails (the name of the VLAN device that would register VLAN
/// 100 is taken by a veth); the run exits with the error, and the MAC it added, the offload
/// it turned off and its XDP program are all gone.
#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn a_run_that_fails_half_way_leaves_the_nic_as_it_found_it() {
    require_root();
    let guest = NicGuest::from_env("vm_nic::failed_run");
    let scratch = Scratch::new("nic-fail");
    let eps = endpoints();
    let (plain, tagged) = (&eps[0], &eps[UNTAGGED]);
    let config = scratch.path("endpoints.json");
    std::fs::write(
        &config,
        serde_json::json!({"endpoints": [
            {"name": plain.0, "vid": plain.1, "mac": plain.2},
            {"name": tagged.0, "vid": tagged.1, "mac": tagged.2},
        ]})
        .to_string(),
    )
    .unwrap();
    let nl = xmacvlan::netlink::Netlink::new().unwrap();
    let nic = nl.require_link(&guest.nic).unwrap();
    let taken = format!("xmv{}v{VID}", nic.index);
    nl.add_veth(&taken, &format!("{taken}p"), 1).unwrap();
    let macs = [plain.2.clone(), tagged.2.clone()];
    assert_filters_clean(&guest, &macs, "before the run");

    let args = run_args(
        &guest,
        (&config, &scratch.path("report.json")),
        ("xdp", "1"),
    );
    let run = Program::start(None, &xmacvlan_bin(), &args, &scratch.path("run.log"))
        .expect("starting xmacvlan run");
    let err = run
        .finish(None, Duration::from_secs(90))
        .expect_err("the run cannot register VLAN 100");
    let text = format!("{err:#}");
    let index = nl.require_link(&taken).unwrap().index;
    nl.del_link(index).unwrap();
    assert!(
        text.contains(&format!(
            "registering VLAN {VID} in the VLAN filter of {}",
            guest.nic
        )),
        "{text}"
    );
    // It got as far as changing the NIC, and undid it.
    assert!(text.contains("turned rx VLAN offload off"), "{text}");
    assert!(
        text.contains(&format!("rx VLAN offload on {} restored", guest.nic)),
        "{text}"
    );
    assert_eq!(xmacvlan::nic::rx_vlan_offload(&guest.nic), Some(true));
    assert_filters_clean(&guest, &macs, "after the failed run");
    assert_eq!(
        nl.require_link(&guest.nic).unwrap().xdp_prog_id,
        None,
        "XDP detached"
    );
}
