use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
    DaemonConfig::from_json_str(text, "daemon.json")
}

fn error(text: &str) -> ConfigError {
    parse(text).expect_err("the config should have been refused")
}

#[test]
fn empty_object_is_all_defaults() {
    let cfg = parse("{}").unwrap();
    assert_eq!(cfg, DaemonConfig::default());
    assert_eq!(cfg.effective_log_level(), LogLevel::Info);
    assert_eq!(cfg.log_driver, LogDriver::Stderr);
    assert_eq!(cfg.data_root, Path::new("/var/lib/xmacvlan"));
    assert_eq!(cfg.control_socket, Path::new("/run/xmacvlan/xmacvlan.sock"));
    assert_eq!(cfg.stats_interval, Duration::from_secs(1));
    assert_eq!(cfg.metrics_addr, None);
    assert_eq!(cfg.cores, None);
}

#[test]
fn the_packaged_sample_parses_and_sets_every_key() {
    let text = include_str!("../../../packaging/daemon.json");
    let cfg = parse(text).unwrap();
    let sample: Value = serde_json::from_str(text).unwrap();
    let keys: Vec<&str> = sample
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = KEYS.to_vec();
    expected.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, expected, "the sample must show every key");
    assert_eq!(
        cfg.log_driver,
        LogDriver::JsonFile(JsonFileOpts {
            path: PathBuf::from("/var/log/xmacvlan/daemon.log"),
            max_size: 10 << 20,
            max_file: 3,
        })
    );
}

#[test]
fn a_full_file_parses() {
    let cfg = parse(
        r#"{
        "debug": false, "log-level": "warn", "log-format": "json",
        "log-driver": "syslog", "log-opts": {"tag": "xmv-test"},
        "data-root": "/srv/xmv", "cores": "0-1,3", "demux-mode": "user",
        "xdp-mode": "generic", "bind-mode": "copy", "stats-interval": "250ms",
        "metrics-addr": "[::1]:9100", "control-socket": "/tmp/x.sock"
    }"#,
    )
    .unwrap();
    assert_eq!(cfg.log_level, LogLevel::Warn);
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(
        cfg.log_driver,
        LogDriver::Syslog {
            tag: "xmv-test".into()
        }
    );
    assert_eq!(cfg.cores, Some(vec![0, 1, 3]));
    assert_eq!(cfg.demux_mode, DemuxMode::User);
    assert_eq!(cfg.xdp_mode, XdpMode::Generic);
    assert_eq!(cfg.bind_mode, BindMode::Copy);
    assert_eq!(cfg.stats_interval, Duration::from_millis(250));
    assert_eq!(
        cfg.metrics_addr,
        Some(MetricsAddr::Tcp("[::1]:9100".parse().unwrap()))
    );
    // The canonical rendering parses back to the same configuration.
    let again = parse(&cfg.to_json().to_string()).unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn debug_true_means_debug_level() {
    let cfg = parse(r#"{"debug": true, "log-level": "error"}"#).unwrap();
    assert_eq!(cfg.effective_log_level(), LogLevel::Debug);
}

#[test]
fn unknown_key_is_named_with_a_suggestion_and_the_known_keys() {
    let e = error(r#"{"log-levl": "info"}"#);
    assert_eq!(e.key_name(), Some("log-levl"));
    let msg = e.to_string();
    assert!(
        msg.starts_with(r#"daemon.json: unknown key "log-levl" (did you mean "log-level"?)"#),
        "{msg}"
    );
    assert!(msg.contains("debug, log-level, log-format"), "{msg}");
    let e = error(r#"{"hosts": ["unix:///x"]}"#);
    assert!(!e.to_string().contains("did you mean"), "{e}");
    // A dotted top-level key is a key, not a log option (found by
    // tests/integration/proptests.rs).
    let e = error(r#"{"log.level": "info"}"#);
    assert!(
        e.to_string()
            .starts_with(r#"daemon.json: unknown key "log.level""#),
        "{e}"
    );
}

#[test]
fn bad_level_names_the_key_and_the_levels() {
    let e = error(r#"{"log-level": "verbose"}"#);
    assert_eq!(e.key_name(), Some("log-level"));
    assert_eq!(
        e.to_string(),
        r#"daemon.json: key "log-level": "verbose" is not one of debug, info, warn, error, fatal"#
    );
}

#[test]
fn every_choice_key_lists_its_values() {
    for (key, allowed) in [
        ("log-format", "text, json"),
        ("log-driver", "stderr, json-file, journald, syslog"),
        ("demux-mode", "xdp, user, kernel"),
        ("xdp-mode", "native, generic, auto"),
        ("xdp-attach", "auto, alone, dispatcher"),
        ("bind-mode", "zerocopy, copy, auto"),
    ] {
        let e = error(&format!(r#"{{"{key}": "nope"}}"#));
        assert_eq!(
            e.to_string(),
            format!(r#"daemon.json: key "{key}": "nope" is not one of {allowed}"#)
        );
    }
}

#[test]
fn the_dispatcher_keys_parse_and_a_bad_priority_is_named() {
    let cfg = parse(r#"{"xdp-attach": "dispatcher", "xdp-priority": 5}"#).unwrap();
    assert_eq!(cfg.xdp_attach, XdpAttach::Dispatcher);
    assert_eq!(cfg.xdp_priority, 5);
    assert_eq!(DaemonConfig::default().xdp_attach, XdpAttach::Auto);
    for bad in ["-1", "1.5", "4294967296"] {
        let e = error(&format!(r#"{{"xdp-priority": {bad}}}"#));
        assert_eq!(e.key_name(), Some("xdp-priority"), "{e}");
        assert!(e.to_string().contains("from 0 to 4294967295"), "{bad}: {e}");
    }
    let e = error(r#"{"xdp-priority": "high"}"#);
    assert!(e.to_string().contains("a run priority"), "{e}");
}

#[test]
fn bad_type_names_the_key_and_what_was_expected() {
    let e = error(r#"{"debug": "yes"}"#);
    assert_eq!(e.key_name(), Some("debug"));
    assert_eq!(
        e.to_string(),
        r#"daemon.json: key "debug": expected true or false, found a string ("yes")"#
    );
    let e = error(r#"{"log-level": 3}"#);
    assert!(
        e.to_string().starts_with(
            r#"daemon.json: key "log-level": expected a string, found a number (3) (use one of debug, info"#
        ),
        "{e}"
    );
    let e = error(r#"{"cores": true}"#);
    assert_eq!(e.key_name(), Some("cores"));
    assert!(e.to_string().contains("a list of CPU ids"), "{e}");
    let e = error(r#"{"log-opts": "max-size=10m", "log-driver": "json-file"}"#);
    assert_eq!(e.key_name(), Some("log-opts"));
}

#[test]
fn bad_size_names_the_option() {
    let e = error(r#"{"log-driver": "json-file", "log-opts": {"max-size": "10q"}}"#);
    assert_eq!(e.key_name(), Some("log-opts.max-size"));
    assert!(matches!(e.kind, ErrorKind::BadSize { .. }));
    assert_eq!(
        e.to_string(),
        r#"daemon.json: key "log-opts": option "max-size": "10q" is not a valid size (unknown unit "q"); use bytes or a number with k, m or g, such as "10m""#
    );
    let e = error(r#"{"log-driver": "json-file", "log-opts": {"max-size": "0"}}"#);
    assert_eq!(e.key_name(), Some("log-opts.max-size"));
    let e = error(r#"{"log-driver": "json-file", "log-opts": {"max-file": "0"}}"#);
    assert_eq!(e.key_name(), Some("log-opts.max-file"));
    assert!(e.to_string().contains("from 1 to 1000"), "{e}");
}

#[test]
fn log_opts_must_suit_the_driver() {
    let e = error(r#"{"log-driver": "journald", "log-opts": {"max-size": "10m"}}"#);
    assert_eq!(e.key_name(), Some("log-opts.max-size"));
    assert_eq!(
        e.to_string(),
        r#"daemon.json: key "log-opts": unknown option "max-size"; its options are tag"#
    );
    let e = error(r#"{"log-opts": {"max-size": "10m"}}"#);
    assert!(
        e.to_string().ends_with("this log driver takes no options"),
        "{e}"
    );
    let e = error(r#"{"log-driver": "json-file", "log-opts": {"max-sise": "1m"}}"#);
    assert!(
        e.to_string().contains(r#"(did you mean "max-size"?)"#),
        "{e}"
    );
}

#[test]
fn metrics_addr_refuses_anything_but_loopback() {
    for addr in ["0.0.0.0:9100", "10.1.2.3:9100", "[::]:9100"] {
        let e = error(&format!(r#"{{"metrics-addr": "{addr}"}}"#));
        assert_eq!(e.key_name(), Some("metrics-addr"));
        assert!(matches!(e.kind, ErrorKind::NonLoopback { .. }));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                r#"daemon.json: key "metrics-addr": "{addr}" is not a loopback address"#
            )),
            "{msg}"
        );
        assert!(msg.contains("unix:"), "{msg}");
    }
    for (text, want) in [
        (
            "127.0.0.1:9100",
            MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap()),
        ),
        (
            "localhost:9200",
            MetricsAddr::Tcp("127.0.0.1:9200".parse().unwrap()),
        ),
        ("unix:/run/x.sock", MetricsAddr::Unix("/run/x.sock".into())),
    ] {
        let cfg = parse(&format!(r#"{{"metrics-addr": "{text}"}}"#)).unwrap();
        assert_eq!(cfg.metrics_addr, Some(want));
    }
    let e = error(r#"{"metrics-addr": "example.com:80"}"#);
    assert!(e.to_string().contains("not an address"), "{e}");
    let e = error(r#"{"metrics-addr": "unix:relative.sock"}"#);
    assert!(e.to_string().contains("absolute path"), "{e}");
}

#[test]
fn cores_and_interval_values_are_checked() {
    assert_eq!(parse_cores("0-1").unwrap(), vec![0, 1]);
    assert_eq!(parse_cores("1, 3-4").unwrap(), vec![1, 3, 4]);
    for bad in ["", "3-1", "a", "1,1", "5000"] {
        assert!(parse_cores(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse(r#"{"cores": [2, 3]}"#).unwrap().cores,
        Some(vec![2, 3])
    );
    let e = error(r#"{"cores": "2-1"}"#);
    assert_eq!(
        e.to_string(),
        r#"daemon.json: key "cores": "2-1": range "2-1" runs backwards"#
    );
    let e = error(r#"{"cores": [-1]}"#);
    assert_eq!(e.key_name(), Some("cores"));

    assert_eq!(
        parse(r#"{"stats-interval": 2}"#).unwrap().stats_interval,
        Duration::from_secs(2)
    );
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    let e = error(r#"{"stats-interval": "1h"}"#);
    assert_eq!(e.key_name(), Some("stats-interval"));
    assert!(e.to_string().contains("unknown unit \"h\""), "{e}");
    let e = error(r#"{"stats-interval": "10ms"}"#);
    assert!(e.to_string().contains("between 100ms and 1h"), "{e}");
    // Finite but past Duration's range (found by tests/integration/proptests.rs): an error,
    // not a panic.
    let e = error(r#"{"stats-interval": 4.0935429818199917e+294}"#);
    assert!(e.to_string().contains("between 100ms and 1h"), "{e}");
    let huge = "9".repeat(300);
    assert_eq!(parse_duration(&huge), Err(ValueError::DurationTooLong));
    assert_eq!(
        ValueError::DurationTooLong.to_string(),
        "too long to be a duration"
    );
    let e = error(&format!(r#"{{"stats-interval": "{huge}s"}}"#));
    assert!(e.to_string().contains("too long to be a duration"), "{e}");
}

#[test]
fn sizes_use_binary_units() {
    assert_eq!(parse_size("10m").unwrap(), 10 << 20);
    assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
    assert_eq!(parse_size("1g").unwrap(), 1 << 30);
    assert_eq!(parse_size("1.5k").unwrap(), 1536);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(format_size(10 << 20), "10m");
    assert_eq!(format_size(1536), "1536");
}

#[test]
fn paths_must_be_absolute() {
    let e = error(r#"{"data-root": "var/lib/x"}"#);
    assert_eq!(
        e.to_string(),
        r#"daemon.json: key "data-root": "var/lib/x": must be an absolute path"#
    );
}

#[test]
fn file_level_errors_say_where() {
    let e = error("{\"debug\": true,\n \"log-level\" \"info\"}");
    assert!(e.key_name().is_none());
    assert!(
        e.to_string()
            .starts_with("daemon.json: not valid JSON at line 2, column"),
        "{e}"
    );
    let e = error("[1]");
    assert!(e.to_string().contains("expected a JSON object"), "{e}");
}

#[test]
fn load_reads_files_and_load_or_default_tolerates_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("xmv-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("daemon.json");
    std::fs::write(&path, r#"{"log-level": "loud"}"#).unwrap();
    let e = DaemonConfig::load(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: key \"log-level\"", path.display())),
        "{e}"
    );
    let missing = dir.join("absent.json");
    assert_eq!(
        DaemonConfig::load_or_default(&missing).unwrap(),
        DaemonConfig::default()
    );
    let e = DaemonConfig::load(&missing).unwrap_err();
    assert!(e.to_string().contains("cannot read the file"), "{e}");
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags_override_the_file_which_overrides_defaults() {
    let file = parse(r#"{"log-format": "json", "demux-mode": "user", "cores": [1]}"#).unwrap();
    // Not in the file, not on the command line: default.
    assert_eq!(file.xdp_mode, XdpMode::Auto);
    let flags = Overrides {
        demux_mode: Some(DemuxMode::Kernel),
        xdp_mode: Some(XdpMode::Generic),
        ..Overrides::default()
    };
    let cfg = file.clone().merged(&flags);
    assert_eq!(cfg.demux_mode, DemuxMode::Kernel, "flag beats file");
    assert_eq!(cfg.xdp_mode, XdpMode::Generic, "flag beats default");
    assert_eq!(cfg.log_format, LogFormat::Json, "file beats default");
    assert_eq!(cfg.cores, Some(vec![1]), "file kept without a flag");
    assert_eq!(file.clone().merged(&Overrides::default()), file);
    let off = Overrides {
        metrics_addr: Some(None),
        ..Overrides::default()
    };
    let with_metrics = parse(r#"{"metrics-addr": "127.0.0.1:9100"}"#).unwrap();
    assert_eq!(with_metrics.merged(&off).metrics_addr, None);
}

#[test]
fn a_log_level_flag_beats_debug_in_the_file() {
    let file = parse(r#"{"debug": true}"#).unwrap();
    let flags = Overrides {
        log_level: Some(LogLevel::Warn),
        ..Overrides::default()
    };
    assert_eq!(
        file.clone().merged(&flags).effective_log_level(),
        LogLevel::Warn
    );
    let both = Overrides {
        log_level: Some(LogLevel::Warn),
        debug: Some(true),
        ..Overrides::default()
    };
    assert_eq!(file.merged(&both).effective_log_level(), LogLevel::Debug);
}

#[test]
fn reload_applies_log_settings_live_and_defers_the_rest() {
    let old = parse(r#"{"log-level": "info", "cores": [1]}"#).unwrap();
    let new = parse(r#"{"log-level": "debug", "cores": "0-1", "bind-mode": "copy"}"#).unwrap();
    let plan = diff_for_reload(&old, &new);
    assert_eq!(
        plan.live,
        vec![Change {
            key: "log-level",
            old: json!("info"),
            new: json!("debug")
        }]
    );
    let restart: Vec<&str> = plan.restart.iter().map(|c| c.key).collect();
    assert_eq!(restart, vec!["cores", "bind-mode"]);
    assert_eq!(plan.new_log_level, Some(LogLevel::Debug));
    assert_eq!(
        plan.to_string(),
        "applied: log-level \"info\" -> \"debug\"; needs a restart to take effect \
         (systemctl restart xmacvlan): cores [1] -> [0,1], bind-mode \"auto\" -> \"copy\""
    );
    let running = plan.apply_live(&old, &new);
    assert_eq!(running.log_level, LogLevel::Debug);
    assert_eq!(
        running.cores,
        Some(vec![1]),
        "restart-only keys keep old values"
    );
}

#[test]
fn reload_of_debug_changes_the_level_and_same_file_changes_nothing() {
    let old = parse(r#"{"log-level": "warn"}"#).unwrap();
    let new = parse(r#"{"log-level": "warn", "debug": true}"#).unwrap();
    let plan = diff_for_reload(&old, &new);
    assert_eq!(plan.live.len(), 1);
    assert_eq!(plan.live[0].key, "debug");
    assert!(plan.restart.is_empty());
    assert_eq!(plan.new_log_level, Some(LogLevel::Debug));
    let same = diff_for_reload(&old, &old.clone());
    assert!(same.is_empty());
    assert_eq!(same.new_log_level, None);
    assert_eq!(same.to_string(), "configuration unchanged");
    let driver = parse(r#"{"log-driver": "journald"}"#).unwrap();
    let plan = diff_for_reload(&old, &driver);
    let keys: Vec<&str> = plan.restart.iter().map(|c| c.key).collect();
    assert_eq!(keys, vec!["log-driver", "log-opts"]);
}

#[test]
fn docker_plugin_defaults_on_and_turns_off_with_an_empty_string() {
    assert_eq!(
        parse("{}").unwrap().docker_plugin.as_deref(),
        Some(Path::new(DEFAULT_DOCKER_PLUGIN))
    );
    assert_eq!(
        parse(r#"{"docker-plugin": ""}"#).unwrap().docker_plugin,
        None
    );
    let cfg = parse(r#"{"docker-plugin": "/run/docker/plugins/xmv2.sock"}"#).unwrap();
    assert_eq!(
        cfg.docker_plugin.as_deref(),
        Some(Path::new("/run/docker/plugins/xmv2.sock"))
    );
    for bad in ["relative.sock", "/run/docker/plugins/xmv"] {
        let e = parse(&format!(r#"{{"docker-plugin": "{bad}"}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"key "docker-plugin""#) && e.contains("ending in .sock"),
            "{e}"
        );
        assert!(!e.contains("  "), "one space between words: {e}");
        assert_eq!(parse_docker_plugin(bad), Err(ValueError::DockerPluginPath));
    }
    let e = parse(r#"{"docker-plugin": false}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("docker-plugin"), "{e}");
    // A SIGHUP that changes it says it needs a restart.
    let plan = diff_for_reload(&parse("{}").unwrap(), &cfg);
    let keys: Vec<&str> = plan.restart.iter().map(|c| c.key).collect();
    assert_eq!(keys, vec!["docker-plugin"]);
}

#[test]
fn receive_coalescing_is_whole_microseconds_up_to_ten_milliseconds() {
    assert_eq!(parse("{}").unwrap().receive_coalesce, Duration::ZERO);
    assert_eq!(
        parse(r#"{"receive-coalesce-us": 1000}"#)
            .unwrap()
            .receive_coalesce,
        Duration::from_millis(1)
    );
    for bad in ["-1", "10001", "1.5", "1e300"] {
        let e = error(&format!(r#"{{"receive-coalesce-us": {bad}}}"#));
        assert_eq!(e.key_name(), Some("receive-coalesce-us"));
        assert!(
            e.to_string().contains("from 0 (off) to 10000"),
            "{bad}: {e}"
        );
    }
    let e = error(r#"{"receive-coalesce-us": "1ms"}"#);
    assert!(e.to_string().contains("microseconds"), "{e}");
    // The flag takes the same values.
    assert_eq!(
        coalesce_from_us(Some(10_000)),
        Ok(Duration::from_millis(10))
    );
    assert!(coalesce_from_us(None).is_err());
}

#[test]
fn busy_polling_is_off_unless_a_budget_is_given() {
    let off = parse("{}").unwrap();
    assert_eq!(off.busy_poll_budget, 0);
    assert_eq!(
        crate::dataplane::DataplaneConfig::from_daemon(&off).busy_poll,
        None
    );
    let on = parse(r#"{"busy-poll-budget": 64}"#).unwrap();
    assert_eq!(
        crate::dataplane::DataplaneConfig::from_daemon(&on).busy_poll,
        Some(crate::nic::BusyPoll { budget: 64 })
    );
    for bad in ["-1", "1025", "1.5"] {
        let e = error(&format!(r#"{{"busy-poll-budget": {bad}}}"#));
        assert_eq!(e.key_name(), Some("busy-poll-budget"));
        assert!(e.to_string().contains("from 0 (off) to 1024"), "{bad}: {e}");
    }
    let e = error(r#"{"busy-poll-budget": "64"}"#);
    assert!(e.to_string().contains("frames per poll"), "{e}");
}

#[test]
fn receive_threads_default_to_run_to_completion() {
    assert_eq!(
        parse("{}").unwrap().receive_threads,
        Threads::RunToCompletion
    );
    assert_eq!(
        parse(r#"{"receive-threads": "split"}"#)
            .unwrap()
            .receive_threads,
        Threads::Split
    );
    let e = error(r#"{"receive-threads": "one"}"#);
    assert_eq!(e.key_name(), Some("receive-threads"));
    assert!(
        e.to_string().contains("run-to-completion, split"),
        "the choices are named: {e}"
    );
}
