//! A private Docker engine for tests: dockerd with its own data-root, exec-root, pidfile and
//! socket, no iptables and no bridge, in the host namespace (`ip netns exec` breaks its cgroup
//! mounts). Dropped, it is stopped by its pid, the processes it started (containerd, shims)
//! are waited for, and its mounts and directories are removed.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The engine's API (docker.io 20.10): its own client speaks it.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The image [`Dockerd::import_busybox`] makes.
pub const IMAGE: &str = "xmvt-busybox:1";

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A private dockerd; dropped: stopped by its pid, its shims waited for, its mounts and
/// directories removed.
pub struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    pub fn new(dir: &Path) -> Self {
        Dockerd {
            dir: dir.join("docker"),
            child: None,
        }
    }

    pub fn sock(&self) -> String {
        format!("unix://{}", self.dir.join("d.sock").display())
    }

    pub fn start(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            // Beside its directory, which the drop removes: the test prints it on failure.
            .open(self.dir.parent().unwrap().join("dockerd.log"))
            .unwrap();
        let child = Command::new(DOCKERD)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["-H", &self.sock()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.cli(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(DOCKER).args(["-H", &self.sock()]).args(args))
    }

    /// A command that must work: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A command that must fail: its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "docker {} succeeded: {}",
            args.join(" "),
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// An image with no registry: a busybox root filesystem, imported.
    pub fn import_busybox(&self) {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for cmd in ["sh", "ip", "ping", "sleep", "cat", "nc"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(cmd)).unwrap();
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = run(Command::new(DOCKER)
            .args(["-H", &self.sock(), "import", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap()));
        assert!(tar.wait().unwrap().success(), "tar of the busybox root");
        assert!(out.status.success(), "docker import: {}", text(&out.stderr));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if !wait_exit(&mut child, Duration::from_secs(60)) {
                signal(child.id(), "KILL");
                wait_exit(&mut child, Duration::from_secs(10));
            }
        }
    }

    /// Processes started for this dockerd (containerd, shims): their command lines name its
    /// directory.
    pub fn leftovers(&self) -> Vec<u32> {
        let needle = self.dir.display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for pid in left {
                    signal(pid, "KILL");
                }
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = xmacvlan::sys::unmount_detach(Path::new(&m));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
