//! A lab for the CNI plugin: a "host" namespace with veth parents (`v0` for xmacvlan, `v1`
//! for the reference plugins), the xmacvlan daemon running there on a private control socket
//! and data root, and the plugin run as a runtime runs it (environment + stdin). Everything
//! is removed on drop, the daemon killed.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xmacvlan::control::State;
use xmacvlan::dataplane::EndpointSpec;
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan_bench::generator::Sent;

/// Debian's `containernetworking-plugins`: the reference plugins and the IPAM ones.
pub const CNI_DIR: &str = "/usr/lib/cni";

/// A binary built beside the test binary (`cargo xtask test` builds them first).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p xmacvlan --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// What a plugin printed and how it exited.
#[derive(Debug, Clone)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin output is not JSON ({e}): {self:?}"))
    }

    /// The CNI error's code (panics if the plugin succeeded).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a CNI error, got success: {self:?}");
        let v = self.json();
        assert!(v["msg"].is_string(), "{v}");
        v["code"].as_u64().expect("a numeric code")
    }
}

pub struct Lab {
    pub prefix: String,
    pub host: NetnsGuard,
    pub containers: Vec<NetnsGuard>,
    pub dir: PathBuf,
}

impl Lab {
    /// `parents` veth pairs `vI`/`vIp` (MTU 1500, up) and `containers` empty namespaces.
    pub fn new(tag: &str, parents: usize, containers: usize) -> Lab {
        crate::require_root();
        let prefix = format!("xmvn{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            host: NetnsGuard::create(&format!("{prefix}-h")).unwrap(),
            containers: (0..containers)
                .map(|i| NetnsGuard::create(&format!("{prefix}-c{i}")).unwrap())
                .collect(),
            prefix,
            dir,
        };
        lab.host
            .run(|| {
                let nl = Netlink::new()?;
                for i in 0..parents {
                    let v = nl.add_veth(&format!("v{i}"), &format!("v{i}p"), 1)?;
                    nl.set_up(v)?;
                    nl.set_up(nl.require_link(&format!("v{i}p"))?.index)?;
                }
                Ok(())
            })
            .unwrap();
        lab
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The daemon's `port-dir` and the plugin's `portDir`.
    pub fn port_dir(&self) -> PathBuf {
        self.dir.join("ports")
    }

    pub fn ipam_dir(&self, which: &str) -> PathBuf {
        self.dir.join(format!("ipam-{which}"))
    }

    pub fn state(&self) -> State {
        State::load(&self.data_root()).unwrap()
    }

    /// Start `xmacvlan daemon` in the host namespace (demux `xdp`, copy mode) and wait until
    /// its socket answers.
    pub fn start_daemon(&self) -> Daemon {
        let config = self.dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "log-format": "json", "demux-mode": "xdp", "xdp-mode": "native",
                "bind-mode": "copy", "stats-interval": "1s",
                // Private ports and no Docker plugin: the host's /run is shared.
                "port-dir": self.port_dir(), "docker-plugin": "",
            })
            .to_string(),
        )
        .unwrap();
        let log = self.dir.join("daemon.log");
        let child = Command::new("ip")
            .args(["netns", "exec", self.host.name()])
            .arg(crate::xmacvlan_bin())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--control-socket")
            .arg(self.socket())
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            socket: self.socket(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while xmacvlan::ipc::socket::request::<_, Answer>(&daemon.socket, &Request::Ping).is_err() {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("the daemon exited ({status}): {}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// Run a CNI plugin in the host namespace as a runtime does.
    pub fn plugin(
        &self,
        binary: &Path,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        config: &Value,
    ) -> Run {
        let text = config.to_string();
        self.host
            .run(|| {
                let mut child = Command::new(binary)
                    .env("CNI_COMMAND", command)
                    .env("CNI_CONTAINERID", container)
                    .env("CNI_NETNS", netns)
                    .env("CNI_IFNAME", ifname)
                    .env("CNI_PATH", CNI_DIR)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                child.stdin.take().unwrap().write_all(text.as_bytes())?;
                let out = child.wait_with_output()?;
                Ok(Run {
                    ok: out.status.success(),
                    stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            })
            .unwrap()
    }

    /// XDP program attached to `v0`, if any.
    pub fn xdp_on_v0(&self) -> Option<u32> {
        self.host
            .run(|| Ok(Netlink::new()?.require_link("v0")?.xdp_prog_id))
            .unwrap()
    }

    /// Link names in a namespace, sorted.
    pub fn links(ns: &NetnsGuard) -> Vec<String> {
        let mut names: Vec<String> = ns
            .run(|| Ok(Netlink::new()?.links()?))
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        names
    }

    /// Files host-local keeps for leases (everything but its lock and last-reserved files).
    pub fn leases(&self, which: &str) -> Vec<String> {
        let mut found = Vec::new();
        let root = self.ipam_dir(which);
        let Ok(networks) = std::fs::read_dir(&root) else {
            return found;
        };
        for net in networks.flatten() {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().into_owned();
                if name != "lock" && !name.starts_with("last_reserved_ip") {
                    found.push(name);
                }
            }
        }
        found
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon process; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// No black hole, then served by the fast path (see [`crate::fast_path`]): `count` frames
/// to the endpoint's MAC reach the container's `ifname` while nothing is attached, then
/// exactly `count` reach `xmacvlan-sink` attached, from the container's namespace `netns` (a
/// path), through the link xmacvlan-cni made (`portDir/by-netns/<inode>/<ifname>.sock`).
pub fn served_by_fast_path(lab: &Lab, ep: &EndpointSpec, netns: &str, ifname: &str, count: u64) {
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(netns).unwrap());
    let port = xmacvlan::cni::ops::port_link(&lab.port_dir(), inode, ifname);
    assert!(port.exists(), "{} is missing", port.display());
    let wire = |f: &(dyn Fn() -> anyhow::Result<Sent> + Sync)| lab.host.run(f).unwrap();
    let target = crate::fast_path::Endpoint {
        control: &lab.socket(),
        spec: ep,
        netns,
        ifname,
        port: &port,
        logs: &lab.dir,
    };
    crate::fast_path::no_black_hole_then_sink(&target, &wire, "v0p", count);
}

/// Whether the daemon lists any endpoint at all.
pub fn daemon_endpoints(socket: &Path) -> Vec<String> {
    match xmacvlan::ipc::socket::request(socket, &Request::Stats).unwrap() {
        Answer::Stats { interfaces, .. } => interfaces
            .into_iter()
            .flat_map(|i| i.endpoints.into_iter().map(|e| e.name))
            .collect(),
        other => panic!("stats answered {other:?}"),
    }
}
