//! Gathering what the checks look at: files under /proc and /sys, one probe socket, netlink
//! and ethtool. Nothing here decides anything.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::netlink::Netlink;

/// System-wide facts.
#[derive(Debug, Clone)]
pub struct SystemFacts {
    pub euid: u32,
    /// Effective capability mask (CapEff in /proc/self/status).
    pub cap_eff: Option<u64>,
    /// Opening an AF_XDP socket: Ok, or the errno.
    pub af_xdp: Result<(), i32>,
    /// Content of /proc/sys/net/core/bpf_jit_enable.
    pub bpf_jit_enable: Option<String>,
    pub kernel_release: String,
    /// `CONFIG_*` options of the running kernel, if its config could be found.
    pub kernel_config: Option<HashMap<String, String>>,
    /// Where the kernel config came from.
    pub kernel_config_source: Option<String>,
    /// /proc/net/vlan or /sys/module/8021q exists.
    pub vlan_loaded: bool,
    /// /sys/module/macvlan exists.
    pub macvlan_loaded: bool,
    /// Text of /proc/mounts.
    pub mounts: String,
    /// Loading a freplace program (what libxdp's dispatcher is made of): Ok, or why not.
    pub freplace: Result<(), String>,
}

/// Facts about a daemon that runs or ran.
#[derive(Debug, Clone, Default)]
pub struct DaemonFacts {
    pub pid_file: PathBuf,
    /// None = no pid file.
    pub pid_file_content: Option<String>,
    pub pid: Option<i32>,
    /// `comm` of that pid, None when no such process.
    pub pid_comm: Option<String>,
    pub socket: PathBuf,
    /// None = no socket file; else the result of connecting (errno on failure).
    pub socket_connect: Option<Result<(), i32>>,
}

impl DaemonFacts {
    /// Whether a live xmacvlan daemon owns the pid file or answers on the socket.
    pub fn daemon_running(&self) -> bool {
        self.pid_comm.as_deref() == Some("xmacvlan") || self.socket_connect == Some(Ok(()))
    }
}

/// Facts about one interface; `link` is None when it does not exist.
#[derive(Debug, Clone)]
pub struct InterfaceFacts {
    pub name: String,
    pub link: Option<LinkFacts>,
}

#[derive(Debug, Clone)]
pub struct LinkFacts {
    pub index: u32,
    pub kind: Option<String>,
    pub up: bool,
    pub promiscuous: bool,
    pub mtu: u32,
    pub rx_queues: u32,
    pub xdp_prog_id: Option<u32>,
    /// Name of the attached program, when it could be looked up (needs CAP_BPF).
    pub xdp_prog_name: Option<String>,
    /// What the interface runs as libxdp sees it (a dispatcher with its chain), or why
    /// libxdp could not read it.
    pub occupant: Result<crate::xdp::Occupant, String>,
    /// Live xmacvlan processes (not this one) holding xmacvlan's program on the interface
    /// (the attached one, or in a dispatcher xmacvlan's program of the chain) open.
    pub xdp_prog_holders: Vec<u32>,
    pub driver: Option<String>,
    /// `ethtool -k IF` output, or why it is missing.
    pub ethtool_features: Result<String, String>,
    /// What the kernel reports the device can do for XDP (None: a kernel before 6.3), or why
    /// it could not be asked.
    pub xdp_features: Result<Option<crate::netlink::XdpFeatures>, String>,
    /// xmacvlan's classifier pinned for this interface (kept attached between daemons).
    pub pinned: Option<PinnedFacts>,
}

#[derive(Debug, Clone)]
pub struct PinnedFacts {
    pub dir: PathBuf,
    pub program_id: u32,
    /// Endpoints it still claims, keys it still knows.
    pub claims: u32,
    pub keys: u32,
}

/// The classifier pinned for interface `name`, if any (None too when it cannot be read).
pub fn pinned_facts(name: &str) -> Option<PinnedFacts> {
    let pins = crate::xdp::PinDir::for_interface(name);
    let classifier = crate::xdp::Classifier::open_pinned(&pins).ok()??;
    let (claims, keys) = classifier.state_counts().ok()?;
    Some(PinnedFacts {
        dir: pins.path().to_path_buf(),
        program_id: classifier.program_id().ok()?,
        claims,
        keys,
    })
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `CapEff:` from the text of /proc/self/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// `CONFIG_X=value` lines of a kernel config (comments and unset options skipped).
pub fn parse_kernel_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The running kernel's config: /proc/config.gz (through gzip), else /boot/config-RELEASE.
fn kernel_config(release: &str) -> Option<(HashMap<String, String>, String)> {
    if Path::new("/proc/config.gz").exists()
        && let Ok(out) = Command::new("gzip")
            .args(["-dc", "/proc/config.gz"])
            .output()
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        return Some((parse_kernel_config(&text), "/proc/config.gz".into()));
    }
    let boot = format!("/boot/config-{release}");
    read(&boot).map(|text| (parse_kernel_config(&text), boot))
}

pub fn system_facts() -> SystemFacts {
    let status = read("/proc/self/status").unwrap_or_default();
    let kernel_release = read("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let config = kernel_config(&kernel_release);
    SystemFacts {
        euid: status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
            .unwrap_or(u32::MAX),
        cap_eff: parse_cap_eff(&status),
        af_xdp: crate::sys::probe_af_xdp().map_err(|e| e.raw_os_error().unwrap_or(0)),
        bpf_jit_enable: read("/proc/sys/net/core/bpf_jit_enable"),
        kernel_config_source: config.as_ref().map(|(_, s)| s.clone()),
        kernel_config: config.map(|(c, _)| c),
        kernel_release,
        vlan_loaded: Path::new("/proc/net/vlan").exists()
            || Path::new("/sys/module/8021q").exists(),
        macvlan_loaded: Path::new("/sys/module/macvlan").exists(),
        mounts: read("/proc/mounts").unwrap_or_default(),
        freplace: crate::xdp::probe_freplace().map_err(|e| e.to_string()),
    }
}

pub fn daemon_facts(pid_file: &Path, socket: &Path) -> DaemonFacts {
    let pid_file_content = std::fs::read_to_string(pid_file).ok();
    let pid = pid_file_content
        .as_deref()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 0);
    let pid_comm = pid.and_then(|p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .ok()
            .map(|c| c.trim().to_string())
    });
    let socket_connect = socket.exists().then(|| {
        std::os::unix::net::UnixStream::connect(socket)
            .map(drop)
            .map_err(|e| e.raw_os_error().unwrap_or(0))
    });
    DaemonFacts {
        pid_file: pid_file.to_path_buf(),
        pid_file_content,
        pid,
        pid_comm,
        socket: socket.to_path_buf(),
        socket_connect,
    }
}

/// `ethtool -k IF`, or why it could not be run.
fn ethtool(args: &[&str]) -> Result<String, String> {
    match Command::new("ethtool").args(args).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("the ethtool program is not installed".into())
        }
        Err(e) => Err(format!("running ethtool: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "`ethtool {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// `driver: NAME` from `ethtool -i` output.
pub fn parse_ethtool_driver(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("driver:"))
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
}

/// The driver of link `name`: the sysfs driver link (only when /sys shows this namespace's
/// device with the same index), else `ethtool -i`, else the link kind (veth, macvlan, ...).
fn driver_of(name: &str, index: u32, kind: Option<&str>) -> Option<String> {
    let dir = Path::new("/sys/class/net").join(name);
    let same_device = std::fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|i| i.trim().parse::<u32>().ok())
        == Some(index);
    if same_device
        && let Ok(target) = std::fs::read_link(dir.join("device/driver"))
        && let Some(driver) = target.file_name()
    {
        return Some(driver.to_string_lossy().into_owned());
    }
    if let Some(driver) = ethtool(&["-i", name])
        .ok()
        .and_then(|t| parse_ethtool_driver(&t))
    {
        return Some(driver);
    }
    kind.map(str::to_string)
}

/// Name of the loaded BPF program with id `id` (None without CAP_BPF or when gone).
/// Gather the facts about interface `name` in the namespace `nl` talks to (call from a thread
/// in that namespace: ethtool runs there too).
pub fn interface_facts(nl: &Netlink, name: &str) -> Result<InterfaceFacts> {
    let Some(link) = nl.link_by_name(name)? else {
        return Ok(InterfaceFacts {
            name: name.to_string(),
            link: None,
        });
    };
    let mut features = ethtool(&["-k", name]);
    if let Ok(text) = &features
        && text.is_empty()
    {
        features = Err("ethtool printed nothing".into());
    }
    let rx_queues = link.active_rx_queues();
    let occupant = crate::xdp::place::survey(&link).map_err(|e| e.to_string());
    let ours = match &occupant {
        Ok(crate::xdp::Occupant::Dispatcher { programs, .. }) => programs
            .iter()
            .find(|p| super::chain::is_ours(p))
            .map(|p| p.id),
        _ => link.xdp_prog_id,
    };
    Ok(InterfaceFacts {
        name: name.to_string(),
        link: Some(LinkFacts {
            index: link.index,
            driver: driver_of(name, link.index, link.kind.as_deref()),
            kind: link.kind,
            up: link.up,
            promiscuous: link.promiscuous,
            mtu: link.mtu,
            rx_queues,
            xdp_prog_name: link.xdp_prog_id.and_then(crate::xdp::program_name),
            xdp_prog_holders: ours
                .map(crate::ipc::alive::holders_of_bpf_program)
                .unwrap_or_default(),
            occupant,
            xdp_prog_id: link.xdp_prog_id,
            ethtool_features: features,
            xdp_features: crate::netlink::xdp_features(link.index).map_err(|e| e.to_string()),
            pinned: pinned_facts(name),
        }),
    })
}
