//! The daemon's control socket as both ends see it: the [`protocol`] (one JSON request and
//! answer per line), the [`socket`] (listening, peer checks, the client call), finding a
//! running daemon ([`alive`], [`pid_path`]) and [`notify`] for commands that change the state
//! a daemon may be serving. The daemon, the CLI, the Docker and CNI plugins and `doctor` use
//! it; it imports none of them.
pub mod alive;
pub mod protocol;
pub mod socket;

use std::path::{Path, PathBuf};

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

/// The pid file sits beside the control socket: `/run/xmacvlan/xmacvlan.pid` by default.
pub fn pid_path(control_socket: &Path) -> PathBuf {
    control_socket.with_extension("pid")
}
