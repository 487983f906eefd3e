//! Chained buffers: a frame longer than one buffer travels in consecutive descriptors, each
//! but the last flagged `DESC_FLAG_NEXT` (as DPDK's `net_memif`, VPP and libmemif do).
//! Reading one back ([`gather`]) is the same for both directions: the daemon reads the
//! client's transmit ring, the client reads its receive ring.
//!
//! A chain must be complete when the sender publishes it: a "next" flag on the last
//! published descriptor is a broken chain, refused at once instead of waited for (a client
//! that never finishes it would otherwise stall its ring for good).
use std::sync::Arc;

use super::port::Fault;
use super::shm::{DESC_FLAG_NEXT, Desc, Region, Ring};
use crate::dataplane::TxRefused;

/// The region holding `len` bytes of a descriptor's buffer, or the fault the descriptor
/// commits.
pub fn locate<'a>(regions: &'a [Arc<Region>], d: &Desc, len: u32) -> Result<&'a Region, Fault> {
    let region = regions.get(d.region as usize).ok_or(Fault::BadRegion)?;
    if !region.contains(d.offset as u64, len as u64) {
        return Err(Fault::OutsideRegion);
    }
    Ok(region)
}

/// One frame read back from a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// Descriptors it took (all of them go back to their owner, whatever the outcome).
    pub slots: u16,
    /// The frame's length in the output buffer, or why it was refused.
    pub frame: Result<usize, TxRefused>,
}

/// Copy the frame whose first descriptor is `from` into `out`, following "next" flags up to
/// `end` (the first descriptor not published). `from != end`, and no more than the ring's
/// size lie between them (the caller checked the index). A chain longer than `out` is read
/// to its end and refused; a descriptor outside its region is a fault.
pub fn gather(
    ring: &Ring,
    regions: &[Arc<Region>],
    from: u16,
    end: u16,
    out: &mut [u8],
) -> Result<Gathered, Fault> {
    let mut slot = from;
    let mut len = 0usize;
    let mut too_long = false;
    loop {
        let d = ring.desc(slot);
        slot = slot.wrapping_add(1);
        let region = locate(regions, &d, d.length)?;
        let n = d.length as usize;
        match out.get_mut(len..len + n) {
            Some(dst) if !too_long => {
                region.read(d.offset as u64, dst);
                len += n;
            }
            _ => too_long = true,
        }
        let slots = slot.wrapping_sub(from);
        if d.flags & DESC_FLAG_NEXT == 0 {
            let frame = if too_long {
                Err(TxRefused::TooLong)
            } else {
                Ok(len)
            };
            return Ok(Gathered { slots, frame });
        }
        if slot == end {
            return Ok(Gathered {
                slots,
                frame: Err(TxRefused::Unterminated),
            });
        }
    }
}
