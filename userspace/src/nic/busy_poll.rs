//! Preferred busy polling (Linux 5.11+): the thread that owns a queue runs the NIC's receive
//! processing for it (its NAPI) from its own loop, with a syscall on the queue's socket when
//! the socket has nothing to read, instead of the NIC interrupting a core and the kernel
//! running it in softirq. The socket asks for it (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`,
//! `SO_BUSY_POLL_BUDGET`), and the device's interrupts stay masked while the application
//! keeps polling: `napi_defer_hard_irqs` empty polls may pass before they come back, and
//! `gro_flush_timeout` is the watchdog that runs NAPI if the application stops polling. Both
//! are per device, so they are set for a dataplane's lifetime and restored after.
//!
//! A queue needs a NAPI instance the kernel knows it by (its NAPI id): veth has none, so
//! busy polling cannot engage there.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Busy polling of a dataplane's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// Frames one poll may take off the NIC's ring (`SO_BUSY_POLL_BUDGET`).
    pub budget: u16,
}

impl BusyPoll {
    /// Busy polling with `budget` frames a poll (`busy-poll-budget`); 0 is off.
    pub fn with_budget(budget: u16) -> Option<Self> {
        (budget > 0).then_some(Self { budget })
    }
}

/// How long a thread that busy polls keeps polling after its last frame before it blocks:
/// long enough to span the gaps of a stream, so the NIC's interrupts stay deferred for as
/// long as it flows (busy polling spends a core to save them). After that the kernel runs
/// NAPI itself and the interrupts come back.
pub const KEEP_POLLING: std::time::Duration = std::time::Duration::from_millis(10);

/// `SO_BUSY_POLL`: how long a blocking receive on the socket would busy poll. The receive
/// threads' calls never block, so its only effect is to turn busy polling on.
pub const SOCKET_BUSY_POLL_US: u32 = 20;
/// Empty polls before the device's interrupts come back (the kernel documentation's value).
pub const NAPI_DEFER_HARD_IRQS: u64 = 2;
/// When the application stops polling, the kernel runs NAPI itself after this long.
pub const GRO_FLUSH_TIMEOUT_NS: u64 = 200_000;

/// A device's `napi_defer_hard_irqs` and `gro_flush_timeout` set for busy polling, restored
/// to what they were when dropped.
#[derive(Debug)]
pub struct NapiDeferral {
    dir: PathBuf,
    ifname: String,
    saved: Vec<(&'static str, String)>,
}

impl NapiDeferral {
    /// Set them on `ifname`, the device with index `ifindex` (its sysfs directory must be
    /// the one of this namespace).
    pub fn set(ifname: &str, ifindex: u32) -> Result<Self> {
        let dir = PathBuf::from(format!("/sys/class/net/{ifname}"));
        let seen = std::fs::read_to_string(dir.join("ifindex")).ok();
        if seen.as_deref().map(str::trim) != Some(ifindex.to_string().as_str()) {
            bail!(
                "{} is not {ifname}'s sysfs directory here (the sysfs mounted is another network \
                 namespace's): busy polling sets napi_defer_hard_irqs and gro_flush_timeout \
                 there; run xmacvlan where /sys shows the interface's namespace",
                dir.display()
            );
        }
        let mut deferral = Self {
            dir,
            ifname: ifname.to_string(),
            saved: Vec::new(),
        };
        for (file, value) in [
            ("napi_defer_hard_irqs", NAPI_DEFER_HARD_IRQS),
            ("gro_flush_timeout", GRO_FLUSH_TIMEOUT_NS),
        ] {
            let path = deferral.dir.join(file);
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            std::fs::write(&path, value.to_string())
                .with_context(|| format!("writing {value} to {}", path.display()))?;
            // Restored on drop, also when the next one fails.
            deferral.saved.push((file, old.trim().to_string()));
        }
        crate::logging::info(format_args!(
            "busy polling {ifname}: napi_defer_hard_irqs {NAPI_DEFER_HARD_IRQS}, \
             gro_flush_timeout {GRO_FLUSH_TIMEOUT_NS} ns while the dataplane runs (then {})",
            deferral.describe_saved()
        ));
        Ok(deferral)
    }

    fn describe_saved(&self) -> String {
        self.saved
            .iter()
            .map(|(f, v)| format!("{f} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for NapiDeferral {
    fn drop(&mut self) {
        let mut failed = Vec::new();
        for (file, value) in self.saved.iter().rev() {
            if let Err(e) = std::fs::write(self.dir.join(file), value) {
                failed.push(format!("{file} ({e})"));
            }
        }
        if failed.is_empty() {
            crate::logging::info(format_args!(
                "busy polling {} ended: {} restored",
                self.ifname,
                self.describe_saved()
            ));
        } else {
            crate::logging::warn(format_args!(
                "could not restore {} of {}; write the old values back: {}",
                failed.join(", "),
                self.ifname,
                self.describe_saved()
            ));
        }
    }
}
