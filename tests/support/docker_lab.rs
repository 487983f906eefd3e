//! The pieces of a test against a real Docker engine: the test's directory, the veth pair the
//! networks hang off, `xmacvlan daemon` serving the plugin on a socket of its own, and small
//! `docker` helpers. Several tests of one process tell theirs apart by a one-letter tag.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use xmacvlan::control::State;
use xmacvlan::dataplane::Snapshot;
use xmacvlan::ipc::protocol::{Answer, Request};
use xmacvlan::ipc::socket::request;
use xmacvlan::netlink::Netlink;

use crate::dockerd::{Dockerd, IMAGE, signal, text, wait_exit};
use crate::xmacvlan_bin;

/// The test's directory (logs, state, dockerd's roots); on failure the daemon's log is
/// printed before it goes.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `tag` tells apart the tests of one process (an area's tests run side by side).
    pub fn create(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xmv-docker{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, file) in [("xmacvlan daemon", "xmv.log"), ("dockerd", "dockerd.log")] {
                let log = std::fs::read_to_string(self.0.join(file)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!("--- {name} log (last 40 lines) ---\n{}", tail.join("\n"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The two veth ends in the host namespace (deleting them deletes every macvlan on them).
pub struct Parents {
    pub a: String,
    pub b: String,
}

impl Parents {
    /// `tag`: one character telling apart the tests of one process.
    pub fn create(tag: &str) -> Self {
        let pid = std::process::id();
        let (a, b) = (format!("xd{tag}A{pid}"), format!("xd{tag}B{pid}"));
        let nl = Netlink::new().unwrap();
        nl.add_veth(&a, &b, 1).unwrap();
        let parents = Parents { a, b };
        for name in [&parents.a, &parents.b] {
            nl.set_up(nl.require_link(name).unwrap().index).unwrap();
        }
        parents
    }

    /// Host-side links on our parents (macvlans Docker or xmacvlan made, not yet moved).
    pub fn children(&self) -> Vec<String> {
        let nl = Netlink::new().unwrap();
        let ours: Vec<u32> = [&self.a, &self.b]
            .iter()
            .filter_map(|n| nl.link_by_name(n).unwrap().map(|l| l.index))
            .collect();
        nl.links()
            .unwrap()
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("macvlan"))
            .filter(|l| l.parent_index.is_some_and(|p| ours.contains(&p)))
            .map(|l| l.name)
            .collect()
    }

    pub fn xdp_on_b(&self) -> Option<u32> {
        Netlink::new()
            .unwrap()
            .require_link(&self.b)
            .unwrap()
            .xdp_prog_id
    }
}

impl Drop for Parents {
    fn drop(&mut self) {
        if let Ok(nl) = Netlink::new()
            && let Ok(Some(l)) = nl.link_by_name(&self.a)
        {
            let _ = nl.del_link(l.index);
        }
    }
}

/// `xmacvlan daemon` with the plugin on a unique socket.
pub struct Xmacvlan {
    pub dir: PathBuf,
    pub plugin: PathBuf,
    child: Option<Child>,
    /// /run/docker did not exist before: the daemon made it, and it goes again.
    made_run_docker: bool,
}

impl Xmacvlan {
    pub fn new(dir: &Path, tag: &str) -> Self {
        Xmacvlan {
            dir: dir.to_path_buf(),
            plugin: PathBuf::from(format!(
                "/run/docker/plugins/xmvt{tag}{}.sock",
                std::process::id()
            )),
            child: None,
            made_run_docker: !Path::new("/run/docker").exists(),
        }
    }

    pub fn driver(&self) -> String {
        xmacvlan::plugin::docker::driver_name(&self.plugin)
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.join("xmv-data")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("xmv.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("xmv.log")
    }

    /// Private: nothing lands in the host's /run/xmacvlan.
    pub fn port_dir(&self) -> PathBuf {
        self.dir.join("ports")
    }

    pub fn start(&mut self, demux: &str) {
        self.start_with(demux, &[]);
    }

    /// The daemon's bpffs: its classifier stays pinned there between its runs, and goes with
    /// the unmount (the host's /sys/fs/bpf keeps nothing of a test).
    fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// [`Xmacvlan::start`] with more daemon flags.
    pub fn start_with(&mut self, demux: &str, extra: &[&str]) {
        assert!(self.child.is_none());
        if !xmacvlan::sys::is_bpffs(&self.bpffs()).unwrap_or(false) {
            std::fs::create_dir_all(self.bpffs()).unwrap();
            xmacvlan::sys::mount_bpffs(&self.bpffs()).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(xmacvlan_bin())
            .env(xmacvlan::xdp::bpffs::BPFFS_ENV, self.bpffs())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--control-socket")
            .arg(self.socket())
            .arg("daemon")
            .arg("--port-dir")
            .arg(self.port_dir())
            .args(["--debug", "--demux-mode", demux, "--docker-plugin"])
            .arg(&self.plugin)
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.plugin).is_err() {
            assert!(
                Instant::now() < deadline,
                "the plugin socket never answered; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "KILL");
        assert!(wait_exit(&mut child, Duration::from_secs(10)));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if !wait_exit(&mut child, Duration::from_secs(30)) {
                signal(child.id(), "KILL");
                wait_exit(&mut child, Duration::from_secs(10));
            }
        }
    }

    pub fn state(&self) -> State {
        State::load(&self.data_root()).unwrap()
    }

    /// `xmacvlan ARGS…` against this daemon's state and socket: its stdout, or its stderr
    /// as the error.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(xmacvlan_bin())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--control-socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }

    pub fn stats(&self) -> Vec<Snapshot> {
        match request(&self.socket(), &Request::Stats).unwrap() {
            Answer::Stats { interfaces, .. } => interfaces,
            other => panic!("stats answered {other:?}"),
        }
    }
}

impl Drop for Xmacvlan {
    fn drop(&mut self) {
        self.stop();
        let _ = xmacvlan::sys::unmount_detach(&self.bpffs());
        let _ = std::fs::remove_file(&self.plugin);
        if self.made_run_docker {
            let _ = std::fs::remove_dir("/run/docker/plugins");
            let _ = std::fs::remove_dir("/run/docker");
        }
    }
}

pub fn sandbox_of(docker: &Dockerd, container: &str) -> String {
    docker.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.SandboxKey}}",
        container,
    ])
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ping(docker: &Dockerd, from: &str, ip: &str) {
    let out = docker.cli(&["exec", from, "ping", "-c", "3", "-W", "2", ip]);
    assert!(
        out.status.success(),
        "{from} cannot ping {ip}: {}",
        text(&out.stdout)
    );
}

pub fn run_container(docker: &Dockerd, name: &str, network: &str) {
    docker.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--stop-timeout",
        "1",
        IMAGE,
        "sleep",
        "600",
    ]);
}
