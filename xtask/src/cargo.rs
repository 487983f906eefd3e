//! Running cargo and the built binaries.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Run a command, streaming its output; fail with `what` if it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// `cargo build` of the programs the integration tests run as a user would (`xmacvlan`,
/// `xmacvlan-cni`, `xmacvlan-sink`, `xmacvlan-reflect`, `xmacvlan-bench`), which `cargo test`
/// builds only for their own package's tests.
pub(crate) fn build_test_programs() -> Command {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "xmacvlan",
        "--bins",
        "-p",
        "xmacvlan-bench",
        "--bin",
        "xmacvlan-bench",
    ]);
    cmd
}

/// `cargo build --release` of the programs the lab and the benchmark run: `xmacvlan-bench`
/// and xmacvlan's binaries (the sink and reflector on the lab's memif ports among them).
pub(crate) fn build_release_programs() -> Result<()> {
    run(
        cargo().args([
            "build",
            "--release",
            "-p",
            "xmacvlan",
            "-p",
            "xmacvlan-bench",
        ]),
        "cargo build --release",
    )
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}
