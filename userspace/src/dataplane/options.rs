//! What a dataplane is started with: [`DataplaneConfig`], its defaults, and the two ways
//! users set it — the dataplane flags (`xmacvlan run`, the lab) and `daemon.json` (the daemon,
//! whose flags override the file's keys before this reads them).
use super::{DataplaneError, IdlePolicy, default_cores};
use crate::config::{DaemonConfig, DataplaneFlags};
use crate::modes::{BindMode, Demux, Threads, XdpAttach, XdpMode};
use crate::nic::BusyPoll;
use crate::xsk::QueueConfig;

/// How the receive work of a dataplane is laid out in threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One thread, on the first of `cores`, owns every queue's rings, steers (`user` demux)
    /// and serves every endpoint in one loop: nothing waits for another thread's wake-up.
    RunToCompletion,
    /// Each queue has a thread of its own (its rings, its steering) and `serving` threads
    /// serve the endpoints, spread over them.
    Split { serving: usize },
}

impl Layout {
    /// The layout for `cores` receive cores: `threads` when given, else running to completion
    /// on one core and split (a serving thread per core) on several.
    pub fn for_cores(threads: Option<Threads>, cores: usize) -> Self {
        match threads {
            Some(Threads::RunToCompletion) => Layout::RunToCompletion,
            Some(Threads::Split) => Layout::Split {
                serving: cores.max(1),
            },
            None if cores <= 1 => Layout::RunToCompletion,
            None => Layout::Split { serving: cores },
        }
    }

    /// Its name (`run-to-completion`, `split`), as the flags and `daemon.json` spell it.
    pub fn threads(self) -> Threads {
        match self {
            Layout::RunToCompletion => Threads::RunToCompletion,
            Layout::Split { .. } => Threads::Split,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub ifname: String,
    pub queues: u32,
    pub demux: Demux,
    pub xdp_mode: XdpMode,
    /// Alone, or in libxdp's dispatcher (`xdp-attach`), at `xdp_priority` there.
    pub xdp_attach: XdpAttach,
    pub xdp_priority: u32,
    pub queue: QueueConfig,
    /// Cores for the threads, handed out round-robin.
    pub cores: Vec<usize>,
    pub layout: Layout,
    /// Capacity of each endpoint's descriptor ring (`user` demux).
    pub endpoint_ring: usize,
    /// How the threads idle ([`IdlePolicy::default`]: poll [`super::SPIN`], then block).
    pub idle: IdlePolicy,
    /// Time and check every frame that carries the generator's timestamp ([`probe`]): the
    /// lab, the benchmark and tests; off, a frame's bytes are never parsed.
    pub probe: bool,
    /// Busy poll the NIC's queues from their owners' passes (None: interrupts, the default).
    pub busy_poll: Option<BusyPoll>,
}

impl Default for DataplaneConfig {
    /// One queue, `xdp` demux, native XDP falling back to generic, AF_XDP zero-copy falling
    /// back to copy, one thread running to completion on the default cores, the probe on.
    fn default() -> Self {
        Self {
            ifname: String::new(),
            queues: 1,
            demux: Demux::Xdp,
            xdp_mode: XdpMode::Auto,
            xdp_attach: XdpAttach::Auto,
            xdp_priority: crate::abi::RUN_PRIORITY,
            queue: QueueConfig::default(),
            cores: default_cores(),
            layout: Layout::RunToCompletion,
            endpoint_ring: 4096,
            idle: IdlePolicy::default(),
            probe: true,
            busy_poll: None,
        }
    }
}

impl DataplaneConfig {
    /// Put the flags given into effect (over the defaults, for `run` and the lab). `kernel`
    /// is refused: it runs no dataplane.
    pub fn apply(&mut self, flags: &DataplaneFlags) -> Result<(), DataplaneError> {
        if let Some(mode) = flags.demux_mode {
            self.demux = mode.fast_path().ok_or_else(|| {
                DataplaneError::Config(
                    "--demux-mode kernel runs no dataplane (frames stay on the macvlan \
                     devices): use xdp or user here; the daemon accepts kernel"
                        .into(),
                )
            })?;
        }
        if let Some(m) = flags.xdp_mode {
            self.xdp_mode = m;
        }
        if let Some(a) = flags.xdp_attach {
            self.xdp_attach = a;
        }
        if let Some(p) = flags.xdp_priority {
            self.xdp_priority = p;
        }
        if let Some(b) = flags.bind_mode {
            self.queue.bind = b;
        }
        if let Some(c) = &flags.cores {
            self.cores = c.0.clone();
        }
        self.layout = Layout::for_cores(flags.receive_threads, self.cores.len());
        if let Some(c) = flags.receive_coalesce {
            self.idle.coalesce = c;
        }
        if let Some(budget) = flags.busy_poll_budget {
            self.busy_poll = BusyPoll::with_budget(budget);
        }
        Ok(())
    }

    /// Settle `bind-mode auto` by what the kernel says the interface's driver can do (Linux
    /// 6.3+): no zero-copy bind is tried where it has none, and an explicit `zerocopy` on such
    /// a driver is refused before anything is made. Why `auto` settled for copy goes to
    /// `warnings`. Without the kernel's answer (older kernels) `auto` tries, as before.
    pub fn settle_bind(
        &mut self,
        features: Option<&crate::netlink::XdpFeatures>,
        warnings: &mut Vec<String>,
    ) -> Result<(), DataplaneError> {
        let Some(f) = features.filter(|f| !f.zero_copy()) else {
            return Ok(());
        };
        match self.queue.bind {
            BindMode::Auto => {
                self.queue.bind = BindMode::Copy;
                warnings.push(format!(
                    "{}: the kernel reports no AF_XDP zero-copy for its driver; using copy mode",
                    self.ifname
                ));
                Ok(())
            }
            BindMode::Zerocopy => Err(DataplaneError::Config(format!(
                "{}: the kernel reports no AF_XDP zero-copy for its driver (xdp-features {:#x}): \
                 use --bind-mode copy or auto",
                self.ifname, f.xdp
            ))),
            BindMode::Copy => Ok(()),
        }
    }

    /// How the classifier takes its place on the interface.
    pub fn attach_options(&self) -> crate::xdp::AttachOptions {
        crate::xdp::AttachOptions {
            mode: self.xdp_mode,
            attach: self.xdp_attach,
            priority: self.xdp_priority,
        }
    }

    /// The dataplane settings of a `daemon.json` (`cores`, `xdp-mode`, `xdp-attach`,
    /// `xdp-priority`, `bind-mode`, `receive-threads`, `receive-coalesce-us`,
    /// `busy-poll-budget`); interface, queues and demux are the daemon's to fill in per
    /// interface.
    pub fn from_daemon(cfg: &DaemonConfig) -> Self {
        let cores = cfg.cores.clone().unwrap_or_else(default_cores);
        let defaults = Self::default();
        Self {
            xdp_mode: cfg.xdp_mode,
            xdp_attach: cfg.xdp_attach,
            xdp_priority: cfg.xdp_priority,
            queue: QueueConfig {
                bind: cfg.bind_mode,
                ..defaults.queue
            },
            layout: Layout::for_cores(Some(cfg.receive_threads), cores.len()),
            cores,
            idle: IdlePolicy {
                coalesce: cfg.receive_coalesce,
                ..IdlePolicy::default()
            },
            busy_poll: BusyPoll::with_budget(cfg.busy_poll_budget),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::XdpFeatures;
    use crate::netlink::features::xdp_act;

    fn config(bind: BindMode) -> DataplaneConfig {
        DataplaneConfig {
            ifname: "nic0".into(),
            queue: QueueConfig {
                bind,
                ..QueueConfig::default()
            },
            ..DataplaneConfig::default()
        }
    }

    #[test]
    fn auto_binds_by_what_the_kernel_says_the_driver_can() {
        let veth = XdpFeatures {
            xdp: xdp_act::BASIC | xdp_act::REDIRECT,
            ..XdpFeatures::default()
        };
        let igb = XdpFeatures {
            xdp: xdp_act::BASIC | xdp_act::REDIRECT | xdp_act::XSK_ZEROCOPY,
            ..XdpFeatures::default()
        };
        let mut warnings = Vec::new();
        let mut cfg = config(BindMode::Auto);
        cfg.settle_bind(Some(&veth), &mut warnings).unwrap();
        assert_eq!(cfg.queue.bind, BindMode::Copy);
        assert_eq!(
            warnings,
            ["nic0: the kernel reports no AF_XDP zero-copy for its driver; using copy mode"]
        );
        let mut cfg = config(BindMode::Auto);
        cfg.settle_bind(Some(&igb), &mut Vec::new()).unwrap();
        assert_eq!(cfg.queue.bind, BindMode::Auto, "zero-copy is tried");
        let mut cfg = config(BindMode::Auto);
        cfg.settle_bind(None, &mut Vec::new()).unwrap();
        assert_eq!(cfg.queue.bind, BindMode::Auto, "an older kernel: tried");
        let e = config(BindMode::Zerocopy)
            .settle_bind(Some(&veth), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("use --bind-mode copy or auto"), "{e}");
    }
}
