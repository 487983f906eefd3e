use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{debug, error, info, warn};

use super::*;
use crate::config::JsonFileOpts;

/// A writer that appends to a shared buffer the test reads afterwards.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xmv-log-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn level_changes_take_effect_at_once() {
    let buf = Buffer::default();
    let writer = buf.clone();
    let (dispatch, handle) =
        build_to_writer(LogLevel::Info, LogFormat::Text, move || writer.clone());
    tracing::dispatcher::with_default(&dispatch, || {
        debug!("hidden-debug-1");
        info!("shown-info-1");
        handle.set_level(LogLevel::Debug).unwrap();
        assert_eq!(handle.level(), LogLevel::Debug);
        debug!("shown-debug-2");
        handle.set_level(LogLevel::Error).unwrap();
        warn!("hidden-warn-3");
        error!("shown-error-3");
        handle.set_level(LogLevel::Warn).unwrap();
        warn!("shown-warn-4");
        info!("hidden-info-4");
    });
    let text = buf.text();
    for shown in [
        "shown-info-1",
        "shown-debug-2",
        "shown-error-3",
        "shown-warn-4",
    ] {
        assert!(text.contains(shown), "{shown} missing from:\n{text}");
    }
    for hidden in ["hidden-debug-1", "hidden-warn-3", "hidden-info-4"] {
        assert!(!text.contains(hidden), "{hidden} leaked into:\n{text}");
    }
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.contains(" INFO "),
        "text lines carry the level: {text}"
    );
}

#[test]
fn a_reloaded_file_changes_the_level_live() {
    let old = DaemonConfig::from_json_str(r#"{"log-level": "warn"}"#, "daemon.json").unwrap();
    let new = DaemonConfig::from_json_str(
        r#"{"log-level": "warn", "debug": true, "cores": [1]}"#,
        "daemon.json",
    )
    .unwrap();
    let buf = Buffer::default();
    let writer = buf.clone();
    let cfg = LogConfig::from_daemon(&old);
    let (dispatch, handle) = build_to_writer(cfg.level, cfg.format, move || writer.clone());
    tracing::dispatcher::with_default(&dispatch, || {
        info!("before-reload");
        let plan = crate::config::diff_for_reload(&old, &new);
        handle.apply_reload(&plan).unwrap();
        debug!("after-reload");
        // Reloading the same file again changes nothing.
        let again = crate::config::diff_for_reload(&plan.apply_live(&old, &new), &new);
        handle.apply_reload(&again).unwrap();
    });
    assert_eq!(handle.level(), LogLevel::Debug);
    let text = buf.text();
    assert!(!text.contains("before-reload"), "{text}");
    assert!(text.contains("after-reload"), "{text}");
}

#[test]
fn fatal_level_shows_only_fatal_events() {
    let buf = Buffer::default();
    let writer = buf.clone();
    let (dispatch, _handle) =
        build_to_writer(LogLevel::Fatal, LogFormat::Text, move || writer.clone());
    tracing::dispatcher::with_default(&dispatch, || {
        error!("plain-error");
        warn!("a-warning");
        log_fatal(&"the-last-words");
    });
    let text = buf.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("the-last-words"), "{text}");
    assert!(text.contains("fatal=true"), "{text}");
}

#[test]
fn json_format_writes_one_object_per_line() {
    let buf = Buffer::default();
    let writer = buf.clone();
    let (dispatch, _handle) =
        build_to_writer(LogLevel::Info, LogFormat::Json, move || writer.clone());
    tracing::dispatcher::with_default(&dispatch, || {
        info!(endpoint = "c1", frames = 42u64, "endpoint attached");
    });
    let text = buf.text();
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["message"], "endpoint attached");
    assert_eq!(line["endpoint"], "c1");
    assert_eq!(line["frames"], 42);
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn json_file_rotation_keeps_max_file_files_newest_in_the_base() {
    let dir = temp_dir("rotate");
    let path = dir.join("daemon.log");
    let cfg = LogConfig {
        level: LogLevel::Info,
        format: LogFormat::Text, // json-file always writes JSON
        driver: LogDriver::JsonFile(JsonFileOpts {
            path: path.clone(),
            max_size: 600,
            max_file: 3,
        }),
    };
    let (dispatch, _handle) = build(&cfg).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..100 {
            info!(seq = i, "line {i:03}");
        }
    });
    drop(dispatch);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["daemon.log", "daemon.log.1", "daemon.log.2"]);
    let seqs = |name: &str| -> Vec<u64> {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.len() <= 600, "{name} is {} bytes", text.len());
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    };
    let (base, one, two) = (
        seqs("daemon.log"),
        seqs("daemon.log.1"),
        seqs("daemon.log.2"),
    );
    assert_eq!(*base.last().unwrap(), 99, "newest line is in the base file");
    // Files are contiguous runs, older ones further from the base.
    assert_eq!(*two.last().unwrap() + 1, one[0]);
    assert_eq!(*one.last().unwrap() + 1, base[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotating_file_with_one_file_truncates_and_appends_after_reopen() {
    let dir = temp_dir("one");
    let path = dir.join("x.log");
    let mut f = RotatingFile::open(&path, 10, 1).unwrap();
    f.write_all(b"0123456789").unwrap();
    f.write_all(b"abc\n").unwrap();
    drop(f);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
    assert!(!dir.join("x.log.1").exists());
    let mut f = RotatingFile::open(&path, 100, 2).unwrap();
    f.write_all(b"def\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\ndef\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bound_socket(dir: &std::path::Path, name: &str) -> (UnixDatagram, PathBuf) {
    let path = dir.join(name);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    (socket, path)
}

fn recv(socket: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let n = socket.recv(&mut buf).expect("a datagram from the logger");
    buf.truncate(n);
    buf
}

#[test]
fn journald_datagrams_use_the_native_protocol() {
    let dir = temp_dir("journald");
    let (server, path) = bound_socket(&dir, "journal.sock");
    let sink = DatagramSink::journald(&path, "xmv-test").unwrap();
    let (dispatch, _handle) = build_to_sink(LogLevel::Info, sink);
    tracing::dispatcher::with_default(&dispatch, || {
        info!("hello journal");
        warn!(iface = "veth0", "rx VLAN offload is on");
        debug!("not sent");
        error!("two\nlines");
        log_fatal(&"going down");
    });
    assert_eq!(
        recv(&server),
        b"MESSAGE=hello journal\nPRIORITY=6\nSYSLOG_IDENTIFIER=xmv-test\n"
    );
    assert_eq!(
        recv(&server),
        b"MESSAGE=rx VLAN offload is on iface=veth0\nPRIORITY=4\nSYSLOG_IDENTIFIER=xmv-test\n"
    );
    let mut multi = b"MESSAGE\n".to_vec();
    multi.extend_from_slice(&9u64.to_le_bytes());
    multi.extend_from_slice(b"two\nlines\nPRIORITY=3\nSYSLOG_IDENTIFIER=xmv-test\n");
    assert_eq!(recv(&server), multi);
    assert_eq!(
        recv(&server),
        b"MESSAGE=going down\nPRIORITY=2\nSYSLOG_IDENTIFIER=xmv-test\n"
    );
    server.set_nonblocking(true).unwrap();
    assert!(
        server.recv(&mut [0u8; 16]).is_err(),
        "debug must not be sent"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn syslog_datagrams_are_rfc3164_as_glibc_sends_them() {
    let tm = libc::tm {
        tm_sec: 5,
        tm_min: 4,
        tm_hour: 3,
        tm_mday: 2,
        tm_mon: 10,
        tm_year: 126,
        tm_wday: 0,
        tm_yday: 0,
        tm_isdst: 0,
        tm_gmtoff: 0,
        tm_zone: std::ptr::null(),
    };
    assert_eq!(
        syslog_datagram("link up", 6, "xmacvlan", 1234, &tm),
        b"<30>Nov  2 03:04:05 xmacvlan[1234]: link up"
    );

    let dir = temp_dir("syslog");
    let (server, path) = bound_socket(&dir, "log.sock");
    let sink = DatagramSink::syslog(&path, "xmv-test").unwrap();
    let (dispatch, _handle) = build_to_sink(LogLevel::Debug, sink);
    tracing::dispatcher::with_default(&dispatch, || {
        warn!(queue = 3u32, "fill ring empty");
        debug!("details");
    });
    let first = String::from_utf8(recv(&server)).unwrap();
    let suffix = format!(" xmv-test[{}]: fill ring empty queue=3", std::process::id());
    assert!(first.starts_with("<28>"), "{first}");
    assert!(first.ends_with(&suffix), "{first}");
    // "<28>" + "Mmm dd hh:mm:ss" (15) + suffix.
    assert_eq!(first.len(), 4 + 15 + suffix.len(), "{first}");
    let stamp = &first[4..19];
    assert_eq!(&stamp[3..4], " ");
    assert_eq!(&stamp[9..10], ":");
    let second = String::from_utf8(recv(&server)).unwrap();
    assert!(second.starts_with("<31>"), "debug is severity 7: {second}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_journald_or_syslog_is_a_clear_error() {
    let dir = temp_dir("missing");
    let e = DatagramSink::journald(&dir.join("nope.sock"), "x").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("journald is not running"), "{msg}");
    assert!(msg.contains("nope.sock"), "{msg}");
    let e = DatagramSink::syslog(&dir.join("nope.sock"), "x").unwrap_err();
    assert!(
        e.to_string().contains("no syslog daemon is listening"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_file_error_names_the_path_and_the_fix() {
    let cfg = LogConfig {
        level: LogLevel::Info,
        format: LogFormat::Json,
        driver: LogDriver::JsonFile(JsonFileOpts {
            path: PathBuf::from("/proc/xmv-no/daemon.log"),
            ..JsonFileOpts::default()
        }),
    };
    let e = build(&cfg).unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot open /proc/xmv-no/daemon.log"),
        "{e:#}"
    );
}

#[test]
fn dependency_log_records_reach_the_driver() {
    use log::Log;
    let buf = Buffer::default();
    let writer = buf.clone();
    let (dispatch, _handle) =
        build_to_writer(LogLevel::Debug, LogFormat::Text, move || writer.clone());
    tracing::dispatcher::with_default(&dispatch, || {
        let bridge = LogBridge;
        bridge.log(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("aya::bpf")
                .args(format_args!("BTF is missing: {}", 7))
                .build(),
        );
        bridge.log(
            &log::Record::builder()
                .level(log::Level::Debug)
                .target("netlink_proto::connection")
                .args(format_args!("per-message chatter"))
                .build(),
        );
    });
    let text = buf.text();
    assert!(text.contains(" WARN "), "{text}");
    assert!(text.contains("BTF is missing: 7"), "{text}");
    assert!(text.contains("log.target=\"aya::bpf\""), "{text}");
    assert!(
        !text.contains("chatter"),
        "dependency debug records stay out: {text}"
    );
}

/// The child half of `fatal_logs_and_exits_1`: does nothing unless that test started it.
#[test]
fn fatal_child() {
    if std::env::var_os("XMV_FATAL_CHILD").is_none() {
        return;
    }
    let cfg = LogConfig {
        level: LogLevel::Fatal,
        format: LogFormat::Text,
        driver: LogDriver::Stderr,
    };
    init(&cfg).unwrap();
    error!("plain error, hidden at fatal");
    crate::fatal!("cannot continue: {}", 42);
}

#[test]
fn fatal_logs_and_exits_1() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "logging::tests::fatal_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("XMV_FATAL_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("cannot continue: 42"), "{stderr}");
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(!stderr.contains("plain error"), "{stderr}");
}
