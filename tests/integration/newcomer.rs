//! What a newcomer following the README meets while a daemon runs, with the real binary in a
//! namespace of its own: `endpoint create` says the daemon attached the endpoint; `xmacvlan
//! run` on the daemon's interface names the daemon instead of advice that cannot work;
//! `doctor` reports the configuration the daemon was started with; `stats` as non-root says
//! it needs root; deleting an endpoint's namespace detaches it (logged at warn, listed in
//! `stats`); and a daemon started right after a `kill -9` (its pid a zombie) starts.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::Value;
use xmacvlan::control::State;
use xmacvlan::dataplane::EndpointSpec;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent};
use xmacvlan_bench::scenario::lab_streams;
use xmacvlan_tests::app::App;
use xmacvlan_tests::{require_root, xmacvlan_bin};

struct Lab {
    host: NetnsGuard,
    endpoints: Vec<NetnsGuard>,
    dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let prefix = format!("xmvn{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            host: NetnsGuard::create(&format!("{prefix}-h")).unwrap(),
            endpoints: (0..2)
                .map(|i| NetnsGuard::create(&format!("{prefix}-e{i}")).unwrap())
                .collect(),
            dir,
        };
        lab.host
            .run(|| {
                let nl = Netlink::new()?;
                let v0 = nl.add_veth("v0", "v0p", 1)?;
                nl.set_up(v0)?;
                nl.set_up(nl.require_link("v0p")?.index)?;
                Ok(())
            })
            .unwrap();
        let config = serde_json::json!({
            "log-level": "info",
            "log-format": "json",
            "stats-interval": "200ms",
            "xdp-mode": "native",
            "bind-mode": "copy",
            // The host's /run is shared: private ports, no Docker plugin.
            "port-dir": lab.dir.join("ports"),
            "docker-plugin": "",
        });
        std::fs::write(lab.config(), config.to_string()).unwrap();
        lab
    }

    fn config(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// `ip netns exec HOST [PREFIX…] xmacvlan --data-root … --control-socket … ARGS`.
    fn command_as(&self, prefix: &[&str], args: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name()])
            .args(prefix)
            .arg(xmacvlan_bin())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--control-socket")
            .arg(self.socket())
            .args(args.split_whitespace());
        cmd
    }

    fn output(&self, args: &str) -> Output {
        self.command_as(&[], args).output().unwrap()
    }

    /// Run to success; stdout and stderr.
    fn cli(&self, args: &str) -> (String, String) {
        let out = self.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "`xmacvlan {args}` failed: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    /// Run to failure; stderr.
    fn refused(&self, prefix: &[&str], args: &str) -> String {
        let out = self.command_as(prefix, args).output().unwrap();
        assert!(!out.status.success(), "`xmacvlan {args}` succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn spec(&self, name: &str) -> EndpointSpec {
        let state = State::load(&self.dir.join("data")).unwrap();
        state.endpoint(name).unwrap().spec()
    }

    fn start_daemon(&self, tag: &str) -> Daemon {
        let log = self.dir.join(format!("daemon-{tag}.log"));
        let child = self
            .command_as(&[], &format!("daemon --config {}", self.config().display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, log };
        daemon.wait_for_log("daemon started", Duration::from_secs(15));
        daemon
    }

    /// Send `count` timed frames to each endpoint from the wire side of `v0`.
    fn burst(&self, endpoints: &[EndpointSpec], count: u64) {
        let cfg = GeneratorConfig {
            ifname: "v0p".into(),
            queue: 0,
            amount: Amount::EachStream(count),
            rate: Some(20_000),
            core: None,
            frame_size: generator::FRAME_SIZE,
            max_in_flight: generator::MAX_IN_FLIGHT,
        };
        let streams = lab_streams(endpoints, 64, false);
        self.host
            .run(|| {
                let sent = PaceSent::default();
                generator::run_paced(
                    &cfg,
                    &streams,
                    &AtomicBool::new(false),
                    Some(Pace::wire(&sent)),
                )
            })
            .unwrap();
    }

    /// `xmacvlan-sink` on `name`'s port from its namespace `netns`, once the daemon shows it
    /// connected: the fast path claims an endpoint's frames only while a client is attached.
    fn attach_sink(&self, name: &str, netns: &str) -> App {
        let sink = App::sink(
            netns,
            &self.dir.join(format!("ports/{name}.sock")),
            &format!("sink-{name}"),
            &self.dir.join(format!("sink-{name}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let json = self.stats_json();
            let connected = json["stats"]["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["endpoints"].as_array().cloned().unwrap_or_default())
                .any(|e| e["name"] == name && e["port"]["connected"] == true);
            if connected {
                return sink;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s port never connected: {json}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stats_json(&self) -> Value {
        serde_json::from_str(&self.cli("stats --json").0).unwrap()
    }

    fn frames_of(&self, name: &str) -> Option<u64> {
        let json = self.stats_json();
        json["stats"]["interfaces"]
            .as_array()?
            .iter()
            .flat_map(|i| i["endpoints"].as_array().cloned().unwrap_or_default())
            .find(|e| e["name"] == name)
            .and_then(|e| e["frames"].as_u64())
    }

    fn wait_for_frames(&self, name: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.frames_of(name).unwrap_or(0) < want {
            assert!(Instant::now() < deadline, "{name} never got {want} frames");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon process; killed and reaped on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log_lines(&self) -> Vec<Value> {
        let file = std::fs::File::open(&self.log).unwrap();
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    fn wait_for_log(&self, needle: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with `{needle}` within {timeout:?}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs the daemon: the child's pid is the daemon's.
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_newcomers_session_with_a_running_daemon() {
    let lab = Lab::new("s");
    lab.cli("network create -d macvlan --subnet 198.18.30.0/24 -o parent=v0 n1");
    let (_, before) = lab.cli(&format!(
        "endpoint create --network n1 --netns {} c0",
        lab.endpoints[0].name()
    ));
    assert!(!before.contains("daemon"), "no daemon yet: {before}");
    let daemon = lab.start_daemon("first");

    // Created while the daemon runs: it says the daemon took it.
    let (out, said) = lab.cli(&format!(
        "endpoint create --network n1 --netns {} c1",
        lab.endpoints[1].name()
    ));
    assert_eq!(out, "c1\n");
    assert!(
        said.contains("c1: the running daemon attached it to the fast path on v0"),
        "{said}"
    );

    // `xmacvlan run` on the daemon's interface: names the daemon and what to do.
    let endpoints = lab.dir.join("endpoints.json");
    std::fs::write(
        &endpoints,
        r#"{"endpoints": [{"name": "x", "vid": 0, "mac": "02:42:c6:12:00:99"}]}"#,
    )
    .unwrap();
    for extra in ["", " --force"] {
        let err = lab.refused(
            &[],
            &format!("run --iface v0 --config {}{extra}", endpoints.display()),
        );
        let pid = daemon.pid();
        assert!(
            err.contains(&format!("v0 is served by the xmacvlan daemon (pid {pid}")),
            "{err}"
        );
        assert!(err.contains("xmacvlan endpoint create"), "{err}");
        assert!(!err.contains("xdp off"), "{err}");
    }

    // doctor: the configuration the daemon runs with, not the default file.
    let (doctor, _) = lab.cli("doctor --json");
    let doctor: Value = serde_json::from_str(&doctor).unwrap();
    let config = doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "config")
        .unwrap();
    assert_eq!(
        config["what"],
        format!(
            "{} is valid (the running daemon (pid {}) reads it)",
            lab.config().display(),
            daemon.pid()
        ),
        "{config}"
    );

    // doctor looking for a daemon on another socket: the classifier on v0 is named as held
    // by the daemon's process, not as a crashed daemon's leftover to `xdp off`.
    let out = Command::new("ip")
        .args(["netns", "exec", lab.host.name()])
        .arg(xmacvlan_bin())
        .args([
            "--control-socket",
            "/nonexistent/x.sock",
            "doctor",
            "--json",
            "--iface",
            "v0",
        ])
        .output()
        .unwrap();
    let doctor: Value = serde_json::from_slice(&out.stdout).unwrap();
    let prog = doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "xdp-program")
        .unwrap();
    assert!(
        prog["what"]
            .as_str()
            .unwrap()
            .contains(&format!("is held by xmacvlan process {}", daemon.pid())),
        "{prog}"
    );

    // network create as non-root: says what it takes, not only "Permission denied".
    let err = lab.refused(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        "network create -d macvlan --subnet 198.18.31.0/24 -o parent=v0p n2",
    );
    assert!(
        err.contains("run it as root (sudo xmacvlan ...) or with CAP_NET_ADMIN"),
        "{err}"
    );

    // stats as non-root: the socket is root-only, and the message says so.
    let err = lab.refused(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        "stats",
    );
    assert!(err.contains("run this command as root"), "{err}");

    // Traffic, then the container's namespace goes away: the daemon detaches the endpoint
    // on its own, warns, and `stats` lists it.
    let (c0, c1) = (lab.spec("c0"), lab.spec("c1"));
    let _sinks = [
        lab.attach_sink("c0", lab.endpoints[0].name()),
        lab.attach_sink("c1", lab.endpoints[1].name()),
    ];
    lab.burst(&[c0.clone(), c1.clone()], 500);
    lab.wait_for_frames("c0", 500);
    lab.wait_for_frames("c1", 500);
    let status = Command::new("ip")
        .args(["netns", "del", lab.endpoints[0].name()])
        .status()
        .unwrap();
    assert!(status.success());
    let warned = daemon.wait_for_log(
        "endpoint detached from the fast path",
        Duration::from_secs(5),
    );
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["endpoint"], "c0", "{warned}");
    let json = lab.stats_json();
    let detached = &json["stats"]["detached"][0];
    assert_eq!(detached["endpoint"], "c0", "{json}");
    assert_eq!(detached["iface"], "v0", "{json}");
    assert!(
        detached["reason"].as_str().unwrap().contains("is gone"),
        "{json}"
    );
    assert_eq!(lab.frames_of("c0"), None, "c0 is no longer served");
    let (text, _) = lab.cli("stats");
    assert!(text.contains("detached by the daemon"), "{text}");
    assert!(
        text.contains("(demux xdp, XDP native, bind copy, multi-buffer)"),
        "{text}"
    );
    // The other endpoint keeps its traffic.
    lab.burst(&[c1], 300);
    lab.wait_for_frames("c1", 800);

    // kill -9, and at once a new daemon, while the old pid is still a zombie (not reaped):
    // the new one starts.
    let mut first = daemon;
    let status = Command::new("kill")
        .args(["-9", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let second = lab.start_daemon("second");
    second.wait_for_log("replacing the pid file", Duration::from_secs(1));
    assert!(
        first.child.try_wait().unwrap().is_some(),
        "the first daemon is gone"
    );
    drop(second);
    drop(first);
}

/// A namespace made inside `ip netns exec OTHER bash` is mounted only in that shell: from
/// anywhere else `endpoint create` says so and how to fix it, instead of `setns: EINVAL`.
#[test]
fn a_namespace_from_another_mount_namespace_is_explained() {
    let lab = Lab::new("g");
    let ghost = Ghost(format!("{}-ghost", lab.host.name()));
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.host.name(),
            "ip",
            "netns",
            "add",
            &ghost.0,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    lab.cli("network create -d macvlan --subnet 198.18.32.0/24 -o parent=v0 n1");
    let err = lab.refused(
        &[],
        &format!("endpoint create --network n1 --netns {} g1", ghost.0),
    );
    let ghost = &ghost.0;
    assert!(
        err.contains(&format!(
            "/run/netns/{ghost} is not a network namespace here: it is a plain file"
        )),
        "{err}"
    );
    assert!(err.contains("ip netns exec OTHER bash"), "{err}");
    assert!(!err.contains("Invalid argument"), "{err}");
    let (ls, _) = lab.cli("endpoint ls");
    assert_eq!(ls.lines().count(), 1, "nothing recorded: {ls}");
}

/// The file a namespace made in another mount namespace leaves in /run/netns: `ip netns del`
/// removes it (there is no mount to undo here), also when the test fails.
struct Ghost(String);

impl Drop for Ghost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
