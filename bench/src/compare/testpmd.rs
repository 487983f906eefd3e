//! The external anchor: DPDK's testpmd with its AF_XDP driver (`net_af_xdp`) in `rxonly` on
//! the lab NIC, its forwarding lcore on the receive core. It is the one-socket AF_XDP receiver
//! a user would pick instead of xmacvlan, written by people the reader already trusts. Run with
//! `ip netns exec` in the lab's host namespace; its counters are read over its command line.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, NIC};

pub const TESTPMD: &str = "/usr/bin/dpdk-testpmd";
/// Debian's `librte-net-af-xdp23` (pulled in by `dpdk-dev`).
pub const AF_XDP_DRIVER: &str =
    "/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/librte_net_af_xdp.so.23.0";

/// Why testpmd cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    [TESTPMD, AF_XDP_DRIVER]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| {
            format!(
                "{p} is missing: install DPDK's testpmd and AF_XDP driver \
                 (apt-get install -y dpdk-dev librte-net-af-xdp23)"
            )
        })
}

/// What testpmd's port statistics say (`show port stats 0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the driver took from its AF_XDP socket.
    pub rx: u64,
    /// Frames the kernel dropped because the socket's ring was full (`XDP_STATISTICS`).
    pub missed: u64,
}

pub struct Testpmd {
    child: Mutex<Child>,
    stdin: Mutex<ChildStdin>,
    /// The newest statistics, and how many statistics lines were read so far.
    stats: Arc<Mutex<(PortStats, u64)>>,
    /// Frames received at the newest statistics.
    pub rx: Arc<AtomicU64>,
    /// The last lines testpmd printed, for error messages.
    tail: Arc<Mutex<Vec<String>>>,
    /// EAL's runtime directory for this instance.
    runtime_dir: PathBuf,
}

/// How long testpmd may take to start (EAL, mbuf pool, the driver's XDP program).
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Testpmd {
    /// Start testpmd on the lab NIC (main lcore on `main_core`, forwarding on `rx_core`) and
    /// its `rxonly` forwarding. Returns once it answers its first statistics query.
    pub fn start(lab: &Lab, rx_core: usize, main_core: usize) -> Result<Testpmd> {
        if let Some(why) = unavailable() {
            bail!(why);
        }
        let vdev = format!("net_af_xdp0,iface={NIC},start_queue=0,queue_count=1");
        // EAL makes /var/run/dpdk/<prefix> even without shared config: unique, removed on drop.
        static STARTS: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "xmvbench{}-{}",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        );
        let lcores = format!("{main_core},{rx_core}");
        // The driver loads its XDP program through libbpf, which wants a bpffs; `ip netns
        // exec` gives the command a mount namespace of its own to mount one in. stdout is a
        // pipe: line-buffered (stdbuf), or the answers would wait in testpmd's buffer.
        let mut child = Command::new("ip")
            .args(["netns", "exec", lab.host.name(), "sh", "-c"])
            .arg("mount -t bpf bpf /sys/fs/bpf && exec stdbuf -oL \"$0\" \"$@\"")
            .arg(TESTPMD)
            .args(["-l", &lcores, "--main-lcore", &main_core.to_string()])
            .args(["--no-huge", "-m", "512", "--no-pci", "--no-shconf"])
            .args(["--file-prefix", &prefix])
            .args(["-d", AF_XDP_DRIVER, "--vdev", &vdev, "--"])
            .args(["-i", "--forward-mode=rxonly", "--nb-cores=1"])
            .args(["--total-num-mbufs=16384"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {TESTPMD}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stats = Arc::new(Mutex::new((PortStats::default(), 0)));
        let rx = Arc::new(AtomicU64::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        {
            let (stats, rx, tail) = (stats.clone(), rx.clone(), tail.clone());
            std::thread::Builder::new()
                .name("xmv-testpmd-out".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if let Some(s) = parse_port_stats(&line) {
                            rx.store(s.rx, Ordering::Relaxed);
                            let mut guard = stats.lock().expect("not poisoned");
                            *guard = (s, guard.1 + 1);
                        }
                        let mut tail = tail.lock().expect("not poisoned");
                        if tail.len() == 20 {
                            tail.remove(0);
                        }
                        tail.push(line);
                    }
                })
                .context("spawning the testpmd output reader")?;
        }
        let pmd = Testpmd {
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            stats,
            rx,
            tail,
            runtime_dir: Path::new("/var/run/dpdk").join(&prefix),
        };
        pmd.command("start")?;
        pmd.query(START_TIMEOUT)
            .context("waiting for testpmd to start")?;
        Ok(pmd)
    }

    fn command(&self, line: &str) -> Result<()> {
        let mut stdin = self.stdin.lock().expect("not poisoned");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("sending `{line}` to testpmd{}", self.last_words()))
    }

    /// Ask for the port statistics and wait for the answer.
    pub fn query(&self, timeout: Duration) -> Result<PortStats> {
        let asked = self.stats.lock().expect("not poisoned").1;
        self.command("show port stats 0")?;
        let start = Instant::now();
        loop {
            let (stats, answers) = *self.stats.lock().expect("not poisoned");
            if answers > asked {
                return Ok(stats);
            }
            if let Ok(Some(status)) = self.child.lock().expect("not poisoned").try_wait() {
                bail!("testpmd exited ({status}){}", self.last_words());
            }
            if start.elapsed() > timeout {
                bail!(
                    "testpmd did not answer `show port stats 0` within {timeout:?}{}",
                    self.last_words()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn last_words(&self) -> String {
        let tail = self.tail.lock().expect("not poisoned");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its last lines:\n  {}", tail.join("\n  "))
        }
    }

    /// Final statistics, then quit (testpmd detaches its XDP program as it closes the port).
    pub fn stop(self) -> Result<PortStats> {
        let stats = self.query(Duration::from_secs(5))?;
        self.command("stop")?;
        self.command("quit")?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self
                .child
                .lock()
                .expect("not poisoned")
                .try_wait()?
                .is_some()
            {
                return Ok(stats);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("testpmd did not quit within 10 s{}", self.last_words())
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        // Stopped or not: never leave it running (its XDP program goes with the lab's NIC).
        let child = self.child.get_mut().expect("not poisoned");
        child.kill().ok();
        child.wait().ok();
        std::fs::remove_dir_all(&self.runtime_dir).ok();
    }
}

/// `  RX-packets: 12   RX-missed: 3   RX-bytes:  768` (the port statistics, not the forward
/// statistics, whose RX line has no `RX-missed`).
fn parse_port_stats(line: &str) -> Option<PortStats> {
    let mut words = line.split_whitespace();
    let mut stats = PortStats::default();
    let mut missed = false;
    while let Some(w) = words.next() {
        match w {
            "RX-packets:" => stats.rx = words.next()?.parse().ok()?,
            "RX-missed:" => {
                stats.missed = words.next()?.parse().ok()?;
                missed = true;
            }
            _ => {}
        }
    }
    (missed && line.trim_start().starts_with("RX-packets:")).then_some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_statistics_lines_parse() {
        assert_eq!(
            parse_port_stats("  RX-packets: 12          RX-missed: 3          RX-bytes:  768"),
            Some(PortStats { rx: 12, missed: 3 })
        );
        // The forward statistics' line and anything else are not port statistics.
        assert_eq!(
            parse_port_stats("  RX-packets: 5              RX-dropped: 0             RX-total: 5"),
            None
        );
        assert_eq!(
            parse_port_stats("  TX-packets: 0          TX-errors: 0"),
            None
        );
        assert_eq!(parse_port_stats("  RX-packets: lots  RX-missed: 0"), None);
    }
}
