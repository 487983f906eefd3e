//! Why a control-path request failed. A caller decides on the variant (the CNI plugin its
//! error code, a CNI DEL whether a network is still in use), never on the text; the text
//! names the problem and the fix, and the kernel's, the namespace's, the state file's or the
//! DHCP server's error stays the source, so `{:#}` chains end with it.
use std::io;
use std::path::{Path, PathBuf};

use crate::dhcp::DhcpError;
use crate::netlink::NetlinkError;
use crate::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A flag, option, name or address that can never work as given.
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with what exists: a network or endpoint of that name, a parent or
    /// subnet another network has, an address, MAC or interface name in use, the parent's MTU.
    #[error("{0}")]
    Conflict(String),
    /// Something the request names is not there: a network, an endpoint, a parent.
    #[error("{0}")]
    NotFound(String),
    /// A network with endpoints cannot be removed.
    #[error(
        "network `{network}` has active endpoints ({}): remove them first with `xmacvlan \
         endpoint rm`",
        .endpoints.join(", ")
    )]
    NetworkInUse {
        network: String,
        endpoints: Vec<String>,
    },
    /// Every address the network hands out in one family is taken.
    #[error(
        "no free {family} address left on network `{network}`: remove an endpoint, or create \
         the network with a larger --ip-range or --subnet"
    )]
    NoFreeAddress {
        family: &'static str,
        network: String,
    },
    #[error(transparent)]
    Kernel(#[from] NetlinkError),
    #[error(transparent)]
    Namespace(#[from] NetnsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    /// A named step failed; the source says why.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: Box<ControlError>,
    },
    /// A create failed part way, and what it had made is gone again.
    #[error("{what} (nothing was left behind)")]
    RolledBack {
        what: String,
        #[source]
        source: Box<ControlError>,
    },
}

impl ControlError {
    /// The error under the names of the steps it happened in: what a caller decides on.
    pub fn cause(&self) -> &ControlError {
        match self {
            Self::Step { source, .. } | Self::RolledBack { source, .. } => source.cause(),
            other => other,
        }
    }

    /// This error, in the create named `what`, after everything that create made was undone.
    pub(crate) fn rolled_back(self, what: String) -> Self {
        Self::RolledBack {
            what,
            source: Box::new(self),
        }
    }
}

/// A value parsed from a request's text: its message says all there is.
impl From<super::model::UnknownMode> for ControlError {
    fn from(e: super::model::UnknownMode) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<crate::ether::MacError> for ControlError {
    fn from(e: crate::ether::MacError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Naming the step an error happened in (the control path's `with_context`).
pub(crate) trait During<T> {
    fn during(self, step: impl FnOnce() -> String) -> Result<T, ControlError>;
}

impl<T, E: Into<ControlError>> During<T> for Result<T, E> {
    fn during(self, step: impl FnOnce() -> String) -> Result<T, ControlError> {
        self.map_err(|e| ControlError::Step {
            step: step(),
            source: Box::new(e.into()),
        })
    }
}

/// Why the state under the data root could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An OS call on the state's files failed; `what` says which.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The same, refused for lack of privilege: the source says what it takes.
    #[error("{what}")]
    Denied {
        what: String,
        #[source]
        source: NeedsRoot,
    },
    #[error(
        "state file {} is corrupted ({reason}); it was left as it is: repair it, or move it \
         away to start from an empty state (the kernel objects it listed stay in place)",
        .path.display()
    )]
    Corrupted {
        path: PathBuf,
        reason: serde_json::Error,
    },
    #[error(
        "state file {} has version {found}, this xmacvlan understands version {understood}: \
         use the xmacvlan that wrote it",
        .path.display()
    )]
    Version {
        path: PathBuf,
        found: u32,
        understood: u32,
    },
}

impl StateError {
    /// An OS error on the data root's files in the step `what`; a permission error says what
    /// it takes, not only "Permission denied".
    pub(crate) fn io(what: String, data_root: &Path, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::PermissionDenied {
            Self::Denied {
                what,
                source: NeedsRoot {
                    data_root: data_root.to_path_buf(),
                    denied: e,
                },
            }
        } else {
            Self::Io { what, source: e }
        }
    }
}

/// EACCES on the data root, with what changing networks and endpoints takes.
#[derive(Debug, thiserror::Error)]
#[error(
    "{denied}: changing networks and endpoints creates kernel devices and writes {}: run it as \
     root (sudo xmacvlan ...) or with CAP_NET_ADMIN and write access to that directory (or \
     choose another --data-root)",
    .data_root.display()
)]
pub struct NeedsRoot {
    data_root: PathBuf,
    denied: io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_match_the_cause_under_the_steps() {
        let e: Result<(), _> = Err(ControlError::NetworkInUse {
            network: "n".into(),
            endpoints: vec!["a".into(), "b".into()],
        });
        let e = e
            .during(|| "removing network `n`".into())
            .unwrap_err()
            .rolled_back("tidying up".into());
        assert!(matches!(e.cause(), ControlError::NetworkInUse { .. }));
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "tidying up (nothing was left behind): removing network `n`: network `n` has \
             active endpoints (a, b): remove them first with `xmacvlan endpoint rm`"
        );
    }

    #[test]
    fn a_permission_error_says_what_it_takes_after_the_os_error() {
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let e = StateError::io("opening /x/state.lock".into(), Path::new("/x"), denied);
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "opening /x/state.lock: Permission denied (os error 13): changing networks and \
             endpoints creates kernel devices and writes /x: run it as root (sudo xmacvlan \
             ...) or with CAP_NET_ADMIN and write access to that directory (or choose another \
             --data-root)"
        );
    }
}
