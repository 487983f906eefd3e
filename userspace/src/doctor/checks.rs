//! The checks, as pure functions over gathered facts, so they are tested without root.
use std::collections::HashMap;

use super::facts::{DaemonFacts, InterfaceFacts, SystemFacts};
use super::{Finding, Severity};
use crate::nic::VlanTags;
use crate::sys::ethtool::Feature;
use crate::sys::{CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN};

pub(super) fn ok(check: &'static str, what: String) -> Finding {
    Finding {
        check,
        subject: None,
        severity: Severity::Ok,
        what,
        why: None,
        fix: None,
    }
}

pub(super) fn problem(
    check: &'static str,
    severity: Severity,
    what: String,
    why: &str,
    fix: Option<String>,
) -> Finding {
    Finding {
        check,
        subject: None,
        severity,
        what,
        why: Some(why.to_string()),
        fix,
    }
}

/// Every system-wide check.
pub fn check_system(f: &SystemFacts) -> Vec<Finding> {
    vec![
        check_privileges(f.euid, f.cap_eff),
        check_af_xdp(f.af_xdp),
        check_bpf_jit(f.bpf_jit_enable.as_deref(), f.kernel_config.as_ref()),
        check_vlan(f.vlan_loaded, f.kernel_config.as_ref()),
        check_macvlan(f.macvlan_loaded, f.kernel_config.as_ref()),
        check_bpffs(&f.mounts),
        super::xdp::check_dispatcher_support(&f.freplace),
    ]
}

/// Root, or the capabilities the daemon needs.
pub fn check_privileges(euid: u32, cap_eff: Option<u64>) -> Finding {
    let caps = cap_eff.unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    let who = if euid == 0 {
        "root".to_string()
    } else {
        format!("uid {euid}")
    };
    if missing.is_empty() {
        return ok(
            "privileges",
            format!("running as {who} with CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF"),
        );
    }
    let what = if euid == 0 {
        format!(
            "running as root but without {} (a container or systemd unit dropped them)",
            missing.join(", ")
        )
    } else {
        format!("running as {who} without {}", missing.join(", "))
    };
    problem(
        "privileges",
        Severity::Error,
        what,
        "attaching XDP, opening AF_XDP sockets and creating macvlan devices need CAP_NET_ADMIN, \
         CAP_NET_RAW and CAP_BPF (or CAP_SYS_ADMIN); several checks below could not be made either",
        Some(
            "run as root (sudo xmacvlan ...), or grant them: \
             setcap cap_net_admin,cap_net_raw,cap_bpf,cap_sys_admin+ep \"$(command -v xmacvlan)\"; \
             under systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_SYS_ADMIN"
                .into(),
        ),
    )
}

/// The result of opening an AF_XDP socket: Ok, or the errno.
pub fn check_af_xdp(probe: Result<(), i32>) -> Finding {
    match probe {
        Ok(()) => ok("af-xdp", "AF_XDP sockets are available".into()),
        Err(libc::EAFNOSUPPORT) => problem(
            "af-xdp",
            Severity::Error,
            "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS is not set)".into(),
            "the fast path delivers frames through AF_XDP sockets; without them only demux-mode \
             \"kernel\" (plain macvlan) works",
            Some(
                "boot a kernel built with CONFIG_XDP_SOCKETS=y (distribution kernels have it), \
                 or set \"demux-mode\": \"kernel\" in /etc/xmacvlan/daemon.json"
                    .into(),
            ),
        ),
        Err(libc::EPERM | libc::EACCES) => problem(
            "af-xdp",
            Severity::Warn,
            "could not test for AF_XDP sockets: permission denied (needs CAP_NET_RAW)".into(),
            "without the test it is unknown whether the fast path can run here",
            Some("run the doctor as root: sudo xmacvlan doctor".into()),
        ),
        Err(errno) => problem(
            "af-xdp",
            Severity::Warn,
            format!(
                "opening an AF_XDP socket failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            "the fast path delivers frames through AF_XDP sockets",
            None,
        ),
    }
}

/// `/proc/sys/net/core/bpf_jit_enable` (None when the file is missing: it only exists in the
/// host's network namespace) and the kernel config, for when the file cannot be read.
pub fn check_bpf_jit(value: Option<&str>, config: Option<&HashMap<String, String>>) -> Finding {
    let fix = Some("sysctl -w net.core.bpf_jit_enable=1".to_string());
    let slow = "interpreted XDP costs several times more CPU per frame";
    match value.map(str::trim) {
        Some("1") => ok("bpf-jit", "the BPF JIT compiler is on".into()),
        Some("2") => problem(
            "bpf-jit",
            Severity::Warn,
            "the BPF JIT is in debug mode (bpf_jit_enable=2)".into(),
            "every compiled program is dumped to the kernel log, which is slow and noisy",
            fix,
        ),
        Some("0") => problem(
            "bpf-jit",
            Severity::Warn,
            "the BPF JIT is off: the classifier runs in the interpreter".into(),
            slow,
            fix,
        ),
        Some(other) => problem(
            "bpf-jit",
            Severity::Warn,
            format!("unexpected bpf_jit_enable value \"{other}\""),
            "the classifier should run JIT-compiled",
            fix,
        ),
        None => match (
            kconfig(config, "CONFIG_BPF_JIT_ALWAYS_ON"),
            kconfig(config, "CONFIG_BPF_JIT"),
        ) {
            (Some("y"), _) => ok(
                "bpf-jit",
                "the BPF JIT is always on (CONFIG_BPF_JIT_ALWAYS_ON)".into(),
            ),
            (_, Some("y")) => problem(
                "bpf-jit",
                Severity::Warn,
                "the kernel has a BPF JIT but net.core.bpf_jit_enable cannot be read here \
                 (it is only visible in the host's network namespace)"
                    .into(),
                slow,
                Some("on the host: sysctl net.core.bpf_jit_enable (1 = on)".into()),
            ),
            _ if config.is_some() => problem(
                "bpf-jit",
                Severity::Warn,
                "this kernel has no BPF JIT (CONFIG_BPF_JIT is not set)".into(),
                slow,
                Some("boot a kernel built with CONFIG_BPF_JIT=y".into()),
            ),
            _ => problem(
                "bpf-jit",
                Severity::Warn,
                "could not tell whether the BPF JIT is on (no net.core.bpf_jit_enable here, \
                 no kernel config found)"
                    .into(),
                slow,
                Some("on the host: sysctl net.core.bpf_jit_enable (1 = on)".into()),
            ),
        },
    }
}

/// A kernel build option: `Some("y")`, `Some("m")`, or None when unset/unknown.
fn kconfig<'a>(config: Option<&'a HashMap<String, String>>, name: &str) -> Option<&'a str> {
    config.and_then(|c| c.get(name)).map(String::as_str)
}

/// 802.1Q: loaded (or built in), available as a module, or missing.
pub fn check_vlan(loaded: bool, config: Option<&HashMap<String, String>>) -> Finding {
    if loaded {
        return ok("802.1q", "802.1Q VLAN support is present".into());
    }
    match kconfig(config, "CONFIG_VLAN_8021Q") {
        Some("y") => ok("802.1q", "802.1Q VLAN support is built in".into()),
        Some("m") => ok(
            "802.1q",
            "802.1Q VLAN support is a module (8021q), loaded on first use".into(),
        ),
        _ if config.is_some() => problem(
            "802.1q",
            Severity::Warn,
            "this kernel has no 802.1Q VLAN support (CONFIG_VLAN_8021Q is not set)".into(),
            "networks on a VLAN parent such as eth0.100 cannot be created, and the kernel cannot \
             answer ARP for tagged endpoints; untagged parents still work",
            Some(
                "boot a kernel with CONFIG_VLAN_8021Q=y or =m (distribution kernels have it), \
                 then `modprobe 8021q`"
                    .into(),
            ),
        ),
        _ => problem(
            "802.1q",
            Severity::Warn,
            "could not tell whether this kernel has 802.1Q VLAN support \
             (module 8021q not loaded, no kernel config found)"
                .into(),
            "networks on a VLAN parent such as eth0.100 need it",
            Some("modprobe 8021q".into()),
        ),
    }
}

/// macvlan: loaded, configured, or missing.
pub fn check_macvlan(loaded: bool, config: Option<&HashMap<String, String>>) -> Finding {
    if loaded {
        return ok("macvlan", "macvlan support is present".into());
    }
    match kconfig(config, "CONFIG_MACVLAN") {
        Some("y") => ok("macvlan", "macvlan support is built in".into()),
        Some("m") => ok(
            "macvlan",
            "macvlan support is a module, loaded on first use".into(),
        ),
        _ if config.is_some() => problem(
            "macvlan",
            Severity::Error,
            "this kernel has no macvlan support (CONFIG_MACVLAN is not set)".into(),
            "every endpoint is a macvlan device; without it no endpoint can be created",
            Some("boot a kernel with CONFIG_MACVLAN=y or =m".into()),
        ),
        _ => problem(
            "macvlan",
            Severity::Warn,
            "could not tell whether this kernel has macvlan support \
             (module not loaded, no kernel config found)"
                .into(),
            "every endpoint is a macvlan device",
            Some("modprobe macvlan".into()),
        ),
    }
}

/// bpffs at /sys/fs/bpf, from the text of /proc/mounts.
pub fn check_bpffs(proc_mounts: &str) -> Finding {
    let mounted = proc_mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        target == Some("/sys/fs/bpf") && fstype == Some("bpf")
    });
    if mounted {
        return ok("bpffs", "bpffs is mounted at /sys/fs/bpf".into());
    }
    problem(
        "bpffs",
        Severity::Warn,
        "bpffs is not mounted at /sys/fs/bpf".into(),
        "the daemon pins its classifier there to keep it attached across restarts; it mounts \
         one when it starts, but one mounted in a private mount namespace (systemd's \
         PrivateMounts=, `ip netns exec`) goes away with the daemon, and its classifier with it",
        Some("mount -t bpf bpf /sys/fs/bpf".into()),
    )
}

/// The daemon's configuration file: valid, absent (defaults), or refused with the reason.
/// `daemon`: the pid of the running daemon `path` was taken from (its `--config`, or the
/// default file it reads).
pub fn check_config(
    path: &std::path::Path,
    exists: bool,
    loaded: &Result<crate::config::DaemonConfig, crate::config::ConfigError>,
    daemon: Option<u32>,
) -> Finding {
    let shown = path.display();
    let whose = match daemon {
        Some(pid) => format!("the running daemon (pid {pid}) reads it"),
        None => "no daemon is running".to_string(),
    };
    match loaded {
        Ok(_) if exists => ok("config", format!("{shown} is valid ({whose})")),
        Ok(_) => ok(
            "config",
            match daemon {
                Some(pid) => format!(
                    "no {shown}: the running daemon (pid {pid}) runs with the defaults and its \
                     command-line flags"
                ),
                None => format!(
                    "no {shown}: a daemon started without --config runs with the defaults \
                     (no daemon is running)"
                ),
            },
        ),
        Err(e) => problem(
            "config",
            Severity::Error,
            e.to_string(),
            "the daemon refuses to start with this file, and a reload (SIGHUP) keeps the old settings",
            Some(format!(
                "edit {shown} as the message says (every key and its values: docs/operations.md, \
                 sample: packaging/daemon.json)"
            )),
        ),
    }
}

/// Whether a daemon is running, and leftovers of one that is not.
pub fn check_daemon_state(d: &DaemonFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let pid_file = d.pid_file.display();
    match (&d.pid_file_content, d.pid) {
        (None, _) => {}
        (Some(text), None) => out.push(problem(
            "daemon-state",
            Severity::Warn,
            format!(
                "pid file {pid_file} does not hold a pid (\"{}\")",
                text.trim()
            ),
            "a damaged pid file is left over from a crash or written by something else",
            Some(format!("rm {pid_file}")),
        )),
        (Some(_), Some(pid)) => match d.pid_comm.as_deref() {
            Some("xmacvlan") => out.push(ok(
                "daemon-state",
                format!("the daemon is running (pid {pid})"),
            )),
            Some(other) => out.push(problem(
                "daemon-state",
                Severity::Warn,
                format!("pid file {pid_file} names pid {pid}, which is `{other}`, not xmacvlan"),
                "the daemon that wrote it is gone (crashed or killed) and its pid was reused; \
                 XDP programs and devices it created may be left behind",
                Some(format!(
                    "rm {pid_file}; then check each parent NIC: xmacvlan doctor --iface IF"
                )),
            )),
            None => out.push(problem(
                "daemon-state",
                Severity::Warn,
                format!("stale pid file {pid_file}: daemon pid {pid} is not running"),
                "the daemon crashed or was killed without cleaning up; XDP programs and \
                 devices it created may be left behind",
                Some(format!(
                    "rm {pid_file}; then check each parent NIC: xmacvlan doctor --iface IF"
                )),
            )),
        },
    }
    let socket = d.socket.display();
    match d.socket_connect {
        None => {}
        Some(Ok(())) => out.push(ok(
            "daemon-state",
            format!("the daemon answers on {socket}"),
        )),
        Some(Err(errno)) if errno == libc::ECONNREFUSED => out.push(problem(
            "daemon-state",
            Severity::Warn,
            format!("stale control socket {socket}: nothing listens on it"),
            "a daemon that crashed left it behind; a new daemon and the CLI may trip over it",
            Some(format!("rm {socket}")),
        )),
        Some(Err(errno)) => out.push(problem(
            "daemon-state",
            Severity::Warn,
            format!(
                "cannot connect to the control socket {socket}: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            "the CLI talks to the daemon through it",
            Some("run the doctor as root: sudo xmacvlan doctor".into()),
        )),
    }
    if out.is_empty() {
        out.push(ok(
            "daemon-state",
            format!("no daemon running and nothing left behind ({pid_file}, {socket} absent)"),
        ));
    }
    out
}

/// Every check of one interface. `daemon_running` tells whether an attached xmacvlan
/// program belongs to a live daemon.
/// The checks of one interface; `opts`: how the daemon's configuration places the classifier
/// on it (alone, or in libxdp's dispatcher).
pub fn check_interface(
    f: &InterfaceFacts,
    daemon_running: bool,
    opts: &crate::xdp::AttachOptions,
) -> Vec<Finding> {
    let name = &f.name;
    let mut out = Vec::new();
    let Some(link) = &f.link else {
        out.push(problem(
            "exists",
            Severity::Error,
            format!("no interface named {name} in this network namespace"),
            "xmacvlan attaches to the parent NIC by name",
            Some("list the interfaces with `ip -br link` and pass the right one".into()),
        ));
        return tag(out, name);
    };
    out.push(ok(
        "exists",
        format!(
            "{name} exists (index {}, {} receive queue{})",
            link.index,
            link.rx_queues,
            if link.rx_queues == 1 { "" } else { "s" }
        ),
    ));
    out.push(if link.up {
        ok("link-up", format!("{name} is up"))
    } else {
        problem(
            "link-up",
            Severity::Error,
            format!("{name} is down"),
            "a down interface receives nothing, so no frame reaches XDP",
            Some(format!("ip link set {name} up")),
        )
    });
    out.extend(super::xdp::check_driver(name, link));
    let kind = link.kind.as_deref().or(link.driver.as_deref());
    let tag_metadata = link
        .xdp_features
        .as_ref()
        .ok()
        .and_then(|f| *f)
        .is_some_and(|f| f.vlan_tag_metadata());
    out.push(check_rx_vlan_offload(
        name,
        kind,
        &link.ethtool_features,
        tag_metadata,
    ));
    out.push(if kind == Some("veth") {
        ok(
            "promiscuous",
            format!("{name} is a veth: it has no MAC filter, frames for every MAC reach XDP"),
        )
    } else {
        check_promiscuous(name, link.promiscuous)
    });
    out.extend(super::xdp::check_xdp_programs(
        name,
        link,
        daemon_running,
        opts,
    ));
    tag(out, name)
}

fn tag(mut findings: Vec<Finding>, name: &str) -> Vec<Finding> {
    for f in &mut findings {
        f.subject = Some(name.to_string());
    }
    findings
}

/// Where tagged frames' 802.1Q tags are when XDP sees them, and what xmacvlan does about it
/// ([`crate::nic::vlan_strategy`], from `ethtool -k` text and the driver's name `kind`);
/// `tag_metadata`: the kernel says the driver hands a stripped tag to XDP programs.
pub fn check_rx_vlan_offload(
    name: &str,
    kind: Option<&str>,
    ethtool_k: &Result<String, String>,
    tag_metadata: bool,
) -> Finding {
    let text = match ethtool_k {
        Ok(text) => text,
        Err(reason) if crate::nic::offload_can_strip_tags(kind) => {
            return problem(
                "rx-vlan-offload",
                Severity::Warn,
                format!("could not read the offloads of {name}: {reason}"),
                "a NIC that strips VLAN tags hides them from XDP, so tagged endpoints never match",
                Some(format!(
                    "apt-get install -y ethtool, then check `ethtool -k {name} | grep rx-vlan-offload`"
                )),
            );
        }
        Err(_) => "",
    };
    let offload = crate::nic::parse_rx_vlan_offload(text).map(|active| Feature {
        active,
        changeable: !text
            .lines()
            .any(|l| l.trim().starts_with("rx-vlan-offload:") && l.contains("[fixed]")),
    });
    let strategy = crate::nic::vlan::decide(name, kind, offload);
    let why = "the classifier keys on the 802.1Q tag in the frame; a NIC that strips it makes \
               frames for tagged endpoints miss the fast path (untagged endpoints are not \
               affected)";
    match strategy.tags {
        VlanTags::Stripped => problem(
            "rx-vlan-offload",
            Severity::Warn,
            strategy.why,
            why,
            Some(format!(
                "the driver does not let it be turned off: use untagged parents on {name}, or another NIC"
            )),
        ),
        _ if tag_metadata => ok(
            "rx-vlan-offload",
            format!(
                "{}; the driver also hands a stripped tag to XDP \
                 (bpf_xdp_metadata_rx_vlan_tag), which xmacvlan does not use",
                strategy.why
            ),
        ),
        _ => ok("rx-vlan-offload", strategy.why),
    }
}

/// Whether frames for MACs the NIC does not own reach XDP.
pub fn check_promiscuous(name: &str, promiscuous: bool) -> Finding {
    if promiscuous {
        return ok(
            "promiscuous",
            format!("{name} is promiscuous: frames for every MAC reach XDP"),
        );
    }
    ok(
        "promiscuous",
        format!(
            "{name} is not promiscuous: it drops frames for MACs it does not own, and VLAN ids \
             nothing registered when rx-vlan-filter is on, before XDP; xmacvlan adds each \
             endpoint's MAC to its unicast filter and registers each VLAN id while it serves them \
             (see them with `bridge fdb show dev {name}` and `ip -d link show`)"
        ),
    )
}
