//! Back-off for busy-polling threads that found no work: spin briefly, then yield the core
//! (a syscall only when idle, never per frame), then nap so an idle dataplane costs little.
use std::time::Duration;

#[derive(Default)]
pub struct Idle {
    empty_rounds: u32,
}

impl Idle {
    #[inline]
    pub fn worked(&mut self) {
        self.empty_rounds = 0;
    }

    #[inline]
    pub fn wait(&mut self) {
        self.empty_rounds = self.empty_rounds.saturating_add(1);
        match self.empty_rounds {
            0..=64 => std::hint::spin_loop(),
            65..=4096 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(50)),
        }
    }
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
