//! `xmacvlan daemon`: the long-running owner of the dataplane, driven over a control socket
//! by the CLI (`endpoint create|rm` attach and detach live, `stats` reads from it).
pub mod alive;
pub mod metrics;
pub mod protocol;
pub mod run;
pub mod server;
pub mod socket;
pub mod stats;
pub mod watch;

use std::path::Path;

use protocol::{Answer, Request};

/// What became of telling the daemon about an endpoint change.
#[derive(Debug)]
pub enum Notified {
    /// No daemon listens on the socket: the change takes effect when one starts.
    NoDaemon,
    Answered(Answer),
}

/// Tell the daemon at `socket`, if one runs. A daemon that refuses is an error; a missing one
/// is not (the state file is what the daemon reads when it starts).
pub fn notify(socket: &Path, request: &Request) -> anyhow::Result<Notified> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match std::os::unix::net::UnixStream::connect(socket) {
        Err(e) if matches!(e.kind(), NotFound | ConnectionRefused) => Ok(Notified::NoDaemon),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("connecting to {}", socket.display()))),
        Ok(stream) => socket::request_on(stream, request).map(Notified::Answered),
    }
}
