//! The emulator each guest runs on. The stock guest uses the host's QEMU (Debian 12: 7.2,
//! installed as a system package). The NIC guest needs QEMU 10 (the `igb` device), which
//! comes from `bookworm-backports`: it is downloaded and unpacked into `target/vm/`, never
//! installed, and runs from there with `LD_LIBRARY_PATH` and `-L` paths. Which packages that
//! takes is apt's answer to "what would installing it change on this host" (simulated
//! against the host's dpkg status): QEMU's own packages, plus the libraries the host lacks.
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::apt::{self, Apt};

/// The suite QEMU 10 comes from, and the package that brings it.
pub(super) const QEMU_SUITE: &str = "bookworm-backports";
const QEMU_PACKAGE: &str = "qemu-system-x86";
/// The oldest QEMU with the igb device (QEMU 8.0) is older; 10 is what the findings used.
const MIN_MAJOR: u32 = 8;

/// A QEMU to run: the binary, and what it needs around it.
#[derive(Debug, Clone)]
pub(super) struct Emulator {
    pub binary: PathBuf,
    /// Extra environment (the unpacked libraries).
    pub env: Vec<(String, OsString)>,
    /// `-L` firmware directories, searched before QEMU's built-in ones.
    pub data_dirs: Vec<PathBuf>,
    /// `qemu-system-x86_64 --version`'s first line.
    pub version: String,
}

impl Emulator {
    pub(super) fn host() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            env: Vec::new(),
            data_dirs: Vec::new(),
            version: String::new(),
        }
    }

    pub(super) fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        for d in &self.data_dirs {
            cmd.arg("-L").arg(d);
        }
        cmd
    }
}

/// QEMU from `QEMU_SUITE`, unpacked into `dir/qemu-VERSION/` on first use.
pub(super) fn ensure_unpacked(dir: &Path, apt: &Apt) -> Result<Emulator> {
    let version = match apt.version(&format!("{QEMU_PACKAGE}/{QEMU_SUITE}")) {
        Ok(v) => v,
        Err(e) => {
            // No apt answer (offline, no lists): an unpacked QEMU still lets the tests run.
            let cached = fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("qemu-"))
                .find_map(|e| load(&e.path()).ok());
            return match cached {
                Some(emulator) => {
                    println!(
                        "xtask: vm: apt cannot name QEMU ({e:#}); using the unpacked {}",
                        emulator.version
                    );
                    Ok(emulator)
                }
                None => Err(e),
            };
        }
    };
    let entry = dir.join(format!("qemu-{}", version.replace(':', "_")));
    if let Ok(emulator) = load(&entry) {
        return Ok(emulator);
    }
    println!(
        "xtask: vm: preparing QEMU {version} from {QEMU_SUITE} in {} (first run only)",
        entry.display()
    );
    let started = Instant::now();
    let packages = apt.would_install(QEMU_SUITE, &[QEMU_PACKAGE])?;
    if !packages.iter().any(|(p, _)| p == QEMU_PACKAGE) {
        bail!("apt would not install {QEMU_PACKAGE} from {QEMU_SUITE}: {packages:?}");
    }
    let specs: Vec<String> = packages.iter().map(|(p, v)| format!("{p}={v}")).collect();
    let work = dir.join(format!("qemu.tmp{}", std::process::id()));
    fs::remove_dir_all(&work).ok();
    let result = (|| -> Result<f64> {
        let debs = apt.download(&specs, &work.join("debs"))?;
        let megabytes = apt::megabytes(&debs);
        apt::unpack(&debs, &work.join("root"))?;
        fs::remove_dir_all(work.join("debs"))?;
        Ok(megabytes)
    })();
    let megabytes = match result {
        Ok(mb) => mb,
        Err(e) => {
            fs::remove_dir_all(&work).ok();
            return Err(e);
        }
    };
    fs::remove_dir_all(&entry).ok();
    fs::rename(&work, &entry)
        .with_context(|| format!("moving {} to {}", work.display(), entry.display()))?;
    prune(dir, &entry);
    let emulator = load(&entry)?;
    println!(
        "xtask: vm: {} ready in {:.1} s: {megabytes:.0} MB downloaded ({} packages: {})",
        emulator.version,
        started.elapsed().as_secs_f64(),
        packages.len(),
        packages
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(emulator)
}

/// The unpacked QEMU in `entry`, checked to start (`--version`): a library the host has
/// lost since it was unpacked shows here, not as a guest that never boots.
fn load(entry: &Path) -> Result<Emulator> {
    let root = entry.join("root");
    let binary = root.join("usr/bin/qemu-system-x86_64");
    if !binary.exists() {
        bail!("{} is not unpacked", binary.display());
    }
    let mut libs: Vec<PathBuf> = ["usr/lib", "lib"]
        .iter()
        .filter_map(|d| fs::read_dir(root.join(d)).ok())
        .flat_map(|e| e.filter_map(|e| e.ok()).map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-linux-gnu"))
        .collect();
    libs.sort();
    let mut env = Vec::new();
    if let Some(first) = libs.first() {
        env.push((
            "QEMU_MODULE_DIR".to_string(),
            first.join("qemu").into_os_string(),
        ));
    }
    let mut path = std::env::join_paths(&libs).context("library path")?;
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|o| !o.is_empty()) {
        path.push(":");
        path.push(old);
    }
    env.push(("LD_LIBRARY_PATH".to_string(), path));
    let data_dirs = ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.exists())
        .collect();
    let mut emulator = Emulator {
        binary,
        env,
        data_dirs,
        version: String::new(),
    };
    let out = Command::new(&emulator.binary)
        .envs(emulator.env.iter().map(|(k, v)| (k, v)))
        .arg("--version")
        .output()
        .with_context(|| format!("starting {}", emulator.binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): {}; remove {} to fetch it again",
            emulator.binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            entry.display()
        );
    }
    let major = first
        .strip_prefix("QEMU emulator version ")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m < MIN_MAJOR) {
        bail!(
            "{} is `{first}`; the igb device needs QEMU {MIN_MAJOR} or newer",
            emulator.binary.display()
        );
    }
    emulator.version = first;
    Ok(emulator)
}

/// Remove other unpacked QEMUs and dead work folders.
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let dead_work = name
            .strip_prefix("qemu.tmp")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let old = name.starts_with("qemu-") && path != keep;
        if dead_work || old {
            println!("xtask: vm: removing {}", path.display());
            fs::remove_dir_all(&path).ok();
        }
    }
}
