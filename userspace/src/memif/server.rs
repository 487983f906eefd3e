//! The daemon's memif server: one listening socket per served endpoint, one control thread
//! that accepts, admits and runs every handshake (`super::control`), and a queue of events (a
//! port connected, a port gone) that the daemon's loop hands on to the dataplane.
//!
//! Admission: the client's network namespace (its pid from SO_PEERCRED, then
//! `/proc/PID/ns/net`) must be the endpoint's, and an endpoint has at most one client (or
//! handshake) at a time. A refused client gets a DISCONNECT saying why; the log says it too.
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::control::{CODE_REFUSED, CODE_SHUTDOWN, End, Session, control_loop, end_session};
use super::error::MemifError;
use super::handshake::Limits;
use super::port::ServerPort;
use super::refusal::Refusal;
use super::sock;
use super::wire::SECRET_SIZE;
use crate::dataplane::PortInfo;
use crate::xsk::wait::{EventFd, drain_eventfd};

/// A client that has not sent CONNECT by then is cut off.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the daemon's loop hands on to the dataplane.
pub enum PortEvent {
    Connected {
        endpoint: String,
        port: Box<ServerPort>,
        info: PortInfo,
    },
    Disconnected {
        endpoint: String,
        reason: String,
    },
}

/// A served endpoint's port, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortStatus {
    pub endpoint: String,
    pub socket: PathBuf,
    /// Set while a client is connected.
    pub client: Option<PortInfo>,
}

#[derive(Debug, Clone)]
pub struct PortServerConfig {
    /// Where the sockets live: `<dir>/<endpoint>.sock`.
    pub dir: PathBuf,
    pub secret: Option<[u8; SECRET_SIZE]>,
    pub limits: Limits,
    pub handshake_timeout: Duration,
}

impl PortServerConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PortServerConfig {
            dir: dir.into(),
            secret: None,
            limits: Limits::default(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

pub(super) struct Served {
    pub(super) path: PathBuf,
    pub(super) listener: OwnedFd,
    pub(super) netns: (u64, u64),
    pub(super) session: Option<Session>,
}

pub(super) struct Inner {
    pub(super) cfg: PortServerConfig,
    pub(super) endpoints: HashMap<String, Served>,
    pub(super) events: EventQueue,
    /// Wakes the control thread (its set of sockets changed, stop, a port's ring fault).
    pub(super) wake: Arc<EventFd>,
}

/// The events' channel and an eventfd written after each event, so the daemon's loop can
/// sleep in poll(2) until one comes ([`PortServer::events_fd`]).
#[derive(Clone)]
pub(super) struct EventQueue {
    tx: Sender<PortEvent>,
    ready: Arc<EventFd>,
}

impl EventQueue {
    pub(super) fn send(&self, event: PortEvent) {
        if self.tx.send(event).is_ok() {
            self.ready.signal();
        }
    }
}

pub struct PortServer {
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    events: Receiver<PortEvent>,
    events_ready: Arc<EventFd>,
    wake: Arc<EventFd>,
}

/// The (device, inode) pair naming a network namespace.
pub(super) fn netns_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// The socket path of `endpoint` under `dir`.
pub fn socket_path(dir: &Path, endpoint: &str) -> PathBuf {
    dir.join(format!("{endpoint}.sock"))
}

impl PortServer {
    pub fn start(cfg: PortServerConfig) -> Result<PortServer, MemifError> {
        if !cfg.dir.is_absolute() {
            return Err(MemifError::RelativeDir(cfg.dir));
        }
        std::fs::create_dir_all(&cfg.dir).map_err(MemifError::io(format!(
            "creating the port socket directory {}",
            cfg.dir.display()
        )))?;
        let (tx, rx) = channel();
        let events_ready =
            Arc::new(EventFd::new().map_err(MemifError::io("creating the port events' eventfd"))?);
        let wake =
            Arc::new(EventFd::new().map_err(MemifError::io("creating the port thread's eventfd"))?);
        let inner = Arc::new(Mutex::new(Inner {
            cfg,
            endpoints: HashMap::new(),
            events: EventQueue {
                tx,
                ready: events_ready.clone(),
            },
            wake: wake.clone(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("xmacvlan-ports".into())
                .spawn(move || control_loop(&inner, &stop))
                .map_err(MemifError::io("starting the port control thread"))?
        };
        Ok(PortServer {
            inner,
            stop,
            thread: Some(thread),
            events: rx,
            events_ready,
            wake,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listen for `endpoint`'s client; `netns` is the endpoint's namespace (a path whose
    /// inode names it, e.g. /run/netns/NAME). Returns the socket's path.
    pub fn serve(&self, endpoint: &str, netns: &Path) -> Result<PathBuf, MemifError> {
        if endpoint.is_empty() || endpoint.contains('/') || endpoint.starts_with('.') {
            return Err(MemifError::BadEndpointName(endpoint.to_string()));
        }
        let mut inner = self.lock();
        if inner.endpoints.contains_key(endpoint) {
            return Err(MemifError::AlreadyServed(endpoint.to_string()));
        }
        let ns = netns_id(netns).map_err(MemifError::io(format!(
            "endpoint {endpoint}: its namespace {}",
            netns.display()
        )))?;
        let path = socket_path(&inner.cfg.dir, endpoint);
        // A socket file left by a daemon that died: nothing listens on it any more.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket_like() => std::fs::remove_file(&path).map_err(
                MemifError::io(format!("removing the stale socket {}", path.display())),
            )?,
            Ok(_) => return Err(MemifError::NotASocket(path)),
            Err(_) => {}
        }
        let listener = sock::listen(&path, 8)
            .map_err(MemifError::io(format!("listening on {}", path.display())))?;
        inner.endpoints.insert(
            endpoint.to_string(),
            Served {
                path: path.clone(),
                listener,
                netns: ns,
                session: None,
            },
        );
        self.wake.signal();
        Ok(path)
    }

    /// Stop serving `endpoint`: its client (if any) is told and cut off, the socket removed.
    pub fn unserve(&self, endpoint: &str) {
        let mut inner = self.lock();
        if let Some(mut served) = inner.endpoints.remove(endpoint) {
            if let Some(s) = served.session.take() {
                end_session(
                    &inner.events,
                    endpoint,
                    s,
                    End::Refused(CODE_SHUTDOWN, &Refusal::Unserved),
                );
            }
            std::fs::remove_file(&served.path).ok();
            self.wake.signal();
        }
    }

    /// Cut off `endpoint`'s client (the dataplane would not take its port).
    pub fn drop_client(&self, endpoint: &str, reason: &str) {
        let mut inner = self.lock();
        let events = inner.events.clone();
        if let Some(served) = inner.endpoints.get_mut(endpoint)
            && let Some(s) = served.session.take()
        {
            let refusal = Refusal::NotAttached(reason.to_string());
            tracing::warn!(endpoint, pid = s.pid, "memif client dropped: {refusal}");
            end_session(&events, endpoint, s, End::Refused(CODE_REFUSED, &refusal));
        }
    }

    /// Events since the last call, oldest first.
    pub fn events(&self) -> Vec<PortEvent> {
        drain_eventfd(self.events_ready.as_raw_fd());
        self.events.try_iter().collect()
    }

    /// Readable when events are waiting (reset by [`PortServer::events`]): for poll(2).
    pub fn events_fd(&self) -> RawFd {
        self.events_ready.as_raw_fd()
    }

    /// Wait up to `timeout` for the next event.
    pub fn next_event(&self, timeout: Duration) -> Option<PortEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    pub fn status(&self) -> Vec<PortStatus> {
        let inner = self.lock();
        let mut all: Vec<PortStatus> = inner
            .endpoints
            .iter()
            .map(|(name, s)| PortStatus {
                endpoint: name.clone(),
                socket: s.path.clone(),
                client: s
                    .session
                    .as_ref()
                    .and_then(|s| s.connected.as_ref().map(|c| c.1.clone())),
            })
            .collect();
        all.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        all
    }
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}
impl SocketLike for std::fs::FileType {
    fn is_socket_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_socket()
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.signal();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        let names: Vec<String> = self.lock().endpoints.keys().cloned().collect();
        for name in names {
            self.unserve(&name);
        }
    }
}
