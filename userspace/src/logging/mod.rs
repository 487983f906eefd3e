//! The daemon's logging: `tracing` events through one log driver, with a level that SIGHUP
//! can change while the daemon runs.
//!
//! Drivers (`log-driver` in `daemon.json`):
//! - `stderr`: one line per event, `log-format` text or JSON. Under systemd, stderr goes to the
//!   journal.
//! - `json-file`: JSON lines in a file, rotated by size ([`RotatingFile`]).
//! - `journald`: the native journal protocol, one datagram per event to
//!   `/run/systemd/journal/socket` (fields `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`).
//! - `syslog`: RFC 3164 datagrams to `/dev/log`, facility `daemon`.
//!
//! Levels: `debug`, `info`, `warn`, `error`, and `fatal`, which shows only the message the
//! daemon exits with ([`fatal`] / [`fatal!`](crate::fatal)).
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context as LayerContext, Layered, SubscriberExt};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::reload;

use crate::config::{DaemonConfig, LogDriver, LogFormat, LogLevel};

mod bridge;
mod datagram;
mod rotate;

pub use bridge::{BRIDGE_MAX_LEVEL, LogBridge};
pub use datagram::{
    DatagramSink, JOURNALD_SOCKET, SYSLOG_SOCKET, journald_datagram, priority, syslog_datagram,
};
pub use rotate::RotatingFile;

/// What [`init`] needs: the level in force and where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
    pub driver: LogDriver,
}

impl LogConfig {
    pub fn from_daemon(cfg: &DaemonConfig) -> Self {
        Self {
            level: cfg.effective_log_level(),
            format: cfg.log_format,
            driver: cfg.log_driver.clone(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self::from_daemon(&DaemonConfig::default())
    }
}

/// Lets only events at or above the configured level through; at `fatal`, only the events
/// [`log_fatal`] emits (they carry the field `fatal`).
#[derive(Debug, Clone, Copy)]
pub struct LevelGate(pub LogLevel);

impl LevelGate {
    fn allows(&self, meta: &Metadata<'_>) -> bool {
        match self.0 {
            LogLevel::Fatal => {
                *meta.level() == tracing::Level::ERROR && meta.fields().field("fatal").is_some()
            }
            level => level_filter(level) >= *meta.level(),
        }
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error | LogLevel::Fatal => LevelFilter::ERROR,
    }
}

impl<S: Subscriber> Layer<S> for LevelGate {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.allows(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: LayerContext<'_, S>) -> bool {
        self.allows(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(level_filter(self.0))
    }
}

type Base = Layered<reload::Layer<LevelGate, Registry>, Registry>;
type DriverLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Changes the level of a running logger (SIGHUP). Cheap to clone.
#[derive(Clone)]
pub struct LogHandle {
    gate: reload::Handle<LevelGate, Registry>,
}

impl fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHandle")
            .field("level", &self.level())
            .finish()
    }
}

impl LogHandle {
    /// Switch to `level` at once, for every thread.
    pub fn set_level(&self, level: LogLevel) -> Result<()> {
        self.gate
            .reload(LevelGate(level))
            .map_err(|e| anyhow!("changing the log level to {level}: {e}"))
    }

    /// Apply what a SIGHUP reload changed: switch level if the level in force changed.
    pub fn apply_reload(&self, plan: &crate::config::ReloadPlan) -> Result<()> {
        match plan.new_log_level {
            Some(level) => self.set_level(level),
            None => Ok(()),
        }
    }

    pub fn level(&self) -> LogLevel {
        self.gate.with_current(|g| g.0).unwrap_or(LogLevel::DEFAULT)
    }
}

fn assemble(level: LogLevel, driver: DriverLayer) -> (Dispatch, LogHandle) {
    let (gate, handle) = reload::Layer::new(LevelGate(level));
    let subscriber = Registry::default().with(gate).with(driver);
    (Dispatch::new(subscriber), LogHandle { gate: handle })
}

fn fmt_layer<W>(format: LogFormat, writer: W) -> DriverLayer
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
}

/// A logger that writes formatted lines to `writer` (stderr, a buffer in tests, ...).
pub fn build_to_writer<W>(level: LogLevel, format: LogFormat, writer: W) -> (Dispatch, LogHandle)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    assemble(level, fmt_layer(format, writer))
}

/// A logger that sends each event as one datagram (journald or syslog).
pub fn build_to_sink(level: LogLevel, sink: DatagramSink) -> (Dispatch, LogHandle) {
    assemble(level, Box::new(sink))
}

/// The logger `cfg` describes, not yet installed. Fails when the driver's destination is
/// missing (journald or syslog not running, log directory not writable).
pub fn build(cfg: &LogConfig) -> Result<(Dispatch, LogHandle)> {
    Ok(match &cfg.driver {
        LogDriver::Stderr => build_to_writer(cfg.level, cfg.format, io::stderr),
        LogDriver::JsonFile(opts) => {
            let file = RotatingFile::open(&opts.path, opts.max_size, opts.max_file)
                .with_context(|| {
                    format!(
                        "log-driver \"json-file\": cannot open {} (set log-opts \"path\" to a writable file)",
                        opts.path.display()
                    )
                })?;
            build_to_writer(cfg.level, LogFormat::Json, std::sync::Mutex::new(file))
        }
        LogDriver::Journald { tag } => build_to_sink(
            cfg.level,
            DatagramSink::journald(std::path::Path::new(JOURNALD_SOCKET), tag)?,
        ),
        LogDriver::Syslog { tag } => build_to_sink(
            cfg.level,
            DatagramSink::syslog(std::path::Path::new(SYSLOG_SOCKET), tag)?,
        ),
    })
}

/// Install the logger `cfg` describes for the whole process, and route the `log` records of
/// dependencies (aya, netlink) into it. Call once, early.
pub fn init(cfg: &LogConfig) -> Result<LogHandle> {
    let (dispatch, handle) = build(cfg)?;
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|_| anyhow!("a logger is already installed in this process"))?;
    INSTALLED.store(true, Ordering::SeqCst);
    bridge::install();
    Ok(handle)
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Log `message` as the daemon's last words: an error-level event marked `fatal`, shown at
/// every level including `fatal`.
pub fn log_fatal(message: &dyn fmt::Display) {
    tracing::error!(fatal = true, "{message}");
}

/// A warning from library code that runs both in the daemon (logger installed: a `warn`
/// event) and in one-shot commands (no logger: a line on stderr, so it is not lost).
pub fn warn(message: impl fmt::Display) {
    if INSTALLED.load(Ordering::SeqCst) {
        tracing::warn!("{message}");
    } else {
        eprintln!("xmacvlan: {message}");
    }
}

/// What library code changed on the system, said as [`warn`] says warnings: an `info` event
/// in the daemon, a line on stderr in one-shot commands.
pub fn info(message: impl fmt::Display) {
    if INSTALLED.load(Ordering::SeqCst) {
        tracing::info!("{message}");
    } else {
        eprintln!("xmacvlan: {message}");
    }
}

/// Log `message` as fatal and exit with status 1. Without an installed logger the message
/// goes to stderr, so it is never lost.
pub fn fatal(message: impl fmt::Display) -> ! {
    if INSTALLED.load(Ordering::SeqCst) || tracing::dispatcher::has_been_set() {
        log_fatal(&message);
    } else {
        eprintln!("xmacvlan: fatal: {message}");
    }
    std::process::exit(1)
}

/// `fatal!("cannot attach to {}", iface)`: log at fatal level and exit with status 1.
#[macro_export]
macro_rules! fatal {
    ($($arg:tt)+) => {
        $crate::logging::fatal(format_args!($($arg)+))
    };
}

#[cfg(test)]
mod tests;
