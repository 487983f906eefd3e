//! memif client processes for the daemon tests: `xmacvlan-sink`, `xmacvlan-reflect` or
//! DPDK's testpmd, run with `ip netns exec` (a named namespace) or `nsenter --net=` (a path,
//! e.g. a Docker sandbox) inside an endpoint's namespace (the daemon admits a client by its
//! process's namespace, so a thread of the test would not do). Killed on drop.
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct App {
    child: Option<Child>,
    what: String,
}

impl App {
    /// `ip netns exec NETNS PROGRAM ARGS…` (`nsenter --net=NETNS` when NETNS is a path),
    /// stdout captured, stderr to `log`.
    pub fn spawn(netns: &str, program: &Path, args: &[&str], log: &Path) -> App {
        let mut cmd = if netns.starts_with('/') {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={netns}"));
            c
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns]);
            c
        };
        let child = cmd
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        App {
            child: Some(child),
            what: format!("{} {}", program.display(), args.join(" ")),
        }
    }

    /// `xmacvlan-sink SOCKET --json --name NAME`.
    pub fn sink(netns: &str, socket: &Path, name: &str, log: &Path) -> App {
        App::sink_with(netns, socket, name, log, &[])
    }

    /// [`App::sink`] with more arguments (e.g. `--secret-file FILE`).
    pub fn sink_with(netns: &str, socket: &Path, name: &str, log: &Path, extra: &[&str]) -> App {
        let bin = crate::sibling_bin("xmacvlan-sink");
        let mut args = vec![socket.to_str().unwrap(), "--json", "--name", name];
        args.extend_from_slice(extra);
        App::spawn(netns, &bin, &args, log)
    }

    /// `xmacvlan-reflect SOCKET --name NAME`.
    pub fn reflect(netns: &str, socket: &Path, name: &str, log: &Path) -> App {
        let bin = crate::sibling_bin("xmacvlan-reflect");
        App::spawn(
            netns,
            &bin,
            &[socket.to_str().unwrap(), "--name", name],
            log,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// Whether it exited by itself (e.g. the daemon ended its connection).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .expect("running")
            .try_wait()
            .unwrap()
            .is_some()
    }

    /// SIGINT (the programs print their summary and say goodbye) and its stdout.
    pub fn stop(mut self) -> String {
        if !self.exited() {
            self.signal("INT");
        }
        self.wait_output(Duration::from_secs(10))
    }

    /// Wait for it to exit by itself; its stdout.
    pub fn wait_output(&mut self, timeout: Duration) -> String {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{}` did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    /// The sink's JSON summary.
    pub fn stop_sink(self) -> serde_json::Value {
        let out = self.stop();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("sink summary {out:?}: {e}"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
