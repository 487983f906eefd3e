//! An application port as the thread serving its endpoint drives it: what it counts, how a
//! received frame is pushed into it, and the checks and tagging every frame the application
//! transmits goes through before it leaves the NIC.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::port::{AppPort, MAX_FRAME, PortInfo, RxRefused, TxFrame, contiguous, frame_len};
use super::queue::NicQueue;
use crate::abi::Mac;
use crate::frame::{ETH_HLEN, TPID_8021Q};
use crate::xdp::ClaimSwitch;
use crate::xsk::{RxSocket, StageError, TxBatch};

crate::counter_set! {
    /// What went through an application port.
    pub struct PortCounts (live PortCounters) in "port" {
        /// Frames copied into the application's ring.
        rx_frames: Frames(direction = "rx"), "RX";
        /// Bytes of those frames, untagged.
        rx_bytes: Bytes(direction = "rx"), "RX-BYTES";
        /// Frames the application sent that were handed to the NIC (DEV-DROP: of those, the
        /// ones its driver dropped).
        tx_frames: Frames(direction = "tx"), "TX";
        /// Bytes of those frames, untagged.
        tx_bytes: Bytes(direction = "tx"), "TX-BYTES";
        /// Received frames the application had too few free buffers for (its ring full).
        drop_ring_full: Dropped(reason = "ring_full"), "RING-FULL";
        /// Received frames longer than the application's whole receive ring holds, chained.
        drop_rx_too_big: Dropped(reason = "rx_too_big"), "RX-TOO-BIG";
        /// Received frames that arrived after the port disconnected, before it was reaped.
        drop_not_connected: Dropped(reason = "not_connected"), "NOT-CONN";
        /// Transmitted frames whose source MAC is not the endpoint's.
        drop_spoofed: Dropped(reason = "spoofed"), "SPOOFED";
        /// Transmitted frames longer than the NIC's MTU allows (14-byte header + MTU).
        drop_too_big: Dropped(reason = "too_big"), "TOO-BIG";
        /// Transmitted frames shorter than an Ethernet header (14 bytes).
        drop_runt: Dropped(reason = "runt"), "RUNT";
        /// Transmitted frames that already carry an 802.1Q or 802.1ad tag.
        drop_tagged: Dropped(reason = "tagged"), "TAGGED";
        /// Transmitted frames for which the queue had no free UMEM frame.
        drop_no_frame: Dropped(reason = "no_frame"), "NO-FRAME";
        /// Transmitted chains of buffers the port refused: unterminated, or longer than the
        /// largest frame ([`super::port::TxRefused`]).
        drop_bad_chain: Dropped(reason = "bad_chain"), "BAD-CHAIN";
        /// Transmitted frames the NIC's driver dropped after taking them (in TX): copy mode,
        /// its queue was full (a veth whose peer's ring is full does this).
        drop_device: Dropped(reason = "device"), "DEV-DROP";
        /// Times the client offered no receive buffer for the stall time: its endpoint's
        /// frames went to the kernel device until it offered buffers again.
        stalls: Info, "STALLS";
    }
}

impl PortCounts {
    /// Received frames not delivered to the application, by any reason.
    pub fn rx_dropped(&self) -> u64 {
        self.drop_ring_full + self.drop_rx_too_big + self.drop_not_connected
    }

    /// The application's frames that did not leave, by any reason.
    pub fn tx_dropped(&self) -> u64 {
        self.drop_spoofed
            + self.drop_too_big
            + self.drop_runt
            + self.drop_tagged
            + self.drop_no_frame
            + self.drop_bad_chain
            + self.drop_device
    }
}

impl PortCounters {
    /// Frames the port has taken so far: copied into the application's ring, or dropped there
    /// (counted): what a paced generator waits for.
    pub fn received(&self) -> u64 {
        self.rx_frames.load(Relaxed)
            + self.drop_ring_full.load(Relaxed)
            + self.drop_rx_too_big.load(Relaxed)
            + self.drop_not_connected.load(Relaxed)
    }
}

/// A port's numbers at one moment (`stats`, Prometheus, and what reaping returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSnapshot {
    pub client: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub connected_since: u64,
    /// False once the application disconnected (the port waits to be reaped).
    pub connected: bool,
    /// Whether the endpoint's frames come to the port now: false until its client offers
    /// receive buffers, and after it stalled (absent in older snapshots: claimed).
    #[serde(default = "claimed_by_default")]
    pub claimed: bool,
    #[serde(flatten)]
    pub counts: PortCounts,
}

impl PortSnapshot {
    pub fn read(info: &PortInfo, link: &PortLink) -> Self {
        Self {
            client: info.client.clone(),
            pid: info.pid,
            connected_since: info
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            connected: link.connected.load(Relaxed),
            claimed: link.claimed.load(Relaxed),
            counts: link.counters.read(),
        }
    }

    pub fn connected_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.connected_since)
    }
}

fn claimed_by_default() -> bool {
    true
}

/// A snapshot reads as its counts (`snapshot.rx_frames`).
impl std::ops::Deref for PortSnapshot {
    type Target = PortCounts;
    fn deref(&self) -> &PortCounts {
        &self.counts
    }
}

/// What the serving thread and the control side share of a connected port.
#[derive(Debug, Default)]
pub struct PortLink {
    pub counters: PortCounters,
    /// False once the serving thread saw `is_connected()` turn false: the control side then
    /// reaps the port.
    pub connected: AtomicBool,
    /// Whether the classifier sends the endpoint's frames to the port now (kept by the
    /// serving thread; always true for a port claimed regardless of its client).
    pub claimed: AtomicBool,
}

/// Why a frame from the application may not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    Send,
    Runt,
    Tagged,
    Spoofed,
    TooBig,
}

/// The checks on a frame the application wants to send from endpoint `mac`: at least an
/// Ethernet header, no tag of its own (the dataplane inserts the endpoint's), the endpoint's
/// source MAC, and no longer than `14 + mtu` bytes.
#[inline]
pub fn check_tx(frame: &[u8], mac: &Mac, mtu: usize) -> TxVerdict {
    if frame.len() < ETH_HLEN {
        return TxVerdict::Runt;
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        return TxVerdict::Tagged;
    }
    if frame[6..12] != mac[..] {
        return TxVerdict::Spoofed;
    }
    if frame.len() > ETH_HLEN + mtu {
        return TxVerdict::TooBig;
    }
    TxVerdict::Send
}

const TPID_8021AD: u16 = 0x88a8;

/// The 802.1Q tag for VLAN `vid` (priority 0), as it goes on the wire.
pub(super) fn vlan_tag(vid: u16) -> [u8; 4] {
    let tpid = TPID_8021Q.to_be_bytes();
    let tci = (vid & 0x0fff).to_be_bytes();
    [tpid[0], tpid[1], tci[0], tci[1]]
}

/// A connected port as the serving thread holds it.
pub struct ServedPort {
    pub port: Box<dyn AppPort>,
    pub link: Arc<PortLink>,
    /// Counts of the batch being served, published once per batch.
    pub batch: PortCounts,
    /// Where a frame the application sends in several segments is joined before it is
    /// staged; made the first time one comes (memif ports hand over one segment).
    joined: Option<Box<[u8]>>,
    /// The endpoint's claim, when it is claimed only while its client is ready
    /// ([`super::ClaimPolicy::WhileConnected`]).
    claim: Option<Claim>,
}

/// How often a thread looks whether a client awaited offers receive buffers (see
/// [`ServedPort::awaiting_buffers`]): the longest its frames go to its kernel device after it
/// does.
pub(super) const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a client may offer no receive buffer before its endpoint's frames go to its
/// kernel device instead: it is not reading (stopped, or stuck). Frames meanwhile are
/// RING-FULL drops; once it offers buffers again its frames are claimed again.
pub(super) const STALL: std::time::Duration = std::time::Duration::from_millis(500);

/// An endpoint's claim while its port is connected, kept by the serving thread: claimed only
/// while the client is connected and reading. Each change is one map update (a syscall),
/// never one per frame.
pub struct Claim {
    switch: ClaimSwitch,
    slot: u32,
    claimed: bool,
    /// Since when (monotonic ns) the client has offered no buffer while claimed.
    starved_since: Option<u64>,
}

impl Claim {
    pub fn new(switch: ClaimSwitch, slot: u32) -> Self {
        Self {
            switch,
            slot,
            claimed: false,
            starved_since: None,
        }
    }

    /// Follow the client: claim once it offers receive buffers (not at its handshake: a
    /// client that has not offered any would have its frames dropped), release at once when
    /// it goes, and when it has offered none for [`STALL`].
    #[inline]
    fn follow(&mut self, live: bool, offered: usize, counts: &mut PortCounts) {
        let (want, starved_since) = claim_wanted(
            self.claimed,
            live,
            offered,
            self.starved_since,
            crate::sys::monotonic_ns,
        );
        self.starved_since = starved_since;
        if want == self.claimed {
            return;
        }
        if !want && live {
            counts.stalls += 1;
        }
        match self.switch.set(self.slot, want) {
            Ok(()) => self.claimed = want,
            // Left as it was; the next pass tries again.
            Err(e) => crate::logging::warn(format_args!("endpoint slot {}: {e:#}", self.slot)),
        }
    }
}

/// The claim rule: whether an endpoint should be claimed, and since when its client has been
/// starved, given whether it is claimed now, whether its client is connected, how many
/// receive buffers it offers, and since when it has offered none (`now` is read only when
/// needed).
fn claim_wanted(
    claimed: bool,
    live: bool,
    offered: usize,
    starved_since: Option<u64>,
    now: impl Fn() -> u64,
) -> (bool, Option<u64>) {
    match (live, offered, starved_since) {
        (false, _, _) => (false, None),
        // Not claimed yet (or released after a stall): only once it offers buffers.
        (true, 0, _) if !claimed => (false, None),
        (true, 0, None) => (true, Some(now())),
        (true, 0, Some(since)) => (
            now().saturating_sub(since) < STALL.as_nanos() as u64,
            Some(since),
        ),
        (true, _, _) => (true, None),
    }
}

impl ServedPort {
    /// A port handed to its serving thread; with `claim`, the thread claims the endpoint's
    /// frames as the client becomes ready and releases them as it goes.
    pub fn new(port: Box<dyn AppPort>, link: Arc<PortLink>, claim: Option<Claim>) -> Self {
        link.connected.store(true, Relaxed);
        link.claimed.store(claim.is_none(), Relaxed);
        Self {
            port,
            link,
            batch: PortCounts::default(),
            joined: None,
            claim,
        }
    }

    /// Whether the endpoint waits for its client to offer receive buffers before it is
    /// claimed (just connected, or released after a stall): no frame comes to wake the
    /// serving thread meanwhile, so it must look at the client's ring now and then.
    pub fn awaiting_buffers(&self) -> bool {
        self.claim.as_ref().is_some_and(|c| !c.claimed) && self.link.connected.load(Relaxed)
    }

    /// Claim or release the endpoint by its client's state (see [`Claim`]); once per pass.
    #[inline]
    pub fn follow_client(&mut self, live: bool) {
        if let Some(claim) = self.claim.as_mut() {
            claim.follow(live, self.port.rx_offered(), &mut self.batch);
            self.link.claimed.store(claim.claimed, Relaxed);
        }
    }

    /// Whether the port is still usable; the first time it is not, say so to the control side.
    #[inline]
    pub fn check_live(&mut self) -> bool {
        if !self.link.connected.load(Relaxed) {
            return false;
        }
        if self.port.is_connected() {
            return true;
        }
        self.link.connected.store(false, Relaxed);
        false
    }

    /// Copy one received frame (its segments) into the application's ring, its tag stripped
    /// if the endpoint is tagged and the frame still carries one (a NIC may have taken it off
    /// already). Returns whether it was pushed; the drop is counted by reason if not.
    #[inline]
    pub fn push(&mut self, frame: &[&[u8]], endpoint_tagged: bool) -> bool {
        let head = frame.first().copied().unwrap_or_default();
        let tagged = endpoint_tagged
            && head.len() >= 14
            && u16::from_be_bytes([head[12], head[13]]) == TPID_8021Q;
        match self.port.rx_push(frame, tagged) {
            Ok(()) => {
                self.batch.rx_frames += 1;
                self.batch.rx_bytes += (frame_len(frame) - if tagged { 4 } else { 0 }) as u64;
                true
            }
            Err(RxRefused::NoBuffer) => {
                self.batch.drop_ring_full += 1;
                false
            }
            Err(RxRefused::TooBig) => {
                self.batch.drop_rx_too_big += 1;
                false
            }
            Err(RxRefused::NotConnected) => {
                self.batch.drop_not_connected += 1;
                false
            }
        }
    }

    #[inline]
    pub fn publish(&mut self) {
        self.link.counters.publish(&mut self.batch);
    }
}

/// Frames taken from a port per round: what one copy-mode kick transmits (the kernel's
/// generic XDP path sends at most 32 per sendto), so no frame waits for a later kick.
pub(super) const TX_PER_ROUND: usize = 32;

/// Drain up to one round of `p`'s frames onto `socket` (a socket of `queue`); returns the
/// frames taken from the application (sent or dropped by reason). A full TX ring or an empty
/// TX pool takes nothing: the frames wait in the application's ring, its own back-pressure;
/// other endpoints never wait.
#[inline]
pub(super) fn transmit(
    p: &mut ServedPort,
    socket: &mut RxSocket,
    queue: &NicQueue,
    batch: &mut TxBatch,
    mac: &Mac,
    tag: Option<[u8; 4]>,
    mtu: usize,
) -> usize {
    let pool = &queue.tx;
    // No more than the TX ring and the queue's TX pool can take now, counting a chain of
    // chunks for each frame as long as the MTU allows: what does not fit waits in the
    // application's ring instead of being taken and dropped. (Another thread may take pool
    // frames meanwhile; then the shortfall is a counted `no_frame` drop.)
    let per_frame = queue.umem.tx_chunks(ETH_HLEN + mtu + 4).unwrap_or(1);
    let room = (socket.tx_room() / per_frame)
        .min(pool.len() / per_frame)
        .min(TX_PER_ROUND);
    if room == 0 {
        if socket.tx_pending() {
            p.batch.drop_device += socket.tx_kick();
        }
        return 0;
    }
    let counts = &mut p.batch;
    let joined = &mut p.joined;
    let taken = p.port.tx_drain(room, &mut |item| {
        let TxFrame::Send(segments) = item else {
            counts.drop_bad_chain += 1;
            return;
        };
        // Staging takes one slice: a frame in several segments is joined first.
        let frame = match segments {
            [one] => *one,
            _ => {
                let buf = joined.get_or_insert_with(|| vec![0; MAX_FRAME].into_boxed_slice());
                let Some(frame) = contiguous(segments, buf) else {
                    counts.drop_too_big += 1;
                    return;
                };
                frame
            }
        };
        match check_tx(frame, mac, mtu) {
            TxVerdict::Send => match batch.stage(&queue.umem, pool, frame, tag) {
                Ok(()) => {
                    counts.tx_frames += 1;
                    counts.tx_bytes += frame.len() as u64;
                }
                Err(StageError::TooBig) => counts.drop_too_big += 1,
                Err(StageError::NoFrame | StageError::BatchFull) => counts.drop_no_frame += 1,
            },
            TxVerdict::Runt => counts.drop_runt += 1,
            TxVerdict::Tagged => counts.drop_tagged += 1,
            TxVerdict::Spoofed => counts.drop_spoofed += 1,
            TxVerdict::TooBig => counts.drop_too_big += 1,
        }
    });
    if batch.is_empty() {
        if socket.tx_pending() {
            // Frames an earlier kick left (kernel busy): kick again.
            counts.drop_device += socket.tx_kick();
        }
        return taken;
    }
    let staged = batch.len();
    let sent = batch.submit(socket, pool);
    counts.drop_device += socket.tx_kick();
    if sent < staged {
        // Cannot happen (room was checked), but never uncounted.
        let lost = (staged - sent) as u64;
        counts.tx_frames -= lost;
        counts.drop_no_frame += lost;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [2, 0, 0, 0, 0, 1];

    fn frame(src: Mac, ethertype: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(14)];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f.truncate(len);
        f
    }

    #[test]
    fn tx_checks_in_order() {
        let check = |f: Vec<u8>| check_tx(&f, &MAC, 1500);
        assert_eq!(check(frame(MAC, 0x0800, 60)), TxVerdict::Send);
        assert_eq!(check(frame(MAC, 0x0800, 14)), TxVerdict::Send);
        assert_eq!(check(frame(MAC, 0x0800, 13)), TxVerdict::Runt);
        assert_eq!(check_tx(&[], &MAC, 1500), TxVerdict::Runt);
        assert_eq!(check(frame(MAC, 0x8100, 64)), TxVerdict::Tagged);
        assert_eq!(check(frame(MAC, 0x88a8, 64)), TxVerdict::Tagged);
        let other = [2, 0, 0, 0, 0, 2];
        assert_eq!(check(frame(other, 0x0800, 64)), TxVerdict::Spoofed);
        assert_eq!(check(frame(MAC, 0x0800, 1514)), TxVerdict::Send);
        assert_eq!(check(frame(MAC, 0x0800, 1515)), TxVerdict::TooBig);
    }

    #[test]
    fn claimed_once_buffers_come_released_when_gone_or_starved() {
        let stall = STALL.as_nanos() as u64;
        let at = |t: u64| move || t;
        // Connected, no buffer offered yet: not claimed; then claimed once some are.
        assert_eq!(claim_wanted(false, true, 0, None, at(5)), (false, None));
        assert_eq!(claim_wanted(false, true, 64, None, at(5)), (true, None));
        // Claimed and starved: still claimed until the stall time has passed, then released.
        assert_eq!(claim_wanted(true, true, 0, None, at(10)), (true, Some(10)));
        assert_eq!(
            claim_wanted(true, true, 0, Some(10), at(10 + stall - 1)),
            (true, Some(10))
        );
        assert_eq!(
            claim_wanted(true, true, 0, Some(10), at(10 + stall)),
            (false, Some(10))
        );
        // Released after a stall, buffers offered again: claimed again.
        assert_eq!(claim_wanted(false, true, 1, Some(10), at(99)), (true, None));
        // A buffer between: the starvation clock starts over.
        assert_eq!(claim_wanted(true, true, 3, Some(10), at(99)), (true, None));
        // Gone: released at once, whatever it offered.
        assert_eq!(claim_wanted(true, false, 64, None, at(5)), (false, None));
    }

    #[test]
    fn tag_bytes() {
        assert_eq!(vlan_tag(100), [0x81, 0x00, 0x00, 100]);
        assert_eq!(vlan_tag(4094), [0x81, 0x00, 0x0f, 0xfe]);
    }
}
