//! The daemon's control socket between a root and a non-root peer (root: one thread drops to
//! uid 65534): mode 0600, the SO_PEERCRED check, and a server that survives garbage. Moved here
//! from the library's unit tests, which run without root.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use xmacvlan::ipc::socket::{ControlSocket, MAX_REQUEST, request};

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Q {
    Echo { text: String },
    Fail,
}

fn serve_in_background(sock: ControlSocket, requests: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut done = 0;
        while done < requests {
            done += sock.serve_pending(|q: Q| match q {
                Q::Echo { text } => Ok(text),
                Q::Fail => bail!("asked to fail"),
            });
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn temp_socket(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("xmv-{name}-{}", std::process::id()))
        .join("ctl.sock")
}

#[test]
fn answers_root_refuses_others_and_survives_garbage() {
    assert!(
        xmacvlan::sys::is_root(),
        "needs root, to act as both a root and a non-root peer: run `sudo -E cargo xtask test`"
    );
    let path = temp_socket("ctl");
    let sock = ControlSocket::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let server = serve_in_background(sock, 5);

    let echoed: String = request(&path, &Q::Echo { text: "hi".into() }).unwrap();
    assert_eq!(echoed, "hi");
    let err = request::<_, String>(&path, &Q::Fail).unwrap_err();
    assert!(format!("{err:#}").contains("asked to fail"));

    // Garbage, then an oversized line: error answers, and the server keeps serving.
    let raw = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(bytes).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        line
    };
    assert!(raw(b"{not json\n").contains("malformed request"));
    let mut big = vec![b'x'; MAX_REQUEST + 10];
    big.push(b'\n');
    assert!(raw(&big).contains("larger than"));

    // A non-root peer (this thread only drops to uid 65534): mode 0600 stops it at
    // connect; with the mode loosened, the SO_PEERCRED check still refuses it.
    let as_nobody = || {
        std::thread::scope(|s| {
            s.spawn(|| {
                xmacvlan::sys::set_thread_uid(65534).unwrap();
                request::<_, String>(&path, &Q::Echo { text: "x".into() }).unwrap_err()
            })
            .join()
            .unwrap()
        })
    };
    let refused = as_nobody();
    assert!(
        format!("{refused:#}").contains("is for root only (mode 0600): run this command as root"),
        "{refused:#}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = as_nobody();
    assert!(
        format!("{refused:#}").contains("serves root only"),
        "{refused:#}"
    );
    server.join().unwrap();
}
