//! Booting the guest and judging the run from its console. qemu's exit code says nothing about
//! the tests (it is 0 after any poweroff, panic or not): a run passes only if the guest printed
//! a `result` line with code 0 for every area (or binary) and an `exit 0` line, with no kernel panic, in
//! time.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::TestBinary;
use super::guest::Machine;
use crate::test::Tally;

pub(super) struct Boot<'a> {
    pub machine: &'a Machine,
    pub script: &'a Path,
    pub nonce: &'a str,
    pub kvm: bool,
    /// Extra kernel command-line arguments.
    pub append: &'a str,
    /// Host directories the guest must see even under its own /tmp or /run (checkout, binaries).
    pub keep: &'a [std::path::PathBuf],
}

impl Boot<'_> {
    fn command(&self) -> Command {
        let m = self.machine;
        let mut cmd = m.emulator.command();
        if self.kvm {
            cmd.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-accel", m.accel, "-cpu", "max"]);
        }
        let keep: String = self
            .keep
            .iter()
            .map(|k| format!(" xmvm_keep={}", k.display()))
            .collect();
        let append = format!(
            "console=ttyS0 quiet panic=-1 mitigations=off xmvm_script={} xmvm_nonce={}{keep} {}",
            self.script.display(),
            self.nonce,
            self.append
        );
        cmd.arg("-smp")
            .arg(m.cpus.to_string())
            .arg("-m")
            .arg(m.memory_mb.to_string())
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .args(&m.nics)
            .arg("-kernel")
            .arg(&m.kernel.image)
            .arg("-initrd")
            .arg(&m.initrd)
            .arg("-append")
            .arg(append)
            // The host's / as the guest's lower root. multidevs=remap keeps inode numbers of
            // different host filesystems apart (without it /proc breaks inside the chroot).
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ]);
        cmd
    }
}

/// An interactive root shell in the guest, on this terminal.
pub(super) fn shell(boot: &Boot) -> Result<()> {
    let status = boot
        .command()
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .status()
        .with_context(|| format!("starting {}", boot.machine.emulator.binary.display()))?;
    println!("xtask: vm: qemu exited ({status})");
    Ok(())
}

/// What the guest said.
#[derive(Default)]
struct Outcome {
    kernel: Option<String>,
    modules: Option<String>,
    results: BTreeMap<String, i32>,
    exit: Option<String>,
    panic: Option<String>,
    /// qemu could not run the guest (e.g. `KVM internal error`): no point waiting.
    fatal: Option<String>,
    /// libtest's counts per area (or binary), from its output after the guest's
    /// `==> vm-test: NAME`.
    counts: BTreeMap<String, Tally>,
    current: Option<String>,
}

impl Outcome {
    fn take(&mut self, line: &str, prefix: &str) {
        if line.contains("Kernel panic") && self.panic.is_none() {
            self.panic = Some(line.to_string());
        }
        if line.contains("KVM internal error") && self.fatal.is_none() {
            self.fatal = Some(format!(
                "{line} (KVM cannot run this kernel here: drop --kvm)"
            ));
        }
        if let Some(name) = line.split_once("==> vm-test: ").map(|(_, r)| r) {
            self.current = name.split_whitespace().next().map(str::to_string);
        } else if let Some(name) = &self.current {
            self.counts.entry(name.clone()).or_default().take(line);
        }
        let Some(msg) = line.find(prefix).map(|i| &line[i + prefix.len()..]) else {
            return;
        };
        let (what, rest) = msg.split_once(' ').unwrap_or((msg, ""));
        match what {
            "kernel" => self.kernel = Some(rest.trim().to_string()),
            "modules" => self.modules = Some(rest.trim().to_string()),
            "result" => {
                if let Some((name, code)) = rest.trim().rsplit_once(' ') {
                    let code = code.parse().unwrap_or(-1);
                    self.results.insert(name.to_string(), code);
                }
            }
            "exit" => self.exit = Some(rest.trim().to_string()),
            _ => {}
        }
    }
}

/// Boot, run the tests, stream the console live, and judge: one tally per area, and one
/// named `vm` for what went wrong with the VM itself (panic, timeout, no exit line).
pub(super) fn run_tests(
    boot: &Boot,
    binaries: &[TestBinary],
    deadline: Duration,
) -> Result<Vec<Tally>> {
    let accel = if boot.kvm { "KVM" } else { "TCG" };
    let m = boot.machine;
    println!(
        "xtask: vm: booting the {} guest: {} under {} ({accel}, {} CPUs, {} MiB); deadline {} s",
        m.kind.name(),
        m.kernel.release,
        if m.emulator.version.is_empty() {
            "the host's QEMU"
        } else {
            &m.emulator.version
        },
        m.cpus,
        m.memory_mb,
        deadline.as_secs()
    );
    let started = Instant::now();
    let mut child = boot
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", m.emulator.binary.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    let tx_err = tx.clone();
    let readers = [
        std::thread::spawn(move || stream_lines(stdout, tx, false)),
        std::thread::spawn(move || stream_lines(stderr, tx_err, true)),
    ];

    let prefix = format!("XMVM:{}:", boot.nonce);
    let mut outcome = Outcome::default();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                outcome.take(&line, &prefix);
                if outcome.exit.is_some() || outcome.fatal.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // After the exit line the guest powers off by itself; give it a moment, then stop it.
    let grace = if timed_out || outcome.fatal.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs(30)
    };
    finish(&mut child, grace);
    for reader in readers {
        reader.join().ok();
    }
    while let Ok(line) = rx.try_recv() {
        outcome.take(&line, &prefix);
    }
    let elapsed = started.elapsed().as_secs_f64();

    println!();
    println!("xtask: vm: ---- summary ----");
    match &outcome.kernel {
        Some(k) => println!("xtask: vm: guest kernel (uname -r): {k}"),
        None => {
            println!("xtask: vm: guest kernel: never reported (the guest did not start the tests)")
        }
    }
    if let Some(m) = &outcome.modules {
        println!("xtask: vm: guest modules: {m}");
    }
    let mut tallies = Vec::new();
    let mut failures = Vec::new();
    for b in binaries {
        let mut t = outcome.counts.remove(&b.name).unwrap_or_default();
        t.name = format!("{}/{}", m.tally_prefix(), b.name);
        let verdict = match outcome.results.get(&b.name) {
            Some(0) => "ok".to_string(),
            Some(124) | Some(137) => {
                t.error = Some("timed out inside the guest (raise --timeout)".into());
                "TIMED OUT inside the guest".into()
            }
            Some(code) => {
                t.error = Some(format!("exit code {code}"));
                format!("FAILED (exit code {code})")
            }
            None => {
                t.error = Some("printed no result line".into());
                "NO RESULT".into()
            }
        };
        println!("xtask: vm: {:<20} {verdict}", b.name);
        tallies.push(t);
    }
    if let Some(f) = &outcome.fatal {
        failures.push(format!("qemu failed: {f}"));
    }
    if let Some(p) = &outcome.panic {
        failures.push(format!("the guest kernel panicked: {p}"));
    }
    if timed_out {
        failures.push(format!(
            "the VM did not finish within {} s and was killed",
            deadline.as_secs()
        ));
    }
    match outcome.exit.as_deref() {
        Some("0") => {}
        Some(other) => failures.push(format!("the guest script ended with `exit {other}`")),
        None if !timed_out && outcome.fatal.is_none() => {
            failures.push("the guest never printed its exit line".into())
        }
        None => {}
    }
    println!("xtask: vm: VM ran {elapsed:.1} s");
    let passed = tallies.iter().filter(|t| t.ok()).count();
    println!(
        "vm-test: {passed} areas passed, {} failed",
        tallies.len() - passed
    );
    for t in &mut tallies {
        t.seconds = elapsed / binaries.len().max(1) as f64;
    }
    if !failures.is_empty() {
        tallies.push(Tally {
            name: m.tally_prefix().into(),
            error: Some(failures.join("; ")),
            seconds: elapsed,
            ..Tally::default()
        });
    }
    Ok(tallies)
}

/// Copy qemu's output (its stdout: the serial console; or its stderr) to ours as it comes,
/// and hand complete lines to the judge.
fn stream_lines(mut from: impl Read, tx: mpsc::Sender<String>, is_stderr: bool) {
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if is_stderr {
            let mut out = std::io::stderr().lock();
            out.write_all(&buf[..n]).ok();
            out.flush().ok();
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf[..n]).ok();
            out.flush().ok();
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                line.clear();
                if tx.send(text).is_err() {
                    return;
                }
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        tx.send(String::from_utf8_lossy(&line).into_owned()).ok();
    }
}

/// Wait up to `grace` for qemu to exit, then kill it.
fn finish(child: &mut Child, grace: Duration) {
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().ok();
    child.wait().ok();
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    const P: &str = "XMVM:abc:";

    fn feed(lines: &[&str]) -> Outcome {
        let mut o = Outcome::default();
        for l in lines {
            o.take(l, P);
        }
        o
    }

    #[test]
    fn reads_kernel_results_and_exit() {
        let o = feed(&[
            "Booting from ROM..XMVM:abc:kernel 6.1.0-56-amd64",
            "XMVM:abc:result vm_vlan 0",
            "XMVM:abc:result control_vlan 101",
            "XMVM:abc:exit 0",
        ]);
        assert_eq!(o.kernel.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(o.results.get("vm_vlan"), Some(&0));
        assert_eq!(o.results.get("control_vlan"), Some(&101));
        assert_eq!(o.exit.as_deref(), Some("0"));
        assert!(o.panic.is_none() && o.fatal.is_none());
    }

    #[test]
    fn counts_each_binarys_tests() {
        let o = feed(&[
            "==> vm-test: vm_vlan (timeout 300 s)",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "==> vm-test: control_vlan (timeout 300 s)",
            "test a ... FAILED",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        ]);
        assert_eq!(o.counts["vm_vlan"].passed, 3);
        assert_eq!(o.counts["control_vlan"].failed, 1);
        assert_eq!(o.counts["control_vlan"].failures, ["a"]);
    }

    #[test]
    fn ignores_lines_with_another_nonce() {
        // A test printing a look-alike line cannot forge a result.
        let o = feed(&["XMVM:zzz:result vm_vlan 0", "XMVM:zzz:exit 0"]);
        assert!(o.results.is_empty());
        assert!(o.exit.is_none());
    }

    #[test]
    fn notices_panics_and_kvm_errors() {
        let o = feed(&[
            "[    1.2] Kernel panic - not syncing: Attempted to kill init!",
            "KVM internal error. Suberror: 1",
        ]);
        assert!(
            o.panic
                .as_deref()
                .unwrap()
                .contains("Attempted to kill init")
        );
        assert!(o.fatal.as_deref().unwrap().contains("drop --kvm"));
    }
}
