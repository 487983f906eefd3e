//! The guest's kernel modules and their dependencies, in load order, from an unpacked kernel
//! package: `modules.order` names every module's file, `modules.builtin` those built in,
//! `modinfo -F depends` each one's dependencies (reading a few modules, where `depmod` over
//! a whole package of `.ko.xz` files takes ~25 s). Compressed modules (`.ko.xz`, `.ko.zst`,
//! `.ko.gz`) are decompressed on the way into the cache: busybox's insmod loads plain ones.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::kernel::output;

/// Compressed module suffixes and the command that decompresses one to stdout.
const COMPRESSED: &[(&str, &[&str])] = &[
    (".ko.xz", &["xz", "-dc"]),
    (".ko.zst", &["zstd", "-dcq"]),
    (".ko.gz", &["gzip", "-dc"]),
];

/// The modules of `/lib/modules/RELEASE` (`dir`).
pub(super) struct Tree {
    dir: PathBuf,
    /// Module name (`-` as `_`) → file.
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// `kernel/net/8021q/8021q.ko.xz` → `8021q`; `i2c-algo-bit.ko` → `i2c_algo_bit`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split_once(".ko")?.0;
    Some(stem.replace('-', "_"))
}

impl Tree {
    pub(super) fn open(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            fs::read_to_string(dir.join(name)).with_context(|| {
                format!(
                    "{} has no {name}: the kernel package set is incomplete",
                    dir.display()
                )
            })
        };
        let mut files = BTreeMap::new();
        for line in read("modules.order")?.lines() {
            let Some(name) = module_name(line) else {
                continue;
            };
            // modules.order names `x.ko`; the package may carry `x.ko.xz`.
            let base = dir.join(line.trim());
            let found = std::iter::once(base.clone())
                .chain(COMPRESSED.iter().map(|(suffix, _)| {
                    let mut p = base.clone().into_os_string();
                    p.push(&suffix[".ko".len()..]);
                    PathBuf::from(p)
                }))
                .find(|p| p.exists());
            if let Some(path) = found {
                files.insert(name, path);
            }
        }
        let builtin = read("modules.builtin")?
            .lines()
            .filter_map(module_name)
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            builtin,
        })
    }

    /// The files to load for `wanted`, dependencies first, each once; built-in modules are
    /// skipped.
    pub(super) fn load_order(&self, wanted: &[&str]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for m in wanted {
            self.visit(&m.replace('-', "_"), &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<()> {
        if depth > 32 {
            bail!("module dependencies deeper than 32 at `{name}`: a cycle?");
        }
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let path = self.files.get(name).with_context(|| {
            format!(
                "module `{name}` is neither built in nor a file in {}",
                self.dir.display()
            )
        })?;
        let deps = output(
            Command::new("modinfo").args(["-F", "depends"]).arg(path),
            "modinfo -F depends",
        )?;
        for dep in deps.trim().split(',').filter(|d| !d.is_empty()) {
            self.visit(&dep.replace('-', "_"), seen, order, depth + 1)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Copy module `from` to `to` as a plain `.ko`, decompressing it if needed.
pub(super) fn copy_plain(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let Some((_, command)) = COMPRESSED.iter().find(|(s, _)| name.ends_with(s)) else {
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        return Ok(());
    };
    let out = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new(command[0])
        .args(&command[1..])
        .arg(from)
        .stdout(out)
        .status()
        .with_context(|| format!("running {} (see `cargo xtask deps`)", command[0]))?;
    if !status.success() {
        bail!("{} {} failed ({status})", command.join(" "), from.display());
    }
    Ok(())
}

/// `igb.ko.xz` → `igb.ko`.
pub(super) fn plain_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.split_once(".ko") {
        Some((stem, _)) => format!("{stem}.ko"),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_modules_like_the_kernel() {
        assert_eq!(
            module_name("kernel/net/8021q/8021q.ko").as_deref(),
            Some("8021q")
        );
        assert_eq!(
            module_name("kernel/drivers/i2c/algos/i2c-algo-bit.ko.xz").as_deref(),
            Some("i2c_algo_bit")
        );
        assert_eq!(module_name("modules.builtin"), None);
        assert_eq!(plain_name(Path::new("/m/igb.ko.zst")), "igb.ko");
        assert_eq!(plain_name(Path::new("/m/veth.ko")), "veth.ko");
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let dir = std::env::temp_dir().join(format!("xmv-modules-{}", std::process::id()));
        fs::remove_dir_all(&dir).ok();
        fs::create_dir_all(dir.join("kernel")).unwrap();
        fs::write(dir.join("modules.order"), "kernel/a.ko\n").unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/virtio_pci.ko\n").unwrap();
        fs::write(dir.join("kernel/a.ko.xz"), "").unwrap();
        let tree = Tree::open(&dir).unwrap();
        assert_eq!(tree.files["a"], dir.join("kernel/a.ko.xz"));
        assert!(tree.load_order(&["virtio_pci"]).unwrap().is_empty());
        let err = tree.load_order(&["nope"]).unwrap_err().to_string();
        assert!(err.contains("`nope` is neither built in"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
