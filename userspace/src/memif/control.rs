//! The port server's control thread: it accepts clients and admits them by namespace, runs
//! every handshake, hands connected ports on as events, and cuts off clients that time out,
//! break the ring protocol or leave. One thread for every endpoint; each wake-up takes a
//! bounded burst from each socket, so one noisy client cannot starve the others.
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::handshake::{Handshake, ServerConfig, Step};
use super::port::PortShared;
use super::refusal::Refusal;
use super::server::{EventQueue, Inner, PortEvent, PortServerConfig, Served, netns_id};
use super::sock::{self, Received};
use super::wire::{MSG_SIZE, Msg};
use crate::dataplane::PortInfo;
use crate::xsk::wait::{EventFd, drain_eventfd};

/// The control thread sleeps in poll until a socket, a command (serve, unserve, stop) or a
/// ring fault wakes it, or the next handshake deadline. This is its safety net.
const IDLE_MS: i32 = 1000;
/// While a connected client has not yet offered receive buffers, the thread looks every
/// this often, to log when it does (nothing signals that).
const AWAITING_BUFFERS_MS: i32 = 50;
/// Records taken from one client per wake-up, connections accepted per listener: one noisy
/// client cannot starve the others.
const BURST: usize = 16;

/// DISCONNECT codes (free-form in the protocol; these say who ended it).
pub(super) const CODE_REFUSED: u32 = 1;
const CODE_PROTOCOL: u32 = 2;
pub(super) const CODE_SHUTDOWN: u32 = 3;

pub(super) struct Session {
    pub(super) sock: OwnedFd,
    pub(super) pid: u32,
    deadline: Option<Instant>,
    pub(super) hs: Handshake,
    pub(super) connected: Option<(Arc<PortShared>, PortInfo)>,
    /// The receive ring until the client first offers buffers on it (then logged).
    awaiting_buffers: Option<super::shm::Ring>,
}

/// Tell a client why it is refused: the short reason (the caller logs the full one).
fn send_disconnect(sock: &OwnedFd, code: u32, refusal: &Refusal) {
    sock::send(
        sock.as_fd(),
        &Msg::disconnect(code, &refusal.wire()).encode(),
        None,
    )
    .ok();
}

/// How a session ends.
pub(super) enum End<'a> {
    /// The daemon ends it: the client is sent DISCONNECT with this code and reason.
    Refused(u32, &'a Refusal),
    /// The client left (or stopped reading its socket): nothing is sent.
    ClientLeft(&'a str),
}

/// Close a session: tell the client why (unless it left by itself), and if it was connected,
/// take the port away from the dataplane.
pub(super) fn end_session(events: &EventQueue, endpoint: &str, s: Session, end: End<'_>) {
    let reason = match end {
        End::Refused(code, refusal) => {
            send_disconnect(&s.sock, code, refusal);
            refusal.to_string()
        }
        End::ClientLeft(reason) => reason.to_string(),
    };
    if let Some((shared, _)) = s.connected {
        shared.close();
        events.send(PortEvent::Disconnected {
            endpoint: endpoint.to_string(),
            reason,
        });
    }
}

pub(super) fn control_loop(inner: &Mutex<Inner>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let (wake, fds, timeout_ms) = {
            let inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            let fds: Vec<(String, bool, RawFd)> = inner
                .endpoints
                .iter()
                .flat_map(|(name, s)| {
                    let l = (name.clone(), true, s.listener.as_raw_fd());
                    let c = s
                        .session
                        .as_ref()
                        .map(|x| (name.clone(), false, x.sock.as_raw_fd()));
                    std::iter::once(l).chain(c)
                })
                .collect();
            (inner.wake.as_raw_fd(), fds, poll_timeout(&inner))
        };
        let raw: Vec<RawFd> = std::iter::once(wake)
            .chain(fds.iter().map(|f| f.2))
            .collect();
        let ready = match crate::sys::poll_readable(&raw, timeout_ms) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("port control thread: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(AWAITING_BUFFERS_MS as u64));
                continue;
            }
        };
        if ready[0] {
            drain_eventfd(wake);
        }
        let ready = &ready[1..];
        let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        for ((name, listener, _), &ready) in fds.iter().zip(ready) {
            if !ready {
                continue;
            }
            let Some(served) = inner.endpoints.get_mut(name) else {
                continue;
            };
            if *listener {
                accept_clients(&inner.cfg, name, served);
            } else {
                read_session(&inner.wake, &inner.events, name, served);
            }
        }
        let now = Instant::now();
        for (name, served) in inner.endpoints.iter_mut() {
            if let Some(s) = served.session.as_mut()
                && let Some(ring) = &s.awaiting_buffers
                && ring.head() != 0
            {
                // Until now every frame for the endpoint was a ring-full drop: say when that ends.
                tracing::info!(endpoint = %name, client = s.hs.client(),
                    "memif client ready (pid {}): {} receive buffers offered", s.pid, ring.head());
                s.awaiting_buffers = None;
            }
            let Some(s) = &served.session else { continue };
            let why = if s.deadline.is_some_and(|d| now >= d) {
                Some(Refusal::HandshakeTimeout(inner.cfg.handshake_timeout))
            } else {
                s.connected
                    .as_ref()
                    .map(|c| c.0.fault())
                    .filter(|f| *f != super::port::Fault::None)
                    .map(Refusal::RingFault)
            };
            if let Some(why) = why {
                let s = served.session.take().expect("checked above");
                tracing::warn!(endpoint = %name, pid = s.pid, client = s.hs.client(), "memif client cut off: {why}");
                end_session(&inner.events, name, s, End::Refused(CODE_PROTOCOL, &why));
            }
        }
    }
}

/// How long the control thread may sleep: until the nearest handshake deadline, briefly
/// while a client has not offered buffers yet, else the safety net.
fn poll_timeout(inner: &Inner) -> i32 {
    let now = Instant::now();
    inner
        .endpoints
        .values()
        .filter_map(|served| served.session.as_ref())
        .map(|s| {
            if s.awaiting_buffers.is_some() {
                AWAITING_BUFFERS_MS
            } else if let Some(deadline) = s.deadline {
                // +1: wake just after the deadline, not just before it.
                deadline.saturating_duration_since(now).as_millis() as i32 + 1
            } else {
                IDLE_MS
            }
        })
        .fold(IDLE_MS, i32::min)
}

fn accept_clients(cfg: &PortServerConfig, endpoint: &str, served: &mut Served) {
    for _ in 0..BURST {
        let conn = match sock::accept(served.listener.as_fd()) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(endpoint, "accepting a memif client failed: {e}");
                return;
            }
        };
        let pid = sock::peer_cred(conn.as_fd()).map(|c| c.0).unwrap_or(0);
        let refusal = if let Some(s) = &served.session {
            Some(Refusal::Busy {
                endpoint: endpoint.to_string(),
                pid: s.pid,
                client: s.hs.client().to_string(),
            })
        } else {
            match netns_id(Path::new(&format!("/proc/{pid}/ns/net"))) {
                Ok(ns) if ns == served.netns => None,
                Ok(_) => Some(Refusal::OtherNamespace {
                    endpoint: endpoint.to_string(),
                    pid,
                }),
                Err(source) => Some(Refusal::NamespaceUnreadable { pid, source }),
            }
        };
        if let Some(refusal) = refusal {
            tracing::warn!(endpoint, pid, "memif client refused: {refusal}");
            send_disconnect(&conn, CODE_REFUSED, &refusal);
            continue;
        }
        let server_cfg = ServerConfig {
            name: endpoint.to_string(),
            secret: cfg.secret,
            limits: cfg.limits,
        };
        if let Err(e) = sock::send(conn.as_fd(), &server_cfg.hello().encode(), None) {
            tracing::warn!(endpoint, pid, "memif client gone before HELLO: {e}");
            continue;
        }
        tracing::debug!(endpoint, pid, "memif client accepted, handshake started");
        served.session = Some(Session {
            sock: conn,
            pid,
            deadline: Some(Instant::now() + cfg.handshake_timeout),
            hs: Handshake::new(server_cfg),
            connected: None,
            awaiting_buffers: None,
        });
    }
}

fn read_session(wake: &Arc<EventFd>, events: &EventQueue, endpoint: &str, served: &mut Served) {
    let mut buf = [0u8; MSG_SIZE + 1];
    for _ in 0..BURST {
        let Some(s) = served.session.as_mut() else {
            return;
        };
        let outcome: Result<Option<Step>, Refusal> = match sock::recv(s.sock.as_fd(), &mut buf) {
            Ok(Received::Empty) => return,
            Ok(Received::Closed) => {
                let s = served.session.take().expect("present");
                let reason = "the client closed its socket";
                if s.connected.is_some() {
                    tracing::info!(
                        endpoint,
                        pid = s.pid,
                        client = s.hs.client(),
                        "memif client disconnected: {reason}"
                    );
                } else {
                    tracing::warn!(
                        endpoint,
                        pid = s.pid,
                        "memif client left during the handshake"
                    );
                }
                end_session(events, endpoint, s, End::ClientLeft(reason));
                return;
            }
            Err(e) => Err(Refusal::SocketRead(e)),
            Ok(Received::Record {
                len,
                mut fds,
                truncated,
            }) => {
                if truncated || len != MSG_SIZE {
                    Err(Refusal::Malformed { len, truncated })
                } else if fds.len() > 1 {
                    Err(Refusal::Descriptors(fds.len()))
                } else {
                    match Msg::decode(&buf[..MSG_SIZE]) {
                        Err(e) => Err(e.into()),
                        Ok(msg) => s.hs.on_message(msg, fds.pop()).map(Some),
                    }
                }
            }
        };
        let s = served.session.as_mut().expect("present");
        match outcome {
            Ok(Some(Step::Reply(m))) => {
                if let Err(e) = sock::send(s.sock.as_fd(), &m.encode(), None) {
                    let s = served.session.take().expect("present");
                    tracing::warn!(
                        endpoint,
                        pid = s.pid,
                        "memif client not reading its socket: {e}"
                    );
                    end_session(
                        events,
                        endpoint,
                        s,
                        End::ClientLeft("the client does not read its socket"),
                    );
                    return;
                }
            }
            Ok(Some(Step::Connected {
                reply,
                port,
                shared,
                client,
            })) => {
                if let Err(e) = sock::send(s.sock.as_fd(), &reply.encode(), None) {
                    tracing::warn!(
                        endpoint,
                        pid = s.pid,
                        "memif client gone before CONNECTED: {e}"
                    );
                    served.session = None;
                    return;
                }
                let info = PortInfo {
                    client: client.clone(),
                    pid: s.pid,
                    connected_at: SystemTime::now(),
                };
                tracing::info!(endpoint, pid = s.pid, client = %client, "memif client connected");
                s.awaiting_buffers = Some(port.s2c_ring());
                s.deadline = None;
                shared.wake_on_fault(wake.clone());
                s.connected = Some((shared, info.clone()));
                events.send(PortEvent::Connected {
                    endpoint: endpoint.to_string(),
                    port: Box::new(port),
                    info,
                });
            }
            Ok(Some(Step::ClientLeft(reason))) => {
                let s = served.session.take().expect("present");
                tracing::info!(
                    endpoint,
                    pid = s.pid,
                    client = s.hs.client(),
                    "memif client disconnected: {reason}"
                );
                end_session(
                    events,
                    endpoint,
                    s,
                    End::ClientLeft(&format!("client sent DISCONNECT ({reason})")),
                );
                return;
            }
            Ok(None) => {}
            Err(refusal) => {
                let s = served.session.take().expect("present");
                tracing::warn!(
                    endpoint,
                    pid = s.pid,
                    client = s.hs.client(),
                    "memif client refused: {refusal}"
                );
                end_session(events, endpoint, s, End::Refused(CODE_PROTOCOL, &refusal));
                return;
            }
        }
    }
}
