//! `cargo xtask vm-test`: the integration tests that need a full kernel (802.1Q) or a real NIC
//! driver (igb: native XDP, AF_XDP zero-copy, several queues, VLAN offload) run inside stock
//! Debian kernels under qemu. The host's `/` is the guest's root (read-only 9p plus a tmpfs
//! overlay), so the test binaries built here run there unchanged, as root.
//!
//! Layout: [`guest`] says what each of the two guests is made of; [`apt`] asks apt (the host's
//! or a private configuration) without changing the host's; [`kernel`] fetches and caches a
//! kernel ([`modules`] picks its modules, [`image`] extracts its vmlinux); [`emulator`]
//! unpacks QEMU 10 for the igb guest; [`initramfs`] builds the guest's PID 1 (`init.sh`);
//! [`binaries`] builds the test binaries and names each run, [`script`] writes what the
//! guest runs; [`qemu`] boots it, streams the console and decides pass/fail from the lines the guest prints
//! (never from qemu's exit code).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::cargo::{is_root, workspace_root};
use crate::test::Tally;
use binaries::build_tests;
pub(crate) use binaries::{TestBinary, exe_of, json_str};
use guest::{GuestKind, Machine};

mod apt;
mod binaries;
mod emulator;
mod guest;
mod image;
mod initramfs;
mod kernel;
mod modules;
mod qemu;
mod script;

/// Areas of the integration binary (modules of `tests/integration/main.rs`, crate
/// `xmacvlan-tests`) that run inside the stock guest (Debian 12's 6.1 kernel, veth pairs,
/// 802.1Q). To add one: add its name here. Its VM-only tests should be `#[ignore = "..."]` on
/// the host: the guest runs every area with `--include-ignored`, `--test-threads=1` and
/// `XMACVLAN_IN_VM=1`, one run of the binary per area. Each run costs ~1 s of startup plus
/// its tests at ~10x the host's CPU time: keep this list short.
pub(crate) const VM_TESTS: &[&str] = &["vm_vlan", "vm_fastpath", "control_vlan", "vm_dispatcher"];

/// Areas that run inside the igb guest (QEMU 10, a kernel >= 6.14, an igb NIC with 4 queues
/// and zero-copy AF_XDP, a virtio-net peer in namespace `xmvwire`; see [`guest`]). Its 4
/// vCPUs share the host's 2 cores under TCG: every second of TCG here costs the CI run more
/// than in the stock guest, so keep these areas smaller still.
pub(crate) const IGB_VM_TESTS: &[&str] = &["vm_nic", "vm_nic_daemon"];

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
    // The stock guest's dispatcher tests load xdp-filter beside xmacvlan (vm_dispatcher).
    ("xdp-tools", "/usr/sbin/xdp-filter"),
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
pub(crate) fn run(args: &[String]) -> Result<()> {
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
pub(crate) fn run_for_suite() -> Result<Vec<Tally>> {
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
            std::fs::remove_dir_all(e.path()).ok();
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
    let script = script::guest_script(
        root,
        &nonce,
        &machine.setup_script(),
        binaries,
        opts.shell,
        opts.timeout,
    );
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
    std::fs::remove_file(&script_path).ok();
    result
}
