//! The uncompressed kernel (`vmlinux`) out of a bzImage: under TCG it boots about twice as
//! fast as the bzImage, whose decompressor runs emulated. The bzImage's setup header says
//! where the compressed payload is; Debian's kernels compress it with XZ (6.1) or zstd (6.19
//! and later), and the build appends the uncompressed size as a little-endian u32.
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// (name, magic, decompressor command) of the payload formats handled.
const FORMATS: &[(&str, &[u8], &[&str])] = &[
    (
        "XZ",
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
        &["xz", "-dc", "--single-stream"],
    ),
    ("zstd", &[0x28, 0xb5, 0x2f, 0xfd], &["zstd", "-dcq"]),
    ("gzip", &[0x1f, 0x8b], &["gzip", "-dc"]),
];

/// Write the ELF kernel inside `bzimage` to `out`.
pub(super) fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let payload = payload(&data)
        .with_context(|| format!("{} is not a bzImage with a payload", bzimage.display()))?;
    let (name, _, command) = FORMATS
        .iter()
        .find(|(_, magic, _)| payload.starts_with(magic))
        .with_context(|| {
            format!(
                "the payload of {} is compressed in a format this harness does not know \
                 (magic {:02x?}; known: XZ, zstd, gzip)",
                bzimage.display(),
                &payload[..payload.len().min(6)]
            )
        })?;
    let want = u32::from_le_bytes(payload[payload.len() - 4..].try_into().expect("4 bytes"));
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "running {} (install it: see `cargo xtask deps`)",
                command[0]
            )
        })?;
    // The decompressor may stop reading at the end of its stream: a failed write is harmless.
    child.stdin.take().expect("piped").write_all(payload).ok();
    // Its exit code is not the verdict: zstd rejects the size the build appends after the
    // frame. The result is: an ELF file of exactly the size the build recorded.
    let _ = child.wait()?;
    let mut head = [0u8; 4];
    let got = fs::metadata(out)?.len();
    let is_elf = fs::File::open(out)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && head == *b"\x7fELF";
    if !is_elf || got as u32 != want {
        fs::remove_file(out).ok();
        bail!(
            "decompressing the {name} payload of {} gave {got} bytes{} (the build recorded {want})",
            bzimage.display(),
            if is_elf { "" } else { ", not an ELF file" }
        );
    }
    Ok(())
}

/// The compressed payload of a bzImage (boot protocol 2.08+: `payload_offset` and
/// `payload_length` at 0x248, relative to the protected-mode code after the setup sectors).
fn payload(data: &[u8]) -> Option<&[u8]> {
    if data.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *data.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = data.get(start..start + u32_at(0x24c)?)?;
    (payload.len() > 4).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::payload;

    #[test]
    fn finds_the_payload_from_the_setup_header() {
        let mut image = vec![0u8; 4096];
        image[0x1f1] = 3;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        let at = 4 * 512 + 100;
        image[at..at + 8].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4]);
        assert_eq!(payload(&image), Some(&image[at..at + 8]));
        image[0x202] = b'X';
        assert_eq!(payload(&image), None, "no setup header");
        assert_eq!(payload(&[0u8; 16]), None, "too short");
    }
}
