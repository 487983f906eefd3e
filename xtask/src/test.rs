//! `cargo xtask test`: the whole suite. Lints, unit tests, the namespace integration tests
//! (root), then the VM tests with a stock Debian kernel (802.1Q).
use anyhow::{Result, bail};

use crate::cargo::{cargo, is_root, run};

pub fn run_all(args: &[String]) -> Result<()> {
    let skip_vm = args.iter().any(|a| a == "--no-vm");
    crate::deps::ensure_for_tests()?;
    run(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    run(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy",
    )?;
    if !is_root() {
        bail!(
            "the integration tests create network namespaces and attach XDP: run as root (`sudo -E cargo xtask test`)"
        );
    }
    // The daemon and CLI tests run the real `xmacvlan` binaries (the CLI, xmacvlan-sink,
    // xmacvlan-reflect), which `cargo test` builds only for the package's own tests.
    run(
        cargo().args(["build", "-p", "xmacvlan", "--bins"]),
        "cargo build -p xmacvlan",
    )?;
    // Host tests: unit tests and the namespace integration tests. Two threads: each test
    // builds its own namespaces, and this machine has two cores.
    run(
        cargo().args(["test", "--workspace", "--", "--test-threads=2"]),
        "cargo test",
    )?;
    if skip_vm {
        println!("xtask: --no-vm: skipping the VM tests");
        return Ok(());
    }
    crate::vm::run(&[])
}
