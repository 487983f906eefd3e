//! A test double of an application port over plain memory: what a memif client would see,
//! without the memif protocol. Used only by the tests; allocates nothing after it is made.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use crossbeam_queue::ArrayQueue;
use xmacvlan::dataplane::port::for_each_piece;
use xmacvlan::dataplane::{AppPort, PortInfo, RxRefused, TxFrame};

/// Bytes per buffer: a 1500-byte MTU frame with its header fits.
pub const BUF: usize = 1536;

#[derive(Clone, Copy)]
pub struct Buf {
    pub len: u16,
    pub bytes: [u8; BUF],
}

impl Buf {
    pub fn new(frame: &[u8]) -> Self {
        let mut b = Buf {
            len: frame.len() as u16,
            bytes: [0; BUF],
        };
        b.bytes[..frame.len()].copy_from_slice(frame);
        b
    }

    pub fn frame(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// The application's side of a [`MemPort`].
#[derive(Clone)]
pub struct App {
    /// Frames delivered to the application.
    pub rx: Arc<ArrayQueue<Buf>>,
    /// Frames the application wants sent.
    pub tx: Arc<ArrayQueue<Buf>>,
    pub connected: Arc<AtomicBool>,
    pub flushes: Arc<AtomicU64>,
}

impl App {
    pub fn new(rx_capacity: usize, tx_capacity: usize) -> Self {
        Self {
            rx: Arc::new(ArrayQueue::new(rx_capacity)),
            tx: Arc::new(ArrayQueue::new(tx_capacity)),
            connected: Arc::new(AtomicBool::new(true)),
            flushes: Arc::default(),
        }
    }

    pub fn port(&self) -> Box<dyn AppPort> {
        Box::new(MemPort { app: self.clone() })
    }

    pub fn received(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = self.rx.pop() {
            out.push(b.frame().to_vec());
        }
        out
    }

    pub fn send(&self, frame: &[u8]) {
        assert!(self.tx.push(Buf::new(frame)).is_ok(), "test TX queue full");
    }
}

pub fn info(client: &str) -> PortInfo {
    PortInfo {
        client: client.into(),
        pid: std::process::id(),
        connected_at: SystemTime::now(),
    }
}

struct MemPort {
    app: App,
}

impl AppPort for MemPort {
    fn rx_push(&mut self, frame: &[&[u8]], strip_tag: bool) -> Result<(), RxRefused> {
        let mut b = Buf {
            len: 0,
            bytes: [0; BUF],
        };
        let mut len = 0;
        let mut fits = true;
        for_each_piece(frame, strip_tag, |piece| {
            match b.bytes.get_mut(len..len + piece.len()) {
                Some(dst) if fits => {
                    dst.copy_from_slice(piece);
                    len += piece.len();
                }
                _ => fits = false,
            }
        });
        if !fits {
            return Err(RxRefused::TooBig);
        }
        b.len = len as u16;
        self.app.rx.push(b).map_err(|_| RxRefused::NoBuffer)
    }

    fn rx_flush(&mut self) {
        self.app.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn tx_drain(&mut self, max: usize, send: &mut dyn FnMut(TxFrame<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(b) = self.app.tx.pop() else { break };
            send(TxFrame::Send(&[b.frame()]));
            n += 1;
        }
        n
    }

    fn is_connected(&self) -> bool {
        self.app.connected.load(Ordering::Relaxed)
    }
}
