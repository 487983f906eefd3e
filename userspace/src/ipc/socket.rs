//! The daemon's control socket: a Unix stream socket (mode 0600), one JSON request per line
//! and one JSON response per line. Only root peers are served (SO_PEERCRED), requests are
//! size-limited, and a malformed request gets an error response, never a crash.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest request accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The response envelope: `{"ok": true, "data": …}` or `{"ok": false, "error": "…"}`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Response<T> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Bind `path` (creating its directory), refusing if another daemon answers there;
    /// a stale socket file left by a crash is replaced.
    pub fn bind(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "another xmacvlan daemon is listening on {}; stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serve connections waiting right now; `handle` turns a request into a response.
    /// Returns the number of requests served.
    pub fn serve_pending<Q: DeserializeOwned, A: Serialize>(
        &self,
        mut handle: impl FnMut(Q) -> Result<A>,
    ) -> usize {
        let mut served = 0;
        while let Ok((stream, _)) = self.listener.accept() {
            if let Err(e) = serve_one(stream, &mut handle) {
                tracing::warn!("control socket: {e:#}");
            }
            served += 1;
        }
        served
    }
}

/// Readable when a connection waits: the daemon's loop sleeps in poll(2) on it.
impl std::os::fd::AsRawFd for ControlSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

fn serve_one<Q: DeserializeOwned, A: Serialize>(
    mut stream: UnixStream,
    handle: &mut impl FnMut(Q) -> Result<A>,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let (pid, uid, _) = crate::sys::peer_credentials(&stream)?;
    let reply: Response<A> = if uid != 0 {
        error(format!(
            "permission denied: the control socket serves root only (peer pid {pid} uid {uid})"
        ))
    } else {
        match read_request(&stream) {
            Err(e) => error(format!("{e:#}")),
            Ok(line) => match serde_json::from_str::<Q>(&line) {
                Err(e) => error(format!("malformed request: {e}")),
                Ok(request) => match handle(request) {
                    Ok(data) => Response {
                        ok: true,
                        data: Some(data),
                        error: None,
                    },
                    Err(e) => error(format!("{e:#}")),
                },
            },
        }
    };
    let mut text = serde_json::to_string(&reply)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    Ok(())
}

fn error<A>(message: String) -> Response<A> {
    Response {
        ok: false,
        data: None,
        error: Some(message),
    }
}

fn read_request(stream: &UnixStream) -> Result<String> {
    let mut line = String::new();
    let mut limited = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    limited
        .read_line(&mut line)
        .context("reading the request")?;
    if line.len() > MAX_REQUEST {
        bail!("request larger than {MAX_REQUEST} bytes");
    }
    if !line.ends_with('\n') {
        bail!("request must be one line of JSON ending in a newline");
    }
    Ok(line)
}

/// Send one request to the daemon at `path` and return its data, or its error as an error.
pub fn request<Q: Serialize, A: DeserializeOwned>(path: &Path, request: &Q) -> Result<A> {
    let stream = UnixStream::connect(path).map_err(|e| connect_error(&e, path))?;
    request_on(stream, request)
}

/// Why the daemon could not be reached, by cause: each needs a different fix.
pub fn connect_error(e: &std::io::Error, path: &Path) -> anyhow::Error {
    use std::io::ErrorKind::{ConnectionRefused, NotFound, PermissionDenied};
    let shown = path.display();
    match e.kind() {
        PermissionDenied => anyhow::anyhow!(
            "the daemon's control socket {shown} is for root only (mode 0600): run this command \
             as root (sudo xmacvlan ...)"
        ),
        NotFound => anyhow::anyhow!(
            "no xmacvlan daemon is running ({shown} does not exist): start one with `xmacvlan \
             daemon`, or pass the --control-socket it uses"
        ),
        ConnectionRefused => anyhow::anyhow!(
            "no xmacvlan daemon answers on {shown} (a daemon that died left the socket): start \
             one with `xmacvlan daemon`"
        ),
        _ => anyhow::anyhow!("connecting to the xmacvlan daemon at {shown}: {e}"),
    }
}

/// [`request`] over a connected stream.
pub fn request_on<Q: Serialize, A: DeserializeOwned>(
    mut stream: UnixStream,
    request: &Q,
) -> Result<A> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the daemon's answer")?;
    let response: Response<A> =
        serde_json::from_str(&line).with_context(|| format!("malformed answer: {line}"))?;
    match (response.ok, response.data, response.error) {
        (true, Some(data), _) => Ok(data),
        (_, _, Some(e)) => bail!("daemon: {e}"),
        _ => bail!("daemon: empty answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(tag = "op", rename_all = "kebab-case")]
    enum Q {
        Echo { text: String },
    }

    fn temp_socket(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("xmv-{name}-{}", std::process::id()))
            .join("ctl.sock")
    }

    #[test]
    fn an_absent_daemon_is_named_as_such() {
        let path = temp_socket("absent");
        let err = request::<_, String>(&path, &Q::Echo { text: "x".into() }).unwrap_err();
        assert!(
            format!("{err:#}").contains("no xmacvlan daemon is running"),
            "{err:#}"
        );
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let err = request::<_, String>(&path, &Q::Echo { text: "x".into() }).unwrap_err();
        assert!(
            format!("{err:#}").contains("a daemon that died left the socket"),
            "{err:#}"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_to_steal_a_live_socket_and_replaces_a_stale_one() {
        let path = temp_socket("live");
        let first = ControlSocket::bind(&path).unwrap();
        let err = ControlSocket::bind(&path)
            .err()
            .expect("second daemon refused");
        assert!(format!("{err:#}").contains("another xmacvlan daemon"));
        drop(first);
        assert!(!path.exists(), "socket file removed on drop");

        // A crash leaves the file behind with nobody listening: it is replaced.
        let stale = temp_socket("stale");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        drop(ControlSocket::bind(&stale).unwrap());
    }
}
