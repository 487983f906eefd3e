//! `xmacvlan daemon`: read the config, start logging, serve the endpoints in the control
//! state, then loop: answer the control socket, reload on SIGHUP, tick the stats, and on
//! SIGTERM/SIGINT detach everything and leave.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::metrics::{self, Metrics};
use super::server::{Daemon, Settings};
use crate::config::{ConfigFlags, DaemonConfig, diff_for_reload};
use crate::ipc::protocol::{Answer, Request};
use crate::ipc::socket::ControlSocket;
use crate::logging::{LogConfig, LogHandle};
use crate::xsk::wait::drain_eventfd;

#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub flags: ConfigFlags,
    /// Detach XDP from every interface at exit, leaving nothing pinned (for an uninstall).
    /// Without it the classifier stays attached for the next daemon to take over, so a
    /// restart neither takes the link down nor loses the interface's XDP.
    #[arg(long = "detach-on-exit")]
    pub detach_on_exit: bool,
}

/// The loop sleeps in poll(2) until a control connection, a port event or a signal (its
/// eventfd) wakes it, or the next stats tick; at most this long (kernel events are drained
/// then too: the classifier sends at most 16 per second per CPU into a 64 KiB ring).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// `data_root`: the global `--data-root` when it was given explicitly (it then beats the file).
pub fn main(args: DaemonArgs, data_root: Option<PathBuf>) -> Result<()> {
    let mut cfg = args.flags.resolve()?;
    if let Some(root) = data_root {
        cfg.data_root = root;
    }
    if !cfg.port_dir.is_absolute() {
        bail!(
            "port-dir {} must be an absolute path (e.g. /run/xmacvlan/ports)",
            cfg.port_dir.display()
        );
    }
    if !crate::sys::is_root() {
        bail!(
            "the daemon attaches XDP programs and opens AF_XDP sockets: run it as root \
             (`sudo xmacvlan daemon`, or the systemd unit in packaging/)"
        );
    }
    let log = crate::logging::init(&LogConfig::from_daemon(&cfg))?;
    crate::sys::catch_interrupts();
    crate::sys::catch_hangups();
    match serve(&args, cfg, &log) {
        Ok(()) => Ok(()),
        Err(e) => crate::logging::fatal(format_args!("{e:#}")),
    }
}

fn serve(args: &DaemonArgs, mut cfg: DaemonConfig, log: &LogHandle) -> Result<()> {
    let flags = &args.flags;
    // Before anything is created: a bad secret file leaves nothing behind.
    let port_secret = cfg
        .port_secret_file
        .as_deref()
        .map(crate::memif::secret::read_secret_file)
        .transpose()
        .context("port-secret-file")?;
    let pid_file = PidFile::create(
        &crate::ipc::pid_path(&cfg.control_socket),
        &cfg.control_socket,
    )?;
    let socket = ControlSocket::bind(&cfg.control_socket)?;
    let metrics = cfg.metrics_addr.as_ref().map(Metrics::serve).transpose()?;
    let state = crate::control::State::load(&cfg.data_root)?;
    let mut settings = Settings::from_config(&cfg);
    settings.port_secret = port_secret;
    settings.detach_on_exit = args.detach_on_exit;
    let mut daemon = Daemon::new(settings);
    let served = daemon.restore(&state);
    daemon.release_unserved();
    let plugin = crate::plugin::docker::start_for(&cfg)?;
    let leases = super::leases::LeaseKeeper::start(cfg.data_root.clone())?;
    tracing::info!(
        pid = std::process::id(),
        socket = %cfg.control_socket.display(),
        data_root = %cfg.data_root.display(),
        demux = cfg.demux_mode.name(),
        log_level = %log.level(),
        metrics = %cfg.metrics_addr.as_ref().map(ToString::to_string).unwrap_or_else(|| "off".into()),
        memif_secret = cfg.port_secret_file.is_some(),
        "daemon started: {served} of {} recorded endpoints on the fast path",
        state.endpoints.len()
    );
    let signalled = crate::sys::signal_eventfd().context("creating the signals' eventfd")?;
    let mut watch = super::watch::Watch::default();
    let started = Instant::now();
    let mut hangups_seen = crate::sys::hangups();
    let mut next_tick = Instant::now() + cfg.stats_interval;
    while !crate::sys::interrupted().load(Ordering::SeqCst) {
        let hangups = crate::sys::hangups();
        if hangups != hangups_seen {
            hangups_seen = hangups;
            cfg = reload(flags, cfg, log);
        }
        socket.serve_pending(|request: Request| -> Result<Answer> {
            tracing::debug!(?request, "control request");
            let attaching = match &request {
                Request::Attach { endpoint, .. } => Some(endpoint.name.clone()),
                _ => None,
            };
            daemon
                .handle(request)
                .map(|answer| {
                    if let Some(name) = &attaching {
                        watch.served_again(name);
                    }
                    watch.annotate(answer, leases.notes())
                })
                .inspect_err(|e| tracing::warn!("control request failed: {e:#}"))
        });
        daemon.pump_ports();
        daemon.log_kernel_events();
        if Instant::now() >= next_tick {
            next_tick += cfg.stats_interval;
            watch.check(&mut daemon, &cfg.data_root, started.elapsed().as_secs());
            daemon.tick();
            if let Some(m) = &metrics {
                m.publish(metrics::render(&daemon.snapshots(), &|ep| {
                    daemon.interval_histogram(ep)
                }));
            }
        }
        let sleep = next_tick
            .saturating_duration_since(Instant::now())
            .min(MAX_SLEEP);
        let mut fds = vec![signalled, socket.as_raw_fd()];
        fds.extend(daemon.port_events_fd());
        // +1 ms: wake just after the tick is due, not just before it.
        match crate::sys::poll_readable(&fds, sleep.as_millis() as i32 + 1) {
            Ok(ready) if ready[0] => drain_eventfd(signalled),
            Ok(_) => {}
            Err(e) => {
                tracing::error!("daemon loop: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    tracing::info!("signal received: stopping");
    drop(plugin);
    drop(leases);
    let stopped = daemon.shutdown();
    drop(socket);
    drop(pid_file);
    stopped?;
    tracing::info!("daemon stopped");
    Ok(())
}

/// SIGHUP: read the file again (flags still win), apply `debug` and `log-level` now, and say
/// what else changed and needs a restart. A broken file changes nothing.
fn reload(flags: &ConfigFlags, running: DaemonConfig, log: &LogHandle) -> DaemonConfig {
    let new = match flags.resolve() {
        Ok(mut new) => {
            new.data_root = running.data_root.clone();
            new
        }
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, the running one stays: {e}");
            return running;
        }
    };
    let plan = diff_for_reload(&running, &new);
    if let Err(e) = log.apply_reload(&plan) {
        tracing::error!("SIGHUP: {e:#}");
        return running;
    }
    if plan.restart.is_empty() {
        tracing::info!("SIGHUP: {plan}");
    } else {
        tracing::warn!("SIGHUP: {plan}");
    }
    plan.apply_live(&running, &new)
}

/// The daemon's pid, written at start and removed at a clean stop. One left by a daemon that
/// died is replaced; one of a live daemon stops this one from starting.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path, socket: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse::<u32>()
            && pid != std::process::id()
        {
            crate::ipc::alive::refuse_if_serving(pid, path, socket)?;
            tracing::warn!(pid, file = %path.display(), "replacing the pid file of a daemon that is gone (crashed or killed)");
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing the pid file {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}
