//! A reader thread that runs until asked to stop and then returns what it collected (the
//! kernel-path reader, the wire reader). Dropping it stops and joins it too.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};

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
            let _ = t.join();
        }
    }
}
