//! The daemon's configuration file, `daemon.json`, in the spirit of dockerd's.
//!
//! Precedence, highest first: command-line flags ([`Overrides`]), then the file, then the
//! defaults below. A key absent from the file keeps its default; a flag replaces whatever the
//! file says. One rule links two keys: `"debug": true` means log level `debug` whatever
//! `log-level` says, and a `--log-level` flag (without `--debug`) clears the file's `debug` so
//! the flag's level is the one in force.
//!
//! On SIGHUP the daemon reads the file again and [`diff_for_reload`] sorts the changes into
//! those applied live (`debug`, `log-level`, as dockerd does) and those that need a restart.
//!
//! Unknown keys and bad values are errors that name the key and what it accepts, e.g.
//! `daemon.json: key "log-level": "verbose" is not one of debug, info, warn, error, fatal`.
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::modes::choice;
use crate::modes::{BindMode, DemuxMode, Threads, XdpAttach, XdpMode};

mod error;
mod flags;
mod parse;
mod reload;

pub use error::{ConfigError, ErrorKind, MetricsAddrError, ValueError};
pub use flags::{ConfigFlags, CoresFlag, DataplaneFlags, DockerPluginFlag, MetricsFlag};
pub use parse::{
    MAX_COALESCE_US, busy_poll_budget_from, coalesce_from_us, parse_cores, parse_docker_plugin,
    parse_duration, parse_metrics_addr, parse_size,
};
pub use reload::{Change, ReloadPlan, diff_for_reload};

/// Where the daemon looks for its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/xmacvlan/daemon.json";
/// Where networks and endpoints are persisted (the daemon, the CLI and the CNI plugin).
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/xmacvlan";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xmacvlan/xmacvlan.sock";
/// Where Docker finds the `xmacvlan` network plugin (the file name is the driver's name).
pub const DEFAULT_DOCKER_PLUGIN: &str = "/run/docker/plugins/xmacvlan.sock";

/// Where the endpoints' memif sockets live (`<port-dir>/<endpoint>.sock`).
pub const DEFAULT_PORT_DIR: &str = "/run/xmacvlan/ports";
/// The `json-file` log driver's file unless `log-opts` has `path`.
pub const DEFAULT_LOG_FILE: &str = "/var/log/xmacvlan/daemon.log";
/// `json-file` rotation defaults: 10 MiB a file, 3 files.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_MAX_FILE: u32 = 3;
/// The identifier syslog and journald show for the daemon's lines unless `log-opts` has `tag`.
pub const DEFAULT_TAG: &str = "xmacvlan";

/// Every key `daemon.json` accepts, in the order the documentation lists them.
pub const KEYS: &[&str] = &[
    "debug",
    "log-level",
    "log-format",
    "log-driver",
    "log-opts",
    "data-root",
    "cores",
    "demux-mode",
    "xdp-mode",
    "xdp-attach",
    "xdp-priority",
    "bind-mode",
    "receive-coalesce-us",
    "receive-threads",
    "busy-poll-budget",
    "stats-interval",
    "metrics-addr",
    "control-socket",
    "docker-plugin",
    "port-dir",
    "port-secret-file",
];

/// Keys a SIGHUP applies to the running daemon; every other change needs a restart.
pub const LIVE_KEYS: &[&str] = &["debug", "log-level"];

choice! {
    /// How much the daemon logs. `fatal` shows only the message the daemon dies with.
    LogLevel { Debug = "debug", Info = "info", Warn = "warn", Error = "error", Fatal = "fatal" }
}
choice! {
    /// The shape of a log line on stderr (`json-file` always writes JSON lines).
    LogFormat { Text = "text", Json = "json" }
}
choice! {
    /// Where log lines go; the options each takes are in [`LogDriver`].
    LogDriverKind { Stderr = "stderr", JsonFile = "json-file", Journald = "journald", Syslog = "syslog" }
}
impl LogLevel {
    /// The default level.
    pub const DEFAULT: Self = Self::Info;
}

/// The log driver with its options (`log-driver` plus `log-opts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDriver {
    /// Lines on standard error, `log-format` text or JSON (systemd puts them in the journal).
    Stderr,
    /// JSON lines in a file, rotated by size.
    JsonFile(JsonFileOpts),
    /// Native journald protocol to /run/systemd/journal/socket.
    Journald { tag: String },
    /// RFC 3164 datagrams to /dev/log.
    Syslog { tag: String },
}

/// `log-opts` of the `json-file` driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFileOpts {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    pub max_size: u64,
    /// Files kept in all, the live one included (`daemon.log`, `daemon.log.1`, ...).
    pub max_file: u32,
}

impl Default for JsonFileOpts {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_LOG_FILE),
            max_size: DEFAULT_MAX_SIZE,
            max_file: DEFAULT_MAX_FILE,
        }
    }
}

impl LogDriver {
    pub fn kind(&self) -> LogDriverKind {
        match self {
            Self::Stderr => LogDriverKind::Stderr,
            Self::JsonFile(_) => LogDriverKind::JsonFile,
            Self::Journald { .. } => LogDriverKind::Journald,
            Self::Syslog { .. } => LogDriverKind::Syslog,
        }
    }

    /// The driver with its default options.
    pub fn with_defaults(kind: LogDriverKind) -> Self {
        match kind {
            LogDriverKind::Stderr => Self::Stderr,
            LogDriverKind::JsonFile => Self::JsonFile(JsonFileOpts::default()),
            LogDriverKind::Journald => Self::Journald {
                tag: DEFAULT_TAG.into(),
            },
            LogDriverKind::Syslog => Self::Syslog {
                tag: DEFAULT_TAG.into(),
            },
        }
    }

    /// The `log-opts` keys this driver accepts.
    pub fn option_names(kind: LogDriverKind) -> &'static [&'static str] {
        match kind {
            LogDriverKind::Stderr => &[],
            LogDriverKind::JsonFile => &["max-size", "max-file", "path"],
            LogDriverKind::Journald | LogDriverKind::Syslog => &["tag"],
        }
    }

    pub(crate) fn options_json(&self) -> Value {
        match self {
            Self::Stderr => json!({}),
            Self::JsonFile(o) => json!({
                "max-size": format_size(o.max_size),
                "max-file": o.max_file.to_string(),
                "path": o.path,
            }),
            Self::Journald { tag } | Self::Syslog { tag } => json!({ "tag": tag }),
        }
    }
}

/// Where the Prometheus metrics are served (loopback or a Unix socket only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The daemon's settings after defaults, the file and flags are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub debug: bool,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub log_driver: LogDriver,
    pub data_root: PathBuf,
    /// Cores for workers and consumers; None = the dataplane's default (all but core 0).
    pub cores: Option<Vec<usize>>,
    pub demux_mode: DemuxMode,
    pub xdp_mode: XdpMode,
    /// Alone, or in libxdp's multi-program dispatcher beside other XDP programs.
    pub xdp_attach: XdpAttach,
    /// The classifier's run priority in a dispatcher (lower runs first).
    pub xdp_priority: u32,
    pub bind_mode: BindMode,
    /// How long a dataplane thread woken by its sockets waits before reading, so frames
    /// arriving meanwhile share the wake-up (CPU for latency at low rates); zero: at once.
    pub receive_coalesce: Duration,
    /// `run-to-completion`: one thread per NIC does all its receive work; `split`: a worker
    /// thread per queue beside it.
    pub receive_threads: Threads,
    /// Frames a busy poll of a NIC queue takes; 0 = no busy polling (interrupts).
    pub busy_poll_budget: u16,
    pub stats_interval: Duration,
    /// None = no metrics endpoint (the default).
    pub metrics_addr: Option<MetricsAddr>,
    pub control_socket: PathBuf,
    /// The Docker network plugin's socket; None = no plugin.
    pub docker_plugin: Option<PathBuf>,
    /// The directory of the endpoints' memif sockets.
    pub port_dir: PathBuf,
    /// A file with the memif secret every client must send; None = no secret.
    pub port_secret_file: Option<PathBuf>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            debug: false,
            log_level: LogLevel::DEFAULT,
            log_format: LogFormat::Text,
            log_driver: LogDriver::Stderr,
            data_root: PathBuf::from(DEFAULT_DATA_ROOT),
            cores: None,
            demux_mode: DemuxMode::Xdp,
            xdp_mode: XdpMode::Auto,
            xdp_attach: XdpAttach::Auto,
            xdp_priority: crate::abi::RUN_PRIORITY,
            bind_mode: BindMode::Auto,
            receive_coalesce: Duration::ZERO,
            receive_threads: Threads::RunToCompletion,
            busy_poll_budget: 0,
            stats_interval: Duration::from_secs(1),
            metrics_addr: None,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            docker_plugin: Some(PathBuf::from(DEFAULT_DOCKER_PLUGIN)),
            port_dir: PathBuf::from(DEFAULT_PORT_DIR),
            port_secret_file: None,
        }
    }
}

impl DaemonConfig {
    /// Parse the text of a `daemon.json`; `source` names it in error messages.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self, ConfigError> {
        parse::parse(text, source)
    }

    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(&source, ErrorKind::Io(e)))?;
        Self::from_json_str(&text, &source)
    }

    /// The file at `path` if it exists, else the defaults. Use it for the default path: a
    /// missing `/etc/xmacvlan/daemon.json` is normal, a missing `--config FILE` is not (use
    /// [`DaemonConfig::load`] for that).
    pub fn load_or_default(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            _ => Self::load(path),
        }
    }

    /// The level in force: `debug` when `"debug": true`, else `log-level`.
    pub fn effective_log_level(&self) -> LogLevel {
        if self.debug {
            LogLevel::Debug
        } else {
            self.log_level
        }
    }

    /// Apply command-line flags over this configuration (flags win).
    pub fn merged(mut self, flags: &Overrides) -> Self {
        if let Some(level) = flags.log_level {
            self.log_level = level;
            // An explicit --log-level beats the file's "debug": true.
            self.debug = false;
        }
        if let Some(debug) = flags.debug {
            self.debug = debug;
        }
        if let Some(v) = flags.log_format {
            self.log_format = v;
        }
        if let Some(v) = &flags.log_driver {
            self.log_driver = v.clone();
        }
        if let Some(v) = &flags.data_root {
            self.data_root = v.clone();
        }
        if let Some(v) = &flags.cores {
            self.cores = Some(v.clone());
        }
        if let Some(v) = flags.demux_mode {
            self.demux_mode = v;
        }
        if let Some(v) = flags.xdp_mode {
            self.xdp_mode = v;
        }
        if let Some(v) = flags.xdp_attach {
            self.xdp_attach = v;
        }
        if let Some(v) = flags.xdp_priority {
            self.xdp_priority = v;
        }
        if let Some(v) = flags.bind_mode {
            self.bind_mode = v;
        }
        if let Some(v) = flags.receive_coalesce {
            self.receive_coalesce = v;
        }
        if let Some(v) = flags.receive_threads {
            self.receive_threads = v;
        }
        if let Some(v) = flags.busy_poll_budget {
            self.busy_poll_budget = v;
        }
        if let Some(v) = flags.stats_interval {
            self.stats_interval = v;
        }
        if let Some(v) = &flags.metrics_addr {
            self.metrics_addr = v.clone();
        }
        if let Some(v) = &flags.control_socket {
            self.control_socket = v.clone();
        }
        if let Some(v) = &flags.docker_plugin {
            self.docker_plugin = v.clone();
        }
        if let Some(v) = &flags.port_dir {
            self.port_dir = v.clone();
        }
        self
    }

    /// Each key with its value as `daemon.json` would spell it, in [`KEYS`] order.
    pub fn entries(&self) -> Vec<(&'static str, Value)> {
        let cores = match &self.cores {
            Some(c) => json!(c),
            None => Value::Null,
        };
        let metrics = match &self.metrics_addr {
            Some(a) => json!(a.to_string()),
            None => Value::Null,
        };
        vec![
            ("debug", json!(self.debug)),
            ("log-level", json!(self.log_level.name())),
            ("log-format", json!(self.log_format.name())),
            ("log-driver", json!(self.log_driver.kind().name())),
            ("log-opts", self.log_driver.options_json()),
            ("data-root", json!(self.data_root)),
            ("cores", cores),
            ("demux-mode", json!(self.demux_mode.name())),
            ("xdp-mode", json!(self.xdp_mode.name())),
            ("xdp-attach", json!(self.xdp_attach.name())),
            ("xdp-priority", json!(self.xdp_priority)),
            ("bind-mode", json!(self.bind_mode.name())),
            (
                "receive-coalesce-us",
                json!(self.receive_coalesce.as_micros() as u64),
            ),
            ("receive-threads", json!(self.receive_threads.name())),
            ("busy-poll-budget", json!(self.busy_poll_budget)),
            (
                "stats-interval",
                json!(format_duration(self.stats_interval)),
            ),
            ("metrics-addr", metrics),
            ("control-socket", json!(self.control_socket)),
            (
                "docker-plugin",
                json!(
                    self.docker_plugin
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string())
                ),
            ),
            ("port-dir", json!(self.port_dir)),
            (
                "port-secret-file",
                json!(
                    self.port_secret_file
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string())
                ),
            ),
        ]
    }

    /// The whole configuration as a `daemon.json` object (every key, defaults filled in).
    /// Parsing it again gives back the same configuration.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.entries()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }
}

/// Command-line flags that override the file; None = the flag was not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub debug: Option<bool>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub log_driver: Option<LogDriver>,
    pub data_root: Option<PathBuf>,
    pub cores: Option<Vec<usize>>,
    pub demux_mode: Option<DemuxMode>,
    pub xdp_mode: Option<XdpMode>,
    pub xdp_attach: Option<XdpAttach>,
    pub xdp_priority: Option<u32>,
    pub bind_mode: Option<BindMode>,
    pub receive_coalesce: Option<Duration>,
    pub receive_threads: Option<Threads>,
    pub busy_poll_budget: Option<u16>,
    pub stats_interval: Option<Duration>,
    /// `Some(None)` turns metrics off.
    pub metrics_addr: Option<Option<MetricsAddr>>,
    pub control_socket: Option<PathBuf>,
    /// `Some(None)` turns the Docker plugin off.
    pub docker_plugin: Option<Option<PathBuf>>,
    pub port_dir: Option<PathBuf>,
}

/// Bytes as `daemon.json` writes them: `10m`, `512k`, or plain bytes.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A duration as `daemon.json` writes it: `1s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests;
