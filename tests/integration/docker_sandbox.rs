//! A starting Docker container is not a gone one: Docker records the sandbox at Join and only
//! then makes it and moves the link in, so for a moment the endpoint's namespace does not
//! exist while its link waits in the host's namespace. Twenty fresh containers in a row, each
//! started under a steady stream to its MAC, with the daemon's namespace watch looking every
//! 100 ms: no endpoint is reported gone or detached, and every frame is placed - passed to
//! the kernel (no client is attached, so the fast path claims none) with nothing dropped.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use xmacvlan::abi::Counters;
use xmacvlan::dataplane::EndpointSpec;
use xmacvlan::ether::Mac;
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::ipc::socket::request;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig};
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::docker_lab::{Parents, TempDir, Xmacvlan};
use xmacvlan_tests::dockerd::{Dockerd, IMAGE};
use xmacvlan_tests::require_root;

const CONTAINERS: u8 = 20;
const RATE: u64 = 2_000;

fn xdp_counters(xmv: &Xmacvlan, iface: &str) -> Counters {
    xmv.stats()
        .into_iter()
        .find(|s| s.interface == iface)
        .map(|s| s.xdp)
        .unwrap_or_else(|| panic!("{iface} is not served"))
}

/// Unicast verdicts: what the stream moved (the wire's own neighbour and router
/// solicitations are multicast).
fn unicast(c: &Counters) -> u64 {
    c.seen - c.pass_bcast_mcast
}

/// The endpoint with `mac` once the plugin re-attached it in its sandbox (its link arrived).
fn served_in_sandbox(xmv: &Xmacvlan, mac: [u8; 6]) -> Option<String> {
    let state = xmv.state();
    let ep = state.endpoints.iter().find(|e| e.mac == mac)?;
    let settled = ep.ifname == "eth0"
        && xmv.log_text().contains(&format!(
            "the endpoint's port admits the sandbox's clients endpoint={}",
            ep.name
        ));
    settled.then(|| ep.name.clone())
}

fn wait_served(xmv: &Xmacvlan, mac: [u8; 6]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(name) = served_in_sandbox(xmv, mac) {
            return name;
        }
        assert!(
            Instant::now() < deadline,
            "{} never served in its sandbox",
            Mac(mac)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn twenty_fresh_containers_under_a_stream_are_never_reported_gone() {
    require_root();
    let tmp = TempDir::create("w");
    let dir = tmp.0.clone();
    let parents = Parents::create("w");
    let mut xmv = Xmacvlan::new(&dir, "w");
    xmv.start_with("xdp", &["--stats-interval", "100ms"]);
    let mut docker = Dockerd::new(&dir);
    docker.start();
    docker.import_busybox();
    let driver = xmv.driver();
    docker.ok(&[
        "network",
        "create",
        "-d",
        &driver,
        "--subnet",
        "198.18.63.0/24",
        "-o",
        &format!("parent={}", parents.b),
        "fresh",
    ]);
    // A container that stays: the classifier stays attached between the fresh ones.
    let anchor_mac = [0x02, 0x42, 0xc6, 0x12, 0x3f, 0x3f];
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "anchor",
        "--network",
        "fresh",
        "--mac-address",
        &Mac(anchor_mac).to_string(),
        IMAGE,
        "sleep",
        "600",
    ]);
    wait_served(&xmv, anchor_mac);

    let mut placed = Vec::new();
    for i in 0..CONTAINERS {
        let mac = [0x02, 0x42, 0xc6, 0x12, 0x3f, 0x40 + i];
        let spec = EndpointSpec {
            name: format!("fresh{i}"),
            vid: 0,
            mac,
        };
        let before = xdp_counters(&xmv, &parents.b);
        let stop = AtomicBool::new(false);
        let sent = std::thread::scope(|s| {
            let stream = s.spawn(|| {
                let cfg = GeneratorConfig {
                    ifname: parents.a.clone(),
                    queue: 0,
                    amount: Amount::For(Duration::from_secs(120)),
                    rate: Some(RATE),
                    core: None,
                    frame_size: 2048,
                    max_in_flight: generator::MAX_IN_FLIGHT,
                };
                generator::run(
                    &cfg,
                    &lab_streams(std::slice::from_ref(&spec), 64, false),
                    &stop,
                )
            });
            // Stop the stream whatever happens below.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            std::thread::sleep(Duration::from_millis(200));
            let name = format!("c{i}");
            docker.ok(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "fresh",
                "--mac-address",
                &Mac(mac).to_string(),
                "--stop-timeout",
                "1",
                IMAGE,
                "sleep",
                "600",
            ]);
            let endpoint = wait_served(&xmv, mac);
            // A few of the watch's looks with the container settled, still streaming.
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::Relaxed);
            let sent = stream.join().unwrap().expect("the stream").total();
            (sent, endpoint)
        });
        let (sent, endpoint) = sent;
        // The counters settle once the last frames are through.
        let deadline = Instant::now() + Duration::from_secs(5);
        let after = loop {
            let now = xdp_counters(&xmv, &parents.b);
            if unicast(&now) - unicast(&before) >= sent || Instant::now() > deadline {
                break now;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let d = |f: fn(&Counters) -> u64| f(&after) - f(&before);
        assert_eq!(
            d(unicast),
            sent,
            "c{i}: XDP saw every frame sent: {after:?}"
        );
        let to_kernel = d(|c| c.pass_miss) + d(|c| c.pass_unclaimed) + d(|c| c.pass_control);
        assert_eq!(
            (
                to_kernel,
                d(|c| c.redirected),
                d(|c| c.pass_no_socket),
                d(|c| c.malformed)
            ),
            (sent, 0, 0, 0),
            "c{i}: with no client every frame goes to the kernel"
        );
        placed.push((endpoint, sent));
        docker.ok(&["rm", "-f", &format!("c{i}")]);
    }
    eprintln!("frames placed per fresh container: {placed:?}");

    let log = xmv.log_text();
    assert!(
        !log.contains("endpoint detached from the fast path"),
        "a starting container was taken for a gone one:\n{log}"
    );
    let Answer::Stats { detached, .. } = request(&xmv.socket(), &Request::Stats).unwrap() else {
        panic!("stats answered something else");
    };
    assert!(detached.is_empty(), "stats lists {detached:?}");
    docker.ok(&["rm", "-f", "anchor"]);
    docker.ok(&["network", "rm", "fresh"]);
    drop(docker);
    drop(xmv);
    drop(parents);
}
