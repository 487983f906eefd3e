//! Is a daemon really there? A pid file can name a dead process (killed with `kill -9`: gone,
//! or a zombie its parent has not reaped yet) or a reused pid, and a socket file can be left
//! with nobody listening. These look at `/proc` and ask the socket itself.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether `pid` is a running process: one of its threads is neither a zombie nor dead. A
/// killed process's main thread turns zombie first while the others still close its files
/// (its sockets included), so the main thread's state alone is not enough.
pub fn running(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| process_state(&stat))
            .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
    })
}

/// The state letter of a `/proc/PID/stat` line (after the command, which may hold spaces
/// and parentheses).
pub fn process_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Whether `pid` is a running `xmacvlan` process.
pub fn is_running_xmacvlan(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim_end() == "xmacvlan" && running(pid)
}

/// The pid in `pid_file`, if it names a running xmacvlan process.
pub fn daemon_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && is_running_xmacvlan(*pid))
}

/// Whether a daemon answers a ping on `socket` within a second (a connect alone can succeed
/// on the listening socket of a process that is exiting).
pub fn answers(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(1));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"{\"op\":\"ping\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    // Bounded: at most one line of a few hundred bytes is expected.
    let mut reader = BufReader::new(std::io::Read::take(&stream, 4096));
    reader.read_line(&mut line).is_ok() && line.contains("\"pong\"")
}

/// Running xmacvlan processes other than this one that hold BPF program `prog_id` open (a
/// program fd or a BPF link to it: `prog_id:` in the fd's fdinfo).
pub fn holders_of_bpf_program(prog_id: u32) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = format!("prog_id:\t{prog_id}\n");
    let holds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_to_string(fd.path()).is_ok_and(|info| info.contains(&needle))
                })
            })
            .unwrap_or(false)
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && is_running_xmacvlan(*pid) && holds(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// The `--config FILE` a running process was started with (resolved against its working
/// directory), from `/proc/PID/cmdline`; None when it has none.
pub fn config_flag(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let path = config_in_args(&args)?;
    if path.is_absolute() {
        return Some(path);
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(path))
}

/// `--config FILE` or `--config=FILE` in an argument list.
pub fn config_in_args(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// A new daemon found `pid` in the pid file: refuse if that daemon really serves, wait a
/// little for one that is exiting (a `kill -9` takes a moment to close its sockets), and
/// accept a dead pid, a zombie or a reused pid.
pub fn refuse_if_serving(pid: u32, pid_file: &Path, socket: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while is_running_xmacvlan(pid) {
        if answers(socket) {
            anyhow::bail!(
                "another xmacvlan daemon is running (pid {pid}, {}) and answers on {}; stop it \
                 first (`kill {pid}` or `systemctl stop xmacvlan`)",
                pid_file.display(),
                socket.display()
            );
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "pid {pid} ({}) is an xmacvlan process that does not answer on {} (starting, \
                 stopping or stuck); stop it first (`kill {pid}`; if it stays, `kill -9 {pid}`)",
                pid_file.display(),
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_after_a_command_with_parentheses() {
        assert_eq!(process_state("42 (xmacvlan) Z 1 42 42"), Some('Z'));
        assert_eq!(process_state("42 (a (b) c) S 1"), Some('S'));
        assert_eq!(process_state("garbage"), None);
        assert!(running(std::process::id()));
    }

    #[test]
    fn a_zombie_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie until wait().
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "still a zombie"
        );
        assert!(!running(pid));
        child.wait().unwrap();
    }

    #[test]
    fn finds_the_config_flag() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_in_args(&args(&["xmacvlan", "daemon", "--config", "/tmp/d.json"])),
            Some(PathBuf::from("/tmp/d.json"))
        );
        assert_eq!(
            config_in_args(&args(&["xmacvlan", "daemon", "--config=d.json"])),
            Some(PathBuf::from("d.json"))
        );
        assert_eq!(config_in_args(&args(&["xmacvlan", "daemon"])), None);
        assert_eq!(config_flag(std::process::id()), None);
    }
}
