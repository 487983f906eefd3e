//! A small memif client (the application side): it creates one sealed region holding both
//! rings and their buffers, connects to an endpoint's socket, and then receives and sends
//! frames in batches. `xmacvlan-sink`, `xmacvlan-reflect` and the tests use it; any other
//! memif client (DPDK, VPP, libmemif, gomemif) works the same way.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chain::gather;
use super::error::MemifError;
use super::shm::{DESC_FLAG_NEXT, Desc, RING_FLAG_MASK_INT, Region, Ring, ring_bytes};
use super::sock::{self, Received};
use super::wire::{
    self, ADD_RING_FLAG_C2S, AddRegion, AddRing, Init, MSG_SIZE, Msg, SECRET_SIZE, VERSION,
};
use crate::dataplane::MAX_FRAME;

/// Buffer sizes a client may choose (memif has no limit of its own; these keep a ring's
/// region within the daemon's default limits).
pub const MIN_BUFFER: u32 = 64;
pub const MAX_BUFFER: u32 = 65536;

/// The connection flags of the client programs (`xmacvlan-sink`, `xmacvlan-reflect`).
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The endpoint's socket (`<port-dir>/<endpoint>.sock`, default dir /run/xmacvlan/ports).
    pub socket: PathBuf,
    /// Name shown in the daemon's `stats` and logs [default: the program's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Poll the ring instead of sleeping on the eventfd (lower latency, one core busy).
    #[arg(long)]
    pub polling: bool,
    /// Ring size as a power of two.
    #[arg(long, default_value_t = 10)]
    pub log2_ring_size: u8,
    /// Bytes per buffer; a longer frame comes (and goes) in a chain of buffers.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(MIN_BUFFER as i64..=MAX_BUFFER as i64))]
    pub buffer_size: u32,
    /// A file holding the daemon's memif secret (its `port-secret-file`), if it has one.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Wait this many milliseconds after connecting before offering receive buffers, as a
    /// client that sets its rings up late does (DPDK's takes about 100 ms).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub offer_delay_ms: u64,
}

impl ClientArgs {
    /// Connect to the endpoint's port, named `--name` or else `program`.
    pub fn connect(&self, program: &str) -> Result<Client, MemifError> {
        let secret = self
            .secret_file
            .as_deref()
            .map(super::secret::read_secret_file)
            .transpose()?;
        let cfg = ClientConfig {
            name: self.name.clone().unwrap_or_else(|| program.to_string()),
            interrupt: !self.polling,
            log2_ring_size: self.log2_ring_size,
            buffer_size: self.buffer_size,
            secret,
            offer_delay: Duration::from_millis(self.offer_delay_ms),
            ..ClientConfig::default()
        };
        Client::connect(&self.socket, &cfg)
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent in INIT: the daemon shows it in `stats` and its logs.
    pub name: String,
    pub id: u32,
    pub log2_ring_size: u8,
    pub buffer_size: u32,
    pub secret: Option<[u8; SECRET_SIZE]>,
    /// Ask the daemon to write the receive ring's eventfd after each batch, so that
    /// [`Client::wait`] sleeps in poll instead of spinning.
    pub interrupt: bool,
    pub timeout: Duration,
    /// How long to wait after CONNECTED before offering the receive buffers.
    pub offer_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: "xmacvlan-client".into(),
            id: 0,
            log2_ring_size: 10,
            buffer_size: 2048,
            secret: None,
            interrupt: true,
            timeout: Duration::from_secs(5),
            offer_delay: Duration::ZERO,
        }
    }
}

pub struct Client {
    sock: OwnedFd,
    region: Arc<Region>,
    c2s: Ring,
    s2c: Ring,
    c2s_event: OwnedFd,
    s2c_event: OwnedFd,
    buffer_size: u32,
    /// Where the daemon's S2C tail was last seen, and our C2S head.
    s2c_seen: u16,
    c2s_head: u16,
    c2s_pending: u16,
    /// The endpoint name the daemon gave in HELLO.
    pub server: String,
    pub counters: ClientCounters,
    /// A frame read from the receive ring, whole.
    scratch: Box<[u8]>,
}

/// What the client saw of chained buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientCounters {
    /// Frames received in more than one buffer.
    pub rx_chained: u64,
    /// Received chains dropped: unterminated, longer than the largest frame, or outside the
    /// region (the daemon never sends these).
    pub rx_broken: u64,
    /// Frames sent in more than one buffer.
    pub tx_chained: u64,
}

fn recv_msg(sock: &OwnedFd, deadline: Instant) -> Result<Msg, MemifError> {
    let mut buf = [0u8; MSG_SIZE + 1];
    loop {
        match sock::recv(sock.as_fd(), &mut buf)
            .map_err(MemifError::io("reading the server's answer"))?
        {
            Received::Record { len, .. } if len == MSG_SIZE => {
                return Ok(Msg::decode(&buf[..MSG_SIZE])?);
            }
            Received::Record { len, .. } => return Err(MemifError::MessageLength(len)),
            Received::Closed => return Err(MemifError::Closed),
            Received::Empty => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(MemifError::Timeout);
                }
                crate::sys::poll_readable(
                    &[sock.as_raw_fd()],
                    left.as_millis().clamp(1, 1000) as i32,
                )
                .map_err(MemifError::io("waiting for the server's answer"))?;
            }
        }
    }
}

fn refused(code: u32, reason: &[u8]) -> MemifError {
    MemifError::Refused {
        code,
        reason: wire::field_text(reason),
    }
}

impl Client {
    pub fn connect(path: &Path, cfg: &ClientConfig) -> Result<Client, MemifError> {
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&cfg.buffer_size) {
            return Err(MemifError::BufferSize(cfg.buffer_size));
        }
        let deadline = Instant::now() + cfg.timeout;
        let sock = sock::connect(path)
            .map_err(MemifError::io(format!("connecting to {}", path.display())))?;
        let hello = match recv_msg(&sock, deadline)? {
            Msg::Hello(h) => h,
            Msg::Disconnect { code, reason } => return Err(refused(code, &reason)),
            other => return Err(MemifError::NoHello(other.kind())),
        };
        if hello.min_version > VERSION || hello.max_version < VERSION {
            return Err(MemifError::Version {
                min: hello.min_version,
                max: hello.max_version,
            });
        }
        if cfg.log2_ring_size > hello.max_log2_ring_size {
            return Err(MemifError::RingTooLarge {
                asked: cfg.log2_ring_size,
                max: hello.max_log2_ring_size,
            });
        }
        let n = 1u64 << cfg.log2_ring_size;
        let ring_len = ring_bytes(cfg.log2_ring_size).next_multiple_of(64);
        let buffers_at = 2 * ring_len;
        let size = buffers_at + 2 * n * cfg.buffer_size as u64;
        let region = Arc::new(
            Region::create("xmacvlan memif region 0", size as usize)
                .map_err(MemifError::io("creating the shared memory region"))?,
        );
        let c2s = Ring::new(region.clone(), 0, cfg.log2_ring_size)?;
        let s2c = Ring::new(region.clone(), ring_len, cfg.log2_ring_size)?;
        for (ring, first) in [(&c2s, 0u64), (&s2c, n)] {
            ring.init();
            for i in 0..n {
                ring.set_desc(
                    i as u16,
                    Desc {
                        flags: 0,
                        region: 0,
                        length: cfg.buffer_size,
                        offset: (buffers_at + (first + i) * cfg.buffer_size as u64) as u32,
                        metadata: 0,
                    },
                );
            }
        }
        s2c.set_flags(if cfg.interrupt { 0 } else { RING_FLAG_MASK_INT });
        let eventfd = || sock::eventfd().map_err(MemifError::io("creating the rings' eventfds"));
        let (c2s_event, s2c_event) = (eventfd()?, eventfd()?);
        let init = Msg::Init(Init {
            version: VERSION,
            id: cfg.id,
            mode: wire::MODE_ETHERNET,
            secret: cfg.secret.unwrap_or([0; SECRET_SIZE]),
            name: wire::name_field(&cfg.name),
        });
        let ring_msg = |flags, offset| {
            Msg::AddRing(AddRing {
                flags,
                index: 0,
                region: 0,
                offset,
                log2_ring_size: cfg.log2_ring_size,
                private_hdr_size: 0,
            })
        };
        let sends: [(Msg, Option<BorrowedFd<'_>>); 5] = [
            (init, None),
            (
                Msg::AddRegion(AddRegion { index: 0, size }),
                Some(region.fd()),
            ),
            (ring_msg(ADD_RING_FLAG_C2S, 0), Some(c2s_event.as_fd())),
            (ring_msg(0, ring_len as u32), Some(s2c_event.as_fd())),
            (
                Msg::Connect {
                    if_name: wire::name_field(&cfg.name),
                },
                None,
            ),
        ];
        for (msg, fd) in &sends {
            sock::send(sock.as_fd(), &msg.encode(), *fd)
                .map_err(MemifError::io(format!("sending {}", msg.kind())))?;
            match recv_msg(&sock, deadline)? {
                Msg::Ack => {}
                Msg::Connected { .. } if matches!(msg, Msg::Connect { .. }) => {}
                Msg::Disconnect { code, reason } => return Err(refused(code, &reason)),
                other => {
                    return Err(MemifError::Unexpected {
                        got: other.kind(),
                        sent: msg.kind(),
                    });
                }
            }
        }
        let client = Client {
            sock,
            region,
            c2s,
            s2c,
            c2s_event,
            s2c_event,
            buffer_size: cfg.buffer_size,
            s2c_seen: 0,
            c2s_head: 0,
            c2s_pending: 0,
            server: wire::field_text(&hello.name),
            counters: ClientCounters::default(),
            scratch: vec![0u8; MAX_FRAME].into_boxed_slice(),
        };
        // The server zeroed the indices at CONNECT: offer every receive buffer (now, or as
        // late as asked).
        std::thread::sleep(cfg.offer_delay);
        client.s2c.set_head(client.s2c.size());
        Ok(client)
    }

    /// Take every frame the daemon has published, handing each to `f` whole (a chain of
    /// buffers joined); the buffers go back to the daemon at once. Returns how many frames
    /// there were.
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let end = self.published();
        let mut buf = std::mem::take(&mut self.scratch);
        let mut frames = 0;
        while self.s2c_seen != end {
            if let Some(len) = self.take_frame(end, &mut buf) {
                f(&buf[..len]);
                frames += 1;
            }
        }
        self.scratch = buf;
        self.reoffer();
        frames
    }

    /// Send every received frame back after `edit` changed it in place (a reflector):
    /// returns (received, sent). A frame is taken only while the transmit ring has room for
    /// the longest one; the rest wait in the receive ring, so a reflector slows its sender
    /// down instead of dropping (a frame is not sent only if it is longer than `MAX_FRAME`).
    pub fn forward(&mut self, mut edit: impl FnMut(&mut [u8])) -> (usize, usize) {
        let end = self.published();
        let mut buf = std::mem::take(&mut self.scratch);
        let (mut received, mut sent) = (0, 0);
        // Back-pressure: take a frame only while the transmit ring has room for the longest
        // one, so none is dropped for want of room (the rest wait in the receive ring).
        let longest = MAX_FRAME.div_ceil(self.buffer_size as usize) as u16;
        while self.s2c_seen != end && self.c2s_room() >= longest {
            if let Some(len) = self.take_frame(end, &mut buf) {
                received += 1;
                edit(&mut buf[..len]);
                sent += usize::from(self.send(&buf[..len]));
            }
        }
        self.scratch = buf;
        if self.reoffer() {
            self.flush();
        }
        (received, sent)
    }

    /// The end of what the daemon has published (no further than a ring from what we saw).
    fn published(&self) -> u16 {
        let n = self
            .s2c
            .tail()
            .wrapping_sub(self.s2c_seen)
            .min(self.s2c.size());
        self.s2c_seen.wrapping_add(n)
    }

    /// Read the next published frame into `out`: its length, or None for a broken chain
    /// (counted). Its buffers are marked free again, for [`Self::reoffer`].
    fn take_frame(&mut self, end: u16, out: &mut [u8]) -> Option<usize> {
        let from = self.s2c_seen;
        let regions = std::slice::from_ref(&self.region);
        let (slots, frame) = match gather(&self.s2c, regions, from, end, out) {
            Ok(got) => (got.slots, got.frame.ok()),
            Err(_) => (1, None),
        };
        for k in 0..slots {
            self.s2c
                .set_desc_length(from.wrapping_add(k), self.buffer_size);
        }
        self.s2c_seen = from.wrapping_add(slots);
        match frame {
            Some(_) if slots > 1 => self.counters.rx_chained += 1,
            Some(_) => {}
            None => self.counters.rx_broken += 1,
        }
        frame
    }

    /// Offer every buffer taken since the last call back to the daemon; whether there were any.
    fn reoffer(&self) -> bool {
        let head = self.s2c_seen.wrapping_add(self.s2c.size());
        if self.s2c.head() == head {
            return false;
        }
        self.s2c.set_head(head);
        true
    }

    /// Queue one frame for the daemon, in a chain of buffers if it is longer than one; false
    /// if the ring has too few free buffers or the frame is longer than [`MAX_FRAME`]
    /// (nothing is queued then). Frames leave at [`Self::flush`].
    pub fn send(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        let size = self.buffer_size as usize;
        let needed = frame.len().div_ceil(size).max(1);
        let slot = self.c2s_head.wrapping_add(self.c2s_pending);
        let in_flight = slot.wrapping_sub(self.c2s.tail()) as usize;
        if in_flight + needed > self.c2s.size() as usize {
            return false;
        }
        for k in 0..needed {
            let chunk = &frame[k * size..frame.len().min((k + 1) * size)];
            let at = slot.wrapping_add(k as u16);
            let d = self.c2s.desc(at);
            // Our own descriptors: offsets we laid out inside our region.
            self.region.write(d.offset as u64, chunk);
            self.c2s.set_desc(
                at,
                Desc {
                    flags: if k + 1 < needed { DESC_FLAG_NEXT } else { 0 },
                    length: chunk.len() as u32,
                    ..d
                },
            );
        }
        self.c2s_pending += needed as u16;
        if needed > 1 {
            self.counters.tx_chained += 1;
        }
        true
    }

    /// Publish the queued frames (one index store; an eventfd write only if the daemon asks).
    pub fn flush(&mut self) {
        if self.c2s_pending == 0 {
            return;
        }
        self.c2s_head = self.c2s_head.wrapping_add(self.c2s_pending);
        self.c2s_pending = 0;
        self.c2s.set_head(self.c2s_head);
        // Pairs with the daemon's fence between unmasking and its last look at head
        // (`ServerPort::tx_arm`): without it the kick could be skipped while it sleeps.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if self.c2s.flags() & RING_FLAG_MASK_INT == 0 {
            sock::kick(self.c2s_event.as_fd());
        }
    }

    /// Free buffers in the transmit ring, after what is queued and not yet taken.
    fn c2s_room(&self) -> u16 {
        let in_flight = self
            .c2s_head
            .wrapping_add(self.c2s_pending)
            .wrapping_sub(self.c2s.tail());
        self.c2s.size().saturating_sub(in_flight)
    }

    /// Frames sent but not yet taken by the daemon.
    pub fn tx_in_flight(&self) -> u16 {
        self.c2s_head.wrapping_sub(self.c2s.tail())
    }

    /// Sleep until the daemon signals frames or the control socket has something (interrupt
    /// mode), or for up to `timeout` (polling mode sleeps a tenth of it, at most 1 ms).
    pub fn wait(&self, timeout: Duration) -> Result<(), MemifError> {
        if self.s2c.tail() != self.s2c_seen {
            return Ok(());
        }
        if self.s2c.flags() & RING_FLAG_MASK_INT == 0 {
            let ms = timeout.as_millis().clamp(1, 1000) as i32;
            crate::sys::poll_readable(&[self.s2c_event.as_raw_fd(), self.sock.as_raw_fd()], ms)
                .map_err(MemifError::io("waiting for frames"))?;
            sock::drain_eventfd(self.s2c_event.as_fd());
        } else {
            std::thread::sleep((timeout / 10).min(Duration::from_millis(1)));
        }
        Ok(())
    }

    /// Why the daemon ended the connection, if it did (a DISCONNECT or a closed socket).
    pub fn disconnected(&self) -> Option<String> {
        let mut buf = [0u8; MSG_SIZE + 1];
        match sock::recv(self.sock.as_fd(), &mut buf) {
            Ok(Received::Empty) => None,
            Ok(Received::Closed) => Some("the daemon closed the connection".into()),
            Ok(Received::Record { len: MSG_SIZE, .. }) => match Msg::decode(&buf[..MSG_SIZE]) {
                Ok(Msg::Disconnect { code, reason }) => Some(format!(
                    "DISCONNECT (code {code}): {}",
                    wire::field_text(&reason)
                )),
                Ok(other) => Some(format!("unexpected {} from the daemon", other.kind())),
                Err(e) => Some(format!("malformed message from the daemon: {e}")),
            },
            Ok(Received::Record { len, .. }) => {
                Some(format!("a {len}-byte message from the daemon"))
            }
            Err(e) => Some(format!("control socket: {e}")),
        }
    }

    /// Say goodbye properly (DISCONNECT) and close.
    pub fn close(self, reason: &str) {
        sock::send(
            self.sock.as_fd(),
            &Msg::disconnect(0, reason).encode(),
            None,
        )
        .ok();
    }
}
