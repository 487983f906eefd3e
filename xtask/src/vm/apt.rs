//! apt, asked without changing the host's apt configuration. The host's own lists answer for
//! the stock guest's kernel (Debian 12's own); the NIC guest's QEMU 10 and newer kernel come
//! from suites the host may not have (`bookworm-backports`, `trixie-backports`), read through a
//! private source list, lists directory and cache under `target/vm/apt/`. Nothing is
//! installed: packages are downloaded and unpacked into `target/vm/` by the callers.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use super::kernel::output;

/// The mirror of the private suites; `XMACVLAN_VM_MIRROR` overrides it.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The keyring that signs Debian's suites (debian-archive-keyring carries trixie's keys
/// from 2023.3+deb12u1 on).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Private lists older than this are fetched again (newer kernels and QEMU fixes appear).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One way of asking apt: the host's configuration, or a private set of suites.
pub(super) struct Apt {
    /// `-o` options every apt command gets.
    options: Vec<String>,
    /// What to say when a package is missing: which sources were asked.
    sources: String,
    host: bool,
}

impl Apt {
    /// The host's own sources and lists.
    pub(super) fn host() -> Self {
        Self {
            options: Vec::new(),
            sources: "the host's apt sources".into(),
            host: true,
        }
    }

    /// `suites` of the Debian mirror (component main) in a private apt root `dir`: the host's
    /// source lists, lists directory and package cache are neither read nor written. The
    /// lists are fetched when missing, older than a day, or `refresh`.
    pub(super) fn private(dir: &Path, suites: &[&str], refresh: bool) -> Result<Self> {
        let mirror = std::env::var("XMACVLAN_VM_MIRROR")
            .ok()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
        if !Path::new(KEYRING).exists() {
            bail!(
                "{KEYRING} is missing: `apt-get install -y debian-archive-keyring` (it signs the \
                 Debian suites the NIC guest's packages come from)"
            );
        }
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let source_list = dir.join("sources.list");
        let text: String = suites
            .iter()
            .map(|s| format!("deb [signed-by={KEYRING}] {mirror} {s} main\n"))
            .collect();
        let changed = fs::read_to_string(&source_list).ok().as_deref() != Some(&text);
        if changed {
            fs::write(&source_list, &text)
                .with_context(|| format!("writing {}", source_list.display()))?;
        }
        let apt = Self {
            options: [
                format!("Dir::Etc::SourceList={}", source_list.display()),
                "Dir::Etc::SourceParts=/dev/null".into(),
                format!("Dir::State::Lists={}", lists.display()),
                format!("Dir::Cache={}", cache.display()),
                // Only the package indices: no translations, no AppStream metadata.
                "Acquire::Languages=none".into(),
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
                // Downloads run as root into target/vm (apt's sandbox user cannot write there).
                "APT::Sandbox::User=root".into(),
            ]
            .into_iter()
            .collect(),
            sources: format!(
                "{} of {mirror} (private lists in {})",
                suites.join(", "),
                dir.display()
            ),
            host: false,
        };
        let stamp = dir.join("updated");
        let stale = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > LISTS_MAX_AGE)
            .unwrap_or(true);
        if changed || stale || refresh {
            match apt.update(suites, &mirror, &lists) {
                Ok(true) => fs::write(&stamp, "")?,
                // Old lists kept (apt warned): try again next run.
                Ok(false) => {}
                // Offline with lists from an earlier run: they still name what is cached.
                Err(e) if stamp.exists() && !changed => {
                    println!(
                        "xtask: vm: {e:#}\nxtask: vm: using the package lists of an earlier run"
                    )
                }
                Err(e) => return Err(e),
            }
        }
        Ok(apt)
    }

    /// `apt-get update` of the private lists; every suite must have a package list. Whether
    /// every list was fetched now (false: apt kept old ones, e.g. offline).
    fn update(&self, suites: &[&str], mirror: &str, lists: &Path) -> Result<bool> {
        println!(
            "xtask: vm: apt-get update of {} (private lists)",
            suites.join(", ")
        );
        let started = std::time::Instant::now();
        let out = self
            .command("apt-get")
            .args(["-q", "update"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running apt-get update")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let names: Vec<String> = fs::read_dir(lists)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let missing: Vec<&str> = suites
            .iter()
            .copied()
            .filter(|s| {
                let infix = format!("_dists_{s}_main_binary-");
                !names
                    .iter()
                    .any(|n| n.contains(&infix) && n.contains("Packages"))
            })
            .collect();
        if !missing.is_empty() || !out.status.success() {
            bail!(
                "apt-get update found no package list for suite(s) {} at {mirror} ({}): {}\n\
                 The NIC guest needs {}; point XMACVLAN_VM_MIRROR at a Debian mirror that has them",
                if missing.is_empty() {
                    "-".into()
                } else {
                    missing.join(", ")
                },
                out.status,
                stderr.trim(),
                suites.join(", ")
            );
        }
        // Offline, apt keeps the old lists and says so only in warnings: show them.
        for warning in stderr
            .lines()
            .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
        {
            println!("xtask: vm: apt-get update: {warning}");
        }
        println!(
            "xtask: vm: package lists ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(!stderr.contains("Failed to fetch"))
    }

    /// The host's own configuration (whose lists `apt-get update` may refresh).
    pub(super) fn is_host(&self) -> bool {
        self.host
    }

    /// `program` (apt-get, apt-cache) with this configuration.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// The version `apt-cache show` gives for `spec` (`name` or `name/suite`).
    pub(super) fn version(&self, spec: &str) -> Result<String> {
        let show = output(
            self.command("apt-cache")
                .args(["show", "--no-all-versions", spec]),
            "apt-cache show",
        )
        .with_context(|| format!("apt knows no package `{spec}` in {}", self.sources))?;
        show.lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("apt knows no package `{spec}` in {}", self.sources))
    }

    /// The `Depends:` of `spec`, each alternative group as its first name.
    pub(super) fn depends(&self, spec: &str) -> Result<Vec<String>> {
        let show = output(
            self.command("apt-cache")
                .args(["show", "--no-all-versions", spec]),
            "apt-cache show",
        )
        .with_context(|| format!("apt knows no package `{spec}` in {}", self.sources))?;
        Ok(show
            .lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .map(parse_depends)
            .unwrap_or_default())
    }

    /// What `apt-get install -t suite packages` would install or upgrade on this host (its
    /// dpkg status, read only): `(name, version)`, from a simulation. Nothing is installed.
    pub(super) fn would_install(
        &self,
        suite: &str,
        packages: &[&str],
    ) -> Result<Vec<(String, String)>> {
        let text = output(
            self.command("apt-get")
                .args([
                    "-s",
                    "-q",
                    "install",
                    "--no-install-recommends",
                    "-t",
                    suite,
                ])
                .args(packages),
            "apt-get -s install",
        )
        .with_context(|| {
            format!(
                "apt cannot resolve {} from {}",
                packages.join(" "),
                self.sources
            )
        })?;
        Ok(parse_simulation(&text))
    }

    /// `apt-get download` of `name=version` specs into `dir`; the .deb files made.
    pub(super) fn download(&self, specs: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        let status = self
            .command("apt-get")
            .args(["-q", "download"])
            .args(specs)
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!(
                "`apt-get download {}` from {} failed ({status})",
                specs.join(" "),
                self.sources
            );
        }
        let debs: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        if debs.len() < specs.len() {
            bail!(
                "apt-get download made {} .deb files for {} packages in {}",
                debs.len(),
                specs.len(),
                dir.display()
            );
        }
        Ok(debs)
    }
}

/// `dpkg-deb -x` every package into `root`.
pub(super) fn unpack(debs: &[PathBuf], root: &Path) -> Result<()> {
    for deb in debs {
        crate::cargo::run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(root),
            &format!("dpkg-deb -x {}", deb.display()),
        )?;
    }
    Ok(())
}

/// The total size of `debs`, in MB.
pub(super) fn megabytes(debs: &[PathBuf]) -> f64 {
    debs.iter()
        .filter_map(|d| fs::metadata(d).ok())
        .map(|m| m.len())
        .sum::<u64>() as f64
        / 1e6
}

/// `a (>= 1), b | c, d:any` → `[a, b, d]`.
fn parse_depends(line: &str) -> Vec<String> {
    line.split(',')
        .filter_map(|group| {
            let first = group.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// `Inst NAME [OLD] (VERSION SUITE [ARCH])` lines of `apt-get -s install`.
fn parse_simulation(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let name = rest.split_whitespace().next()?;
            let version = rest.split_once('(')?.1.split_whitespace().next()?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_and_simulations() {
        assert_eq!(
            parse_depends(
                "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                 linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), libc6:any"
            ),
            ["dracut", "linux-base-7.3.4+deb13-amd64", "libc6"]
        );
        let sim = "NOTE: This is only a simulation!\n\
            Inst qemu-system-x86 [1:7.2+dfsg-7+deb12u18+b3] (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports:oldstable-backports [amd64]) []\n\
            Inst libfdt1 (1.6.1-4+b1 Debian:12.12/oldstable [amd64])\n\
            Conf libfdt1 (1.6.1-4+b1 Debian:12.12/oldstable [amd64])\n";
        assert_eq!(
            parse_simulation(sim),
            [
                (
                    "qemu-system-x86".to_string(),
                    "1:10.0.2+ds-2+deb13u1~bpo12+1".to_string()
                ),
                ("libfdt1".to_string(), "1.6.1-4+b1".to_string())
            ]
        );
    }
}
