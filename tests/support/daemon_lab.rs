//! The daemon test lab: the real `xmacvlan` binary in a host namespace with a veth parent
//! `v0` (frames injected on its peer `v0p`), two endpoint namespaces, a data root, sockets
//! and a config file, all removed on drop; and the daemon process, killed on drop.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::Value;
use xmacvlan::control::State;
use xmacvlan::dataplane::{EndpointSpec, Snapshot};
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::ipc::socket::request;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan_bench::generator::{self, Amount, GeneratorConfig, Pace, PaceSent, Sent, Stream};
use xmacvlan_bench::scenario::lab_streams;

use crate::app::App;
use crate::{require_root, xmacvlan_bin};

/// A host namespace with the veth parent `v0` (frames are injected on its peer `v0p`), two
/// endpoint namespaces, a data root, a socket path and a config file, all removed on drop.
pub struct Lab {
    pub host: NetnsGuard,
    pub endpoints: Vec<NetnsGuard>,
    pub dir: PathBuf,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        require_root();
        let prefix = format!("xmvd{}{tag}", std::process::id());
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
        lab.write_config("info", "xdp");
        lab
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    pub fn write_config(&self, level: &str, demux: &str) {
        let config = serde_json::json!({
            "log-level": level,
            "log-format": "json",
            "stats-interval": "200ms",
            "demux-mode": demux,
            "xdp-mode": "native",
            "bind-mode": "copy",
            "metrics-addr": format!("unix:{}", self.dir.join("metrics.sock").display()),
            // The host's /run is shared: never serve Docker's default plugin from a test.
            "docker-plugin": "",
            "port-dir": self.dir.join("ports"),
        });
        std::fs::write(self.config(), config.to_string()).unwrap();
    }

    /// `ip netns exec HOST xmacvlan --data-root … --control-socket … ARGS`.
    pub fn command(&self, args: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name()])
            .arg(xmacvlan_bin())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--control-socket")
            .arg(self.socket())
            .args(args.split_whitespace());
        cmd
    }

    /// Run a CLI command to success; its stdout.
    pub fn cli(&self, args: &str) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "`xmacvlan {args}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn create_network(&self) {
        self.cli("network create -d macvlan --subnet 198.18.20.0/24 -o parent=v0 n1");
    }

    pub fn create_endpoint(&self, i: usize) -> EndpointSpec {
        self.cli(&format!(
            "endpoint create --network n1 --netns {} c{i}",
            self.endpoints[i].name()
        ));
        let state = State::load(&self.dir.join("data")).unwrap();
        state.endpoint(&format!("c{i}")).unwrap().spec()
    }

    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with("", &[])
    }

    /// [`Self::start_daemon`] with more daemon flags and environment variables.
    pub fn start_daemon_with(&self, flags: &str, env: &[(&str, &std::path::Path)]) -> Daemon {
        let log = self.dir.join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let mut command = self.command(&format!(
            "daemon --config {} {flags}",
            self.config().display()
        ));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            log,
            socket: self.socket(),
        };
        daemon.wait_for_log("daemon started", Duration::from_secs(10));
        daemon
    }

    /// Endpoint `c{i}`'s memif socket.
    pub fn port_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("ports/c{i}.sock"))
    }

    /// The memif secret file of [`Self::use_port_secret`].
    pub fn port_secret_file(&self) -> PathBuf {
        self.dir.join("memif.secret")
    }

    /// Give the daemon (started after this) a memif secret: a private file, named by
    /// `port-secret-file` in its config. [`Self::attach_sink`] then passes it to the sink.
    pub fn use_port_secret(&self) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.port_secret_file();
        std::fs::write(&path, "lab-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(self.config()).unwrap()).unwrap();
        config["port-secret-file"] = Value::from(path.display().to_string());
        std::fs::write(self.config(), config.to_string()).unwrap();
    }

    /// `xmacvlan-sink` in `c{i}`'s namespace, once the daemon shows its port connected.
    pub fn attach_sink(&self, daemon: &Daemon, i: usize) -> App {
        self.attach_sink_with(daemon, i, &[])
    }

    /// [`Self::attach_sink`] with more sink flags.
    pub fn attach_sink_with(&self, daemon: &Daemon, i: usize, flags: &[&str]) -> App {
        let log = self.dir.join(format!(
            "sink-c{i}-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let secret = self.port_secret_file();
        let secret = secret.to_str().unwrap();
        let mut extra: Vec<&str> = flags.to_vec();
        if std::path::Path::new(secret).exists() {
            extra.extend(["--secret-file", secret]);
        }
        let sink = App::sink_with(
            self.endpoints[i].name(),
            &self.port_socket(i),
            &format!("sink-c{i}"),
            &log,
            &extra,
        );
        daemon.wait_for_port(&format!("c{i}"), true);
        sink
    }

    /// Send `count` frames to each of `endpoints` from the wire side of `v0`.
    pub fn burst(&self, endpoints: &[EndpointSpec], count: u64) -> Sent {
        self.send(&lab_streams(endpoints, 64, false), count)
    }

    pub fn send(&self, streams: &[Stream], count: u64) -> Sent {
        let cfg = GeneratorConfig {
            ifname: "v0p".into(),
            queue: 0,
            amount: Amount::EachStream(count),
            rate: Some(20_000),
            core: None,
            frame_size: 2048,
            max_in_flight: generator::MAX_IN_FLIGHT,
        };
        self.host
            // Paced by the wire: nothing lost before XDP on a busy machine (the daemon is
            // another process: its delivery is read from its stats).
            .run(|| {
                let sent = PaceSent::default();
                generator::run_paced(
                    &cfg,
                    streams,
                    &AtomicBool::new(false),
                    Some(Pace::wire(&sent)),
                )
            })
            .unwrap()
    }

    /// `cat /sys/class/net/DEV/FILE` as seen in namespace `netns`, as a number.
    pub fn sysfs_number(netns: &str, dev: &str, file: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "cat"])
            .arg(format!("/sys/class/net/{dev}/{file}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{dev}/{file} in {netns}: {text:?}"))
    }

    /// How often `v0`'s carrier went down or up since it was made.
    pub fn carrier_changes_of_v0(&self) -> u64 {
        Self::sysfs_number(self.host.name(), "v0", "carrier_changes")
    }

    /// Unicast frames endpoint `c{i}`'s kernel device (its macvlan) received so far.
    pub fn kernel_unicast_rx(&self, i: usize) -> u64 {
        let state = State::load(&self.dir.join("data")).unwrap();
        let ifname = &state.endpoint(&format!("c{i}")).unwrap().ifname;
        let ns = self.endpoints[i].name();
        Self::sysfs_number(ns, ifname, "statistics/rx_packets")
            - Self::sysfs_number(ns, ifname, "statistics/multicast")
    }

    pub fn xdp_on_v0(&self) -> Option<u32> {
        self.host
            .run(|| Ok(Netlink::new()?.require_link("v0")?.xdp_prog_id))
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon process; killed on drop if a test fails half-way.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn log_lines(&self) -> Vec<Value> {
        let file = std::fs::File::open(&self.log).unwrap();
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// The first JSON log line whose message contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Value {
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

    /// The start line says how many recorded endpoints are on the fast path.
    pub fn assert_started_serving(&self, what: &str) {
        let started = self.wait_for_log("daemon started", Duration::from_secs(1));
        let message = started["message"].as_str().unwrap();
        assert!(message.contains(what), "{message}");
    }

    pub fn stats(&self) -> Vec<Snapshot> {
        match request(&self.socket, &Request::Stats).unwrap() {
            Answer::Stats { interfaces, .. } => interfaces,
            other => panic!("stats answered {other:?}"),
        }
    }

    /// Wait until the endpoints' frame counters reach `want` (delivery is asynchronous).
    pub fn wait_for_frames(&self, want: &[(&str, u64)]) -> Vec<Snapshot> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.stats();
            let frames = |name: &str| {
                stats
                    .iter()
                    .flat_map(|s| &s.endpoints)
                    .find(|e| e.name == name)
                    .map_or(0, |e| e.frames)
            };
            if want.iter().all(|(n, f)| frames(n) >= *f) || Instant::now() > deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until endpoint `name`'s port is (or is no longer) connected.
    pub fn wait_for_port(&self, name: &str, connected: bool) {
        self.wait_for_port_within(name, connected, Duration::from_secs(10))
    }

    pub fn wait_for_port_within(&self, name: &str, connected: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self
                .stats()
                .iter()
                .flat_map(|s| &s.endpoints)
                .find(|e| e.name == name)
                .is_some_and(|e| e.port.as_ref().is_some_and(|p| p.connected));
            if now == connected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "port {name} not {} within {timeout:?}; log:\n{}",
                if connected {
                    "connected"
                } else {
                    "disconnected"
                },
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM and wait; returns how long the daemon took to exit, and its status.
    pub fn terminate(self) -> (Duration, std::process::ExitStatus) {
        self.stop_with("TERM")
    }

    /// Send `signal` and wait for the daemon to exit; how long it took, and its status.
    pub fn stop_with(mut self, signal: &str) -> (Duration, std::process::ExitStatus) {
        let start = Instant::now();
        self.signal(signal);
        let deadline = start + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (start.elapsed(), status);
            }
            assert!(Instant::now() < deadline, "the daemon ignored SIG{signal}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn open_fds(&self) -> usize {
        // `ip netns exec` execs the daemon, so the child's pid is the daemon's.
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Open fds once start-up work has finished: the same count twice 100 ms apart, or
    /// `want` (at most 10 s, then the last count). One reading can catch a netlink socket or
    /// a control connection that is about to close.
    pub fn settled_fds(&self, want: Option<usize>) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.open_fds();
        loop {
            if want == Some(last) || Instant::now() >= deadline {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
            let now = self.open_fds();
            if want.is_none() && now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
