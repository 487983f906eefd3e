//! A reader thread that runs until asked to stop and then returns what it collected (the
//! kernel-path reader, the kernel application, the wire reader). Dropping it stops and joins
//! it too. Idle, such a reader blocks on its sockets the way the dataplane's threads do
//! ([`sleeper_on`], [`rest`]), looking at its stop flag every [`STOP_CHECK`].
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use xmacvlan::dataplane::{IdlePolicy, SleepSource, Sleeper, Waker};

/// How often a blocked reader looks at its stop flag: [`Background`] only sets the flag, it
/// never writes the reader's waker.
pub const STOP_CHECK: Duration = Duration::from_millis(100);

/// An idle state that blocks on the sockets `fds` (and on its own waker, never written),
/// idling by `policy`: the dataplane threads' default, or the run's own, the same in every
/// mode.
pub fn sleeper_on(fds: impl IntoIterator<Item = RawFd>, policy: IdlePolicy) -> Result<Sleeper> {
    let sleeper = Sleeper::new(Waker::new()?)?.with_policy(policy);
    for fd in fds {
        sleeper.watch(fd, SleepSource::Socket)?;
    }
    Ok(sleeper)
}

/// After a pass that found nothing: spin briefly, then block until a socket is ready, `stop`
/// is newly set (seen within [`STOP_CHECK`]) or, once `stopping` (the flag seen set before the
/// pass), `stopping_timeout` passes, so the caller's quiet period after the stop is measured.
pub fn rest(idle: &mut Sleeper, stop: &AtomicBool, stopping: bool, stopping_timeout: Duration) {
    if idle.spun_out() {
        let timeout = if stopping {
            stopping_timeout
        } else {
            STOP_CHECK
        };
        idle.sleep(timeout, || stop.load(Ordering::Acquire) && !stopping);
    }
}

pub struct Background<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<T>>>,
    name: &'static str,
}

impl<T: Send + 'static> Background<T> {
    /// Run `body(stop)` on a thread named `name`; `body` returns once `stop` is set and it
    /// has finished what is in flight.
    pub fn spawn(
        name: &'static str,
        body: impl FnOnce(&AtomicBool) -> Result<T> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&flag))
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            name,
        })
    }

    /// Ask it to stop; what it returned.
    pub fn stop(mut self) -> Result<T> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow!("{} panicked", self.name))?
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}
