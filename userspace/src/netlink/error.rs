use std::fmt;

/// A failed netlink request: what was being done and the kernel's answer (with its errno).
#[derive(Debug)]
pub struct NetlinkError {
    pub what: String,
    pub errno: Option<i32>,
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    pub fn new(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self {
            what: what.into(),
            errno: errno_of(&source),
            source,
        }
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(errno) => {
                let os = std::io::Error::from_raw_os_error(errno);
                write!(f, "{}: {os}", self.what)?;
                if errno == libc::EPERM {
                    write!(f, " (run as root, or with CAP_NET_ADMIN)")?;
                }
                Ok(())
            }
            None => write!(f, "{}: {}", self.what, self.source),
        }
    }
}

impl std::error::Error for NetlinkError {}

/// The positive errno a netlink error carries, if any.
pub fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}
