//! Named network namespaces (`ip netns` compatible: a bind mount under /run/netns) and running
//! code inside one. Setting a namespace affects only the calling thread, so work "inside" a
//! namespace runs on a scoped thread that enters it and ends with it.
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub const NETNS_DIR: &str = "/run/netns";

/// Why a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace `{name}` does not exist (looked for {}); create it with \
         `ip netns add {name}`",
        .path.display()
    )]
    Missing { name: String, path: PathBuf },
    #[error("opening network namespace {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", not_a_namespace(.name, .path))]
    NotANamespace { name: String, path: PathBuf },
    #[error("setns into network namespace `{name}`")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A named network namespace. Dropping the value does not delete it: [`NetnsGuard`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Refer to an existing namespace by name or by path (`/run/netns/x`, `/proc/PID/ns/net`).
    pub fn open(name_or_path: &str) -> Result<Self, NetnsError> {
        let ns = Self {
            name: name_or_path.to_string(),
        };
        if !ns.path().exists() {
            return Err(NetnsError::Missing {
                name: ns.name,
                path: Self::path_of(name_or_path),
            });
        }
        Ok(ns)
    }

    /// Create a new, empty namespace named `name` (like `ip netns add NAME`).
    pub fn create(name: &str) -> Result<Self> {
        validate_name(name)?;
        std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
        make_netns_dir_shared()?;
        let ns = Self {
            name: name.to_string(),
        };
        let path = ns.path();
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "creating {}: does the namespace already exist?",
                    path.display()
                )
            })?;
        // unshare() moves the calling thread: do it on a throw-away thread so no other thread
        // of this process changes namespace.
        let mounted = std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                crate::sys::unshare_net().context("unshare(CLONE_NEWNET) (needs CAP_SYS_ADMIN)")?;
                crate::sys::bind_mount(Path::new("/proc/thread-self/ns/net"), &path).with_context(
                    || format!("bind-mounting the new namespace on {}", path.display()),
                )
            })
            .join()
            .expect("namespace creation thread panicked")
        });
        if let Err(e) = mounted {
            std::fs::remove_file(&path).ok();
            return Err(e);
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    /// Where namespace `name_or_path` lives: a path as given, a name under /run/netns.
    pub fn path_of(name_or_path: &str) -> PathBuf {
        if name_or_path.contains('/') {
            PathBuf::from(name_or_path)
        } else {
            Path::new(NETNS_DIR).join(name_or_path)
        }
    }

    /// Open the namespace, refusing a path that is not one (setns would say only EINVAL).
    pub fn file(&self) -> Result<File, NetnsError> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(source) => return Err(NetnsError::Open { path, source }),
        };
        if !is_namespace_file(&file) {
            return Err(NetnsError::NotANamespace {
                name: self.name.clone(),
                path,
            });
        }
        Ok(file)
    }

    /// Move the calling thread into this namespace for the rest of its life.
    pub fn enter_current_thread(&self) -> Result<(), NetnsError> {
        let file = self.file()?;
        self.enter(&file)
    }

    fn enter(&self, file: &File) -> Result<(), NetnsError> {
        crate::sys::setns_net(file.as_fd()).map_err(|source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        })
    }

    /// Run `f` on a thread inside this namespace and return its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        self.within(f)
    }

    /// [`Self::run`] for `f` with an error type of its own, which also takes the namespace's.
    pub fn within<T: Send, E: From<NetnsError> + Send>(
        &self,
        f: impl FnOnce() -> Result<T, E> + Send,
    ) -> Result<T, E> {
        let file = self.file()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                self.enter(&file)?;
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Delete the namespace (like `ip netns delete`). Links inside it are destroyed by the
    /// kernel once no process holds the namespace. Deleting a missing namespace succeeds.
    pub fn delete(&self) -> Result<()> {
        let path = self.path();
        if !path.exists() {
            return Ok(());
        }
        crate::sys::unmount_detach(&path)
            .with_context(|| format!("unmounting {}", path.display()))?;
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}

/// Deletes its namespace when dropped, also while unwinding from a panic.
#[derive(Debug)]
pub struct NetnsGuard {
    ns: Netns,
}

impl NetnsGuard {
    pub fn create(name: &str) -> Result<Self> {
        Ok(Self {
            ns: Netns::create(name)?,
        })
    }
}

impl std::ops::Deref for NetnsGuard {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.ns.delete() {
            eprintln!(
                "warning: could not delete network namespace `{}`: {e:#}",
                self.ns.name
            );
        }
    }
}

/// Every namespace file lives on the one nsfs instance: its device is that of our own.
fn is_namespace_file(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        file.metadata(),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(f), Ok(own)) => f.dev() == own.dev(),
        // Cannot tell: let setns decide.
        _ => true,
    }
}

/// Why a /run/netns file that is not a namespace usually is one somewhere else, and the fix.
fn not_a_namespace(name: &str, path: &Path) -> String {
    let hint = if path.starts_with(NETNS_DIR) {
        format!(
            "; it was most likely created from a shell with a mount namespace of its own \
             (inside `ip netns exec OTHER bash`, whose mounts do not propagate back), where the \
             namespace is mounted: run this command from that shell, or recreate `{name}` from \
             an ordinary shell (`ip netns del {name} && ip netns add {name}`) and run every \
             command there"
        )
    } else {
        String::new()
    };
    format!(
        "{} is not a network namespace here: it is a plain file, not a mounted namespace{hint}",
        path.display()
    )
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("invalid namespace name `{name}`: use 1-64 characters from [A-Za-z0-9._-]");
    }
    Ok(())
}

/// `ip netns` makes /run/netns a shared mount point bound on itself, so namespace mounts
/// propagate to other mount namespaces. Do the same once.
fn make_netns_dir_shared() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let already = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(NETNS_DIR));
    if !already {
        crate::sys::bind_mount(Path::new(NETNS_DIR), Path::new(NETNS_DIR))
            .with_context(|| format!("bind-mounting {NETNS_DIR} on itself"))?;
    }
    crate::sys::make_shared(Path::new(NETNS_DIR))
        .with_context(|| format!("making {NETNS_DIR} a shared mount"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_refused_with_the_reason() {
        let path = std::env::temp_dir().join(format!("xmv-not-a-netns-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let err = Netns::open(path.to_str().unwrap())
            .and_then(|ns| ns.file())
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("is not a network namespace here"), "{msg}");
        assert!(msg.contains("not a mounted namespace"), "{msg}");
        let hint = not_a_namespace("web1", Path::new("/run/netns/web1"));
        assert!(hint.contains("ip netns exec OTHER bash"), "{hint}");
        assert!(
            hint.contains("ip netns del web1 && ip netns add web1"),
            "{hint}"
        );
        assert!(!hint.contains("  "), "one space between words: {hint}");
    }

    #[test]
    fn a_real_namespace_file_is_accepted() {
        let ns = Netns::open("/proc/self/ns/net").unwrap();
        ns.file().unwrap();
    }
}
