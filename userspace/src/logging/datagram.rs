//! journald and syslog: one datagram per event over a local Unix socket, no extra crate.
use std::fmt::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, anyhow};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// journald's native protocol socket.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// The local syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// syslog facility `daemon` (3), as in <syslog.h>.
const FACILITY_DAEMON: u8 = 3;

/// syslog severity (also journald's `PRIORITY`) of an event: fatal 2 (crit), error 3,
/// warn 4, info 6, debug and trace 7.
pub fn priority(level: &Level, fatal: bool) -> u8 {
    if fatal {
        return 2;
    }
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// One journald native-protocol datagram: `KEY=value` lines, or for a value with a newline,
/// `KEY`, a newline, its length as 64-bit little endian, the bytes and a newline.
pub fn journald_datagram(message: &str, priority: u8, identifier: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + identifier.len() + 48);
    let mut field = |name: &str, value: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value);
        out.push(b'\n');
    };
    field("MESSAGE", message.as_bytes());
    field("PRIORITY", priority.to_string().as_bytes());
    field("SYSLOG_IDENTIFIER", identifier.as_bytes());
    out
}

/// One RFC 3164 datagram as glibc's syslog(3) sends it to /dev/log:
/// `<PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE` (the local daemon adds the host name).
pub fn syslog_datagram(
    message: &str,
    severity: u8,
    tag: &str,
    pid: u32,
    local_time: &libc::tm,
) -> Vec<u8> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[local_time.tm_mon.clamp(0, 11) as usize];
    format!(
        "<{}>{month} {:>2} {:02}:{:02}:{:02} {tag}[{pid}]: {message}",
        FACILITY_DAEMON * 8 + severity,
        local_time.tm_mday,
        local_time.tm_hour,
        local_time.tm_min,
        local_time.tm_sec,
    )
    .into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Journald,
    Syslog,
}

/// A log driver that sends every event as one datagram to journald or syslog. If the daemon
/// at the other end goes away, lines fall back to stderr (with one notice) so none is lost.
#[derive(Debug)]
pub struct DatagramSink {
    socket: Mutex<UnixDatagram>,
    path: PathBuf,
    tag: String,
    protocol: Protocol,
    warned: AtomicBool,
}

impl DatagramSink {
    /// Send to journald's socket at `path` (normally [`JOURNALD_SOCKET`]).
    pub fn journald(path: &Path, tag: &str) -> Result<Self> {
        Self::connect(path, tag, Protocol::Journald).map_err(|e| {
            anyhow!(
                "log-driver \"journald\": cannot reach {}: {e}; journald is not running on this machine \
                 (no systemd?); use log-driver \"stderr\" or \"json-file\" instead",
                path.display()
            )
        })
    }

    /// Send to the syslog socket at `path` (normally [`SYSLOG_SOCKET`]).
    pub fn syslog(path: &Path, tag: &str) -> Result<Self> {
        Self::connect(path, tag, Protocol::Syslog).map_err(|e| {
            anyhow!(
                "log-driver \"syslog\": cannot reach {}: {e}; no syslog daemon is listening \
                 (start rsyslog or systemd-journald), or use log-driver \"stderr\" or \"json-file\"",
                path.display()
            )
        })
    }

    fn connect(path: &Path, tag: &str, protocol: Protocol) -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Self {
            socket: Mutex::new(socket),
            path: path.to_path_buf(),
            tag: tag.to_string(),
            protocol,
            warned: AtomicBool::new(false),
        })
    }

    fn datagram(&self, message: &str, priority: u8) -> Vec<u8> {
        match self.protocol {
            Protocol::Journald => journald_datagram(message, priority, &self.tag),
            Protocol::Syslog => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                // localtime_r only fails for absurd times; then print "Jan  0 00:00:00".
                let tm = crate::sys::local_time(now).unwrap_or_else(zero_tm);
                syslog_datagram(message, priority, &self.tag, std::process::id(), &tm)
            }
        }
    }

    /// Send one event; on failure reconnect once (the daemon at the other end may have
    /// restarted), then fall back to stderr.
    pub fn send(&self, message: &str, priority: u8) {
        let datagram = self.datagram(message, priority);
        let mut socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let mut result = socket.send(&datagram).map(|_| ());
        if result.is_err()
            && let Ok(fresh) = UnixDatagram::unbound()
            && fresh.connect(&self.path).is_ok()
        {
            *socket = fresh;
            result = socket.send(&datagram).map(|_| ());
        }
        if let Err(e) = result {
            if !self.warned.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "xmacvlan: cannot send log lines to {} ({e}); writing them to stderr",
                    self.path.display()
                );
            }
            eprintln!("xmacvlan[{priority}]: {message}");
        }
    }
}

fn zero_tm() -> libc::tm {
    libc::tm {
        tm_sec: 0,
        tm_min: 0,
        tm_hour: 0,
        tm_mday: 0,
        tm_mon: 0,
        tm_year: 0,
        tm_wday: 0,
        tm_yday: 0,
        tm_isdst: 0,
        tm_gmtoff: 0,
        tm_zone: std::ptr::null(),
    }
}

/// Collects an event's text: the message, then ` key=value` for each other field.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
    fatal: bool,
}

impl Visit for Text {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "fatal" {
            self.fatal = value;
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.contains(char::is_whitespace) || value.is_empty() {
            write!(self.fields, " {}={value:?}", field.name()).ok();
        } else {
            write!(self.fields, " {}={value}", field.name()).ok();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            write!(self.message, "{value:?}").ok();
        } else {
            write!(self.fields, " {}={value:?}", field.name()).ok();
        }
    }
}

impl<S: Subscriber> Layer<S> for DatagramSink {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        text.message.push_str(&text.fields);
        self.send(
            &text.message,
            priority(event.metadata().level(), text.fatal),
        );
    }
}
