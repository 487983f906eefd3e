//! Why a memif port could not be set up, on either side: the daemon's sockets
//! ([`super::PortServer`]), a client's connection ([`super::Client`]), the secret file. Once a
//! client is connected, what goes wrong is a [`super::refusal::Refusal`] (sent to it whole).
use std::io;
use std::path::PathBuf;

use super::client::{MAX_BUFFER, MIN_BUFFER};
use super::refusal::RingError;
use super::wire::{DecodeError, SECRET_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum MemifError {
    /// An OS call failed; `what` says which step.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    // The server's side.
    #[error("the port socket directory {} must be an absolute path", .0.display())]
    RelativeDir(PathBuf),
    #[error("endpoint name {0:?} cannot name a socket file")]
    BadEndpointName(String),
    #[error("endpoint {0} already has a port")]
    AlreadyServed(String),
    #[error("{} exists and is not a socket: move it away", .0.display())]
    NotASocket(PathBuf),

    // A client's side.
    #[error("buffer size {0} is outside {MIN_BUFFER}..={MAX_BUFFER} bytes")]
    BufferSize(u32),
    /// The server sent DISCONNECT during the handshake: its reason, as sent.
    #[error("the server refused the connection (code {code}): {reason}")]
    Refused { code: u32, reason: String },
    #[error("the server sent a {0}-byte message")]
    MessageLength(usize),
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    #[error("the server closed the connection")]
    Closed,
    #[error("no answer from the server in time")]
    Timeout,
    #[error("expected HELLO, the server sent {0}")]
    NoHello(&'static str),
    #[error("the server speaks memif {min:#x}..{max:#x}, not 2.0")]
    Version { min: u16, max: u16 },
    #[error("ring size 2^{asked} is over the server's 2^{max}")]
    RingTooLarge { asked: u8, max: u8 },
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("unexpected {got} from the server after {sent}")]
    Unexpected {
        got: &'static str,
        sent: &'static str,
    },

    // The shared secret's file.
    #[error("reading the memif secret file {}", .path.display())]
    SecretUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the memif secret file {path} is open to group or others (mode {mode:o}): \
         `chmod 600 {path}`",
        path = .path.display()
    )]
    SecretNotPrivate { path: PathBuf, mode: u32 },
    #[error(
        "the memif secret in {path} must be 1 to {SECRET_SIZE} bytes without NUL (it has {len}): \
         e.g. `head -c 12 /dev/urandom | base64 > {path}`",
        path = .path.display()
    )]
    SecretMalformed { path: PathBuf, len: usize },
}

impl MemifError {
    /// An OS call's failure, with the step it was in.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
