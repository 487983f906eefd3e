//! Helpers shared by the integration tests.
pub mod accounting;
pub mod app;
pub mod bare_lab;
pub mod capture;
pub mod cni_lab;
pub mod daemon_lab;
pub mod docker_lab;
pub mod dockerd;
pub mod exact;
pub mod fast_path;
pub mod mem_port;
pub mod nic_guest;
pub mod pace;
pub mod raw_memif;
pub mod resources;
pub mod rng;
pub mod testpmd;
pub mod udhcpd;
use xmacvlan::dataplane::DataplaneConfig;
use xmacvlan::modes::{BindMode, Demux, XdpMode};
use xmacvlan::xsk::QueueConfig;

/// Integration tests create namespaces and attach XDP: fail clearly without root.
pub fn require_root() {
    assert!(
        xmacvlan::sys::is_root(),
        "integration tests need root (namespaces, XDP, AF_XDP): run `sudo -E cargo xtask test`"
    );
}

/// A new namespace named `prefix` and the pid, with a veth pair `nic0`/`peer0` in it, both
/// up: a NIC of the tests' own (removed with the namespace).
pub fn veth_namespace(prefix: &str) -> xmacvlan::netns::NetnsGuard {
    require_root();
    let ns =
        xmacvlan::netns::NetnsGuard::create(&format!("{prefix}{}", std::process::id())).unwrap();
    ns.run(|| {
        let nl = xmacvlan::netlink::Netlink::new()?;
        let nic = nl.add_veth("nic0", "peer0", 1)?;
        nl.set_up(nic)?;
        nl.set_up(nl.require_link("peer0")?.index)?;
        Ok(())
    })
    .unwrap();
    ns
}

/// The dataplane settings the tests use (interface filled in by the lab).
pub fn dataplane_config(demux: Demux, queues: u32) -> DataplaneConfig {
    DataplaneConfig {
        queues,
        demux,
        xdp_mode: XdpMode::Native,
        queue: QueueConfig {
            bind: BindMode::Copy,
            ..QueueConfig::default()
        },
        ..DataplaneConfig::default()
    }
}

/// The `xmacvlan` binary the CLI tests run: `XMACVLAN_BIN`, else the one built beside the
/// test binary (`cargo xtask test` builds it first; by hand: `cargo build -p xmacvlan`).
pub fn xmacvlan_bin() -> std::path::PathBuf {
    let path = std::env::var_os("XMACVLAN_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/<test> -> target/<profile>/xmacvlan
            exe.parent()
                .and_then(|d| d.parent())
                .expect("target dir")
                .join("xmacvlan")
        });
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p xmacvlan` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Another binary of the `xmacvlan` package (`xmacvlan-sink`, `xmacvlan-reflect`), beside
/// [`xmacvlan_bin`] (`cargo xtask test` builds them all: `cargo build -p xmacvlan --bins`).
pub fn sibling_bin(name: &str) -> std::path::PathBuf {
    let path = xmacvlan_bin().with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p xmacvlan --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Run `xmacvlan --data-root ROOT ARGS…` in-process inside `ns`, as a user would type it;
/// its stdout or error. The control socket is `ROOT/ctl.sock`, where no daemon listens: a
/// test never reaches a daemon of the machine.
pub fn cli_in(
    ns: &xmacvlan::netns::NetnsGuard,
    root: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let root_arg = root.display().to_string();
    let socket = root.join("ctl.sock").display().to_string();
    let argv: Vec<&str> = [
        "xmacvlan",
        "--data-root",
        &root_arg,
        "--control-socket",
        &socket,
    ]
    .into_iter()
    .chain(args.iter().copied())
    .collect();
    ns.run(|| {
        let mut out = Vec::new();
        xmacvlan::cli::control::execute_args(&argv, &mut out)?;
        Ok(String::from_utf8(out)?)
    })
}

/// Namespaces whose name starts with `prefix` (a lab's prefix: none must outlive the lab).
pub fn namespaces_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir(xmacvlan::netns::NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `done()` or `limit`; returns whether it got done.
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    done()
}
