//! A log file that rotates by size: `daemon.log` → `daemon.log.1` → ... → `daemon.log.N-1`,
//! the oldest dropped, so at most `max_file` files exist and the newest lines are always in
//! the base file.
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_file: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Open (append to) `path`, creating it and its directory if needed.
    pub fn open(path: &Path, max_size: u64, max_file: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = Self::open_file(path, false)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_size: max_size.max(1),
            max_file: max_file.max(1),
            file,
            size,
        })
    }

    fn open_file(path: &Path, truncate: bool) -> io::Result<File> {
        let mut options = OpenOptions::new();
        options.create(true).mode(0o640);
        if truncate {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        options.open(path)
    }

    /// `path.N` (N ≥ 1): the Nth older file.
    pub fn rotated_path(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shift every file one place older and start an empty base file.
    pub fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let keep = self.max_file - 1;
        if keep > 0 {
            for n in (1..keep).rev() {
                let from = self.rotated_path(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated_path(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated_path(1))?;
        }
        self.file = Self::open_file(&self.path, true)?;
        self.size = 0;
        Ok(())
    }

    fn make_room_for(&mut self, len: usize) -> io::Result<()> {
        if self.size > 0 && self.size + len as u64 > self.max_size {
            self.rotate()?;
        }
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.make_room_for(buf.len())?;
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    /// One log line arrives as one `write_all`: rotate before it, never in the middle.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.make_room_for(buf.len())?;
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
