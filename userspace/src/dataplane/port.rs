//! The application side of an endpoint: a port (a memif connection, see `crate::memif`) that
//! the dataplane copies received frames into and takes the application's frames from.
//!
//! The one dataplane thread that serves the endpoint is the only caller once the port is
//! handed over: no method blocks, allocates, or makes more than one syscall per batch.
//! Everything the client controls (ring indices, descriptors, lengths) is read once and
//! checked by the implementation; a misbehaving client can only hurt its own port.
use std::time::SystemTime;

/// A connected application's port, as the dataplane drives it.
pub trait AppPort: Send {
    /// Copy one received frame into the application's next free receive buffer. With
    /// `strip_tag`, bytes 12..16 (the endpoint's 802.1Q tag) are left out, so the application
    /// sees the frame as a macvlan device on the VLAN sub-interface would show it. Returns
    /// false when the application has no free buffer (its ring is full) or the frame does
    /// not fit one; the caller counts the drop. Frames become visible at [`Self::rx_flush`].
    fn rx_push(&mut self, frame: &[u8], strip_tag: bool) -> bool;

    /// Publish every frame pushed since the last flush: one store of the ring index and, if
    /// the application asked for interrupts, at most one eventfd write.
    fn rx_flush(&mut self);

    /// Hand up to `max` frames the application queued for transmission to `send`, oldest
    /// first, then give their buffers back to the application. `send` copies the bytes out
    /// before it returns. Returns how many frames were handed over.
    fn tx_drain(&mut self, max: usize, send: &mut dyn FnMut(&[u8])) -> usize;

    /// False once the application disconnected or broke the protocol: the dataplane then
    /// detaches the port, and the endpoint's frames go to its kernel device again.
    fn is_connected(&self) -> bool;

    /// The eventfd the application writes after queueing frames for transmission while the
    /// port is armed ([`Self::tx_arm`]); the serving thread blocks on it. None: the port
    /// gives no signal, and the thread then sleeps at most a millisecond while it is
    /// connected.
    fn tx_event(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// Ask the application to signal its next transmission (`armed`, before the serving
    /// thread blocks) or not to (while the thread polls anyway). When arming, returns whether
    /// frames are already queued: then the thread must not block. Shared memory only.
    fn tx_arm(&mut self, armed: bool) -> bool {
        let _ = armed;
        false
    }
}

/// Who is attached to a port, for `stats` and the logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortInfo {
    /// The name the client gave in its memif INIT message.
    pub client: String,
    /// The client's pid (from `SO_PEERCRED`).
    pub pid: u32,
    pub connected_at: SystemTime,
}
