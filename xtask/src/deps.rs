//! System packages: checked before every build, installed with apt when root, else the exact
//! command is printed.
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// (package, a file whose presence proves it is installed)
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("clang", "/usr/bin/clang"),
    ("llvm", "/usr/bin/llvm-strip"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
    ("libelf-dev", "/usr/include/libelf.h"),
    ("zlib1g-dev", "/usr/include/zlib.h"),
    ("libpcap-dev", "/usr/include/pcap/dlt.h"),
    ("pkg-config", "/usr/bin/pkg-config"),
    ("m4", "/usr/bin/m4"),
    ("make", "/usr/bin/make"),
    ("iproute2", "/usr/sbin/ip"),
    ("ethtool", "/usr/sbin/ethtool"),
];

/// What the integration tests use besides the build: ping for reachability checks, the
/// CNI reference plugins (`macvlan`, `host-local`, `tuning`) the control path and
/// xmacvlan-cni are compared against; a Docker engine (tests/integration/docker.rs) and
/// podman (tests/integration/cni_podman.rs), each with a busybox image; DPDK's testpmd with its
/// memif driver (a memif client the project did not write).
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iputils-ping", "/usr/bin/ping"),
    ("containernetworking-plugins", "/usr/lib/cni/macvlan"),
    ("docker.io", "/usr/sbin/dockerd"),
    ("podman", "/usr/bin/podman"),
    ("busybox-static", "/bin/busybox"),
    ("dpdk-dev", "/usr/bin/dpdk-testpmd"),
    (
        "librte-net-memif23",
        "/usr/lib/x86_64-linux-gnu/librte_net_memif.so.23",
    ),
    // The documented walkthroughs (tests/integration/walkthrough.rs): `curl` for the metrics page,
    // `nsenter` to run them inside their own network namespace.
    ("curl", "/usr/bin/curl"),
    ("util-linux", "/usr/bin/nsenter"),
];

pub(crate) fn missing() -> Vec<&'static str> {
    missing_of(BUILD_PACKAGES)
}

fn missing_of(packages: &[(&'static str, &str)]) -> Vec<&'static str> {
    packages
        .iter()
        .filter(|(_, proof)| !Path::new(proof).exists())
        .map(|(pkg, _)| *pkg)
        .collect()
}

/// Make sure the build's system packages are there: install them as root on Debian/Ubuntu,
/// otherwise fail with the command to run. `verbose` reports when nothing is missing too.
pub(crate) fn ensure(verbose: bool) -> Result<()> {
    install(&missing(), verbose)
}

/// The build's packages and the tests' (see [`TEST_PACKAGES`]).
pub(crate) fn ensure_for_tests() -> Result<()> {
    let mut all = missing();
    all.extend(missing_of(TEST_PACKAGES));
    install(&all, false)
}

/// Install `packages` with apt (root, Debian/Ubuntu) or fail naming the command to run.
pub(crate) fn install(packages: &[&str], verbose: bool) -> Result<()> {
    if packages.is_empty() {
        if verbose {
            println!("xtask: all system packages present");
        }
        return Ok(());
    }
    let list = packages.join(" ");
    let command = format!("apt-get update && apt-get install -y --no-install-recommends {list}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing system packages: {list}\ninstall them with:\n  sudo sh -c '{command}'");
    }
    println!("xtask: installing missing system packages: {list}");
    let status = Command::new("sh")
        .args(["-c", &command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`{command}` failed ({status})");
    }
    Ok(())
}
