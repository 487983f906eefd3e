//! The optional memif secret: a client must send it in INIT or is refused. It lives in a file
//! readable by its owner only (daemon.json names the file, `port-secret-file`; the client
//! programs take `--secret-file`), never on a command line, where `ps` would show it.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::MemifError;
use super::wire::SECRET_SIZE;

/// Read the secret in `path`: 1 to 24 bytes, one trailing newline ignored, no NUL; the file
/// must not be readable or writable by group or others.
pub fn read_secret_file(path: &Path) -> Result<[u8; SECRET_SIZE], MemifError> {
    let unreadable = |source| MemifError::SecretUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MemifError::SecretNotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    if text.is_empty() || text.len() > SECRET_SIZE || text.contains(&0) {
        return Err(MemifError::SecretMalformed {
            path: path.to_path_buf(),
            len: text.len(),
        });
    }
    let mut secret = [0u8; SECRET_SIZE];
    secret[..text.len()].copy_from_slice(text);
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, contents: &[u8], mode: u32) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("xmv-secret-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_a_private_secret_and_refuses_bad_ones() {
        let ok = file("ok", b"s3cret\n", 0o600);
        let mut want = [0u8; SECRET_SIZE];
        want[..6].copy_from_slice(b"s3cret");
        assert_eq!(read_secret_file(&ok).unwrap(), want);
        let full = file("full", &[b'x'; SECRET_SIZE], 0o400);
        assert_eq!(read_secret_file(&full).unwrap(), [b'x'; SECRET_SIZE]);
        for (name, contents, mode, needle) in [
            ("open", &b"s3cret"[..], 0o644, "chmod 600"),
            ("empty", &b"\n"[..], 0o600, "1 to 24 bytes"),
            ("long", &[b'y'; 25][..], 0o600, "it has 25"),
            ("nul", &b"a\0b"[..], 0o600, "without NUL"),
        ] {
            let path = file(name, contents, mode);
            let err = format!(
                "{:#}",
                anyhow::Error::from(read_secret_file(&path).unwrap_err())
            );
            assert!(err.contains(needle), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            std::fs::remove_file(path).unwrap();
        }
        let missing = std::env::temp_dir().join("xmv-secret-missing");
        let err = format!(
            "{:#}",
            anyhow::Error::from(read_secret_file(&missing).unwrap_err())
        );
        assert!(err.contains("No such file"), "{err}");
        std::fs::remove_file(ok).unwrap();
        std::fs::remove_file(full).unwrap();
    }
}
