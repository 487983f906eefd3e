//! The kernel baseline's application for the runs through ports: what a container on Docker's
//! macvlan would run instead of a memif client. One thread on the receive core reads every
//! endpoint's macvlan device with a plain AF_PACKET socket (`recvmmsg`, each frame readable as
//! soon as it arrives) and either times every frame (sink) or sends it back out of the same
//! device with its MACs swapped (reflector, `sendmmsg`). Idle, it blocks in epoll on the
//! sockets after a short spin, like the memif clients and the dataplane's threads.
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::afpacket::raw::{Frames, RawSocket};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use xmacvlan::dataplane::{HotLoop, IdlePolicy, Sleeper, latency_histogram, pin};
use xmacvlan::frame::read_payload;

use crate::apps::AppKind;
use crate::background::{self, Background};
use crate::lab::Lab;

#[derive(Debug)]
pub(super) struct KernelAppFinished {
    /// Frames the application read.
    pub received: u64,
    /// Frames it sent back (reflector).
    pub reflected: u64,
    /// Frames read on an endpoint's device that were not addressed to it: must be 0.
    pub misdelivered: u64,
    /// Sink: generator stamp to the application's read.
    pub latency: Histogram<u64>,
}

pub(super) struct KernelApp {
    /// Frames read so far, all endpoints.
    pub received: Arc<AtomicU64>,
    reader: Background<KernelAppFinished>,
}

impl KernelApp {
    /// Open a socket on every endpoint's host-namespace macvlan (call from a thread in the
    /// lab's host namespace) and start serving them as `kind` on `core`.
    pub(super) fn start(lab: &Lab, kind: AppKind, core: usize) -> Result<KernelApp> {
        let mut sockets = Vec::with_capacity(lab.endpoints.len());
        for (i, spec) in lab.endpoints.iter().enumerate() {
            let (index, device) = lab.host_device(i)?;
            let socket = RawSocket::open(index)
                .with_context(|| format!("opening an AF_PACKET socket on {device}"))?;
            sockets.push((socket, spec.mac));
        }
        let received = Arc::new(AtomicU64::new(0));
        let published = received.clone();
        // It spins briefly after work, then blocks on its sockets, as the dataplane's threads
        // and the memif clients do: the comparison is of paths, not of polling budgets.
        let mut sleeper = background::sleeper_on(
            sockets.iter().map(|(s, _)| s.as_raw_fd()),
            IdlePolicy::default(),
        )?;
        let reader = Background::spawn("xmv-kernel-app", move |stop| {
            serve(&sockets, kind, core, &published, stop, &mut sleeper)
        })?;
        Ok(KernelApp { received, reader })
    }

    /// Stop (once nothing came for a moment) and collect.
    pub(super) fn stop(self) -> Result<KernelAppFinished> {
        self.reader.stop()
    }
}

/// After the stop request, keep serving until nothing came for this long.
const QUIET_NS: u64 = 20_000_000;

fn serve(
    sockets: &[(RawSocket, xmacvlan::abi::Mac)],
    kind: AppKind,
    core: usize,
    published: &AtomicU64,
    stop: &AtomicBool,
    idle: &mut Sleeper,
) -> Result<KernelAppFinished> {
    pin(core, "the kernel-path application");
    let mut out = KernelAppFinished {
        received: 0,
        reflected: 0,
        misdelivered: 0,
        latency: latency_histogram(),
    };
    let mut frames = Frames::default();
    let mut quiet_since: Option<u64> = None;
    let _hot = HotLoop::enter();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut pass = 0;
        for (socket, mac) in sockets {
            let n = socket.recv(&mut frames).context("AF_PACKET recvmmsg")?;
            if n == 0 {
                continue;
            }
            let now = xmacvlan::sys::monotonic_ns();
            for i in 0..n {
                let f = frames.frame_mut(i);
                if f.get(..6) != Some(&mac[..]) {
                    out.misdelivered += 1;
                }
                match kind {
                    AppKind::Sink => {
                        if let Some(p) = read_payload(f) {
                            out.latency.record(now.saturating_sub(p.tx_ns).max(1)).ok();
                        }
                    }
                    AppKind::Reflect if f.len() >= 12 => {
                        let (dst, src) = f[..12].split_at_mut(6);
                        dst.swap_with_slice(src);
                    }
                    AppKind::Reflect => {}
                }
            }
            if kind == AppKind::Reflect {
                out.reflected += socket.send(&mut frames).context("AF_PACKET sendmmsg")? as u64;
            }
            pass += n;
        }
        if pass > 0 {
            out.received += pass as u64;
            published.store(out.received, Ordering::Relaxed);
            idle.worked();
            quiet_since = None;
        } else {
            if stopping {
                let now = xmacvlan::sys::monotonic_ns();
                match quiet_since {
                    Some(t) if now - t >= QUIET_NS => break,
                    Some(_) => {}
                    None => quiet_since = Some(now),
                }
            }
            background::rest(idle, stop, stopping, Duration::from_millis(1));
        }
    }
    Ok(out)
}
