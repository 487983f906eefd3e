//! `cargo xtask test`: the whole suite. Lints, unit tests, the namespace integration tests
//! (root), then the VM tests with a stock Debian kernel (802.1Q). Every step and every test
//! binary runs even after one failed; the integration binary runs once per area (its
//! top-level modules), one area after another, as the areas ran when each was a binary of its
//! own. The run ends with a line per binary or area and a closing `N passed, N failed`, and
//! exits non-zero if anything failed.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cargo::{cargo, is_root};

/// The `[[test]]` target of `xmacvlan-tests` holding every integration test, one module per
/// area (`tests/integration/main.rs`).
pub(crate) const INTEGRATION: &str = "integration";

/// One step, test binary or area of the run and how it ended.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// `test result:` lines seen (a binary with no tests prints one too).
    pub results: u32,
    /// Names of the failing tests (from libtest's `test NAME ... FAILED` lines).
    pub failures: Vec<String>,
    /// Why the binary or step failed beyond its tests (exit status, no result line, …).
    pub error: Option<String>,
    pub seconds: f64,
}

impl Tally {
    pub(crate) fn ok(&self) -> bool {
        self.failed == 0 && self.error.is_none()
    }

    /// Take one line of libtest output (several `test result:` lines add up, e.g. doc tests).
    pub(crate) fn take(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.results += 1;
            // "ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in …"
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(test) = line
            .strip_prefix("test ")
            .and_then(|t| t.strip_suffix(" ... FAILED"))
        {
            self.failures.push(test.to_string());
        }
    }

    fn line(&self) -> String {
        let verdict = if self.ok() { "ok" } else { "FAILED" };
        let mut s = format!(
            "{verdict:<6} {:<34} {} passed, {} failed, {} ignored ({:.0} s)",
            self.name, self.passed, self.failed, self.ignored, self.seconds
        );
        if !self.failures.is_empty() {
            s += &format!("; failing: {}", self.failures.join(", "));
        }
        if let Some(e) = &self.error {
            s += &format!("; {e}");
        }
        s
    }
}

pub(crate) fn run_all(args: &[String]) -> Result<()> {
    let skip_vm = args.iter().any(|a| a == "--no-vm");
    crate::deps::ensure_for_tests()?;
    if !is_root() {
        bail!(
            "the integration tests create network namespaces and attach XDP: run as root, or with `sudo -E env \"PATH=$PATH\" cargo xtask test`"
        );
    }
    let started = Instant::now();
    let mut tallies = vec![
        step(
            cargo().args(["fmt", "--all", "--check"]),
            "cargo fmt --check",
        ),
        step(
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            "cargo clippy",
        ),
        // The workspace builds the library with the benchmark's programs (feature `bench`);
        // the product must build without them.
        step(
            cargo().args([
                "clippy", "-p", "xmacvlan", "--lib", "--bins", "--", "-D", "warnings",
            ]),
            "cargo clippy -p xmacvlan (no bench feature)",
        ),
        // The daemon, CLI, CNI and walkthrough tests run the real binaries.
        step(
            &mut crate::cargo::build_test_programs(),
            "cargo build (the binaries)",
        ),
    ];
    match test_binaries() {
        Ok(binaries) => {
            // Two threads per binary (or area): each test builds its own namespaces, and this
            // machine has two cores.
            for b in &binaries {
                let command = || {
                    let mut cmd = Command::new(&b.path);
                    cmd.arg("--test-threads=2")
                        .current_dir(&b.package_dir)
                        .env("CARGO_MANIFEST_DIR", &b.package_dir);
                    cmd
                };
                if !b.per_area {
                    tallies.push(test_binary(&mut command(), &b.name));
                    continue;
                }
                match list_areas(&b.path) {
                    Ok(areas) => {
                        for (area, tests) in &areas {
                            let mut cmd = command();
                            cmd.args(exact(tests));
                            tallies.push(test_binary(&mut cmd, &format!("{}/{area}", b.package)));
                        }
                    }
                    Err(e) => tallies.push(Tally {
                        name: b.name.clone(),
                        error: Some(format!("{e:#}")),
                        ..Tally::default()
                    }),
                }
            }
            tallies.push(test_binary(
                cargo().args(["test", "--workspace", "--doc"]),
                "doc tests",
            ));
        }
        Err(e) => tallies.push(Tally {
            name: "building the tests".into(),
            error: Some(format!("{e:#}")),
            ..Tally::default()
        }),
    }
    if skip_vm {
        println!("xtask: --no-vm: skipping the VM tests");
    } else {
        let vm_started = Instant::now();
        match crate::vm::run_for_suite() {
            Ok(vm) => tallies.extend(vm),
            Err(e) => tallies.push(Tally {
                name: "vm tests".into(),
                error: Some(format!("{e:#}")),
                seconds: vm_started.elapsed().as_secs_f64(),
                ..Tally::default()
            }),
        }
    }
    summarize(&tallies, started.elapsed().as_secs_f64())
}

/// Print the summary; an error if anything failed.
fn summarize(tallies: &[Tally], seconds: f64) -> Result<()> {
    println!();
    println!("xtask: test: ---- summary ----");
    for t in tallies {
        println!("xtask: test: {}", t.line());
    }
    let passed: u64 = tallies.iter().map(|t| t.passed).sum();
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let broken: Vec<&str> = tallies
        .iter()
        .filter(|t| !t.ok())
        .map(|t| t.name.as_str())
        .collect();
    println!("xtask: test: {passed} passed, {failed} failed ({seconds:.0} s)");
    if !broken.is_empty() {
        bail!("failed: {}", broken.join(", "));
    }
    Ok(())
}

/// A step that is not a test binary (lints, builds): it passes or fails as a whole.
fn step(cmd: &mut Command, name: &str) -> Tally {
    let started = Instant::now();
    println!("xtask: test: ==> {name}");
    let error = match cmd.status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("{name} failed ({s})")),
        Err(e) => Some(format!("starting {name}: {e}")),
    };
    Tally {
        name: name.into(),
        error,
        seconds: started.elapsed().as_secs_f64(),
        ..Tally::default()
    }
}

/// Run a libtest binary, streaming its output, and count its results.
fn test_binary(cmd: &mut Command, name: &str) -> Tally {
    let started = Instant::now();
    println!("xtask: test: ==> {name}");
    let mut tally = Tally {
        name: name.into(),
        ..Tally::default()
    };
    match run_counting(cmd, &mut tally) {
        Ok(status) if !status.success() => {
            tally.error = Some(format!("exited with {status}"));
        }
        // A binary with no tests still prints a result line: none means it never got there.
        Ok(_) if tally.results == 0 => {
            tally.error = Some("printed no `test result:` line".into());
        }
        Ok(_) => {}
        Err(e) => tally.error = Some(format!("{e:#}")),
    }
    tally.seconds = started.elapsed().as_secs_f64();
    tally
}

fn run_counting(cmd: &mut Command, tally: &mut Tally) -> Result<std::process::ExitStatus> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the test output")?;
        println!("{line}");
        tally.take(&line);
    }
    Ok(child.wait()?)
}

/// A test executable cargo built, named for the summary.
struct Binary {
    name: String,
    path: PathBuf,
    package: String,
    package_dir: PathBuf,
    /// The integration binary: run once per area, each named `package/area`.
    per_area: bool,
}

/// The tests of a libtest binary by area, the first segment of their path (`fastpath` for
/// `fastpath::known_frames`), from its `--list` output.
pub(crate) fn areas_of(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut areas: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in listing
        .lines()
        .filter_map(|l| l.trim().strip_suffix(": test"))
    {
        let area = name.split_once("::").map_or("", |(a, _)| a);
        areas
            .entry(area.to_string())
            .or_default()
            .push(name.to_string());
    }
    areas
}

/// [`areas_of`] the tests `exe --list` names.
pub(crate) fn list_areas(exe: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let out = Command::new(exe)
        .arg("--list")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} --list failed ({})", exe.display(), out.status);
    }
    let areas = areas_of(&String::from_utf8_lossy(&out.stdout));
    if areas.is_empty() {
        bail!("{} --list named no tests", exe.display());
    }
    Ok(areas)
}

/// libtest arguments that run exactly `tests` (its filters alone match substrings: `fastpath::`
/// would also run `vm_fastpath::`).
pub(crate) fn exact(tests: &[String]) -> Vec<String> {
    std::iter::once("--exact".to_string())
        .chain(tests.iter().cloned())
        .collect()
}

/// `cargo test --workspace --no-run`: every test executable, from cargo's JSON messages.
fn test_binaries() -> Result<Vec<Binary>> {
    println!("xtask: test: ==> building the test binaries");
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut binaries = Vec::new();
    for line in text.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"") || !test_profile(line) {
            continue;
        }
        let (Some(target), Some(exe), Some(manifest)) = (
            crate::vm::json_str(line, "\"target\":{", "name"),
            crate::vm::exe_of(line),
            crate::vm::json_str(line, "{", "manifest_path"),
        ) else {
            continue;
        };
        let package_dir = PathBuf::from(&manifest)
            .parent()
            .context("a manifest path without a directory")?
            .to_path_buf();
        let package = package_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if line.contains("\"target\":{\"kind\":[\"test\"]") {
            ""
        } else if line.contains("\"target\":{\"kind\":[\"bin\"]") {
            " (bin)"
        } else {
            " (unit)"
        };
        let per_area = kind.is_empty() && target == INTEGRATION;
        let name = format!("{package}/{target}{kind}");
        binaries.push(Binary {
            name,
            path: PathBuf::from(exe),
            package,
            package_dir,
            per_area,
        });
    }
    if binaries.is_empty() {
        bail!("cargo test --no-run reported no test executables");
    }
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(binaries)
}

/// Built with the test profile (a test harness), not the plain binary integration tests run.
fn test_profile(line: &str) -> bool {
    line.split_once("\"profile\":{")
        .and_then(|(_, rest)| rest.split_once('}'))
        .is_some_and(|(profile, _)| profile.contains("\"test\":true"))
}

#[cfg(test)]
mod tests {
    use super::{Tally, areas_of, exact, test_profile};

    #[test]
    fn only_test_harnesses_count() {
        assert!(test_profile(
            r#"{"profile":{"opt_level":"0","test":true},"features":[]}"#
        ));
        assert!(!test_profile(
            r#"{"profile":{"opt_level":"0","test":false},"x":{"test":true}}"#
        ));
    }

    #[test]
    fn counts_libtest_output() {
        let mut t = Tally::default();
        t.take("test churn_1000_cycles ... FAILED");
        t.take("test a ... ok");
        t.take(
            "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; \
             finished in 1.00s",
        );
        t.take("test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        assert_eq!((t.passed, t.failed, t.ignored, t.results), (7, 1, 2, 2));
        assert_eq!(t.failures, ["churn_1000_cycles"]);
        assert!(!t.ok());
        assert!(t.line().contains("failing: churn_1000_cycles"));
    }

    #[test]
    fn splits_a_listing_by_area() {
        let listing = "fastpath::known_frames: test\n\
                       vm_fastpath::on_a_trunk: test\n\
                       fastpath::counters_balance: test\n\
                       proptests::frames::parse: test\n\
                       top_level: test\n\
                       \n\
                       5 tests, 0 benchmarks\n";
        let areas = areas_of(listing);
        assert_eq!(
            areas.keys().collect::<Vec<_>>(),
            ["", "fastpath", "proptests", "vm_fastpath"]
        );
        assert_eq!(
            areas["fastpath"],
            ["fastpath::known_frames", "fastpath::counters_balance"]
        );
        assert_eq!(areas["vm_fastpath"], ["vm_fastpath::on_a_trunk"]);
        assert_eq!(areas["proptests"], ["proptests::frames::parse"]);
        assert_eq!(areas[""], ["top_level"]);
        assert_eq!(
            exact(&areas["vm_fastpath"]),
            ["--exact", "vm_fastpath::on_a_trunk"]
        );
    }
}
