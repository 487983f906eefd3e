//! The client's shared memory: regions (memfds the client passed) mapped into the daemon, and
//! the rings inside them. One of the crate's `unsafe` modules: every access to mapped memory
//! goes through here, bounds-checked against the mapping first.
//!
//! The client can write this memory at any moment. Nothing here hands out a reference into
//! it (which would let the compiler assume it does not change): frame bytes are copied with
//! raw copies, ring indices are atomics, descriptors are read once, as one 16-byte value.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

pub use super::refusal::{RegionError, RingError};
use super::wire::COOKIE;

/// The ring header: cookie, flags and head in the first cache line, tail in the second,
/// descriptors from the third (`memif_ring_t` with 64-byte cache lines).
pub const RING_HEADER: usize = 128;
pub const DESC_SIZE: usize = 16;
const HEAD_AT: usize = 6;
const FLAGS_AT: usize = 4;
const TAIL_AT: usize = 64;
/// Ring flag: the receiver polls; the sender need not write the ring's eventfd.
pub const RING_FLAG_MASK_INT: u16 = 1;
/// Descriptor flag: the frame continues in the next descriptor.
pub const DESC_FLAG_NEXT: u16 = 1;

/// One mapped region.
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing in it is tied to a
// thread, and every access goes through the bounds-checked, race-tolerant methods below.
unsafe impl Send for Region {}
// SAFETY: as above: concurrent accesses are raw copies and atomics, never references.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} bytes, fd {})", self.len, self.fd.as_raw_fd())
    }
}

fn last_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

impl Region {
    /// Map a region a client sent. The memfd must be sealed against shrinking and at least
    /// `size` bytes long: then the client cannot truncate it under the daemon, and no access
    /// within `size` can raise SIGBUS.
    pub fn from_client(fd: OwnedFd, size: u64, max_size: u64) -> Result<Region, RegionError> {
        if size == 0 || size > max_size {
            return Err(RegionError::Size {
                size,
                max: max_size,
            });
        }
        // SAFETY: fcntl on a descriptor we own; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(RegionError::NotMemfd(io::Error::last_os_error()));
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(RegionError::NotSealed);
        }
        // SAFETY: fstat writes one stat struct into the zeroed value we pass.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat struct; `fd` is open.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(RegionError::Fstat(io::Error::last_os_error()));
        }
        if (st.st_size as u64) < size {
            return Err(RegionError::Short {
                has: st.st_size as u64,
                size,
            });
        }
        Self::map(fd, size as usize).map_err(RegionError::Map)
    }

    /// Create a sealed region of `size` bytes (the client side).
    pub fn create(name: &str, size: usize) -> io::Result<Region> {
        let name = std::ffi::CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in region name"))?;
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC)
        };
        if raw < 0 {
            return last_error("memfd_create");
        }
        // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain fcntl/ftruncate calls on the descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
            return last_error("ftruncate of the region");
        }
        // SAFETY: as above; F_ADD_SEALS takes an int.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
            return last_error("sealing the region");
        }
        Self::map(fd, size)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Region> {
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return last_error("mmap of the region");
        }
        let base = NonNull::new(ptr.cast()).expect("mmap returned a non-null address");
        Ok(Region { base, len, fd })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `len` bytes at `offset` lie inside the region.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.len as u64)
    }

    /// Copy `dst.len()` bytes from `offset`; false (nothing copied) if outside the region.
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> bool {
        if !self.contains(offset, dst.len() as u64) {
            return false;
        }
        // SAFETY: the source range lies inside the mapping (checked above) and `dst` is our
        // own buffer; the client may write the source concurrently, which can only garble
        // its own frame.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset as usize),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        true
    }

    /// Copy `src` to `offset`; false (nothing copied) if outside the region.
    pub fn write(&self, offset: u64, src: &[u8]) -> bool {
        if !self.contains(offset, src.len() as u64) {
            return false;
        }
        // SAFETY: the destination range lies inside the mapping (checked above); `src` is
        // ours and cannot overlap the client's shared mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.base.as_ptr().add(offset as usize),
                src.len(),
            )
        };
        true
    }

    fn atomic_u16(&self, at: usize) -> &AtomicU16 {
        assert!(
            at.is_multiple_of(2) && at + 2 <= self.len,
            "ring field outside the region"
        );
        // SAFETY: in bounds and aligned (asserted; the base is page-aligned); AtomicU16 has
        // u16's layout, and atomics are the sound way to share a word with another process.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU16>() }
    }

    fn atomic_u32(&self, at: usize) -> &AtomicU32 {
        assert!(
            at.is_multiple_of(4) && at + 4 <= self.len,
            "ring field outside the region"
        );
        // SAFETY: as for atomic_u16.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU32>() }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this length and nothing refers to it
        // any more (references never escape this module's methods).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A buffer descriptor, as read in one piece from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Desc {
    pub flags: u16,
    pub region: u16,
    pub length: u32,
    pub offset: u32,
    pub metadata: u32,
}

impl Desc {
    pub fn from_bytes(b: [u8; DESC_SIZE]) -> Desc {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        Desc {
            flags: u16::from_le_bytes([b[0], b[1]]),
            region: u16::from_le_bytes([b[2], b[3]]),
            length: u32_at(4),
            offset: u32_at(8),
            metadata: u32_at(12),
        }
    }

    pub fn to_bytes(self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..2].copy_from_slice(&self.flags.to_le_bytes());
        b[2..4].copy_from_slice(&self.region.to_le_bytes());
        b[4..8].copy_from_slice(&self.length.to_le_bytes());
        b[8..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.metadata.to_le_bytes());
        b
    }
}

/// The bytes a ring of `1 << log2` descriptors occupies.
pub fn ring_bytes(log2: u8) -> u64 {
    RING_HEADER as u64 + ((DESC_SIZE as u64) << log2)
}

/// One ring inside a region.
#[derive(Debug, Clone)]
pub struct Ring {
    region: Arc<Region>,
    at: usize,
    size: u16,
}

impl Ring {
    /// The ring at `offset` of `region` with `1 << log2` descriptors, if it fits, is aligned
    /// and carries the cookie.
    pub fn new(region: Arc<Region>, offset: u64, log2: u8) -> Result<Ring, RingError> {
        if log2 > 15 {
            return Err(RingError::TooLarge(log2));
        }
        let bytes = ring_bytes(log2);
        if !offset.is_multiple_of(8) {
            return Err(RingError::Misaligned(offset));
        }
        if !region.contains(offset, bytes) {
            return Err(RingError::DoesNotFit {
                bytes,
                offset,
                region: region.len() as u64,
            });
        }
        Ok(Ring {
            region,
            at: offset as usize,
            size: 1 << log2,
        })
    }

    /// Lay out a fresh ring (the client side): cookie, zero indices and flags.
    pub fn init(&self) {
        self.region
            .atomic_u32(self.at)
            .store(COOKIE, Ordering::Relaxed);
        self.set_flags(0);
        self.set_head(0);
        self.set_tail(0);
    }

    pub fn cookie(&self) -> u32 {
        self.region.atomic_u32(self.at).load(Ordering::Acquire)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn mask(&self) -> u16 {
        self.size.wrapping_sub(1)
    }

    pub fn flags(&self) -> u16 {
        self.region
            .atomic_u16(self.at + FLAGS_AT)
            .load(Ordering::Relaxed)
    }

    pub fn set_flags(&self, flags: u16) {
        self.region
            .atomic_u16(self.at + FLAGS_AT)
            .store(flags, Ordering::Relaxed)
    }

    pub fn head(&self) -> u16 {
        self.region
            .atomic_u16(self.at + HEAD_AT)
            .load(Ordering::Acquire)
    }

    pub fn set_head(&self, v: u16) {
        self.region
            .atomic_u16(self.at + HEAD_AT)
            .store(v, Ordering::Release)
    }

    pub fn tail(&self) -> u16 {
        self.region
            .atomic_u16(self.at + TAIL_AT)
            .load(Ordering::Acquire)
    }

    pub fn set_tail(&self, v: u16) {
        self.region
            .atomic_u16(self.at + TAIL_AT)
            .store(v, Ordering::Release)
    }

    fn desc_at(&self, slot: u16) -> u64 {
        (self.at + RING_HEADER + DESC_SIZE * (slot & self.mask()) as usize) as u64
    }

    /// The descriptor of `slot` (taken modulo the ring size), read once.
    pub fn desc(&self, slot: u16) -> Desc {
        let mut b = [0u8; DESC_SIZE];
        let ok = self.region.read(self.desc_at(slot), &mut b);
        debug_assert!(
            ok,
            "descriptors lie inside the ring checked at construction"
        );
        Desc::from_bytes(b)
    }

    pub fn set_desc(&self, slot: u16, d: Desc) {
        self.region.write(self.desc_at(slot), &d.to_bytes());
    }

    /// Only the length field (the server's answer on an S2C descriptor).
    pub fn set_desc_length(&self, slot: u16, length: u32) {
        self.region
            .write(self.desc_at(slot) + 4, &length.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_region_is_sealed_and_maps_back() {
        let r = Region::create("t", 8192).unwrap();
        assert!(r.write(100, b"hello"));
        let dup = r.fd().try_clone_to_owned().unwrap();
        let m = Region::from_client(dup, 8192, 1 << 20).unwrap();
        let mut got = [0u8; 5];
        assert!(m.read(100, &mut got));
        assert_eq!(&got, b"hello");
        assert!(!m.read(8190, &mut got), "a read past the end is refused");
        assert!(!m.write(u64::MAX - 2, b"abc"), "offset overflow is refused");
    }

    #[test]
    fn unsealed_short_or_oversized_regions_are_refused() {
        let r = Region::create("t", 4096).unwrap();
        let dup = || r.fd().try_clone_to_owned().unwrap();
        assert!(
            Region::from_client(dup(), 8192, 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("fewer than")
        );
        assert!(
            Region::from_client(dup(), 4096, 1024)
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let err = Region::from_client(file.into(), 4096, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a sealable memfd"), "{err}");
    }

    #[test]
    fn ring_layout_and_bounds() {
        let r = Arc::new(Region::create("t", 4096).unwrap());
        assert!(
            Ring::new(r.clone(), 0, 7).is_ok(),
            "128 + 128 * 16 fits 4096"
        );
        assert!(
            Ring::new(r.clone(), 0, 8).is_err(),
            "128 + 256 * 16 does not"
        );
        assert!(Ring::new(r.clone(), 4, 2).is_err(), "misaligned");
        assert!(Ring::new(r.clone(), 0, 16).is_err());
        let ring = Ring::new(r.clone(), 0, 2).unwrap();
        ring.init();
        ring.set_head(3);
        ring.set_tail(2);
        ring.set_desc(
            5,
            Desc {
                flags: 1,
                region: 2,
                length: 3,
                offset: 4,
                metadata: 5,
            },
        );
        let mut raw = [0u8; 256];
        assert!(r.read(0, &mut raw));
        assert_eq!(&raw[0..4], &COOKIE.to_le_bytes());
        assert_eq!(&raw[6..8], &[3, 0]);
        assert_eq!(&raw[64..66], &[2, 0]);
        // slot 5 of 4 is slot 1: 128 + 16.
        assert_eq!(
            &raw[144..160],
            &[1, 0, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]
        );
        assert_eq!(ring.desc(1).offset, 4);
    }
}
