//! Flow control for the generator ([`Pace`]): how many more frames it may send now, so that
//! tests counting every frame never overflow a ring between it and the receiver.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::generator::{Stream, StreamKind};

/// Flow control for tests that count every frame: the generator never has more frames in
/// flight than the rings between it and the receiver hold, so a busy CPU slows the traffic
/// down instead of overflowing a ring. (The bench sends unpaced: there, loss is the result.)
#[derive(Clone, Copy)]
pub struct Pace<'a> {
    /// At most this many frames sent but not yet taken by the wire's veth peer (the lab NIC,
    /// whose XDP runs on them) or dropped by it: the kernel's own counters of the wire,
    /// `tx_packets` (the peer's XDP receive count) and `tx_dropped`. A veth ring holds 256.
    pub before_xdp: u64,
    /// `(delivered, window)`: at most `window` frames sent to the counted streams and not yet
    /// counted by `delivered()` (frames the receiver got or counted as dropped).
    pub delivered: Option<(&'a (dyn Fn() -> u64 + Sync), u64)>,
    /// Which streams `delivered()` counts: by default every [`StreamKind::Endpoint`] stream.
    pub counted: Option<&'a [bool]>,
    /// What every generator sharing the wire has sent: the windows are over all of them.
    pub sent: &'a PaceSent,
    /// Fail when the window stays shut this long: frames went missing where nothing counts.
    pub stall: Duration,
}

/// Frames sent by the generators sharing a pace: in all, and to endpoint streams.
#[derive(Debug, Default)]
pub struct PaceSent {
    total: AtomicU64,
    to_endpoints: AtomicU64,
    /// The wire's counters when the first generator started (they never reset).
    base: std::sync::OnceLock<u64>,
}

impl<'a> Pace<'a> {
    /// The veth ring alone (tests whose receiver may drop on purpose, or is another process).
    pub fn wire(sent: &'a PaceSent) -> Self {
        Pace {
            before_xdp: 128,
            delivered: None,
            counted: None,
            sent,
            stall: Duration::from_secs(10),
        }
    }

    /// The veth ring and the receiver's rings (`window` below the smallest of them).
    pub fn delivered(
        sent: &'a PaceSent,
        delivered: &'a (dyn Fn() -> u64 + Sync),
        window: u64,
    ) -> Self {
        Pace {
            delivered: Some((delivered, window)),
            ..Pace::wire(sent)
        }
    }

    /// Count only the streams marked true (e.g. the endpoints that stay attached).
    pub fn counting(self, counted: &'a [bool]) -> Self {
        Pace {
            counted: Some(counted),
            ..self
        }
    }
}

/// The interface's tx_packets + tx_dropped in the calling thread's namespace (where the
/// generator runs).
fn wire_taken(ifname: &str) -> Result<u64> {
    let dev = crate::placed::DevStats::read(ifname)?;
    Ok(dev.tx_packets + dev.tx_dropped)
}

/// How many more frames the pace allows now; an error once it has been shut for too long.
pub(crate) struct Window<'a> {
    pace: Pace<'a>,
    ifname: String,
    base: u64,
    to_endpoint: Vec<bool>,
    shut_since: Option<Instant>,
}

impl<'a> Window<'a> {
    /// The window of a generator sending `streams` from `ifname` under `pace`.
    pub(crate) fn new(pace: Pace<'a>, ifname: &str, streams: &[Stream]) -> Result<Self> {
        let now = wire_taken(ifname)?;
        Ok(Window {
            pace,
            base: *pace.sent.base.get_or_init(|| now),
            ifname: ifname.to_string(),
            to_endpoint: match pace.counted {
                Some(c) if c.len() == streams.len() => c.to_vec(),
                Some(c) => bail!("the pace counts {} streams of {}", c.len(), streams.len()),
                None => streams
                    .iter()
                    .map(|s| matches!(s.kind, StreamKind::Endpoint(_)))
                    .collect(),
            },
            shut_since: None,
        })
    }

    pub(crate) fn room(&mut self) -> Result<usize> {
        let total = self.pace.sent.total.load(Ordering::Relaxed);
        let taken = wire_taken(&self.ifname)?.saturating_sub(self.base);
        let before_xdp = total.saturating_sub(taken);
        let mut room = self.pace.before_xdp.saturating_sub(before_xdp);
        let mut outstanding = 0;
        if let Some((delivered, window)) = self.pace.delivered {
            let to_endpoints = self.pace.sent.to_endpoints.load(Ordering::Relaxed);
            outstanding = to_endpoints.saturating_sub(delivered());
            room = room.min(window.saturating_sub(outstanding));
        }
        if room > 0 {
            self.shut_since = None;
        } else {
            let since = *self.shut_since.get_or_insert_with(Instant::now);
            if since.elapsed() > self.pace.stall {
                bail!(
                    "flow control: no progress for {:?}: {before_xdp} of {total} frames sent \
                     never reached {}'s peer (its tx_packets + tx_dropped), {outstanding} sent \
                     to endpoints never delivered: frames went missing where no counter sees them",
                    self.pace.stall,
                    self.ifname
                );
            }
        }
        Ok(room as usize)
    }

    pub(crate) fn sent(&self, stream: usize) {
        self.pace.sent.total.fetch_add(1, Ordering::Relaxed);
        if self.to_endpoint[stream] {
            self.pace.sent.to_endpoints.fetch_add(1, Ordering::Relaxed);
        }
    }
}
