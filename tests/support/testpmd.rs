//! DPDK's testpmd (Debian `dpdk-dev`) with its memif driver as a client of the daemon, in an
//! endpoint's namespace: a memif implementation the project did not write. Killed on drop.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::daemon_lab::Daemon;

pub struct Testpmd {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout so far, read as it comes (a verbose testpmd would fill the pipe and stall).
    stdout: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// EAL's runtime directory (/var/run/dpdk/<file-prefix>), removed on drop.
    runtime_dir: PathBuf,
}

/// Port 0's counters as testpmd shows them (`show port stats 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl Testpmd {
    /// `dpdk-testpmd` in forward mode `mode` on a `net_memif` client of `socket`, inside
    /// `netns`; `memif` adds options to the vdev (`bsize=512`: buffers of 512 bytes) and
    /// `args` to testpmd's (`--mbuf-size=512`). Its stderr goes to `log`.
    pub fn start(
        netns: &str,
        socket: &Path,
        mode: &str,
        log: &Path,
        memif: &[&str],
        args: &[&str],
    ) -> Testpmd {
        let mut vdev = format!(
            "--vdev=net_memif0,role=client,socket={},socket-abstract=no",
            socket.display()
        );
        for option in memif {
            vdev.push(',');
            vdev.push_str(option);
        }
        let prefix = format!("xmvtp{}{mode}", std::process::id());
        // Line-buffered: testpmd answers commands with printf, which a pipe would hold back.
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "stdbuf", "-oL", "dpdk-testpmd"])
            .args(["-l", "0,1"])
            .args(["--no-huge", "-m", "512", "--no-pci"])
            .arg(format!("--file-prefix={prefix}"))
            .arg(vdev)
            // Frames that arrive once it has offered buffers, before its forwarding starts,
            // wait in the ring instead of being flushed (and lost) at the start.
            .args(["--", "--total-num-mbufs=16384", "--no-flush-rx"])
            .arg(format!("--forward-mode={mode}"))
            .args(args)
            .args(["--auto-start", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("dpdk-testpmd (Debian package dpdk-dev)");
        let mut pipe = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let reader = {
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    stdout.lock().unwrap().push_str(&text);
                }
            })
        };
        Testpmd {
            stdin: child.stdin.take(),
            stdout,
            reader: Some(reader),
            child,
            runtime_dir: Path::new("/var/run/dpdk").join(prefix),
        }
    }

    /// Wait until the daemon logs that this testpmd offered its receive buffers.
    pub fn wait_ready(&self, daemon: &Daemon) {
        let needle = format!("memif client ready (pid {})", self.child.id());
        daemon.wait_for_log(&needle, Duration::from_secs(60));
    }

    /// Type a command at testpmd's prompt (e.g. `set verbose 1`: a line per frame received).
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait until testpmd printed `needle` (e.g. a command's answer).
    pub fn wait_for_output(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stdout.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "testpmd never printed {needle:?}:\n{}",
                self.stdout.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until port 0 has received `n` frames (testpmd's forwarding core may still be
    /// reading its ring after the daemon has filled it); its counters then.
    pub fn wait_rx(&mut self, n: u64) -> PortStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shown = self.stdout.lock().unwrap().matches(STATS).count();
            self.command("show port stats 0");
            while self.stdout.lock().unwrap().matches(STATS).count() == shown {
                assert!(Instant::now() < deadline, "testpmd shows no statistics");
                std::thread::sleep(Duration::from_millis(20));
            }
            // The block may still be arriving: give it its last line.
            std::thread::sleep(Duration::from_millis(50));
            let stats = port_stats(&self.stdout.lock().unwrap());
            if stats.rx_packets >= n || Instant::now() >= deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop forwarding and quit: port 0's counters, and everything testpmd printed.
    pub fn stop(mut self) -> (PortStats, String) {
        self.command("show port stats 0");
        self.command("stop");
        self.command("quit");
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "testpmd did not quit");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reader.take().unwrap().join().unwrap();
        let out = std::mem::take(&mut *self.stdout.lock().unwrap());
        (port_stats(&out), out)
    }
}

const STATS: &str = "NIC statistics for port 0";

/// The last port 0 statistics in testpmd's output.
fn port_stats(out: &str) -> PortStats {
    let stats = out
        .rsplit(STATS)
        .next()
        .filter(|_| out.contains(STATS))
        .unwrap_or_else(|| panic!("no port statistics in:\n{out}"));
    let field = |name: &str| -> u64 {
        stats
            .split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
    };
    PortStats {
        rx_packets: field("RX-packets:"),
        rx_bytes: field("RX-bytes:"),
        tx_packets: field("TX-packets:"),
        tx_bytes: field("TX-bytes:"),
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}
