//! Where a classifier that outlives its daemon is pinned: one directory per interface under
//! `BPFFS/xmacvlan/`, holding the XDP link, the program and every map, so the next daemon can
//! take it over without detaching (a detach resets the rings of many real NICs: a link flap).
use std::io;
use std::path::{Path, PathBuf};

use super::XdpError;

/// libxdp's setting for the bpffs it pins its dispatchers in (default `/sys/fs/bpf`); xmacvlan
/// pins beside them, so one variable moves both (tests point it at a private mount).
pub const BPFFS_ENV: &str = "LIBXDP_BPFFS";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const SUBDIR: &str = "xmacvlan";

/// The pins of one interface's classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
}

/// The bpffs root: `$LIBXDP_BPFFS`, else `/sys/fs/bpf`.
pub fn bpffs_root() -> PathBuf {
    std::env::var_os(BPFFS_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS))
}

/// Mount a bpffs on `root` unless one is there (as systemd does at boot; a daemon started in
/// a fresh mount namespace, such as `ip netns exec`, has none). Returns whether it mounted.
pub fn ensure_mounted(root: &Path) -> Result<bool, XdpError> {
    let err = |source: io::Error| XdpError::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    if crate::sys::is_bpffs(root).map_err(err)? {
        return Ok(false);
    }
    crate::sys::mount_bpffs(root).map_err(err)?;
    Ok(true)
}

impl PinDir {
    /// The directory of interface `ifname` under `root` (not created).
    pub fn new(root: &Path, ifname: &str) -> Self {
        Self {
            path: root.join(SUBDIR).join(ifname),
        }
    }

    /// The directory of `ifname` under [`bpffs_root`].
    pub fn for_interface(ifname: &str) -> Self {
        Self::new(&bpffs_root(), ifname)
    }

    /// Every interface with a pin directory under `root` (none when the directory is missing).
    pub fn all(root: &Path) -> Vec<(String, PinDir)> {
        let Ok(entries) = std::fs::read_dir(root.join(SUBDIR)) else {
            return Vec::new();
        };
        let mut found: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|name| {
                let dir = PinDir::new(root, &name);
                (name, dir)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The interface whose pins these are.
    pub fn interface(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    /// The pinned XDP link (present only for a classifier attached on its own: in libxdp's
    /// dispatcher, libxdp pins the link under `BPFFS/xdp/`).
    pub fn link(&self) -> PathBuf {
        self.path.join("link")
    }

    pub fn program(&self) -> PathBuf {
        self.path.join("prog")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn exists(&self) -> bool {
        self.program().exists()
    }

    /// Create the directory (and `xmacvlan/` above it).
    pub fn create(&self) -> Result<(), XdpError> {
        std::fs::create_dir_all(&self.path).map_err(|source| XdpError::Bpffs {
            path: self.path.clone(),
            source,
        })
    }

    /// Remove every pin and the directory. Once no process holds the link either, the kernel
    /// detaches the program: the last reference to a link is what keeps it attached.
    pub fn remove(&self) -> Result<(), XdpError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(XdpError::Bpffs {
                path: self.path.clone(),
                source,
            }),
        }
    }
}
