//! `docker network create -d xmacvlan`: libnetwork's remote network driver, served by the
//! daemon on a Unix socket where Docker discovers plugins (`/run/docker/plugins/NAME.sock`).
//!
//! - [`http`]: the strict HTTP/1.1 request reader and response writer;
//! - [`api`]: the protocol's JSON shapes;
//! - [`handlers`]: each call onto the control path and the fast path.
//!
//! The plugin runs on a thread of its own, one connection at a time: a call that changes the
//! fast path goes to the daemon's main loop over the control socket, like the CLI's.
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub mod api;
pub mod handlers;
pub mod http;

pub use handlers::Context;

use crate::xsk::wait::EventFd;

/// The thread sleeps in poll(2) until a connection or its stop eventfd wakes it; while a
/// joined endpoint's link has not reached its sandbox, it looks this often.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// The sleep's safety net otherwise.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long after Join the thread looks for the name Docker gave the link.
const SETTLE: Duration = Duration::from_secs(30);

/// The running plugin; dropping it stops the thread and removes the socket.
pub struct DockerPlugin {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DockerPlugin {
    /// Bind `path` (making its directory; a stale socket left by a crash is replaced, a live
    /// one is an error) and serve it.
    pub fn start(path: &Path, ctx: Context) -> Result<Self> {
        let listener = bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(EventFd::new().context("creating the Docker plugin's eventfd")?);
        let thread = {
            let (stop, wake) = (stop.clone(), wake.clone());
            std::thread::Builder::new()
                .name("docker-plugin".into())
                .spawn(move || serve(&listener, &ctx, &stop, &wake))
                .context("starting the Docker plugin thread")?
        };
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The driver name Docker knows this plugin by (the socket's file stem).
    pub fn name(&self) -> String {
        driver_name(&self.path)
    }
}

/// The daemon's plugin as configured (`docker-plugin`). On the default path a plugin that
/// cannot start (another daemon serves it, /run/docker is read-only) is a warning: the daemon
/// still serves the CLI; a path given explicitly must work.
pub fn start_for(cfg: &crate::config::DaemonConfig) -> Result<Option<DockerPlugin>> {
    let Some(path) = &cfg.docker_plugin else {
        return Ok(None);
    };
    let ctx = Context {
        data_root: cfg.data_root.clone(),
        control_socket: cfg.control_socket.clone(),
    };
    match DockerPlugin::start(path, ctx) {
        Ok(p) => {
            tracing::info!(socket = %path.display(), driver = %p.name(), "Docker network plugin ready: docker network create -d {}", p.name());
            Ok(Some(p))
        }
        Err(e) if path == Path::new(crate::config::DEFAULT_DOCKER_PLUGIN) => {
            tracing::warn!("Docker network plugin not started: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `/run/docker/plugins/xmacvlan.sock` → `xmacvlan`.
pub fn driver_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Drop for DockerPlugin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.signal();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        std::fs::remove_file(&self.path).ok();
    }
}

fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another process serves the Docker plugin socket {}: stop it, or give this daemon \
                 another --docker-plugin (\"\" turns the plugin off)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn serve(listener: &UnixListener, ctx: &Context, stop: &AtomicBool, wake: &EventFd) {
    // Endpoints joined recently whose link Docker is moving into the sandbox.
    let mut settling: Vec<(String, Instant)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some(joined) = serve_one(stream, ctx) {
                    settling.push((joined, Instant::now() + SETTLE));
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("docker plugin: accept: {e}"),
        }
        settling.retain(
            |(id, deadline)| match crate::control::docker::settle(&ctx.data_root, id) {
                Ok(Some(ifname)) => {
                    tracing::debug!(endpoint = %crate::control::docker::name_of(id), %ifname, "docker: link in its sandbox");
                    if let Err(e) = handlers::follow_sandbox(ctx, id) {
                        let e = anyhow::Error::from(e);
                        tracing::warn!("docker plugin: {e:#}");
                    }
                    false
                }
                Ok(None) => Instant::now() < *deadline,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    tracing::warn!("docker plugin: {e:#}");
                    false
                }
            },
        );
        let sleep = if settling.is_empty() {
            IDLE_POLL
        } else {
            SETTLE_POLL
        };
        let fds = [wake.as_raw_fd(), listener.as_raw_fd()];
        if let Err(e) = crate::sys::poll_readable(&fds, sleep.as_millis() as i32) {
            tracing::warn!("docker plugin: poll: {e}");
            std::thread::sleep(SETTLE_POLL);
        }
    }
}

/// One connection: one request, one answer. Returns the endpoint a Join named.
fn serve_one(mut stream: UnixStream, ctx: &Context) -> Option<String> {
    let setup = || -> std::io::Result<(i32, u32)> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let (pid, uid, _) = crate::sys::peer_credentials(&stream)?;
        Ok((pid, uid))
    };
    let (pid, uid) = match setup() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("docker plugin: {e}");
            return None;
        }
    };
    let outcome = if uid != 0 {
        handlers::Outcome {
            status: 403,
            body: serde_json::json!({"Err": format!("permission denied: the plugin serves root only (peer pid {pid} uid {uid})")}),
            joined: None,
        }
    } else {
        match http::read_request(&mut stream) {
            Ok(req) => {
                tracing::debug!(
                    method = %req.path,
                    body = %String::from_utf8_lossy(&req.body),
                    "docker plugin call"
                );
                handlers::handle(ctx, &req.path, &req.body)
            }
            Err(e) => handlers::Outcome {
                status: e.status,
                body: serde_json::json!({"Err": e.message}),
                joined: None,
            },
        }
    };
    if let Some(err) = outcome.body.get("Err") {
        tracing::warn!(status = outcome.status, "docker plugin call refused: {err}");
    } else {
        tracing::debug!(status = outcome.status, reply = %outcome.body, "docker plugin reply");
    }
    let body = serde_json::to_vec(&outcome.body).unwrap_or_default();
    if let Err(e) = http::write_response(&mut stream, outcome.status, &body) {
        tracing::warn!("docker plugin: writing the reply: {e}");
    }
    outcome.joined
}
