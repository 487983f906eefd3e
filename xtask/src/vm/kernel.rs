//! The guest kernel: a stock Debian 6.1 kernel package fetched with apt into `target/vm/`,
//! never installed. Kept there by package version: the uncompressed `vmlinux` (boots ~2x
//! faster under TCG than the bzImage), the bzImage as a fallback, and the modules the VM needs.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The meta package whose dependency names the current kernel ABI.
const META_PACKAGE: &str = "linux-image-amd64";
/// The kernel series the VM tests target: Debian 12's stock kernel.
const SERIES_PREFIX: &str = "linux-image-6.1.";

/// Modules the guest loads (8021q, macvlan, veth under test; virtio-pci, 9p and overlay for the
/// host root). Their dependencies are added from `modprobe --show-depends`.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "8021q",
    "macvlan",
    "veth",
];

/// A kernel ready to boot, from the cache.
#[derive(Debug)]
pub struct Kernel {
    /// `PACKAGE_VERSION`, the cache key.
    pub id: String,
    pub dir: PathBuf,
    /// `uname -r` of the guest.
    pub release: String,
    /// The file to pass to `-kernel`: `vmlinux`, or `vmlinuz` if extraction failed.
    pub image: PathBuf,
    /// Module file names under `dir/modules`, in load order.
    pub modules: Vec<String>,
}

/// The cached kernel for the newest Debian 6.1 package apt knows, fetched on first use.
pub fn ensure(vm_dir: &Path) -> Result<Kernel> {
    let (package, version) = match candidate() {
        Ok(pv) => pv,
        Err(e) => {
            // Offline or no apt lists: a cached kernel still lets the tests run.
            if let Some(k) = newest_cached(vm_dir) {
                println!(
                    "xtask: vm: apt cannot name a kernel ({e:#}); using cached {}",
                    k.id
                );
                return Ok(k);
            }
            return Err(e);
        }
    };
    let id = format!("{package}_{version}");
    let dir = vm_dir.join(&id);
    if let Some(k) = load(&dir) {
        return Ok(k);
    }
    println!(
        "xtask: vm: preparing kernel {id} in {} (first run only)",
        dir.display()
    );
    let started = std::time::Instant::now();
    let work = vm_dir.join(format!("{id}.tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = prepare(&package, &work);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&work);
        return Err(e);
    }
    // Publish by rename: a concurrent run sees either no entry or a complete one.
    let old = vm_dir.join(format!("{id}.old"));
    let _ = fs::remove_dir_all(&old);
    if dir.exists() {
        let _ = fs::rename(&dir, &old);
    }
    fs::rename(&work, &dir)
        .with_context(|| format!("moving {} to {}", work.display(), dir.display()))?;
    let _ = fs::remove_dir_all(&old);
    prune(vm_dir, &id);
    let kernel =
        load(&dir).with_context(|| format!("kernel cache {} is incomplete", dir.display()))?;
    println!(
        "xtask: vm: kernel {} ready in {:.1} s",
        kernel.release,
        started.elapsed().as_secs_f64()
    );
    Ok(kernel)
}

/// (package, version) of the kernel to use: `XMACVLAN_VM_KERNEL` if set, else the dependency of
/// `linux-image-amd64` when it is a 6.1 kernel, else the newest `linux-image-6.1.0-N-amd64`.
fn candidate() -> Result<(String, String)> {
    let package = match std::env::var("XMACVLAN_VM_KERNEL") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let mut dep = meta_dependency();
            if dep.is_none() && crate::cargo::is_root() {
                // A fresh machine may have no package lists yet.
                println!("xtask: vm: no apt package lists, running `apt-get update`");
                let _ = Command::new("apt-get").arg("update").status();
                dep = meta_dependency();
            }
            match dep {
                Some(d) if d.starts_with(SERIES_PREFIX) => d,
                _ => newest_in_series()?,
            }
        }
    };
    let show = output(
        Command::new("apt-cache").args(["show", "--no-all-versions", &package]),
        "apt-cache show",
    )?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(str::trim)
        .with_context(|| {
            format!("apt knows no package `{package}`: run `apt-get update` (Debian 12 sources)")
        })?;
    Ok((package, version.to_string()))
}

fn meta_dependency() -> Option<String> {
    let text = output(
        Command::new("apt-cache").args(["depends", META_PACKAGE]),
        "apt-cache depends",
    )
    .ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().to_string())
        .find(|d| d.starts_with("linux-image-"))
}

fn newest_in_series() -> Result<String> {
    let text = output(
        Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        ]),
        "apt-cache search",
    )?;
    let abi = |name: &str| -> u32 {
        name.trim_start_matches("linux-image-6.1.0-")
            .split('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|n| abi(n))
        .map(str::to_string)
        .context(
            "apt knows no Debian 6.1 kernel (`linux-image-6.1.0-N-amd64-unsigned`): add Debian 12 \
             (bookworm) sources and run `apt-get update`, or name a package in XMACVLAN_VM_KERNEL",
        )
}

/// Download, unpack, depmod, pick the modules, extract vmlinux; everything ends up in `work`.
fn prepare(package: &str, work: &Path) -> Result<()> {
    let status = Command::new("apt-get")
        .args(["download", "-o", "APT::Sandbox::User=root", package])
        .current_dir(work)
        .status()
        .context("running apt-get download")?;
    if !status.success() {
        bail!("`apt-get download {package}` failed ({status}): run `apt-get update` and retry");
    }
    let deb = fs::read_dir(work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download produced no .deb")?;
    let root = work.join("pkg");
    crate::cargo::run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x (unpacking the kernel package)",
    )?;
    let release = fs::read_dir(root.join("lib/modules"))
        .context("the kernel package has no lib/modules")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no lib/modules/RELEASE")?;
    crate::cargo::run(
        Command::new("depmod").arg("-b").arg(&root).arg(&release),
        "depmod -b",
    )?;

    // Modules and their dependencies, in load order, each once.
    let mut order: Vec<PathBuf> = Vec::new();
    for module in MODULES {
        let deps = output(
            Command::new("modprobe").arg("-d").arg(&root).args([
                "-S",
                &release,
                "--show-depends",
                module,
            ]),
            "modprobe --show-depends",
        )
        .with_context(|| format!("module `{module}` is not in {package}"))?;
        for line in deps.lines() {
            if let Some(path) = line.trim().strip_prefix("insmod ") {
                let path = PathBuf::from(path.trim());
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    let modules_dir = work.join("modules");
    fs::create_dir_all(&modules_dir)?;
    let mut list = String::new();
    for (i, path) in order.iter().enumerate() {
        let name = path.file_name().context("module path")?.to_string_lossy();
        if !name.ends_with(".ko") {
            bail!(
                "module {} is compressed; only plain .ko files are supported",
                path.display()
            );
        }
        let target = format!("{i:02}-{name}");
        fs::copy(path, modules_dir.join(&target))
            .with_context(|| format!("copying {}", path.display()))?;
        list.push_str(&target);
        list.push('\n');
    }
    fs::write(modules_dir.join("modules.list"), list)?;
    fs::write(modules_dir.join("wanted"), MODULES.join(" "))?;

    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    fs::copy(&vmlinuz, work.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    let _ = fs::copy(
        root.join(format!("boot/config-{release}")),
        work.join("config"),
    );
    match extract_vmlinux(&work.join("vmlinuz"), &work.join("vmlinux")) {
        Ok(()) => {}
        Err(e) => println!("xtask: vm: {e:#}; booting the compressed bzImage instead (slower)"),
    }
    fs::write(work.join("release"), format!("{release}\n"))?;
    fs::remove_dir_all(&root).ok();
    fs::remove_file(&deb).ok();
    Ok(())
}

/// The bzImage carries the kernel as an XZ stream: find its magic and decompress until the
/// result is an ELF file.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let offsets = data
        .windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == XZ_MAGIC)
        .map(|(i, _)| i);
    for offset in offsets {
        let file = fs::File::create(out)?;
        let mut child = Command::new("xz")
            .args(["-dc", "--single-stream"])
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .context("running xz (install xz-utils)")?;
        // xz stops reading at the end of the stream: the rest of the write may fail, harmlessly.
        let _ = child
            .stdin
            .take()
            .expect("piped")
            .write_all(&data[offset..]);
        let ok = child.wait()?.success();
        let mut head = [0u8; 4];
        let is_elf = fs::File::open(out)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && head == *b"\x7fELF";
        if ok && is_elf {
            return Ok(());
        }
    }
    let _ = fs::remove_file(out);
    bail!("no XZ-compressed ELF kernel found in {}", bzimage.display())
}

/// Remove kernels other than `keep` (superseded by a newer package) and the work folders of
/// runs that died.
fn prune(vm_dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(vm_dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("linux-image-") || name == keep {
            continue;
        }
        let dead_work = name
            .rsplit_once(".tmp")
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let old_kernel = !name.contains(".tmp") && !name.ends_with(".old");
        if dead_work || old_kernel {
            println!("xtask: vm: removing {}", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A complete cache entry, or None.
fn load(dir: &Path) -> Option<Kernel> {
    let release = fs::read_to_string(dir.join("release"))
        .ok()?
        .trim()
        .to_string();
    let modules: Vec<String> = fs::read_to_string(dir.join("modules/modules.list"))
        .ok()?
        .lines()
        .map(str::to_string)
        .collect();
    if modules
        .iter()
        .any(|m| !dir.join("modules").join(m).exists())
    {
        return None;
    }
    // Made for another module list (MODULES changed): prepare it again.
    if fs::read_to_string(dir.join("modules/wanted")).ok()? != MODULES.join(" ") {
        return None;
    }
    let image = [dir.join("vmlinux"), dir.join("vmlinuz")]
        .into_iter()
        .find(|p| p.exists())?;
    Some(Kernel {
        id: dir.file_name()?.to_string_lossy().into_owned(),
        dir: dir.to_path_buf(),
        release,
        image,
        modules,
    })
}

fn newest_cached(vm_dir: &Path) -> Option<Kernel> {
    let mut entries: Vec<_> = fs::read_dir(vm_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-image-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort();
    entries.into_iter().rev().find_map(|(_, p)| load(&p))
}

/// Run a command and return its stdout, failing with `what` and its stderr.
pub fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
