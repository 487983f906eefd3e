//! `cargo xtask run`: build in release mode, then run the lab (default) or, with
//! `-- --iface IF --config FILE`, the dataplane on a real NIC.
use anyhow::{Result, bail};

use crate::cargo::{build_release_programs, is_root, run as run_cmd, workspace_root};

pub(crate) fn run(args: &[String]) -> Result<()> {
    crate::deps::ensure(false)?;
    let program_args: Vec<String> = match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None if args.is_empty() => Vec::new(),
        None => bail!("pass program options after `--`, e.g. `cargo xtask run -- --duration 3`"),
    };
    build_release_programs()?;
    if !is_root() {
        bail!(
            "the lab and the dataplane need root (namespaces, XDP, AF_XDP): rerun as root, or with `sudo -E env \"PATH=$PATH\" cargo xtask run`"
        );
    }
    let bin = workspace_root().join("target/release");
    let mut cmd = if program_args
        .iter()
        .any(|a| a == "--iface" || a.starts_with("--iface="))
    {
        let mut c = std::process::Command::new(bin.join("xmacvlan"));
        c.arg("run");
        c
    } else {
        let mut c = std::process::Command::new(bin.join("xmacvlan-bench"));
        c.arg("lab");
        c
    };
    cmd.args(&program_args);
    run_cmd(&mut cmd, "the lab run")
}
