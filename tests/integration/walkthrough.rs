//! The documentation's walkthroughs, run as a newcomer would type them, so the pages cannot
//! drift from the program.
//!
//! Every ```sh block preceded by a `<!-- walkthrough: NAME -->` line, in README.md or any
//! docs/*.md page, is a walkthrough: its commands run in order in one bash, inside a network
//! namespace of its own (so `xmv0`, the host shim and the metrics port are the lab's), with a
//! private data root and control socket (through `XMACVLAN_DATA_ROOT` /
//! `XMACVLAN_CONTROL_SOCKET`), private files, and the global names (the namespaces `web1`,
//! `web2`, `wire`) made unique by a substitution table. Every command must succeed. `# `
//! comment lines right after a command are its output as the page shows it: the real output
//! must have the same lines, word for word, numbers and ids aside (those vary from run to run;
//! see [`shape`]). To add a walkthrough, mark its block and name it in [`KNOWN`] (so a page
//! that loses it, or a move out of the scanned pages, fails); a name the walkthrough creates
//! outside its namespace needs a substitution in [`Lab::substitutions`]. A walkthrough may
//! start programs in the background (`… &`, then a shell loop that waits until they are
//! ready); the shell is the leader of its own process group, and whatever of that group is
//! still running when the walkthrough ends (or fails) gets SIGTERM, then SIGKILL.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use xmacvlan::netns::NetnsGuard;
use xmacvlan_tests::{require_root, xmacvlan_bin};

const MARK: &str = "<!-- walkthrough: ";

/// The walkthroughs the documentation must have, wherever they live.
const KNOWN: [&str; 3] = ["control", "daemon", "ports"];

/// A command of a walkthrough and the output its page shows for it.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    command: String,
    expected: Vec<String>,
}

#[derive(Debug)]
struct Walkthrough {
    name: String,
    /// The page it was found in, relative to the workspace root.
    page: String,
    steps: Vec<Step>,
}

/// The marked blocks of `text` (the page `page`), in order.
fn walkthroughs(page: &str, text: &str) -> Vec<Walkthrough> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i]
            .strip_prefix(MARK)
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            i += 1;
            continue;
        };
        assert_eq!(
            lines.get(i + 1).copied(),
            Some("```sh"),
            "{page}: the `{name}` mark must sit right above a ```sh block"
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| **l != "```")
            .copied()
            .collect();
        i += 2 + body.len();
        out.push(Walkthrough {
            name: name.to_string(),
            page: page.to_string(),
            steps: steps(&body),
        });
    }
    out
}

/// Commands (with their `\` continuation lines) and the comment lines right after each.
fn steps(body: &[&str]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Whether the previous line was a command or its output (so a comment is output).
    let mut after_command = false;
    let mut continued = false;
    for line in body {
        if continued {
            let step = steps.last_mut().expect("a continued command");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
            continue;
        }
        if line.trim().is_empty() {
            after_command = false;
        } else if let Some(comment) = line.strip_prefix('#') {
            if after_command {
                let text = comment.strip_prefix(' ').unwrap_or(comment);
                steps.last_mut().unwrap().expected.push(text.to_string());
            }
        } else {
            steps.push(Step {
                command: line.to_string(),
                expected: Vec::new(),
            });
            after_command = true;
            continued = line.ends_with('\\');
        }
    }
    steps
}

/// A line's shape: its words, with every number (digits, `.` and `,` inside) as `0` and
/// every long hex id as `<id>`. Names, labels, units and punctuation must match exactly.
fn shape(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|word| {
            if word.len() >= 12 && word.chars().all(|c| c.is_ascii_hexdigit()) {
                return "<id>".to_string();
            }
            let mut out = String::new();
            let mut in_number = false;
            for c in word.chars() {
                if c.is_ascii_digit() || (in_number && (c == '.' || c == ',')) {
                    if !in_number {
                        out.push('0');
                    }
                    in_number = true;
                } else {
                    in_number = false;
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

/// One walkthrough's world: a namespace, a directory, unique global names.
struct Lab {
    ns: NetnsGuard,
    dir: PathBuf,
    prefix: String,
}

impl Lab {
    fn new(name: &str) -> Lab {
        let prefix = format!("xwt{}{name}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab {
            ns: NetnsGuard::create(&prefix).unwrap(),
            dir,
            prefix,
        }
    }

    /// What the pages say, and what this lab uses instead.
    fn substitutions(&self) -> Vec<(String, String)> {
        let dir = self.dir.display();
        let p = &self.prefix;
        vec![
            // The host's /run is shared: the daemon gets private ports and no Docker plugin.
            (
                "xmacvlan daemon --config".into(),
                format!("xmacvlan daemon --port-dir {dir}/ports --docker-plugin '' --config"),
            ),
            ("/run/xmacvlan/ports".into(), format!("{dir}/ports")),
            (
                "/run/xmacvlan/xmacvlan.pid".into(),
                format!("{dir}/xmacvlan.pid"),
            ),
            ("/tmp/daemon.json".into(), format!("{dir}/daemon.json")),
            ("/tmp/daemon.log".into(), format!("{dir}/daemon.log")),
            ("/tmp/sink.out".into(), format!("{dir}/sink.out")),
            ("/tmp/reflect.out".into(), format!("{dir}/reflect.out")),
            ("/run/xmacvlan/ports".into(), format!("{dir}/ports")),
            ("web1".into(), format!("{p}-web1")),
            ("web2".into(), format!("{p}-web2")),
            ("wire".into(), format!("{p}-wire")),
        ]
    }

    fn substitute(&self, text: &str) -> String {
        self.substitutions()
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A daemon the walkthrough left running (it failed half-way), then the namespaces.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("xmacvlan.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            std::thread::sleep(Duration::from_millis(1500));
        }
        for name in ["web1", "web2", "wire"] {
            if let Ok(ns) = xmacvlan::netns::Netns::open(&format!("{}-{name}", self.prefix)) {
                let _ = ns.delete();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The pins of a classifier a walkthrough that failed before its `xmacvlan down` left
        // (bpffs is the host's; only walkthroughs use the name xmv0).
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/xmacvlan/xmv0");
    }
}

/// One bash inside the lab's network namespace (`nsenter --net`: the mount namespace stays
/// the host's, so namespaces it makes are visible everywhere), fed one command at a time.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: PathBuf,
}

const DONE: &str = "__walkthrough_done__";

impl Shell {
    fn start(lab: &Lab) -> Shell {
        let bin_dir = xmacvlan_bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let stderr = lab.dir.join("shell.stderr");
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", lab.ns.path().display()))
            .args(["--", "bash", "--noprofile", "--norc"])
            .current_dir(&lab.dir)
            .env("PATH", path)
            .env("XMACVLAN_DATA_ROOT", lab.dir.join("data"))
            .env("XMACVLAN_CONTROL_SOCKET", lab.dir.join("xmacvlan.sock"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .process_group(0)
            .spawn()
            .expect("nsenter and bash (util-linux, bash)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Shell {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// Run `command`; its stdout lines and exit status.
    fn run(&mut self, command: &str) -> (Vec<String>, i32) {
        writeln!(self.stdin, "{command}\nprintf '\\n{DONE} %s\\n' \"$?\"").unwrap();
        self.stdin.flush().unwrap();
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("`{command}` did not finish within 60 s"));
            if let Some(status) = line.strip_prefix(DONE) {
                if out.last().is_some_and(|l: &String| l.is_empty()) {
                    out.pop();
                }
                return (out, status.trim().parse().unwrap());
            }
            out.push(line);
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Shell {
    /// The shell and its background jobs (clients, a daemon left by a failed step): SIGTERM
    /// first, so a daemon detaches XDP and removes its files, SIGKILL after 5 s.
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SAFETY: signals the process group this shell leads; no memory is involved.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        for _ in 0..50 {
            // SAFETY: signal 0 only checks whether the group still has a member.
            if unsafe { libc::kill(-group, 0) } != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

fn run_walkthrough(w: &Walkthrough) {
    let lab = Lab::new(&w.name);
    let mut shell = Shell::start(&lab);
    for step in &w.steps {
        let command = lab.substitute(&step.command);
        let (out, status) = shell.run(&command);
        assert_eq!(
            status,
            0,
            "walkthrough `{}` ({}): `{command}` failed; stdout:\n{}\nstderr:\n{}",
            w.name,
            w.page,
            out.join("\n"),
            shell.stderr()
        );
        let expected: Vec<String> = step.expected.iter().map(|l| lab.substitute(l)).collect();
        let shapes = |lines: &[String]| lines.iter().map(|l| shape(l)).collect::<Vec<_>>();
        // Refreshing the pages' samples: print every output that differs (also of commands
        // the page shows no output for) instead of stopping at the first difference.
        if std::env::var_os("XMACVLAN_WALKTHROUGH_SHOW").is_some() {
            if shapes(&out) != shapes(&expected) {
                eprintln!("--- {command}\n{}", out.join("\n"));
            }
            continue;
        }
        if step.expected.is_empty() {
            continue;
        }
        assert_eq!(
            shapes(&out),
            shapes(&expected),
            "walkthrough `{}`: `{command}` printed\n{}\nbut {} shows\n{}",
            w.name,
            out.join("\n"),
            w.page,
            expected.join("\n")
        );
    }
}

/// README.md and every docs/*.md page, as (path relative to the workspace root, text), in
/// a stable order.
fn pages() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |rel: &str| {
        let path = root.join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let docs = root.join("docs");
    let mut names: Vec<String> = std::fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("{}: {e}", docs.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    names.sort();
    std::iter::once("README.md".to_string())
        .chain(names.into_iter().map(|n| format!("docs/{n}")))
        .map(|rel| {
            let text = read(&rel);
            (rel, text)
        })
        .collect()
}

/// Every marked walkthrough of the documentation; each known one exactly once.
fn all_walkthroughs() -> Vec<Walkthrough> {
    let pages = pages();
    let all: Vec<Walkthrough> = pages
        .iter()
        .flat_map(|(page, text)| walkthroughs(page, text))
        .collect();
    let scanned: Vec<&str> = pages.iter().map(|(page, _)| page.as_str()).collect();
    for known in KNOWN {
        let found: Vec<&str> = all
            .iter()
            .filter(|w| w.name == known)
            .map(|w| w.page.as_str())
            .collect();
        assert!(
            !found.is_empty(),
            "no `<!-- walkthrough: {known} -->` block in {scanned:?}: a page lost it, or it \
             moved out of README.md and docs/*.md"
        );
        assert_eq!(
            found.len(),
            1,
            "the `{known}` walkthrough is marked more than once: {found:?}"
        );
    }
    all
}

#[test]
fn the_documented_walkthroughs_run_as_shown() {
    require_root();
    for w in &all_walkthroughs() {
        run_walkthrough(w);
    }
}

/// The scan itself, without root: every known walkthrough is found, in the page it lives in.
#[test]
fn every_known_walkthrough_is_found() {
    let all = all_walkthroughs();
    for known in KNOWN {
        let w = all.iter().find(|w| w.name == known).unwrap();
        assert!(!w.steps.is_empty(), "{}: `{known}` has no commands", w.page);
    }
}

#[test]
fn parses_commands_outputs_and_shapes() {
    let text = "x\n<!-- walkthrough: t -->\n```sh\n# a description\nls \\\n  -l\n# out 1\n#\n\n# desc\necho hi   # note\n```\n";
    let w = walkthroughs("page.md", text);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].name, "t");
    assert_eq!(w[0].page, "page.md");
    assert_eq!(
        w[0].steps,
        [
            Step {
                command: "ls \\\n  -l".into(),
                expected: vec!["out 1".into(), "".into()],
            },
            Step {
                command: "echo hi   # note".into(),
                expected: vec![],
            },
        ]
    );
    assert_eq!(
        shape("web1  02:42:c6:12:00:80   198.18.0.128/24 1,000 cb8e82d6c34e"),
        ["web0", "0:0:c0:0:0:0", "0/0", "0", "<id>"]
    );
}
