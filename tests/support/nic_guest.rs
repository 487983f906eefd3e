//! Guest-side support for the areas that run in the igb guest of `cargo xtask vm-test`
//! (`IGB_VM_TESTS` in xtask/src/vm/mod.rs): the NICs the harness named, the NIC's own
//! per-queue counters, what is in its receive filters, and the programs a user runs
//! (`xmacvlan run`, `xmacvlan-bench generate`) started and read as a user would.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xmacvlan::netlink::Netlink;

/// The igb guest's two NICs, as its setup named them.
#[derive(Debug, Clone)]
pub struct NicGuest {
    /// The igb device under test, in the guest's root namespace.
    pub nic: String,
    /// The virtio-net peer on the same QEMU hub, in namespace [`Self::wire_ns`].
    pub wire: String,
    pub wire_ns: String,
}

impl NicGuest {
    /// The NICs from the harness's environment; a clear failure anywhere else: these tests
    /// never pass without having run on the igb driver.
    pub fn from_env(test: &str) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let guest = var("XMACVLAN_VM_GUEST");
        assert_eq!(
            guest.as_deref(),
            Some("igb"),
            "{test} needs the igb guest of `sudo -E cargo xtask vm-test` (a real NIC driver \
             with zero-copy AF_XDP and 4 queues); it runs there by itself (IGB_VM_TESTS), or \
             with `--test {} --guest igb`",
            test.split("::").next().unwrap_or(test)
        );
        let must = |name: &str| {
            var(name).unwrap_or_else(|| panic!("the igb guest's setup did not set {name}"))
        };
        Self {
            nic: must("XMACVLAN_VM_NIC"),
            wire: must("XMACVLAN_VM_WIRE"),
            wire_ns: must("XMACVLAN_VM_WIRE_NS"),
        }
    }
}

/// `ethtool -S DEV`: every counter the driver reports, by name.
pub fn nic_stats(dev: &str) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("ethtool")
        .args(["-S", dev])
        .output()
        .context("running ethtool -S")?;
    ensure!(out.status.success(), "ethtool -S {dev}: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// The driver's `rx_queue_N_packets` of [`nic_stats`], by queue.
pub fn rx_queue_packets(stats: &BTreeMap<String, u64>) -> Vec<u64> {
    let mut queues = Vec::new();
    for (name, &value) in stats {
        let Some(q) = name
            .strip_prefix("rx_queue_")
            .and_then(|r| r.strip_suffix("_packets"))
            .and_then(|q| q.parse::<usize>().ok())
        else {
            continue;
        };
        if queues.len() <= q {
            queues.resize(q + 1, 0);
        }
        queues[q] = value;
    }
    queues
}

/// The counters that changed from `before` to `after`, with their increase.
pub fn changed(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let d = v.wrapping_sub(before.get(k).copied().unwrap_or(0));
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The per-queue difference `after - before`.
pub fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a - b)
        .collect()
}

/// The unicast addresses in `dev`'s address list, which a NIC's unicast filter is made of
/// (`bridge fdb show dev DEV`, its `self` entries: what macvlans and packet sockets added).
pub fn unicast_addresses(dev: &str) -> Result<Vec<String>> {
    let out = Command::new("bridge")
        .args(["fdb", "show", "dev", dev])
        .output()
        .context("running bridge (iproute2)")?;
    ensure!(
        out.status.success(),
        "bridge fdb show dev {dev}: {}",
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" self"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|mac| {
            // Multicast addresses (the first octet's low bit) are another list.
            u8::from_str_radix(mac.get(..2).unwrap_or("01"), 16).is_ok_and(|b| b & 1 == 0)
        })
        .map(str::to_string)
        .collect())
}

/// The VLAN devices on `parent`: (name, VLAN id, alias).
pub fn vlan_devices_on(parent: &str) -> Result<Vec<(String, u16, Option<String>)>> {
    let nl = Netlink::new()?;
    let index = nl.require_link(parent)?.index;
    Ok(nl
        .links()?
        .into_iter()
        .filter(|l| l.parent_index == Some(index))
        .filter_map(|l| Some((l.name, l.vlan_id?, l.alias)))
        .collect())
}

/// A program of this workspace running in the background: stdout lines collected as they
/// come, stderr to a log file; killed on drop.
pub struct Program {
    child: Option<Child>,
    what: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub log: PathBuf,
}

impl Program {
    /// `program args…`, in network namespace `netns` (`ip netns exec`) if given.
    pub fn start(netns: Option<&str>, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                sink.lock().expect("lines").push(line);
            }
        });
        Ok(Self {
            child: Some(child),
            what: format!("{} {}", program.display(), args.join(" ")),
            lines,
            reader: Some(reader),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Wait until `done(stderr)` holds; fails if the program exits or `limit` passes first.
    pub fn wait_stderr(&mut self, limit: Duration, done: impl Fn(&str) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            if done(&text) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().expect("running").try_wait()? {
                bail!("`{}` exited ({status}) early:\n{text}", self.what);
            }
            if start.elapsed() > limit {
                bail!("`{}` not ready after {limit:?}:\n{text}", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal` (if still running), wait for the exit; its stdout lines.
    pub fn finish(mut self, signal: Option<i32>, limit: Duration) -> Result<Vec<String>> {
        let mut child = self.child.take().expect("running");
        if let Some(sig) = signal
            && child.try_wait()?.is_none()
        {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`{}` did not exit within {limit:?}:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        ensure!(
            status.success(),
            "`{}` failed ({status}):\n{}",
            self.what,
            self.stderr()
        );
        Ok(self.stdout_lines())
    }
}

/// A test that fails half-way stops the program as a user would (SIGINT), so that what it
/// changed on the NIC is restored before the next test; SIGKILL only if it does not exit.
impl Drop for Program {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `xmacvlan-bench`, beside the `xmacvlan` binary (`cargo xtask vm-test` builds both).
pub fn bench_bin() -> PathBuf {
    let path = crate::xmacvlan_bin().with_file_name("xmacvlan-bench");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p xmacvlan-bench` (cargo xtask test and \
         vm-test do)",
        path.display()
    );
    path
}

/// Frames per destination MAC, from `xmacvlan-bench generate`'s `MAC  N frames` lines.
pub fn sent_per_mac(stdout: &[String]) -> Vec<(String, u64)> {
    stdout
        .iter()
        .filter_map(|l| {
            let (mac, rest) = l.split_once("  ")?;
            let n = rest.trim().strip_suffix(" frames")?.parse().ok()?;
            Some((mac.trim().to_string(), n))
        })
        .collect()
}
