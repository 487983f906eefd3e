//! Applications on the lab's ports: one `xmacvlan-sink` or `xmacvlan-reflect` process per
//! endpoint, inside the endpoint's namespace, attached to its memif port the way a container's
//! application attaches to the daemon's. What the lab then measures is delivery into an
//! application's memory (and, with reflectors, back out of the NIC).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::Deserialize;
use xmacvlan::dataplane::{ClaimPolicy, Dataplane, EndpointSpec, PortLink, PortSnapshot};
use xmacvlan::memif::{PortEvent, PortServer, PortServerConfig};

use crate::lab::Lab;

/// Where the lab's port sockets go: a directory of its own per lab, never the daemon's.
pub const LAB_PORT_ROOT: &str = "/run/xmacvlan-lab";
/// How long every application gets to connect.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an application gets to print its summary after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which program plays each endpoint's application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// `xmacvlan-sink`: counts, checks and times every frame (one-way latency).
    Sink,
    /// `xmacvlan-reflect`: sends every frame back, MACs swapped (round trip, timed on the wire).
    Reflect,
}

impl AppKind {
    /// `sink` or `reflect`, as the flags and the JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Sink => "sink",
            AppKind::Reflect => "reflect",
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            AppKind::Sink => "xmacvlan-sink",
            AppKind::Reflect => "xmacvlan-reflect",
        }
    }
}

/// A program running in a namespace; killed if dropped before [`AppProcess::stop`].
pub struct AppProcess {
    child: Option<Child>,
    what: String,
    log: PathBuf,
}

impl AppProcess {
    /// `ip netns exec NETNS PROGRAM ARGS…`, stdout captured, stderr to `log`, pinned to `core`.
    pub fn spawn(
        netns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        core: Option<usize>,
    ) -> Result<AppProcess> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} in namespace {netns} (`ip` from iproute2 is needed)",
                    program.display()
                )
            })?;
        let app = AppProcess {
            what: format!("{} {}", program.display(), args.join(" ")),
            log: log.to_path_buf(),
            child: Some(child),
        };
        if let Some(core) = core {
            // Best effort: an unpinned application is still correct, only noisier.
            xmacvlan::sys::set_task_affinity(app.pid() as i32, core).ok();
        }
        Ok(app)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last lines of its stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// SIGINT (the programs print their summary), then its stdout.
    pub fn stop(mut self) -> Result<String> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("stopped twice"))?;
        if child.try_wait()?.is_none() {
            xmacvlan::sys::signal_process(child.id(), libc::SIGINT)
                .with_context(|| format!("signalling `{}`", self.what))?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "`{}` did not exit within {STOP_TIMEOUT:?} of SIGINT",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        if !status.success() {
            bail!("`{}` failed ({status}): {}", self.what, self.log_tail());
        }
        Ok(out)
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// What `xmacvlan-sink --json` prints (the fields the lab uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SinkSummary {
    pub frames: u64,
    pub misdelivered: u64,
    pub tagged: u64,
    pub out_of_order: u64,
    pub untimed: u64,
    pub disconnected: Option<String>,
    #[serde(default)]
    pub latency_ns_histogram: Vec<[u64; 2]>,
}

/// What `xmacvlan-reflect --json` prints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReflectSummary {
    pub received: u64,
    pub reflected: u64,
    pub not_sent: u64,
    pub disconnected: Option<String>,
}

/// One endpoint's application when it stopped, and its port's counters.
#[derive(Debug, Clone)]
pub struct AppResult {
    pub endpoint: String,
    pub port: PortSnapshot,
    pub outcome: AppOutcome,
}

#[derive(Debug, Clone)]
pub enum AppOutcome {
    Sink {
        summary: SinkSummary,
        /// One-way latency, generator to the sink's read (merged from its JSON).
        latency: Histogram<u64>,
    },
    Reflect(ReflectSummary),
}

/// The lab's memif server, its endpoints' applications and their ports' counters. Dropping it
/// kills the applications and removes the sockets' directory.
pub struct LabPorts {
    kind: AppKind,
    server: PortServer,
    dir: PathBuf,
    apps: Vec<(String, AppProcess)>,
    counters: Vec<Arc<PortLink>>,
}

impl LabPorts {
    /// Add the lab's endpoints to `dp` claimed only while connected (as the daemon does),
    /// serve a port for each, start one `kind` application per endpoint in its namespace and
    /// wait until every one is connected. `program` is `kind`'s program (see
    /// [`sibling_program`]).
    pub fn attach(
        lab: &Lab,
        dp: &mut Dataplane,
        endpoints: &[EndpointSpec],
        (kind, program): (AppKind, &Path),
        app_core: Option<usize>,
    ) -> Result<LabPorts> {
        let dir = Path::new(LAB_PORT_ROOT).join(&lab.prefix);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the lab's port directory {}", dir.display()))?;
        let server = PortServer::start(PortServerConfig::new(&dir));
        let mut ports = LabPorts {
            kind,
            server: match server {
                Ok(s) => s,
                Err(e) => {
                    remove_dir(&dir);
                    return Err(e.into());
                }
            },
            dir,
            apps: Vec::new(),
            counters: Vec::new(),
        };
        for (i, spec) in endpoints.iter().enumerate() {
            dp.add_endpoint_with(spec.clone(), ClaimPolicy::WhileConnected)?;
            let netns = lab.endpoint_netns(i);
            let socket = ports.server.serve(&spec.name, &netns.path())?;
            let mut args = vec![
                socket.display().to_string(),
                "--json".to_string(),
                "--name".to_string(),
                format!("lab-{}", spec.name),
            ];
            if kind == AppKind::Sink {
                args.push("--mac".into());
                args.push(xmacvlan::ether::Mac(spec.mac).to_string());
            }
            let log = ports.dir.join(format!("{}.log", spec.name));
            let app = AppProcess::spawn(netns.name(), program, &args, &log, app_core)?;
            ports.apps.push((spec.name.clone(), app));
        }
        ports.wait_connected(dp)?;
        Ok(ports)
    }

    /// Hand connections to the dataplane as they complete, until all are in.
    fn wait_connected(&mut self, dp: &mut Dataplane) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut connected = vec![false; self.apps.len()];
        while connected.iter().any(|c| !c) {
            for (i, (name, app)) in self.apps.iter_mut().enumerate() {
                if !connected[i]
                    && let Some(status) = app.exited()
                {
                    bail!(
                        "{} for endpoint {name} exited ({status}) before connecting: {}",
                        self.kind.program(),
                        app.log_tail()
                    );
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = self
                    .apps
                    .iter()
                    .zip(&connected)
                    .filter(|(_, c)| !**c)
                    .map(|((name, app), _)| format!("{name} ({})", app.log_tail()))
                    .collect();
                bail!(
                    "no {} connected within {ATTACH_TIMEOUT:?} for: {}",
                    self.kind.program(),
                    missing.join(", ")
                );
            }
            match self.server.next_event(left.min(Duration::from_millis(100))) {
                Some(PortEvent::Connected {
                    endpoint,
                    port,
                    info,
                }) => {
                    let i = self
                        .apps
                        .iter()
                        .position(|(n, _)| *n == endpoint)
                        .ok_or_else(|| {
                            anyhow!("a port connected for unknown endpoint {endpoint}")
                        })?;
                    dp.connect_port(&endpoint, port, info)?;
                    connected[i] = true;
                }
                Some(PortEvent::Disconnected { endpoint, reason }) => {
                    bail!("the application of endpoint {endpoint} disconnected: {reason}")
                }
                None => {}
            }
        }
        self.counters = self
            .apps
            .iter()
            .map(|(name, _)| {
                dp.port_link(name)
                    .ok_or_else(|| anyhow!("endpoint {name} has no port"))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The ports' live counters (to read from the generator's threads).
    pub fn counters(&self) -> Vec<Arc<PortLink>> {
        self.counters.clone()
    }

    /// Stop every application (its summary), read its port's last counters and disconnect it.
    pub fn finish(mut self, dp: &mut Dataplane) -> Result<Vec<AppResult>> {
        let apps = std::mem::take(&mut self.apps);
        let mut results = Vec::with_capacity(apps.len());
        for (endpoint, app) in apps {
            let out = app.stop()?;
            let line = out.lines().last().unwrap_or_default();
            let what = || format!("the summary of endpoint {endpoint}'s application: {out:?}");
            let outcome = match self.kind {
                AppKind::Sink => {
                    let summary: SinkSummary = serde_json::from_str(line).with_context(what)?;
                    let mut latency = xmacvlan::dataplane::latency_histogram();
                    for &[value, count] in &summary.latency_ns_histogram {
                        latency.record_n(value.max(1), count).with_context(what)?;
                    }
                    AppOutcome::Sink { summary, latency }
                }
                AppKind::Reflect => {
                    AppOutcome::Reflect(serde_json::from_str(line).with_context(what)?)
                }
            };
            let port = match dp.port(&endpoint) {
                Some(_) => dp.disconnect_port(&endpoint)?,
                None => bail!("endpoint {endpoint}'s port was gone before the run ended"),
            };
            results.push(AppResult {
                endpoint,
                port,
                outcome,
            });
        }
        Ok(results)
    }
}

impl Drop for LabPorts {
    fn drop(&mut self) {
        // Applications first (killed), then the sockets and their directory.
        for (name, _) in std::mem::take(&mut self.apps) {
            self.server.unserve(&name);
        }
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    std::fs::remove_dir_all(dir).ok();
    // The root only if no other lab uses it.
    std::fs::remove_dir(LAB_PORT_ROOT).ok();
}

/// `name` next to the running program (`target/release/`, built with it by `cargo xtask run`),
/// or one directory up when the running program is a test (`target/debug/deps/`).
pub fn sibling_program(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let dir = exe.parent().context("locating this program's directory")?;
    let mut candidates = vec![dir.join(name)];
    if dir.ends_with("deps")
        && let Some(up) = dir.parent()
    {
        candidates.push(up.join(name));
    }
    match candidates.iter().find(|p| p.exists()) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "{} is missing: build it with `cargo build --release -p xmacvlan` (cargo xtask run \
             and cargo xtask test do)",
            candidates[0].display()
        ),
    }
}
