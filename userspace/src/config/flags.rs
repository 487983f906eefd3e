//! The daemon's command-line flags: `--config FILE` and one flag per key of `daemon.json`,
//! each overriding the file (precedence: flags > file > defaults).
//!
//! `data-root` has no flag here: the CLI's global `--data-root` is that flag; a daemon passes
//! it on through [`Overrides::data_root`] when it was given explicitly.
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;

/// Source name used in errors about flags.
const FLAGS: &str = "command line";

#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ConfigFlags {
    /// The configuration file [default: /etc/xmacvlan/daemon.json, which may be absent].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log at debug level (as "debug": true).
    #[arg(long)]
    pub debug: bool,
    /// debug, info, warn, error or fatal.
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// text or json.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// stderr, json-file, journald or syslog.
    #[arg(long = "log-driver", value_name = "DRIVER")]
    pub log_driver: Option<LogDriverKind>,
    /// A log driver option, KEY=VALUE (max-size=10m, max-file=3, path=..., tag=...); repeatable.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    pub log_opts: Vec<String>,
    #[command(flatten)]
    pub dataplane: DataplaneFlags,
    /// Stats period: "1s", "500ms".
    #[arg(long = "stats-interval", value_name = "DURATION", value_parser = parse_duration)]
    pub stats_interval: Option<Duration>,
    /// Prometheus endpoint on loopback or unix:/path; "" turns it off.
    #[arg(long = "metrics-addr", value_name = "ADDR", value_parser = metrics_flag)]
    pub metrics_addr: Option<MetricsFlag>,
    /// The control socket's path: the CLI's global `--control-socket`, passed on by the
    /// daemon command when given explicitly (like `data-root`).
    #[arg(skip)]
    pub control_socket: Option<PathBuf>,
    /// Directory of the endpoints' memif sockets (absolute path).
    #[arg(long = "port-dir", value_name = "DIR")]
    pub port_dir: Option<PathBuf>,
    /// The Docker network plugin's socket (/run/docker/plugins/NAME.sock: NAME is the driver
    /// name for `docker network create -d`); "" turns the plugin off.
    #[arg(long = "docker-plugin", value_name = "PATH", value_parser = docker_plugin_flag)]
    pub docker_plugin: Option<DockerPluginFlag>,
}

/// The dataplane's options: the same flags wherever a dataplane runs (`xmacvlan daemon`, where
/// each overrides its `daemon.json` key, `xmacvlan run`, and the lab), parsed once, here;
/// `DataplaneConfig::apply` puts them into effect.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DataplaneFlags {
    /// xdp (the classifier steers into per-endpoint sockets), user (the queue's owner steers
    /// in userspace), or kernel (daemon only: no fast path).
    // Parsed as daemon.json parses it: `run` and the lab refuse `kernel` with a message.
    #[arg(long = "demux-mode", visible_alias = "demux", value_name = "MODE", value_parser = DemuxMode::from_str)]
    pub demux_mode: Option<DemuxMode>,
    /// native, generic or auto (native, falling back to generic).
    #[arg(long = "xdp-mode", value_name = "MODE", value_parser = XdpMode::from_str)]
    pub xdp_mode: Option<XdpMode>,
    /// auto (join a libxdp dispatcher the interface runs, else alone), alone, or dispatcher
    /// (always through libxdp's dispatcher, so other XDP programs can join).
    #[arg(long = "xdp-attach", value_name = "HOW", value_parser = XdpAttach::from_str)]
    pub xdp_attach: Option<XdpAttach>,
    /// The classifier's run priority in a libxdp dispatcher: lower runs first [default: 50].
    #[arg(long = "xdp-priority", value_name = "N")]
    pub xdp_priority: Option<u32>,
    /// zerocopy, copy or auto (zero-copy where the driver can).
    #[arg(long = "bind-mode", visible_alias = "bind", value_name = "MODE", value_parser = BindMode::from_str)]
    pub bind_mode: Option<BindMode>,
    /// CPUs for the receive threads: "1-3" or "1,3" [default: all but core 0].
    #[arg(long, value_name = "LIST", value_parser = cores_flag)]
    pub cores: Option<CoresFlag>,
    /// run-to-completion (one thread owns every queue and serves every endpoint) or split (a
    /// thread per queue, and one serving thread per core) [default: run-to-completion with
    /// one core, split with several].
    #[arg(long = "receive-threads", value_name = "LAYOUT", value_parser = Threads::from_str)]
    pub receive_threads: Option<Threads>,
    /// Wait this many microseconds after a socket wakes a dataplane thread, so frames
    /// arriving meanwhile share the wake-up (0 = off, at most 10000).
    #[arg(long = "receive-coalesce-us", value_name = "US", value_parser = coalesce_flag)]
    pub receive_coalesce: Option<Duration>,
    /// Busy poll the NIC: each queue's thread runs its NAPI, up to N frames a poll, with the
    /// NIC's interrupts deferred while it runs (64 is typical; 0 = off) [default: 0].
    #[arg(long = "busy-poll-budget", value_name = "N", value_parser = busy_poll_flag)]
    pub busy_poll_budget: Option<u16>,
}

/// A parsed `--docker-plugin` (None = turned off with "").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerPluginFlag(pub Option<PathBuf>);

fn docker_plugin_flag(text: &str) -> Result<DockerPluginFlag, ValueError> {
    parse_docker_plugin(text).map(DockerPluginFlag)
}

/// A parsed `--cores` (a newtype: clap would read `Option<Vec<_>>` as a repeated flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoresFlag(pub Vec<usize>);

fn cores_flag(text: &str) -> Result<CoresFlag, ValueError> {
    parse_cores(text).map(CoresFlag)
}

fn coalesce_flag(text: &str) -> Result<Duration, ValueError> {
    coalesce_from_us(text.trim().parse().ok())
}

fn busy_poll_flag(text: &str) -> Result<u16, ValueError> {
    busy_poll_budget_from(text.trim().parse().ok())
}

/// A parsed `--metrics-addr` (None = turned off with "").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsFlag(pub Option<MetricsAddr>);

fn metrics_flag(text: &str) -> Result<MetricsFlag, MetricsAddrError> {
    parse_metrics_addr(text).map(MetricsFlag)
}

impl ConfigFlags {
    /// The file the daemon reads, and whether it must exist (it must when named by --config).
    pub fn config_path(&self) -> (&Path, bool) {
        match &self.config {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        }
    }

    /// Read the file, then apply the flags: the configuration the daemon runs with.
    pub fn resolve(&self) -> Result<DaemonConfig, ConfigError> {
        let (path, required) = self.config_path();
        let file = if required {
            DaemonConfig::load(path)?
        } else {
            DaemonConfig::load_or_default(path)?
        };
        Ok(file.clone().merged(&self.overrides(&file)?))
    }

    /// The flags as overrides of `file` (which decides the log driver `--log-opt` refers to
    /// when `--log-driver` is not given).
    pub fn overrides(&self, file: &DaemonConfig) -> Result<Overrides, ConfigError> {
        Ok(Overrides {
            debug: self.debug.then_some(true),
            log_level: self.log_level,
            log_format: self.log_format,
            log_driver: self.log_driver_override(file)?,
            data_root: None,
            cores: self.dataplane.cores.clone().map(|c| c.0),
            demux_mode: self.dataplane.demux_mode,
            xdp_mode: self.dataplane.xdp_mode,
            xdp_attach: self.dataplane.xdp_attach,
            xdp_priority: self.dataplane.xdp_priority,
            bind_mode: self.dataplane.bind_mode,
            receive_coalesce: self.dataplane.receive_coalesce,
            receive_threads: self.dataplane.receive_threads,
            busy_poll_budget: self.dataplane.busy_poll_budget,
            stats_interval: self.stats_interval,
            metrics_addr: self.metrics_addr.clone().map(|m| m.0),
            control_socket: self.control_socket.clone(),
            docker_plugin: self.docker_plugin.clone().map(|d| d.0),
            port_dir: self.port_dir.clone(),
        })
    }

    /// `--log-driver` and `--log-opt`, checked exactly as the file's keys are. Options add to
    /// the file's when the driver stays the same, and start from the defaults when it changes.
    fn log_driver_override(&self, file: &DaemonConfig) -> Result<Option<LogDriver>, ConfigError> {
        if self.log_driver.is_none() && self.log_opts.is_empty() {
            return Ok(None);
        }
        let kind = self.log_driver.unwrap_or(file.log_driver.kind());
        let mut opts = if kind == file.log_driver.kind() {
            match file.log_driver.options_json() {
                Value::Object(m) => m,
                _ => Map::new(),
            }
        } else {
            Map::new()
        };
        for opt in &self.log_opts {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(ConfigError::key(
                    FLAGS,
                    "log-opts",
                    ErrorKind::Invalid {
                        value: format!("--log-opt {opt}"),
                        reason: ValueError::LogOpt,
                    },
                ));
            };
            opts.insert(key.trim().to_string(), json!(value.trim()));
        }
        let text = json!({ "log-driver": kind.name(), "log-opts": opts }).to_string();
        Ok(Some(DaemonConfig::from_json_str(&text, FLAGS)?.log_driver))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        flags: ConfigFlags,
    }

    fn flags(args: &[&str]) -> ConfigFlags {
        let mut argv = vec!["xmacvlan"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().flags
    }

    fn flag_error(args: &[&str]) -> String {
        let mut argv = vec!["xmacvlan"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    fn write_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xmv-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_mode_flags_have_the_spelling_of_run_too() {
        let long = flags(&["--demux-mode", "user", "--bind-mode", "copy"]);
        let short = flags(&["--demux", "user", "--bind", "copy"]);
        let (long, short) = (long.dataplane, short.dataplane);
        assert_eq!(long.demux_mode, Some(DemuxMode::User));
        assert_eq!(long.bind_mode, Some(BindMode::Copy));
        assert_eq!(
            (short.demux_mode, short.bind_mode),
            (long.demux_mode, long.bind_mode)
        );
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let path = write_file(
            "precedence.json",
            r#"{"log-level": "warn", "demux-mode": "user", "cores": [1],
                "log-driver": "json-file", "log-opts": {"max-size": "1m", "max-file": "5"}}"#,
        );
        let f = flags(&[
            "--config",
            path.to_str().unwrap(),
            "--log-level",
            "debug",
            "--cores",
            "0-1",
            "--log-opt",
            "max-size=2m",
            "--metrics-addr",
            "127.0.0.1:9100",
        ]);
        let cfg = f.resolve().unwrap();
        assert_eq!(cfg.log_level, LogLevel::Debug, "flag");
        assert_eq!(cfg.cores, Some(vec![0, 1]), "flag");
        assert_eq!(cfg.demux_mode, DemuxMode::User, "file");
        assert_eq!(cfg.xdp_mode, XdpMode::Auto, "default");
        assert_eq!(
            cfg.log_driver,
            LogDriver::JsonFile(JsonFileOpts {
                max_size: 2 << 20,
                max_file: 5,
                ..JsonFileOpts::default()
            }),
            "--log-opt adds to the file's options"
        );
        assert_eq!(
            cfg.metrics_addr,
            Some(MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap()))
        );
        // Without flags the file stands.
        let plain = flags(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap();
        assert_eq!(plain.log_level, LogLevel::Warn);
        assert_eq!(plain.cores, Some(vec![1]));
    }

    #[test]
    fn changing_the_driver_by_flag_starts_from_its_defaults() {
        let path = write_file(
            "driver.json",
            r#"{"log-driver": "json-file", "log-opts": {"max-size": "1m"}}"#,
        );
        let f = flags(&[
            "--config",
            path.to_str().unwrap(),
            "--log-driver",
            "syslog",
            "--log-opt",
            "tag=xmv1",
        ]);
        assert_eq!(
            f.resolve().unwrap().log_driver,
            LogDriver::Syslog { tag: "xmv1".into() }
        );
        let bad = flags(&[
            "--config",
            path.to_str().unwrap(),
            "--log-driver",
            "journald",
            "--log-opt",
            "max-size=1m",
        ]);
        let e = bad.resolve().unwrap_err().to_string();
        assert_eq!(
            e,
            r#"command line: key "log-opts": unknown option "max-size"; its options are tag"#
        );
        let e = flags(&["--log-opt", "max-size"])
            .overrides(&DaemonConfig::default())
            .unwrap_err();
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn busy_polling_is_one_flag_for_run_the_lab_and_the_daemon() {
        let f = flags(&["--busy-poll-budget", "64"]);
        assert_eq!(f.dataplane.busy_poll_budget, Some(64));
        let cfg = f.resolve().unwrap();
        assert_eq!(cfg.busy_poll_budget, 64, "overrides the file's key");
        let mut run = crate::dataplane::DataplaneConfig::default();
        run.apply(&f.dataplane).unwrap();
        assert_eq!(run.busy_poll, Some(crate::nic::BusyPoll { budget: 64 }));
        run.apply(&flags(&["--busy-poll-budget", "0"]).dataplane)
            .unwrap();
        assert_eq!(run.busy_poll, None, "0 turns it off");
        let e = flag_error(&["--busy-poll-budget", "5000"]);
        assert!(e.contains("from 0 (off) to 1024"), "{e}");
    }

    #[test]
    fn bad_flag_values_are_refused_with_the_accepted_ones() {
        let e = flag_error(&["--log-level", "verbose"]);
        assert!(
            e.contains(r#""verbose" is not one of debug, info, warn, error, fatal"#),
            "{e}"
        );
        assert!(e.contains("--log-level"), "{e}");
        let e = flag_error(&["--metrics-addr", "0.0.0.0:9100"]);
        assert!(e.contains("not a loopback address"), "{e}");
        let e = flag_error(&["--cores", "3-1"]);
        assert!(e.contains("runs backwards"), "{e}");
        let e = flag_error(&["--demux-mode", "ebpf"]);
        assert!(e.contains("xdp, user, kernel"), "{e}");
    }

    #[test]
    fn a_named_config_must_exist_the_default_may_not() {
        let f = flags(&["--config", "/nonexistent/daemon.json"]);
        let e = f.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("/nonexistent/daemon.json: cannot read the file"),
            "{e}"
        );
        assert_eq!(flags(&[]).config_path(), (Path::new(DEFAULT_PATH), false));
        let off = flags(&["--metrics-addr", ""]);
        assert_eq!(off.metrics_addr, Some(MetricsFlag(None)));
        let with = DaemonConfig {
            metrics_addr: Some(MetricsAddr::Unix("/run/m.sock".into())),
            ..DaemonConfig::default()
        };
        let merged = with.clone().merged(&off.overrides(&with).unwrap());
        assert_eq!(merged.metrics_addr, None, "\"\" turns metrics off");
        assert_eq!(
            flags(&["--debug"]).overrides(&with).unwrap().debug,
            Some(true)
        );
    }
}
