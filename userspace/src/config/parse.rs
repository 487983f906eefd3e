//! Checking `daemon.json` key by key, so every error names its key and the accepted values
//! (serde's `deny_unknown_fields` would only say "unknown field" with a position).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::error::{ConfigError, ErrorKind, MetricsAddrError, ValueError, suggest};
use super::*;

/// The largest CPU id accepted in `cores` (Linux's default CPU_SETSIZE is 1024).
pub(super) const MAX_CORE: usize = 1023;
/// `stats-interval` bounds.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// `receive-coalesce-us` bound: past 10 ms a wake-up's frames would overflow the sockets'
/// rings at rates a NIC queue carries.
pub const MAX_COALESCE_US: u64 = 10_000;
/// `busy-poll-budget` bound: a poll taking more than this would take more than any driver's
/// ring holds.
pub(super) const MAX_BUSY_POLL_BUDGET: u16 = 1024;
/// The budget of a NAPI poll, and the value the kernel's documentation uses.
pub(super) const TYPICAL_BUSY_POLL_BUDGET: u16 = 64;

pub(super) fn parse(text: &str, source: &str) -> Result<DaemonConfig, ConfigError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ConfigError::file(
            source,
            ErrorKind::Syntax {
                line: e.line(),
                column: e.column(),
                message: syntax_message(&e),
            },
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ConfigError::file(
            source,
            ErrorKind::NotAnObject {
                found: describe(&value),
            },
        ));
    };
    let p = Parser { source };
    for key in map.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(ConfigError::key(
                source,
                key,
                ErrorKind::UnknownKey {
                    suggestion: suggest(key, KEYS),
                    allowed: KEYS,
                },
            ));
        }
    }
    let mut cfg = DaemonConfig::default();
    if let Some(v) = map.get("debug") {
        cfg.debug = p.bool("debug", v)?;
    }
    if let Some(v) = map.get("log-level") {
        cfg.log_level = p.choice("log-level", v, LogLevel::NAMES, LogLevel::from_name)?;
    }
    if let Some(v) = map.get("log-format") {
        cfg.log_format = p.choice("log-format", v, LogFormat::NAMES, LogFormat::from_name)?;
    }
    let driver = match map.get("log-driver") {
        Some(v) => p.choice(
            "log-driver",
            v,
            LogDriverKind::NAMES,
            LogDriverKind::from_name,
        )?,
        None => LogDriverKind::Stderr,
    };
    cfg.log_driver = p.log_driver(driver, map.get("log-opts"))?;
    if let Some(v) = map.get("data-root") {
        cfg.data_root = p.absolute_path("data-root", v)?;
    }
    if let Some(v) = map.get("cores") {
        cfg.cores = p.cores(v)?;
    }
    if let Some(v) = map.get("demux-mode") {
        cfg.demux_mode = p.choice("demux-mode", v, DemuxMode::NAMES, DemuxMode::from_name)?;
    }
    if let Some(v) = map.get("xdp-mode") {
        cfg.xdp_mode = p.choice("xdp-mode", v, XdpMode::NAMES, XdpMode::from_name)?;
    }
    if let Some(v) = map.get("xdp-attach") {
        cfg.xdp_attach = p.choice("xdp-attach", v, XdpAttach::NAMES, XdpAttach::from_name)?;
    }
    if let Some(v) = map.get("xdp-priority") {
        cfg.xdp_priority = p.priority(v)?;
    }
    if let Some(v) = map.get("bind-mode") {
        cfg.bind_mode = p.choice("bind-mode", v, BindMode::NAMES, BindMode::from_name)?;
    }
    if let Some(v) = map.get("receive-coalesce-us") {
        cfg.receive_coalesce = p.coalesce(v)?;
    }
    if let Some(v) = map.get("receive-threads") {
        cfg.receive_threads = p.choice("receive-threads", v, Threads::NAMES, Threads::from_name)?;
    }
    if let Some(v) = map.get("busy-poll-budget") {
        cfg.busy_poll_budget = p.busy_poll_budget(v)?;
    }
    if let Some(v) = map.get("stats-interval") {
        cfg.stats_interval = p.interval(v)?;
    }
    if let Some(v) = map.get("metrics-addr") {
        cfg.metrics_addr = p.metrics_addr(v)?;
    }
    if let Some(v) = map.get("control-socket") {
        cfg.control_socket = p.absolute_path("control-socket", v)?;
    }
    if let Some(v) = map.get("docker-plugin") {
        let s = p.string("docker-plugin", v, "a path (string)")?;
        cfg.docker_plugin = parse_docker_plugin(s).map_err(|e| p.invalid("docker-plugin", v, e))?;
    }
    if let Some(v) = map.get("port-dir") {
        cfg.port_dir = p.absolute_path("port-dir", v)?;
    }
    if let Some(v) = map.get("port-secret-file") {
        // "" = no secret, as the default shows it.
        cfg.port_secret_file = match p.string("port-secret-file", v, "a path (string)")? {
            "" => None,
            _ => Some(p.absolute_path("port-secret-file", v)?),
        };
    }
    Ok(cfg)
}

/// `docker-plugin`: "" = off, else an absolute path to a `.sock` file (Docker discovers
/// plugins by that suffix).
pub fn parse_docker_plugin(text: &str) -> Result<Option<PathBuf>, ValueError> {
    if text.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(text);
    if !text.starts_with('/') || path.extension().is_none_or(|e| e != "sock") {
        return Err(ValueError::DockerPluginPath);
    }
    Ok(Some(path))
}

/// serde_json's message without its trailing " at line L column C" (we print those ourselves).
fn syntax_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A JSON value described for an error message: `a string ("yes")`, `a number (3)`.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string (\"{s}\")"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

struct Parser<'a> {
    source: &'a str,
}

impl Parser<'_> {
    fn err(&self, key: &str, kind: ErrorKind) -> ConfigError {
        ConfigError::key(self.source, key, kind)
    }

    fn wrong_type(&self, key: &str, expected: &'static str, v: &Value) -> ConfigError {
        self.err(
            key,
            ErrorKind::WrongType {
                expected,
                found: describe(v),
            },
        )
    }

    fn invalid(&self, key: &str, v: &Value, reason: ValueError) -> ConfigError {
        let value = match v {
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        };
        self.err(key, ErrorKind::Invalid { value, reason })
    }

    fn bool(&self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| self.wrong_type(key, "true or false", v))
    }

    fn string<'v>(
        &self,
        key: &str,
        v: &'v Value,
        expected: &'static str,
    ) -> Result<&'v str, ConfigError> {
        v.as_str().ok_or_else(|| self.wrong_type(key, expected, v))
    }

    fn choice<T>(
        &self,
        key: &str,
        v: &Value,
        allowed: &'static [&'static str],
        from_name: fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let Some(word) = v.as_str() else {
            return Err(self.err(
                key,
                ErrorKind::WrongType {
                    expected: "a string",
                    found: format!("{} (use one of {})", describe(v), allowed.join(", ")),
                },
            ));
        };
        from_name(word).ok_or_else(|| {
            self.err(
                key,
                ErrorKind::NotOneOf {
                    value: word.to_string(),
                    allowed,
                },
            )
        })
    }

    fn absolute_path(&self, key: &str, v: &Value) -> Result<PathBuf, ConfigError> {
        let s = self.string(key, v, "a path (string)")?;
        if !s.starts_with('/') {
            return Err(self.invalid(key, v, ValueError::NotAbsolute));
        }
        Ok(PathBuf::from(s))
    }

    fn log_driver(
        &self,
        kind: LogDriverKind,
        opts: Option<&Value>,
    ) -> Result<LogDriver, ConfigError> {
        let mut driver = LogDriver::with_defaults(kind);
        let Some(opts) = opts else {
            return Ok(driver);
        };
        let Value::Object(opts) = opts else {
            return Err(self.wrong_type("log-opts", "an object of strings", opts));
        };
        let allowed = LogDriver::option_names(kind);
        for name in opts.keys() {
            if !allowed.contains(&name.as_str()) {
                return Err(self.err(
                    &format!("log-opts.{name}"),
                    ErrorKind::UnknownKey {
                        suggestion: suggest(name, allowed),
                        allowed,
                    },
                ));
            }
        }
        match &mut driver {
            LogDriver::Stderr => {}
            LogDriver::JsonFile(o) => self.json_file_opts(o, opts)?,
            LogDriver::Journald { tag } | LogDriver::Syslog { tag } => {
                if let Some(v) = opts.get("tag") {
                    *tag = self.tag(v)?;
                }
            }
        }
        Ok(driver)
    }

    fn json_file_opts(
        &self,
        o: &mut JsonFileOpts,
        opts: &Map<String, Value>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = opts.get("max-size") {
            let key = "log-opts.max-size";
            o.max_size = match v {
                Value::String(s) => parse_size(s).map_err(|reason| {
                    self.err(
                        key,
                        ErrorKind::BadSize {
                            value: s.clone(),
                            reason,
                        },
                    )
                })?,
                Value::Number(n) => match n.as_u64() {
                    Some(b) if b > 0 => b,
                    _ => {
                        return Err(self.err(
                            key,
                            ErrorKind::BadSize {
                                value: n.to_string(),
                                reason: ValueError::SizeNotWhole,
                            },
                        ));
                    }
                },
                other => return Err(self.wrong_type(key, "a size such as \"10m\"", other)),
            };
        }
        if let Some(v) = opts.get("max-file") {
            let key = "log-opts.max-file";
            let n = match v {
                Value::String(s) => s.trim().parse::<u64>().ok(),
                Value::Number(n) => n.as_u64(),
                other => {
                    return Err(self.wrong_type(key, "a number of files such as \"3\"", other));
                }
            };
            o.max_file = match n {
                Some(n @ 1..=1000) => n as u32,
                _ => {
                    return Err(self.invalid(key, v, ValueError::MaxFile));
                }
            };
        }
        if let Some(v) = opts.get("path") {
            o.path = self.absolute_path("log-opts.path", v)?;
        }
        Ok(())
    }

    fn tag(&self, v: &Value) -> Result<String, ConfigError> {
        let s = self.string("log-opts.tag", v, "a string")?;
        let ok = !s.is_empty()
            && s.len() <= 48
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(self.invalid("log-opts.tag", v, ValueError::Tag));
        }
        Ok(s.to_string())
    }

    fn cores(&self, v: &Value) -> Result<Option<Vec<usize>>, ConfigError> {
        let cores = match v {
            Value::Null => return Ok(None),
            Value::String(s) => {
                parse_cores(s).map_err(|reason| self.invalid("cores", v, reason))?
            }
            Value::Array(items) => {
                let mut cores = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_u64() {
                        Some(c) if c as usize <= MAX_CORE => cores.push(c as usize),
                        _ => {
                            return Err(self.invalid("cores", item, ValueError::CpuId));
                        }
                    }
                }
                check_cores(cores).map_err(|reason| self.invalid("cores", v, reason))?
            }
            other => {
                return Err(self.wrong_type(
                    "cores",
                    "a list of CPU ids ([1, 2]) or a range string (\"1-3\")",
                    other,
                ));
            }
        };
        Ok(Some(cores))
    }

    fn interval(&self, v: &Value) -> Result<Duration, ConfigError> {
        let d = match v {
            Value::Number(n) => {
                let secs = n.as_f64().unwrap_or(-1.0);
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(self.invalid("stats-interval", v, ValueError::NotPositiveSeconds));
                }
                // Past Duration's range (1e300) is past the bound below, not a panic.
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
            }
            Value::String(s) => {
                parse_duration(s).map_err(|reason| self.invalid("stats-interval", v, reason))?
            }
            other => {
                return Err(self.wrong_type(
                    "stats-interval",
                    "seconds (1) or a duration string (\"1s\", \"500ms\")",
                    other,
                ));
            }
        };
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
            return Err(self.invalid("stats-interval", v, ValueError::IntervalRange));
        }
        Ok(d)
    }

    fn priority(&self, v: &Value) -> Result<u32, ConfigError> {
        const KEY: &str = "xdp-priority";
        let Value::Number(n) = v else {
            return Err(self.wrong_type(
                KEY,
                "a run priority (a whole number, lower runs first)",
                v,
            ));
        };
        n.as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| self.invalid(KEY, v, ValueError::Priority))
    }

    fn coalesce(&self, v: &Value) -> Result<Duration, ConfigError> {
        const KEY: &str = "receive-coalesce-us";
        let Value::Number(n) = v else {
            return Err(self.wrong_type(KEY, "microseconds (a whole number, 0 = off)", v));
        };
        coalesce_from_us(n.as_u64()).map_err(|reason| self.invalid(KEY, v, reason))
    }

    fn busy_poll_budget(&self, v: &Value) -> Result<u16, ConfigError> {
        const KEY: &str = "busy-poll-budget";
        let Value::Number(n) = v else {
            return Err(self.wrong_type(KEY, "frames per poll (a whole number, 0 = off)", v));
        };
        busy_poll_budget_from(n.as_u64()).map_err(|reason| self.invalid(KEY, v, reason))
    }

    fn metrics_addr(&self, v: &Value) -> Result<Option<MetricsAddr>, ConfigError> {
        let s = match v {
            Value::Null => return Ok(None),
            Value::String(s) => s,
            other => {
                return Err(self.wrong_type(
                    "metrics-addr",
                    "an address string (\"127.0.0.1:9100\" or \"unix:/run/xmacvlan/metrics.sock\")",
                    other,
                ));
            }
        };
        parse_metrics_addr(s).map_err(|e| match e {
            MetricsAddrError::NonLoopback => {
                self.err("metrics-addr", ErrorKind::NonLoopback { value: s.clone() })
            }
            other => self.invalid("metrics-addr", v, ValueError::Metrics(other)),
        })
    }
}

/// A size: bytes, or a number with a binary unit `k`, `m`, `g` (`kb`, `kib`, ... also work,
/// any case), as dockerd's `max-size`.
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| ValueError::SizeNotANumber)?;
    let multiplier: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(ValueError::SizeUnit(other.to_string())),
    };
    let bytes = number * multiplier as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(ValueError::SizeTooSmall);
    }
    Ok(bytes as u64)
}

/// A duration: `250ms`, `1s`, `1.5s`, `2m`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| ValueError::NotADuration)?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        other => return Err(ValueError::DurationUnit(other.to_string())),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(ValueError::NotLongerThanZero);
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| ValueError::DurationTooLong)
}

/// `receive-coalesce-us`, the file's number or the flag's text: whole microseconds up to
/// [`MAX_COALESCE_US`] (`None`: not a whole number).
pub fn coalesce_from_us(us: Option<u64>) -> Result<Duration, ValueError> {
    match us {
        Some(us) if us <= MAX_COALESCE_US => Ok(Duration::from_micros(us)),
        _ => Err(ValueError::Coalesce),
    }
}

/// `busy-poll-budget`, the file's number or the flag's text: whole frames from 0 (off) to
/// [`MAX_BUSY_POLL_BUDGET`] (`None`: not a whole number).
pub fn busy_poll_budget_from(n: Option<u64>) -> Result<u16, ValueError> {
    match n {
        Some(n) if n <= u64::from(MAX_BUSY_POLL_BUDGET) => Ok(n as u16),
        _ => Err(ValueError::BusyPollBudget),
    }
}

/// CPU ids from a list such as `1`, `0-1` or `1,3-4`.
pub fn parse_cores(text: &str) -> Result<Vec<usize>, ValueError> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim) {
        let id = |s: &str| match s.trim().parse::<usize>() {
            Ok(c) if c <= MAX_CORE => Ok(c),
            _ => Err(ValueError::NotACpu(part.to_string())),
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (id(a)?, id(b)?);
                if a > b {
                    return Err(ValueError::Backwards(part.to_string()));
                }
                cores.extend(a..=b);
            }
            None => cores.push(id(part)?),
        }
    }
    check_cores(cores)
}

fn check_cores(cores: Vec<usize>) -> Result<Vec<usize>, ValueError> {
    if cores.is_empty() {
        return Err(ValueError::NoCpu);
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &cores {
        if !seen.insert(*c) {
            return Err(ValueError::CpuTwice(*c));
        }
    }
    Ok(cores)
}

/// `127.0.0.1:9100`, `[::1]:9100`, `localhost:9100` or `unix:/absolute/path`; anything that
/// is not loopback is refused.
pub fn parse_metrics_addr(text: &str) -> Result<Option<MetricsAddr>, MetricsAddrError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Some(path) = t.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(MetricsAddrError::RelativeUnixPath);
        }
        return Ok(Some(MetricsAddr::Unix(PathBuf::from(path))));
    }
    let addr = match t.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
        None => t.parse::<SocketAddr>().ok(),
    };
    let Some(addr) = addr else {
        return Err(MetricsAddrError::NotAnAddress);
    };
    if !addr.ip().is_loopback() {
        return Err(MetricsAddrError::NonLoopback);
    }
    if addr.port() == 0 {
        return Err(MetricsAddrError::PortZero);
    }
    Ok(Some(MetricsAddr::Tcp(addr)))
}
