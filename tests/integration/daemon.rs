//! `xmacvlan daemon` as an operator runs it: the real binary in a namespace with a veth
//! parent, driven by the real CLI. Endpoints attach live, their frames go to their kernel
//! devices until a memif client (`xmacvlan-sink`) connects, stats and `.hgrm` histograms match a
//! known burst, SIGHUP changes the log level, SIGTERM leaves within a second and cleanly, and
//! a `kill -9` under traffic is recovered by a restart with nothing leaked. Needs root and
//! the `xmacvlan` binary (`cargo xtask test` builds it).
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use xmacvlan::dataplane::{EndpointSpec, Snapshot};
use xmacvlan::ether::Mac;
use xmacvlan::telemetry::hgrm::parse_hgrm;
use xmacvlan_bench::generator::Stream;
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::daemon_lab::Lab;
use xmacvlan_tests::{require_root, xmacvlan_bin};

/// One daemon at a time: the tests compare what daemons hold.
static SERIAL: Mutex<()> = Mutex::new(());

/// IDs of the BPF programs, maps and links a process holds open (from its fdinfo): what
/// must be gone once it exited, or it leaked.
#[derive(Debug, Default, Clone, PartialEq)]
struct BpfIds {
    programs: BTreeSet<u32>,
    maps: BTreeSet<u32>,
    links: BTreeSet<u32>,
}

fn bpf_held_by(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in info.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = value.parse() else { continue };
            match key {
                "prog_id:" => ids.programs.insert(id),
                "map_id:" => ids.maps.insert(id),
                "link_id:" => ids.links.insert(id),
                _ => false,
            };
        }
    }
    ids
}

/// Which of `ids` still exist on this machine. The kernel frees a dead process's objects
/// asynchronously: give it a moment to drop them all.
fn still_loaded(ids: &BpfIds) -> BpfIds {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let programs = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.programs.contains(id))
            .collect();
        let maps = aya::maps::loaded_maps()
            .filter_map(Result::ok)
            .map(|m| m.id())
            .filter(|id| ids.maps.contains(id))
            .collect();
        let links = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .map(|l| l.id())
            .filter(|id| ids.links.contains(id))
            .collect();
        let left = BpfIds {
            programs,
            maps,
            links,
        };
        if left == BpfIds::default() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One test at a time; a lab with network `n1` on `v0` and endpoint `c0`.
fn setup(tag: &str) -> (MutexGuard<'static, ()>, Lab, EndpointSpec) {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(tag);
    lab.create_network();
    let c0 = lab.create_endpoint(0);
    (serial, lab, c0)
}

/// GET the metrics page over its Unix socket.
fn scrape(socket: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

fn endpoint_frames(stats: &[Snapshot], name: &str) -> u64 {
    stats
        .iter()
        .flat_map(|s| &s.endpoints)
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("endpoint {name} not in stats: {stats:?}"))
        .frames
}

#[test]
fn endpoints_attach_live_stats_match_sighup_and_sigterm() {
    let (_serial, lab, c0) = setup("live");

    // Started after c0 exists: it serves what the state records.
    let daemon = lab.start_daemon();
    daemon.assert_started_serving("1 of 1 recorded endpoints");
    assert!(lab.xdp_on_v0().is_some(), "XDP attached to the parent");

    // Created while it runs: attached live, without a restart.
    let c1 = lab.create_endpoint(1);
    let stats = daemon.stats();
    assert_eq!(stats.len(), 1, "one dataplane, on v0");
    let names: Vec<&str> = stats[0].endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["c0", "c1"]);

    // No client yet: the classifier leaves their frames to the kernel devices.
    const EARLY: u64 = 100;
    lab.burst(&[c0.clone(), c1.clone()], EARLY);
    let stats = daemon.stats();
    assert_eq!(stats[0].xdp.pass_unclaimed, 2 * EARLY, "{:?}", stats[0].xdp);
    assert_eq!(stats[0].xdp.redirected, 0);
    assert_eq!(endpoint_frames(&stats, "c0"), 0);

    // A known burst once each has a client: the JSON stats of the CLI count exactly it, and
    // so do the clients.
    let sinks = [lab.attach_sink(&daemon, 0), lab.attach_sink(&daemon, 1)];
    const BURST: u64 = 2000;
    let sent = lab.burst(&[c0.clone(), c1.clone()], BURST);
    assert_eq!(sent.per_stream, [BURST, BURST]);
    daemon.wait_for_frames(&[("c0", BURST), ("c1", BURST)]);
    let json: Value = serde_json::from_str(&lab.cli("stats --json")).unwrap();
    let iface = &json["stats"]["interfaces"][0];
    assert_eq!(iface["interface"], "v0");
    assert_eq!(iface["xdp"]["redirected"], 2 * BURST, "{iface}");
    for (i, e) in iface["endpoints"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["name"], format!("c{i}"));
        assert_eq!(e["frames"], BURST, "{e}");
        assert_eq!(e["bytes"], BURST * 64, "{e}");
        assert_eq!(e["misdelivered"], 0, "{e}");
        assert_eq!(e["dropped_ring_full"], 0, "{e}");
        let port = &e["port"];
        assert_eq!(port["client"], format!("sink-c{i}"), "{e}");
        assert_eq!(port["pid"], sinks[i].pid(), "{e}");
        assert_eq!(port["connected"], true, "{e}");
        assert_eq!(port["rx_frames"], BURST, "{e}");
        assert_eq!(port["rx_bytes"], BURST * 64, "{e}");
        assert_eq!(port["drop_ring_full"], 0, "{e}");
    }
    let table = lab.cli("stats");
    assert!(
        table.contains("PORT") && table.contains(&format!("sink-c0 (pid {})", sinks[0].pid())),
        "{table}"
    );

    // The Prometheus page counts the same, once a stats interval has passed.
    std::thread::sleep(Duration::from_millis(500));
    let page = scrape(&lab.dir.join("metrics.sock"));
    assert!(page.starts_with("HTTP/1.0 200 OK\r\n"), "{page}");
    for i in 0..2 {
        let sample = format!(
            "xmacvlan_endpoint_frames_total{{interface=\"v0\",endpoint=\"c{i}\",vlan=\"0\"}} {BURST}\n"
        );
        assert!(page.contains(&sample), "{sample} missing from\n{page}");
    }

    // The .hgrm export parses and counts every timed frame.
    let hgrm_path = lab.dir.join("c0.hgrm");
    lab.cli(&format!(
        "stats --histogram c0 --out {}",
        hgrm_path.display()
    ));
    let hgrm = parse_hgrm(&std::fs::read_to_string(&hgrm_path).unwrap()).unwrap();
    assert_eq!(hgrm.total_count, BURST);
    assert_eq!(hgrm.rows.last().unwrap().total_count, BURST);
    assert!(hgrm.max > 0.0);
    // The interval histogram covers at most what arrived since the last tick.
    let interval = parse_hgrm(&lab.cli("stats --histogram c0 --interval")).unwrap();
    assert!(interval.total_count <= BURST);

    // SIGHUP: debug comes on live; a restart-only key is reported, not applied.
    assert!(daemon.log_lines().iter().all(|l| l["level"] != "DEBUG"));
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.config()).unwrap()).unwrap();
    config["log-level"] = "debug".into();
    config["demux-mode"] = "user".into();
    std::fs::write(lab.config(), config.to_string()).unwrap();
    daemon.signal("HUP");
    let reload = daemon.wait_for_log("SIGHUP", Duration::from_secs(5));
    let message = reload["message"].as_str().unwrap();
    assert!(message.contains("log-level"), "{message}");
    assert!(
        message.contains("needs a restart") && message.contains("demux-mode"),
        "{message}"
    );
    let _ = daemon.stats();
    let request = daemon.wait_for_log("control request", Duration::from_secs(5));
    assert_eq!(request["level"], "DEBUG", "{request}");

    // --watch: one line per second per interface, rates included.
    let watch = lab.cli("stats --watch --count 2");
    let lines: Vec<&str> = watch.lines().collect();
    assert_eq!(lines.len(), 2, "{watch}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("v0") && l.contains("pps")),
        "{watch}"
    );

    // Kernel events reach the debug log: frames cut inside their 802.1Q tag.
    let tagged = EndpointSpec {
        vid: 100,
        ..c0.clone()
    };
    let cut: Vec<Stream> = lab_streams(&[tagged], 64, false)
        .into_iter()
        .map(|s| s.truncated(16))
        .collect();
    lab.send(&cut, 3);
    let event = daemon.wait_for_log("malformed frame", Duration::from_secs(5));
    assert_eq!(event["level"], "DEBUG", "{event}");
    assert_eq!(event["target"], "xmacvlan::kernel", "{event}");
    assert_eq!(event["len"], 16, "{event}");
    assert_eq!(event["mac"], Mac(c0.mac).to_string(), "{event}");

    // Removed while it runs: detached live, its client told, the other endpoint stays.
    let [sink0, mut sink1] = sinks;
    lab.cli("endpoint rm c1");
    let stats = daemon.stats();
    let names: Vec<&str> = stats[0].endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["c0"]);
    assert_eq!(endpoint_frames(&stats, "c0"), BURST);
    let out: Value =
        serde_json::from_str(sink1.wait_output(Duration::from_secs(10)).trim()).unwrap();
    assert_eq!(out["frames"], BURST, "{out}");
    assert!(
        out["disconnected"]
            .as_str()
            .unwrap()
            .contains("no longer served"),
        "{out}"
    );
    assert!(
        !lab.port_socket(1).exists(),
        "the socket goes with the endpoint"
    );
    let out = sink0.stop_sink();
    assert_eq!(
        (out["frames"].as_u64(), out["misdelivered"].as_u64()),
        (Some(BURST), Some(0)),
        "{out}"
    );
    assert_eq!(
        (out["timed"].as_u64(), out["tagged"].as_u64()),
        (Some(BURST), Some(0)),
        "{out}"
    );
    daemon.wait_for_port("c0", false);

    // SIGTERM: out within a second, XDP detached, socket and pid file gone, nothing left.
    let pid_file = lab.socket().with_extension("pid");
    assert!(pid_file.exists());
    let held = bpf_held_by(daemon.child.id());
    assert_eq!(
        held.programs.len(),
        1,
        "the daemon holds its classifier: {held:?}"
    );
    let (took, status) = daemon.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert_eq!(lab.xdp_on_v0(), None);
    assert!(!lab.socket().exists() && !pid_file.exists());
    assert_eq!(
        still_loaded(&held),
        BpfIds::default(),
        "the daemon's BPF programs, maps and links are gone with it"
    );
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}

#[test]
fn kill_9_under_traffic_then_restart_recovers_with_nothing_leaked() {
    let (_serial, lab, c0) = setup("crash");
    // This daemon demuxes in userspace (the other test covers the xdp mode).
    lab.write_config("info", "user");
    let state_file = lab.dir.join("data/state.json");
    let state_before = std::fs::read(&state_file).unwrap();

    let first = lab.start_daemon();
    let fds_first = first.settled_fds(None);
    let held_first = bpf_held_by(first.child.id());
    let mut sink = lab.attach_sink(&first, 0);
    // Traffic runs while the daemon dies.
    std::thread::scope(|s| {
        let traffic = s.spawn(|| lab.burst(std::slice::from_ref(&c0), 20_000));
        first.wait_for_frames(&[("c0", 1000)]);
        first.signal("KILL");
        traffic.join().unwrap();
    });
    drop(first);
    // Its client sees the socket close and leaves by itself.
    let out: Value =
        serde_json::from_str(sink.wait_output(Duration::from_secs(10)).trim()).unwrap();
    assert!(out["frames"].as_u64().unwrap() >= 1000, "{out}");
    assert!(out["disconnected"].is_string(), "{out}");
    assert_eq!(
        still_loaded(&held_first),
        BpfIds::default(),
        "a killed daemon's BPF objects die with it (nothing pinned, XDP attached by a link)"
    );

    // What a kill -9 leaves: the state, byte for byte; the kernel objects of the endpoint.
    assert_eq!(std::fs::read(&state_file).unwrap(), state_before);
    assert!(
        lab.socket().exists(),
        "a killed daemon leaves its socket file"
    );

    // The restart takes over: stale socket and pid file replaced, any XDP program of ours
    // replaced, the endpoint served again, and exact delivery.
    let second = lab.start_daemon();
    second.assert_started_serving("1 of 1 recorded endpoints");
    assert_eq!(
        second.settled_fds(Some(fds_first)),
        fds_first,
        "the restarted daemon holds what the first did (waited up to 10 s for its start-up)"
    );
    let held_second = bpf_held_by(second.child.id());
    assert_eq!(
        held_second.programs.len(),
        1,
        "one classifier: {held_second:?}"
    );
    assert_eq!(held_second.maps.len(), held_first.maps.len());
    let sink = lab.attach_sink(&second, 0);
    lab.burst(std::slice::from_ref(&c0), 1000);
    let stats = second.wait_for_frames(&[("c0", 1000)]);
    assert_eq!(endpoint_frames(&stats, "c0"), 1000);
    assert_eq!(sink.stop_sink()["frames"], 1000);

    let (took, status) = second.terminate();
    assert!(
        status.success() && took < Duration::from_secs(1),
        "{status} after {took:?}"
    );
    assert_eq!(lab.xdp_on_v0(), None);
    assert_eq!(
        still_loaded(&held_second),
        BpfIds::default(),
        "nothing leaked: programs, maps, links"
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), state_before);
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}

/// Bad configuration stops the daemon before it touches anything, naming the key.
#[test]
fn a_bad_config_file_is_refused_with_the_key_named() {
    let lab_dir = std::env::temp_dir().join(format!("xmvd{}-badcfg", std::process::id()));
    std::fs::create_dir_all(&lab_dir).unwrap();
    let config = lab_dir.join("daemon.json");
    std::fs::write(&config, r#"{"log-level": "loud"}"#).unwrap();
    let out = Command::new(xmacvlan_bin())
        .arg("--control-socket")
        .arg(lab_dir.join("ctl.sock"))
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&lab_dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("log-level") && stderr.contains("debug, info, warn, error, fatal"),
        "{stderr}"
    );
    assert!(!lab_dir.join("ctl.sock").exists());
}

/// A damaged state file stops the daemon with the file named, and stays as it was: it is
/// never reset behind the operator's back.
#[test]
fn a_corrupted_state_file_stops_the_daemon_and_is_kept() {
    require_root();
    let dir = std::env::temp_dir().join(format!("xmvd{}-badstate", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let state = dir.join("data/state.json");
    let garbage = b"{\"version\": 1, \"networks\": [{\"name\": \"n1\", \0\xff";
    std::fs::write(&state, garbage).unwrap();
    let out = Command::new(xmacvlan_bin())
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .args(["daemon", "--config", "/nonexistent-is-an-error"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-is-an-error"));

    let config = dir.join("daemon.json");
    std::fs::write(&config, "{}").unwrap();
    let out = Command::new(xmacvlan_bin())
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let kept = std::fs::read(&state).unwrap();
    let leftovers = (dir.join("ctl.sock").exists(), dir.join("ctl.pid").exists());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "the daemon must not run on a damaged state"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fatal") && stderr.contains("state.json") && stderr.contains("corrupted"),
        "{stderr}"
    );
    assert_eq!(kept, garbage, "the state file is kept byte for byte");
    assert_eq!(
        leftovers,
        (false, false),
        "socket and pid file removed on the way out"
    );
}
