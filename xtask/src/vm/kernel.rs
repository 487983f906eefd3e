//! A guest's kernel: Debian kernel packages fetched with apt into `target/vm/GUEST/`, never
//! installed. Kept there by package version: the uncompressed `vmlinux` (boots ~2x faster
//! under TCG than the bzImage), the bzImage as a fallback, and the modules the guest loads,
//! decompressed.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::apt::{self, Apt};
use super::{image, modules};

/// Where a guest's kernel comes from and what it must have.
pub(super) struct KernelSource {
    /// The meta package (`name` or `name/suite`) whose `linux-image-*` dependency names the
    /// current kernel.
    pub meta: &'static str,
    /// Only kernels of this series (a package name prefix, and the `apt-cache search`
    /// pattern for the newest one when the meta package points elsewhere).
    pub series: Option<(&'static str, &'static str)>,
    /// The oldest `uname -r` accepted (major, minor).
    pub min_release: (u32, u32),
    /// Why that minimum, for the message when apt offers an older one.
    pub min_reason: &'static str,
    /// Modules the guest loads, and more of them (one list can extend another); their
    /// dependencies are added.
    pub modules: &'static [&'static str],
    pub extra_modules: &'static [&'static str],
    /// The environment variable that names a kernel package instead of `meta`.
    pub override_env: &'static str,
}

impl KernelSource {
    fn wanted(&self) -> Vec<&'static str> {
        self.modules
            .iter()
            .chain(self.extra_modules)
            .copied()
            .collect()
    }
}

/// A kernel ready to boot, from the cache.
#[derive(Debug)]
pub(super) struct Kernel {
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

/// The cached kernel for the package apt names now, fetched on first use into `dir`.
pub(super) fn ensure(dir: &Path, source: &KernelSource, apt: &Apt) -> Result<Kernel> {
    fs::create_dir_all(dir)?;
    let (package, version) = match candidate(source, apt) {
        Ok(pv) => pv,
        Err(e) => {
            // Offline or no apt lists: a cached kernel still lets the tests run.
            if let Some(k) = newest_cached(dir, source) {
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
    let entry = dir.join(&id);
    if let Some(k) = load(&entry, source) {
        return Ok(k);
    }
    println!(
        "xtask: vm: preparing kernel {id} in {} (first run only)",
        entry.display()
    );
    let work = dir.join(format!("{id}.tmp{}", std::process::id()));
    fs::remove_dir_all(&work).ok();
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if let Err(e) = prepare(&package, source, apt, &work) {
        fs::remove_dir_all(&work).ok();
        return Err(e);
    }
    // Publish by rename: a concurrent run sees either no entry or a complete one.
    let old = dir.join(format!("{id}.old"));
    fs::remove_dir_all(&old).ok();
    if entry.exists() {
        fs::rename(&entry, &old).ok();
    }
    fs::rename(&work, &entry)
        .with_context(|| format!("moving {} to {}", work.display(), entry.display()))?;
    fs::remove_dir_all(&old).ok();
    prune(dir, &id);
    load(&entry, source).with_context(|| format!("kernel cache {} is incomplete", entry.display()))
}

/// (package, version) of the kernel to use: the override if set, else the meta package's
/// `linux-image-*` dependency when it is of the series, else the series' newest.
fn candidate(source: &KernelSource, apt: &Apt) -> Result<(String, String)> {
    let package = match std::env::var(source.override_env) {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let image_dep = || {
                apt.depends(source.meta)
                    .ok()
                    .and_then(|deps| deps.into_iter().find(|d| d.starts_with("linux-image-")))
            };
            let mut dep = image_dep();
            if dep.is_none() && apt.is_host() && crate::cargo::is_root() {
                // A fresh machine may have no package lists yet.
                println!("xtask: vm: no apt package lists, running `apt-get update`");
                Command::new("apt-get").arg("update").status().ok();
                dep = image_dep();
            }
            match (dep, source.series) {
                (Some(d), Some((prefix, _))) if d.starts_with(prefix) => d,
                (Some(d), None) => d,
                (_, Some((_, pattern))) => newest_in_series(apt, pattern)?,
                (None, None) => bail!(
                    "apt names no kernel for `{}` (its linux-image-* dependency): check the \
                     suite, or name a package in {}",
                    source.meta,
                    source.override_env
                ),
            }
        }
    };
    let version = apt.version(&package)?;
    Ok((package, version))
}

fn newest_in_series(apt: &Apt, pattern: &str) -> Result<String> {
    let text = output(
        apt.command("apt-cache")
            .args(["search", "--names-only", pattern]),
        "apt-cache search",
    )?;
    // linux-image-6.1.0-N-amd64-unsigned: the highest ABI number N.
    let abi = |name: &str| -> u32 {
        name.split('-')
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|n| abi(n))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "apt knows no kernel matching `{pattern}`: add Debian 12 (bookworm) sources and \
                 run `apt-get update`, or name a package in XMACVLAN_VM_KERNEL"
            )
        })
}

/// The packages that make up `package`: since Debian 13 a `linux-image-*` package only
/// depends on `linux-base-*` (config, modules.order, modules.builtin), `linux-binary-*`
/// (vmlinuz) and `linux-modules-*`; before, it carried all of them itself.
fn package_set(package: &str, apt: &Apt) -> Result<Vec<String>> {
    let deps = apt.depends(package)?;
    if !deps.iter().any(|d| d.starts_with("linux-binary-")) {
        return Ok(vec![package.to_string()]);
    }
    Ok(deps
        .into_iter()
        .filter(|d| {
            ["linux-base-", "linux-binary-", "linux-modules-"]
                .iter()
                .any(|p| d.starts_with(p))
        })
        .collect())
}

/// Download, unpack, pick and decompress the modules, extract vmlinux; all into `work`.
fn prepare(package: &str, source: &KernelSource, apt: &Apt, work: &Path) -> Result<()> {
    let started = Instant::now();
    let mut specs = Vec::new();
    for p in package_set(package, apt)? {
        let version = apt.version(&p)?;
        specs.push(format!("{p}={version}"));
    }
    let debs = apt.download(&specs, &work.join("debs"))?;
    let downloaded = started.elapsed().as_secs_f64();
    let root = work.join("pkg");
    apt::unpack(&debs, &root)?;
    let unpacked = started.elapsed().as_secs_f64();
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|d| fs::read_dir(root.join(d)).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()))
        .find(|p| p.join("modules.order").exists())
        .with_context(|| format!("{package} has no lib/modules/RELEASE/modules.order"))?;
    let release = moddir
        .file_name()
        .context("module directory")?
        .to_string_lossy()
        .into_owned();
    check_release(&release, source)?;

    let order = modules::Tree::open(&moddir)?.load_order(&source.wanted())?;
    let modules_dir = work.join("modules");
    fs::create_dir_all(&modules_dir)?;
    let mut list = String::new();
    for (i, path) in order.iter().enumerate() {
        let target = format!("{i:02}-{}", modules::plain_name(path));
        modules::copy_plain(path, &modules_dir.join(&target))?;
        list.push_str(&target);
        list.push('\n');
    }
    fs::write(modules_dir.join("modules.list"), list)?;
    fs::write(modules_dir.join("wanted"), source.wanted().join(" "))?;

    let in_boot = |name: &str| root.join(format!("boot/{name}-{release}"));
    let vmlinuz = [in_boot("vmlinuz"), moddir.join("vmlinuz")]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("{package} has no vmlinuz for {release}"))?;
    fs::copy(&vmlinuz, work.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    for config in [in_boot("config"), moddir.join("config")] {
        if fs::copy(&config, work.join("config")).is_ok() {
            break;
        }
    }
    if let Err(e) = image::extract_vmlinux(&work.join("vmlinuz"), &work.join("vmlinux")) {
        println!("xtask: vm: {e:#}; booting the compressed bzImage instead (slower)");
    }
    fs::write(work.join("release"), format!("{release}\n"))?;
    fs::remove_dir_all(&root).ok();
    let megabytes = apt::megabytes(&debs);
    fs::remove_dir_all(work.join("debs")).ok();
    println!(
        "xtask: vm: kernel {release} ready in {:.1} s: downloaded {megabytes:.0} MB ({} \
         packages) in {downloaded:.1} s, unpacked in {:.1} s, {} modules picked and the \
         vmlinux extracted in {:.1} s",
        started.elapsed().as_secs_f64(),
        debs.len(),
        unpacked - downloaded,
        order.len(),
        started.elapsed().as_secs_f64() - unpacked
    );
    Ok(())
}

/// `6.1.0-50-amd64` → (6, 1).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn check_release(release: &str, source: &KernelSource) -> Result<()> {
    let (major, minor) = source.min_release;
    match major_minor(release) {
        Some(v) if v >= source.min_release => Ok(()),
        _ => bail!(
            "apt offers kernel {release} for `{}`, older than {major}.{minor} ({}): name a newer \
             kernel package in {}",
            source.meta,
            source.min_reason,
            source.override_env
        ),
    }
}

/// Remove kernels other than `keep` (superseded by a newer package) and the work folders of
/// runs that died.
fn prune(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("linux-") || name == keep {
            continue;
        }
        let dead_work = name
            .rsplit_once(".tmp")
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let old_kernel = !name.contains(".tmp") && !name.ends_with(".old");
        if dead_work || old_kernel {
            println!("xtask: vm: removing {}", e.path().display());
            fs::remove_dir_all(e.path()).ok();
        }
    }
}

/// A complete cache entry, or None.
fn load(dir: &Path, source: &KernelSource) -> Option<Kernel> {
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
    // Made for another module list (the source's modules changed): prepare it again.
    if fs::read_to_string(dir.join("modules/wanted")).ok()? != source.wanted().join(" ") {
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

fn newest_cached(dir: &Path, source: &KernelSource) -> Option<Kernel> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .rev()
        .find_map(|(_, p)| load(&p, source))
}

/// Run a command and return its stdout, failing with `what` and its stderr.
pub(super) fn output(cmd: &mut Command, what: &str) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_release_versions() {
        assert_eq!(major_minor("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(major_minor("7.3.4+deb13-amd64"), Some((7, 3)));
        assert_eq!(major_minor("6.14+x"), Some((6, 14)));
        assert_eq!(major_minor("amd64"), None);
        let source = KernelSource {
            meta: "linux-image-amd64/trixie-backports",
            series: None,
            min_release: (6, 14),
            min_reason: "igb zero-copy",
            modules: &[],
            extra_modules: &[],
            override_env: "X",
        };
        assert!(check_release("7.3.4+deb13-amd64", &source).is_ok());
        let err = check_release("6.12.95+deb12-amd64", &source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("older than 6.14 (igb zero-copy)"), "{err}");
    }
}
