//! The one error type of the netlink boundary: what was being done, and the kernel's answer
//! (its errno) as the source, so `{:#}` chains end with it and callers can match on it.
use std::io;

/// A failed netlink request.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The NETLINK_ROUTE socket (or the runtime driving it) could not be set up.
    #[error("{what}")]
    Connect {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request, or its answer could not be read.
    #[error("{what}")]
    Request {
        what: String,
        #[source]
        source: KernelError,
    },
    #[error("no interface named `{name}` (check `ip link show`)")]
    NoSuchLink { name: String },
    /// EEXIST creating a device under its final name in another namespace.
    #[error(
        "cannot create macvlan `{name}`: an interface with that name already exists in the \
         target namespace (choose another --ifname)"
    )]
    NameTaken { name: String },
    /// EOPNOTSUPP creating a VLAN device.
    #[error(
        "cannot create VLAN sub-interface `{name}`: this kernel has no 802.1Q support \
         (CONFIG_VLAN_8021Q is not set and module `8021q` is not loaded; try `modprobe 8021q`, \
         or use a kernel built with it)"
    )]
    NoVlanSupport { name: String },
    /// EEXIST creating a VLAN device: `holder` says which device has the VLAN id already.
    #[error(
        "cannot create VLAN sub-interface `{name}`: {holder}; a parent takes one device per \
         VLAN id"
    )]
    VlanTaken { name: String, holder: String },
}

impl NetlinkError {
    /// A request described by `what` that failed with `source`.
    pub fn new(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Request {
            what: what.into(),
            source: KernelError::from(source),
        }
    }

    /// The positive errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request {
                source: KernelError::Errno(errno),
                ..
            } => Some(*errno),
            Self::NameTaken { .. } | Self::VlanTaken { .. } => Some(libc::EEXIST),
            Self::NoVlanSupport { .. } => Some(libc::EOPNOTSUPP),
            Self::Connect { source, .. } => source.raw_os_error(),
            Self::Request { .. } | Self::NoSuchLink { .. } => None,
        }
    }
}

/// The kernel's answer to a request: an errno, or (rarely) a failure with none, such as an
/// answer that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The OS error's text; EPERM says what it takes.
    #[error("{}{}", io::Error::from_raw_os_error(*.0), if *.0 == libc::EPERM { " (run as root, or with CAP_NET_ADMIN)" } else { "" })]
    Errno(i32),
    #[error(transparent)]
    Other(rtnetlink::Error),
}

impl From<rtnetlink::Error> for KernelError {
    fn from(e: rtnetlink::Error) -> Self {
        match errno_of(&e) {
            Some(errno) => Self::Errno(errno),
            None => Self::Other(e),
        }
    }
}

/// The positive errno a netlink error carries, if any.
pub fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_ends_with_the_errno_and_what_it_takes() {
        let e = NetlinkError::Request {
            what: "setting link #3 up".into(),
            source: KernelError::Errno(libc::EPERM),
        };
        assert_eq!(e.to_string(), "setting link #3 up");
        assert_eq!(e.errno(), Some(libc::EPERM));
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "setting link #3 up: Operation not permitted (os error 1) (run as root, or with \
             CAP_NET_ADMIN)"
        );
        let taken = NetlinkError::NameTaken {
            name: "eth0".into(),
        };
        assert_eq!(taken.errno(), Some(libc::EEXIST));
        assert!(taken.to_string().contains("choose another --ifname"));
    }
}
