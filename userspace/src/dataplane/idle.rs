//! Idling for the dataplane threads: after the last work a thread spins briefly (a burst's
//! next frame is served at polling latency), then blocks in `epoll_wait` on everything that
//! can bring it work, so an idle dataplane costs (almost) nothing and busy time is work.
//!
//! What wakes a sleeping thread: its AF_XDP sockets (the kernel's `sk_data_ready`), its ports'
//! eventfds (the client writes one after queueing frames, when armed, see
//! [`crate::dataplane::AppPort::tx_arm`]), and its own [`Waker`]: an eventfd that other
//! threads write only while it sleeps (commands, stop, frames handed over in memory).
//!
//! No lost wake-up: a sleeper announces itself (`sleeping = true`), issues a full fence, then
//! checks its in-memory sources once more; a waker publishes its work, issues a full fence,
//! then reads `sleeping`. With both fences at least one side sees the other (Dekker), so work
//! published after the last check always finds the eventfd written. Kernel sources are
//! level-triggered in epoll: readiness that arrived before `epoll_wait` is not lost.
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_queue::ArrayQueue;

use crate::xsk::wait::{Epoll, Event, EventFd, drain_eventfd};

/// How long a thread keeps polling after its last work before it blocks, unless its
/// [`IdlePolicy`] says otherwise.
pub const SPIN: Duration = Duration::from_micros(50);

/// How a dataplane thread idles: the default polls [`SPIN`] after work, then blocks, and
/// reads as soon as it is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Poll this long after the last work before blocking; zero blocks on the first empty
    /// pass, so the thread's busy time is its work and its wake-ups, nothing else.
    pub spin: Duration,
    /// After a wake-up by its sockets alone, wait this long before reading, so the frames
    /// that arrive meanwhile share one wake-up (a NIC's interrupt moderation, TPACKET's block
    /// timer). Buys CPU at low rates with up to this much latency; zero reads at once.
    /// Commands and ports' eventfds are never delayed; a busy thread never waits.
    pub coalesce: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        Self {
            spin: SPIN,
            coalesce: Duration::ZERO,
        }
    }
}

/// Empty rounds spent with only a pause hint, before the clock is read.
const SPIN_ROUNDS: u32 = 64;

/// Pre-sleep checks that found work in a row with no progress in between: past this the
/// thread is stuck on a resource (e.g. an empty TX pool, a TX ring the kernel does not
/// take), not racing (a race's work is done by the next pass), and naps 1 ms at a time.
const STUCK_CHECKS: u32 = 8;

/// Lets other threads wake a sleeping dataplane thread. Writing costs a syscall only while
/// the thread sleeps; otherwise a fence and a load.
#[derive(Debug)]
pub struct Waker {
    eventfd: EventFd,
    sleeping: AtomicBool,
}

impl Waker {
    pub fn new() -> Result<Arc<Waker>> {
        let eventfd = EventFd::new().context("creating an eventfd for a dataplane thread")?;
        Ok(Arc::new(Waker {
            eventfd,
            sleeping: AtomicBool::new(false),
        }))
    }

    /// Call after publishing work for the thread (pushing to a queue it reads, setting a flag).
    #[inline]
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.eventfd.signal();
        }
    }
}

/// A command queue whose pushes wake the thread that reads it.
pub struct Mailbox<T> {
    queue: ArrayQueue<T>,
    pub waker: Arc<Waker>,
}

impl<T> Mailbox<T> {
    pub fn new(capacity: usize, waker: Arc<Waker>) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            waker,
        }
    }

    pub fn push(&self, item: T) -> Result<(), T> {
        self.queue.push(item)?;
        self.waker.wake();
        Ok(())
    }

    #[inline]
    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What a readiness event is: a socket (nothing to reset) or an eventfd (read to reset).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Socket = 0,
    EventFd = 1,
}

pub(super) const EVENTS: usize = 64;

/// One thread's idling state: the spin phase, its epoll set, its own [`Waker`].
pub struct Sleeper {
    epoll: Epoll,
    waker: Arc<Waker>,
    events: [Event; EVENTS],
    empty_rounds: u32,
    idle_since: Option<Instant>,
    stuck: u32,
    policy: IdlePolicy,
}

impl Sleeper {
    /// An idle state for a thread woken by `waker`, with the default [`IdlePolicy`].
    pub fn new(waker: Arc<Waker>) -> Result<Self> {
        let epoll = Epoll::new().context("creating an epoll set for a dataplane thread")?;
        let idle = Self {
            epoll,
            waker,
            events: [Event { events: 0, u64: 0 }; EVENTS],
            empty_rounds: 0,
            idle_since: None,
            stuck: 0,
            policy: IdlePolicy::default(),
        };
        idle.watch(idle.waker.eventfd.as_raw_fd(), Source::EventFd)
            .context("watching a dataplane thread's eventfd")?;
        Ok(idle)
    }

    /// Block also on `fd` becoming readable (level-triggered). A syscall: for commands only.
    pub fn watch(&self, fd: RawFd, source: Source) -> Result<()> {
        self.epoll
            .add(fd, ((source as u64) << 32) | fd as u32 as u64)
            .with_context(|| format!("watching descriptor {fd} (epoll_ctl)"))
    }

    /// Idle by `policy` instead of the default.
    pub fn with_policy(mut self, policy: IdlePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Stop watching `fd` (before it is handed away or closed).
    pub fn unwatch(&self, fd: RawFd) {
        self.epoll.delete(fd);
    }

    #[inline]
    pub fn worked(&mut self) {
        self.empty_rounds = 0;
        self.idle_since = None;
        self.stuck = 0;
    }

    /// Whether the spin phase after the last work is over (the caller then calls
    /// [`Self::sleep`]); spins or yields the core meanwhile.
    #[inline]
    pub fn spun_out(&mut self) -> bool {
        if self.policy.spin.is_zero() {
            return true;
        }
        self.empty_rounds = self.empty_rounds.saturating_add(1);
        if self.empty_rounds <= SPIN_ROUNDS {
            std::hint::spin_loop();
            return false;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.policy.spin {
            std::thread::yield_now();
            return false;
        }
        true
    }

    /// Hand each watched socket that is readable now to `f`, without blocking: one
    /// `epoll_wait(0)`, at most [`EVENTS`] of them (level-triggered: one left unreported,
    /// or left with frames, is reported by a later call). Signalled eventfds are reset.
    pub fn ready(&mut self, f: &mut dyn FnMut(RawFd)) {
        let n = self.epoll.wait(&mut self.events, 0);
        for ev in &self.events[..n] {
            let fd = ev.u64 as u32 as RawFd;
            if ev.u64 >> 32 == Source::EventFd as u64 {
                drain_eventfd(fd);
            } else {
                f(fd);
            }
        }
    }

    /// Block until a watched source is ready, the [`Waker`] is written, or `timeout` passes,
    /// unless `pending` (run after announcing the sleep, see the module) finds work.
    /// Allocates nothing.
    pub fn sleep(&mut self, timeout: Duration, pending: impl FnOnce() -> bool) -> Woke {
        self.waker.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut timeout = timeout;
        if pending() {
            self.stuck = self.stuck.saturating_add(1);
            if self.stuck < STUCK_CHECKS {
                self.waker.sleeping.store(false, Ordering::Relaxed);
                return Woke::Pending;
            }
            // Work seen again and again without progress: waiting on a resource. Nap.
            timeout = timeout.min(Duration::from_millis(1));
        }
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        let n = self.epoll.wait(&mut self.events, ms);
        self.waker.sleeping.store(false, Ordering::Relaxed);
        let mut only_sockets = n > 0;
        for ev in &self.events[..n] {
            let data = ev.u64;
            if data >> 32 == Source::EventFd as u64 {
                // Level-triggered: a signalled eventfd is reset, or it would wake us forever.
                drain_eventfd(data as u32 as RawFd);
                only_sockets = false;
            }
        }
        if only_sockets && !self.policy.coalesce.is_zero() {
            // One syscall per wake-up, not per frame: what arrives meanwhile is read in the
            // same pass.
            std::thread::sleep(self.policy.coalesce);
        }
        // Still spun out: a wake-up that brings no work (a timeout) sleeps again after one
        // look; only work (`worked`) restarts the spin phase.
        if n == 0 { Woke::TimedOut } else { Woke::Ready }
    }
}

/// How [`Sleeper::sleep`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// `pending` found work: it did not block.
    Pending,
    /// A watched source or the waker (or a signal).
    Ready,
    TimedOut,
}

/// Pin the calling thread to `core`; failure is reported, not fatal (containers may forbid it).
pub fn pin(core: usize, what: &str) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        crate::logging::warn(format_args!(
            "could not pin {what} to core {core}; running unpinned"
        ));
    }
}

thread_local! {
    static IN_HOT_LOOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is inside a worker or consumer loop. Lets a test's counting
/// global allocator prove the loops allocate nothing (reading it allocates nothing).
pub fn in_hot_loop() -> bool {
    IN_HOT_LOOP.with(|f| f.get())
}

/// Marks the calling thread as inside its hot loop until dropped.
pub struct HotLoop;

impl HotLoop {
    pub fn enter() -> Self {
        IN_HOT_LOOP.with(|f| f.set(true));
        HotLoop
    }
}

impl Drop for HotLoop {
    fn drop(&mut self) {
        IN_HOT_LOOP.with(|f| f.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spun_out(idle: &mut Sleeper) {
        while !idle.spun_out() {}
    }

    #[test]
    fn a_wake_reaches_a_sleeping_thread_and_pending_work_prevents_the_sleep() {
        let waker = Waker::new().unwrap();
        let mut idle = Sleeper::new(waker.clone()).unwrap();
        spun_out(&mut idle);
        // Nothing written: times out.
        let start = Instant::now();
        assert_eq!(
            idle.sleep(Duration::from_millis(20), || false),
            Woke::TimedOut
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        // Work seen after announcing the sleep: no block.
        assert_eq!(idle.sleep(Duration::from_secs(10), || true), Woke::Pending);
        // A wake from another thread while blocked (or just before: the flag is set first).
        let start = Instant::now();
        let other = {
            let waker = waker.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                waker.wake();
            })
        };
        assert_eq!(idle.sleep(Duration::from_secs(10), || false), Woke::Ready);
        assert!(start.elapsed() < Duration::from_secs(5));
        other.join().unwrap();
        // The eventfd was reset: the next sleep blocks again.
        assert_eq!(
            idle.sleep(Duration::from_millis(20), || false),
            Woke::TimedOut
        );
        // A wake while awake costs no write and leaves nothing behind.
        waker.wake();
        assert_eq!(
            idle.sleep(Duration::from_millis(20), || false),
            Woke::TimedOut
        );
    }

    #[test]
    fn a_mailbox_push_wakes_its_reader() {
        let waker = Waker::new().unwrap();
        let mut idle = Sleeper::new(waker.clone()).unwrap();
        let mailbox = Arc::new(Mailbox::new(4, waker));
        spun_out(&mut idle);
        let sender = {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                mailbox.push(7u32).unwrap();
            })
        };
        let start = Instant::now();
        while mailbox.is_empty() {
            idle.sleep(Duration::from_secs(10), || !mailbox.is_empty());
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(mailbox.pop(), Some(7));
        sender.join().unwrap();
    }

    #[test]
    fn work_restarts_the_spin_phase_and_a_wake_without_work_does_not() {
        let mut idle = Sleeper::new(Waker::new().unwrap()).unwrap();
        spun_out(&mut idle);
        idle.sleep(Duration::from_millis(1), || false);
        assert!(idle.spun_out(), "after a timeout: straight back to sleep");
        idle.worked();
        assert!(!idle.spun_out(), "after work: spin first");
    }

    #[test]
    fn a_zero_spin_blocks_right_after_work_and_a_long_one_keeps_polling() {
        let policy = |spin| IdlePolicy {
            spin,
            coalesce: Duration::ZERO,
        };
        let mut idle = Sleeper::new(Waker::new().unwrap())
            .unwrap()
            .with_policy(policy(Duration::ZERO));
        idle.worked();
        assert!(idle.spun_out(), "no spin: the first empty pass sleeps");
        let mut idle = Sleeper::new(Waker::new().unwrap())
            .unwrap()
            .with_policy(policy(Duration::from_secs(3600)));
        idle.worked();
        for _ in 0..1000 {
            assert!(
                !idle.spun_out(),
                "an hour's spin is not over after 1000 passes"
            );
        }
    }

    #[test]
    fn a_socket_wake_up_waits_out_the_coalescing_and_a_command_does_not() {
        use std::os::unix::net::UnixDatagram;
        let coalesce = Duration::from_millis(30);
        let waker = Waker::new().unwrap();
        let mut idle = Sleeper::new(waker.clone())
            .unwrap()
            .with_policy(IdlePolicy {
                spin: Duration::ZERO,
                coalesce,
            });
        let (frames, peer) = UnixDatagram::pair().unwrap();
        idle.watch(frames.as_raw_fd(), Source::Socket).unwrap();
        peer.send(b"frame").unwrap();
        let start = Instant::now();
        assert_eq!(idle.sleep(Duration::from_secs(10), || false), Woke::Ready);
        assert!(
            start.elapsed() >= coalesce,
            "read before the coalescing window ended"
        );
        frames.recv(&mut [0; 8]).unwrap();
        // A command is served at once, whatever the coalescing (10 s here).
        let mut idle = idle.with_policy(IdlePolicy {
            spin: Duration::ZERO,
            coalesce: Duration::from_secs(10),
        });
        let start = Instant::now();
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        assert_eq!(idle.sleep(Duration::from_secs(10), || false), Woke::Ready);
        assert!(start.elapsed() < Duration::from_secs(5));
        other.join().unwrap();
    }
}
