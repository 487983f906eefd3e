//! The `xmacvlan-cni` binary: a container runtime runs it with `CNI_*` variables and the
//! network configuration on stdin (see `xmacvlan::cni`).
use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    // One byte more than allowed, so an oversized config is refused rather than cut.
    let read = std::io::stdin()
        .take(xmacvlan::cni::config::MAX_CONFIG as u64 + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => xmacvlan::cni::run(std::env::vars().collect(), &stdin),
        Err(e) => xmacvlan::cni::failed(xmacvlan::cni::error::CniError::new(
            xmacvlan::cni::error::IO_FAILURE,
            format!("reading the network configuration from stdin: {e}"),
        )),
    };
    let mut out = std::io::stdout().lock();
    // DEL, CHECK, STATUS and GC print nothing on success.
    if !outcome.stdout.is_empty() {
        writeln!(out, "{}", outcome.stdout).ok();
    }
    out.flush().ok();
    std::process::exit(outcome.status);
}
