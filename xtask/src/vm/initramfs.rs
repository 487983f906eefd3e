//! The guest's initramfs: static busybox, the modules, and `init.sh` as `/init`. Cached next
//! to its kernel; rebuilt when `init.sh` changes.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::kernel::Kernel;

const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";

/// The initramfs for `kernel`, built if missing or stale.
pub(super) fn ensure(kernel: &Kernel) -> Result<PathBuf> {
    let out = kernel.dir.join("initramfs.cpio");
    let stamp = kernel.dir.join("init.sh");
    if out.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == INIT) {
        return Ok(out);
    }
    if !is_static(Path::new(BUSYBOX)) {
        bail!(
            "{BUSYBOX} is not the static busybox the initramfs needs: \
             `apt-get install -y busybox-static`"
        );
    }
    let staging = kernel
        .dir
        .join(format!("initramfs.tmp{}", std::process::id()));
    fs::remove_dir_all(&staging).ok();
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "tmp", "mnt"] {
        fs::create_dir_all(staging.join(d))?;
    }
    fs::copy(BUSYBOX, staging.join("bin/busybox")).context("copying busybox")?;
    fs::write(staging.join("init"), INIT)?;
    fs::set_permissions(staging.join("init"), fs::Permissions::from_mode(0o755))?;
    for m in &kernel.modules {
        fs::copy(
            kernel.dir.join("modules").join(m),
            staging.join("lib/modules").join(m),
        )
        .with_context(|| format!("copying module {m}"))?;
    }
    fs::write(
        staging.join("modules.list"),
        kernel.modules.join("\n") + "\n",
    )?;
    let tmp_out = kernel
        .dir
        .join(format!("initramfs.cpio.tmp{}", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -print0 | cpio --null --create --format=newc --owner=0:0 --quiet > \"$1\"")
        .arg("sh")
        .arg(&tmp_out)
        .current_dir(&staging)
        .status()
        .context("running cpio (install it: `apt-get install -y cpio`)")?;
    fs::remove_dir_all(&staging).ok();
    if !status.success() {
        fs::remove_file(&tmp_out).ok();
        bail!("building the initramfs with cpio failed ({status})");
    }
    fs::rename(&tmp_out, &out)?;
    fs::write(&stamp, INIT)?;
    Ok(out)
}

/// An ELF file without a PT_INTERP program header (no dynamic loader) is static.
fn is_static(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) != 3
    })
}
