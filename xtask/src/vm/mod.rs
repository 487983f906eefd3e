//! `cargo xtask vm-test`: the integration tests that need a full kernel (802.1Q) or a real NIC
//! driver (igb: native XDP, AF_XDP zero-copy, several queues, VLAN offload) run inside stock
//! Debian kernels under qemu. The host's `/` is the guest's root (read-only 9p plus a tmpfs
//! overlay), so the test binaries built here run there unchanged, as root.
//!
//! Layout: [`guest`] says what each of the two guests is made of; [`apt`] asks apt (the host's
//! or a private configuration) without changing the host's; [`kernel`] fetches and caches a
//! kernel ([`modules`] picks its modules, [`image`] extracts its vmlinux); [`emulator`]
//! unpacks QEMU 10 for the igb guest; [`initramfs`] builds the guest's PID 1 (`init.sh`);
//! [`qemu`] boots it, streams the console and decides pass/fail from the lines the guest prints
//! (never from qemu's exit code).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::cargo::{cargo, is_root, workspace_root};
use crate::test::{INTEGRATION, Tally, exact, list_areas};
use guest::{GuestKind, Machine};

mod apt;
mod emulator;
mod guest;
mod image;
mod initramfs;
mod kernel;
mod modules;
mod qemu;

/// Areas of the integration binary (modules of `tests/integration/main.rs`, crate
/// `xmacvlan-tests`) that run inside the stock guest (Debian 12's 6.1 kernel, veth pairs,
/// 802.1Q). To add one: add its name here. Its VM-only tests should be `#[ignore = "..."]` on
/// the host: the guest runs every area with `--include-ignored`, `--test-threads=1` and
/// `XMACVLAN_IN_VM=1`, one run of the binary per area. Each run costs ~1 s of startup plus
/// its tests at ~10x the host's CPU time: keep this list short.
pub const VM_TESTS: &[&str] = &["vm_vlan", "vm_fastpath", "control_vlan"];

/// Areas that run inside the igb guest (QEMU 10, a kernel >= 6.14, an igb NIC with 4 queues
/// and zero-copy AF_XDP, a virtio-net peer in namespace `xmvwire`; see [`guest`]). Its 4
/// vCPUs share the host's 2 cores under TCG: every second of TCG here costs the CI run more
/// than in the stock guest, so keep these areas smaller still.
pub const IGB_VM_TESTS: &[&str] = &["vm_nic"];

/// Per area (or test binary), inside the guest (TCG is slow: generous).
const DEFAULT_BINARY_TIMEOUT: Duration = Duration::from_secs(300);
/// Boot, module loading and shutdown, on top of the areas' time.
const BOOT_BUDGET: Duration = Duration::from_secs(120);

/// System packages the VM needs: (package, a file proving it is installed). The igb guest's
/// QEMU 10 is not among them: it is downloaded and unpacked into `target/vm/igb/`, never
/// installed.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/usr/share/doc/busybox-static"),
    ("cpio", "/usr/bin/cpio"),
    ("kmod", "/usr/sbin/depmod"),
    ("xz-utils", "/usr/bin/xz"),
    ("zstd", "/usr/bin/zstd"),
    (
        "debian-archive-keyring",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    ),
    ("iputils-ping", "/usr/bin/ping"),
    ("iproute2", "/usr/sbin/ip"),
];

const USAGE: &str = "\
usage: cargo xtask vm-test [-- OPTIONS]

Boots stock Debian kernels under qemu with the host's / as a read-only root plus a tmpfs
overlay, and runs the VM areas of the integration tests inside as root, each in its guest:
  stock  Debian 12's 6.1 kernel (802.1Q, macvlan, veth as modules) on the host's QEMU
  igb    a kernel >= 6.14 (trixie-backports) on QEMU 10 (bookworm-backports, unpacked into
         target/vm, never installed) with an igb NIC (4 queues, zero-copy AF_XDP) `xmvnic0`
         and a virtio-net peer `xmvwire0` in network namespace `xmvwire`

options:
  --shell          a root shell in the VM instead of the tests (Ctrl-D powers off; Ctrl-A X quits qemu)
  --guest NAME     `stock` or `igb`: the guest for --shell or for every --test (default: the
                   guest each area is listed for; stock for anything else)
  --test NAME      run only this area of the integration binary (e.g. `fastpath`), or this
                   test binary of xmacvlan-tests (`no_alloc`) (repeatable; default: the VM areas)
  --timeout SECS   per area or test binary, inside the guest (default 300)
  --kvm            use KVM instead of TCG (only where KVM can boot a stock kernel)
  --append ARGS    extra kernel command-line arguments (e.g. `loglevel=7`)
";

struct Options {
    shell: bool,
    /// The guest for --shell and every --test; None: each area's own.
    guest: Option<GuestKind>,
    kvm: bool,
    append: String,
    tests: Vec<String>,
    timeout: Duration,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        shell: false,
        guest: None,
        kvm: false,
        append: String::new(),
        tests: Vec::new(),
        timeout: DEFAULT_BINARY_TIMEOUT,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {}
            "--shell" => o.shell = true,
            "--kvm" => o.kvm = true,
            "--guest" => {
                let name = it.next().context("--guest needs `stock` or `igb`")?;
                o.guest = Some(GuestKind::parse(name).with_context(|| {
                    format!("--guest `{name}`: the guests are `stock` and `igb`")
                })?);
            }
            "--append" => {
                let extra = it.next().context("--append needs kernel arguments")?;
                o.append = format!("{} {extra}", o.append).trim().to_string();
            }
            "--test" => o.tests.push(
                it.next()
                    .context("--test needs an area or test binary name")?
                    .clone(),
            ),
            "--timeout" => {
                let secs: u64 = it
                    .next()
                    .context("--timeout needs seconds")?
                    .parse()
                    .context("--timeout needs a whole number of seconds")?;
                o.timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("vm-test: unknown option `{other}`\n\n{USAGE}"),
        }
    }
    if o.tests.is_empty() {
        o.tests = VM_TESTS
            .iter()
            .chain(IGB_VM_TESTS)
            .filter(|t| o.guest.is_none_or(|g| g == default_guest(t)))
            .map(|s| s.to_string())
            .collect();
    }
    Ok(o)
}

/// The guest an area or binary runs in unless `--guest` says otherwise.
fn default_guest(name: &str) -> GuestKind {
    if IGB_VM_TESTS.contains(&name) {
        GuestKind::Igb
    } else {
        GuestKind::Stock
    }
}

/// `cargo xtask vm-test`: fails unless every area passed.
pub fn run(args: &[String]) -> Result<()> {
    let tallies = run_with(&parse(args)?)?;
    let broken: Vec<String> = tallies
        .iter()
        .filter(|t| !t.ok())
        .map(|t| {
            format!(
                "{}: {}",
                t.name,
                t.error.as_deref().unwrap_or("tests failed")
            )
        })
        .collect();
    if !broken.is_empty() {
        bail!("vm-test failed:\n  {}", broken.join("\n  "));
    }
    Ok(())
}

/// The VM part of `cargo xtask test`: every VM area's tally (an error only when the VM
/// could not be prepared).
pub fn run_for_suite() -> Result<Vec<Tally>> {
    run_with(&parse(&[])?)
}

fn run_with(opts: &Options) -> Result<Vec<Tally>> {
    let started = Instant::now();
    if !is_root() {
        bail!(
            "vm-test installs its system packages and fetches its kernels with apt: \
             run it as root (`sudo -E cargo xtask vm-test`)"
        );
    }
    crate::deps::ensure(false)?;
    let missing: Vec<&str> = VM_PACKAGES
        .iter()
        .filter(|(_, proof)| !Path::new(proof).exists())
        .map(|(p, _)| *p)
        .collect();
    crate::deps::install(&missing, false)?;

    let root = workspace_root();
    let vm_dir = root.join("target/vm");
    std::fs::create_dir_all(&vm_dir)?;
    remove_old_layout(&vm_dir);
    let binaries = build_tests(&opts.tests)?;
    let mut by_guest: BTreeMap<GuestKind, Vec<TestBinary>> = BTreeMap::new();
    for b in binaries {
        let kind = opts.guest.unwrap_or_else(|| default_guest(&b.name));
        by_guest.entry(kind).or_default().push(b);
    }
    if opts.shell && by_guest.is_empty() {
        by_guest.insert(opts.guest.unwrap_or(GuestKind::Stock), Vec::new());
    }
    let mut tallies = Vec::new();
    for (kind, binaries) in &by_guest {
        let prepared = Instant::now();
        match Machine::prepare(*kind, &vm_dir) {
            Ok(machine) => {
                println!(
                    "xtask: vm: {} guest ready in {:.1} s: kernel {} ({}), image {}",
                    kind.name(),
                    prepared.elapsed().as_secs_f64(),
                    machine.kernel.release,
                    machine.kernel.id,
                    machine.kernel.image.display()
                );
                tallies.extend(boot(&machine, &root, binaries, opts)?);
            }
            Err(e) => tallies.push(Tally {
                name: format!("vm ({} guest)", kind.name()),
                error: Some(format!("preparing the {} guest: {e:#}", kind.name())),
                seconds: prepared.elapsed().as_secs_f64(),
                ..Tally::default()
            }),
        }
    }
    println!(
        "xtask: vm: done in {:.1} s (including builds)",
        started.elapsed().as_secs_f64()
    );
    Ok(tallies)
}

/// Kernels cached by older versions of this harness straight in `target/vm/` (now under
/// `target/vm/GUEST/`).
fn remove_old_layout(vm_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(vm_dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with("linux-image-") {
            println!(
                "xtask: vm: removing {} (old cache layout)",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Boot `machine` once and run `binaries` in it (or a shell).
fn boot(
    machine: &Machine,
    root: &Path,
    binaries: &[TestBinary],
    opts: &Options,
) -> Result<Vec<Tally>> {
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let script_path = root.join(format!(
        "target/vm/guest-{}-{}.sh",
        machine.kind.name(),
        std::process::id()
    ));
    // The guest mounts fresh filesystems on /tmp and /run: the checkout and the binaries'
    // directories are bound back on top, so any checkout path works.
    let mut keep = vec![root.to_path_buf()];
    for dir in binaries.iter().filter_map(|b| b.path.parent()) {
        if !keep.iter().any(|k| dir.starts_with(k)) {
            keep.push(dir.to_path_buf());
        }
    }
    if let Some(p) = keep
        .iter()
        .find(|p| p.to_string_lossy().contains(char::is_whitespace))
    {
        bail!(
            "the guest finds its script and binaries through the kernel command line, which \
             splits at spaces: move the checkout (and CARGO_TARGET_DIR) to a path without \
             whitespace (now {})",
            p.display()
        );
    }
    let script = guest_script(root, &nonce, &machine.setup_script(), binaries, opts);
    std::fs::write(&script_path, script)
        .with_context(|| format!("writing {}", script_path.display()))?;
    let boot = qemu::Boot {
        machine,
        script: &script_path,
        nonce: &nonce,
        kvm: opts.kvm,
        append: &opts.append,
        keep: &keep,
    };
    let result = if opts.shell {
        qemu::shell(&boot).map(|()| Vec::new())
    } else {
        let deadline = BOOT_BUDGET + opts.timeout * binaries.len() as u32;
        qemu::run_tests(&boot, binaries, deadline)
    };
    let _ = std::fs::remove_file(&script_path);
    result
}

/// One run of a test binary built on the host: an area of the integration binary (its
/// executable and the area's tests, exactly) or a whole `[[test]]` binary (no tests named).
pub struct TestBinary {
    pub name: String,
    pub path: PathBuf,
    pub tests: Vec<String>,
}

/// `cargo test --no-run` for the test binaries of xmacvlan-tests (paths from cargo's JSON
/// messages), and one run per name: an area of the integration binary, or a binary.
fn build_tests(names: &[String]) -> Result<Vec<TestBinary>> {
    // The tests run the programs a user runs (`xmacvlan run`, `xmacvlan-bench generate`).
    crate::cargo::run(
        &mut crate::cargo::build_test_programs(),
        "cargo build (the programs the VM tests run)",
    )?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "-p",
        "xmacvlan-tests",
        "--tests",
    ]);
    println!(
        "xtask: vm: building the test binaries for: {}",
        names.join(" ")
    );
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the VM test binaries failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut built = BTreeMap::new();
    for line in text.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains("\"target\":{\"kind\":[\"test\"]")
        {
            continue;
        }
        if let (Some(target), Some(exe)) = (json_str(line, "\"target\":{", "name"), exe_of(line)) {
            built.insert(target, PathBuf::from(exe));
        }
    }
    let integration = built
        .get(INTEGRATION)
        .with_context(|| format!("cargo built no `{INTEGRATION}` test binary"))?;
    let areas = list_areas(integration)?;
    runs_of(names, &built, integration, &areas)
}

/// The run for each name: a binary of that name other than the integration binary itself, else
/// that area of the integration binary.
fn runs_of(
    names: &[String],
    built: &BTreeMap<String, PathBuf>,
    integration: &Path,
    areas: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<TestBinary>> {
    let mut runs = Vec::new();
    for n in names {
        let run = match (built.get(n), areas.get(n)) {
            (Some(path), _) if n != INTEGRATION => TestBinary {
                name: n.clone(),
                path: path.clone(),
                tests: Vec::new(),
            },
            (_, Some(tests)) if !n.is_empty() => TestBinary {
                name: n.clone(),
                path: integration.to_path_buf(),
                tests: tests.clone(),
            },
            _ => bail!(
                "no area `{n}` in the integration tests (a `mod {n};` in \
                 tests/integration/main.rs) and no test binary `{n}` in crate xmacvlan-tests: \
                 fix VM_TESTS in xtask/src/vm/mod.rs or the --test name"
            ),
        };
        runs.push(run);
    }
    Ok(runs)
}

/// The string value of `key` in the first JSON object that starts at `after` in `line`.
pub(crate) fn json_str(line: &str, after: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(after)? + after.len()..];
    let needle = format!("\"{key}\":\"");
    let rest = &rest[rest.find(&needle)? + needle.len()..];
    let value = &rest[..rest.find('"')?];
    (!value.contains('\\')).then(|| value.to_string())
}

pub(crate) fn exe_of(line: &str) -> Option<String> {
    let needle = "\"executable\":\"";
    let rest = &line[line.find(needle)? + needle.len()..];
    let value = &rest[..rest.find('"')?];
    (!value.contains('\\')).then(|| value.to_string())
}

/// Single-quote for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the guest runs after chroot (as /bin/sh, i.e. the host's dash): `setup` (the
/// guest's own), then every binary.
fn guest_script(
    root: &Path,
    nonce: &str,
    setup: &str,
    binaries: &[TestBinary],
    opts: &Options,
) -> String {
    let mut s = String::new();
    let term = std::env::var("TERM").unwrap_or_else(|_| "vt100".into());
    let _ = writeln!(s, "# generated by `cargo xtask vm-test`");
    let _ = writeln!(
        s,
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
         XMACVLAN_IN_VM=1 RUST_BACKTRACE=1 TERM={}",
        quote(&term)
    );
    let _ = writeln!(
        s,
        "cd {} || exit 126",
        quote(&root.join("tests").to_string_lossy())
    );
    s.push_str(setup);
    let _ = writeln!(s, "echo \"XMVM:{nonce}:kernel $(uname -r)\"");
    let _ = writeln!(
        s,
        "echo \"XMVM:{nonce}:modules $(cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' ')\""
    );
    if opts.shell {
        let _ = writeln!(
            s,
            "echo; echo \"xmacvlan VM: kernel $(uname -r), host / read-only + tmpfs overlay, \
             XMACVLAN_IN_VM=1, guest $XMACVLAN_VM_GUEST.\"; echo \"Test binaries, with the area to filter on (run with --include-ignored \
             --test-threads=1):\""
        );
        for b in binaries {
            let filter = if b.tests.is_empty() {
                String::new()
            } else {
                format!(" {}::", b.name)
            };
            let _ = writeln!(s, "echo \"  {}{filter}\"", b.path.display());
        }
        let _ = writeln!(
            s,
            "echo \"Ctrl-D or 'exit' powers the VM off; Ctrl-A X kills qemu.\"; echo"
        );
        let _ = writeln!(s, "setsid -c /bin/bash -i </dev/ttyS0 >/dev/ttyS0 2>&1");
        return s;
    }
    let secs = opts.timeout.as_secs();
    for b in binaries {
        let _ = writeln!(s, "echo \"==> vm-test: {} (timeout {secs} s)\"", b.name);
        let only: String = if b.tests.is_empty() {
            String::new()
        } else {
            exact(&b.tests)
                .iter()
                .map(|a| format!(" {}", quote(a)))
                .collect()
        };
        let _ = writeln!(
            s,
            "timeout -k 10 {secs} {} --include-ignored --test-threads=1 --nocapture{only}",
            quote(&b.path.to_string_lossy())
        );
        let _ = writeln!(s, "echo \"XMVM:{nonce}:result {} $?\"", b.name);
    }
    let _ = writeln!(s, "exit 0");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_executables_in_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#xmacvlan-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"vm_vlan","src_path":"/w/tests/vm_vlan.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{},"features":[],"filenames":["/w/target/debug/deps/vm_vlan-1234"],"executable":"/w/target/debug/deps/vm_vlan-1234","fresh":true}"#;
        assert_eq!(
            json_str(line, "\"target\":{", "name").as_deref(),
            Some("vm_vlan")
        );
        assert_eq!(
            exe_of(line).as_deref(),
            Some("/w/target/debug/deps/vm_vlan-1234")
        );
        assert_eq!(exe_of(r#"{"executable":null}"#), None);
    }

    #[test]
    fn guest_script_runs_every_binary_and_reports_it() {
        let opts = Options {
            shell: false,
            guest: None,
            kvm: false,
            append: String::new(),
            tests: vec!["vm_vlan".into()],
            timeout: Duration::from_secs(300),
        };
        let bins = [
            TestBinary {
                name: "vm_vlan".into(),
                path: PathBuf::from("/w/target/debug/deps/integration-1234"),
                tests: vec!["vm_vlan::a".into(), "vm_vlan::b".into()],
            },
            TestBinary {
                name: "no_alloc".into(),
                path: PathBuf::from("/w/target/debug/deps/no_alloc-1234"),
                tests: vec![],
            },
        ];
        let s = guest_script(Path::new("/w"), "n0", "export X=1\n", &bins, &opts);
        assert!(s.contains("export X=1\necho \"XMVM:n0:kernel"));
        assert!(s.contains("XMACVLAN_IN_VM=1"));
        assert!(s.contains(
            "timeout -k 10 300 '/w/target/debug/deps/integration-1234' --include-ignored \
             --test-threads=1 --nocapture '--exact' 'vm_vlan::a' 'vm_vlan::b'\n"
        ));
        assert!(s.contains(
            "timeout -k 10 300 '/w/target/debug/deps/no_alloc-1234' --include-ignored \
             --test-threads=1 --nocapture\n"
        ));
        assert!(s.contains("echo \"==> vm-test: vm_vlan (timeout 300 s)\""));
        assert!(s.contains("echo \"XMVM:n0:result vm_vlan $?\""));
        assert!(s.contains("echo \"XMVM:n0:result no_alloc $?\""));
        assert!(s.contains("XMVM:n0:kernel $(uname -r)"));
        assert_eq!(quote("it's"), r#"'it'\''s'"#);
    }

    #[test]
    fn names_run_an_area_or_a_binary() {
        let integration = PathBuf::from("/w/deps/integration-1");
        let built: BTreeMap<String, PathBuf> = [
            (INTEGRATION.to_string(), integration.clone()),
            ("no_alloc".to_string(), PathBuf::from("/w/deps/no_alloc-1")),
        ]
        .into();
        let areas =
            crate::test::areas_of("vm_fastpath::x: test\nfastpath::y: test\nfastpath::z: test\n");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let runs = runs_of(
            &names(&["fastpath", "no_alloc"]),
            &built,
            &integration,
            &areas,
        )
        .unwrap();
        assert_eq!(runs[0].path, integration);
        assert_eq!(runs[0].tests, ["fastpath::y", "fastpath::z"]);
        assert_eq!(runs[1].path, PathBuf::from("/w/deps/no_alloc-1"));
        assert!(runs[1].tests.is_empty(), "a whole binary");
        for bad in ["vlan", "integration", ""] {
            let err = runs_of(&names(&[bad]), &built, &integration, &areas)
                .err()
                .unwrap_or_else(|| panic!("`{bad}` is neither an area nor a binary"));
            assert!(err.to_string().contains("fix VM_TESTS"), "{err}");
        }
    }
}
