//! `cargo xtask bench [--quick] [-- compare options]`: build in release mode, then compare the
//! XDP_DROP ceiling and the xdp, user and kernel demux modes in the namespace lab.
use anyhow::{Result, bail};

use crate::cargo::{build_release_programs, is_root, run as run_cmd, workspace_root};

pub(crate) fn run(args: &[String]) -> Result<()> {
    crate::deps::ensure(false)?;
    let (ours, program_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut compare_args: Vec<String> = Vec::new();
    for a in ours {
        match a.as_str() {
            "--quick" => compare_args.push(a.clone()),
            other => bail!(
                "bench: unknown option `{other}` (use --quick; pass the benchmark's own options \
                 after `--`, e.g. `cargo xtask bench -- --endpoints 1,16 --modes xdp,kernel`)"
            ),
        }
    }
    compare_args.extend(program_args.iter().cloned());
    // Before the build: a release build is wasted if the run cannot start.
    if !is_root() {
        bail!(
            "the benchmark builds namespaces and attaches XDP: rerun as root, or with `sudo -E env \"PATH=$PATH\" cargo xtask bench`"
        );
    }
    build_release_programs()?;
    let root = workspace_root();
    let mut cmd = std::process::Command::new(root.join("target/release/xmacvlan-bench"));
    cmd.arg("compare");
    // The default output directory is the workspace's, wherever this was started from.
    if !compare_args
        .iter()
        .any(|a| a == "--out" || a.starts_with("--out="))
    {
        cmd.arg("--out").arg(root.join("target/bench"));
    }
    cmd.args(&compare_args);
    run_cmd(&mut cmd, "the benchmark")
}
