//! The XDP classifier: load the embedded C object with aya, attach it, and keep its maps.
//! Detaching happens when the [`Classifier`] is dropped (aya detaches owned links on drop).
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, XskMap};
use aya::programs::{Xdp, XdpMode as AyaMode};
use aya::{Ebpf, EbpfLoader};

use crate::abi::{self, Config, Counters, Event, Key};
use crate::modes::XdpMode;

/// How claimed frames are steered: per-endpoint sockets (`xdp`) or one per queue (`user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    PerEndpoint,
    PerQueue,
}

/// Which program of the object to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Classify,
    /// XDP_DROP everything: the benchmark's ceiling.
    DropAll,
    /// Every frame to its queue's socket (per-queue steering), no lookup: the benchmark's
    /// AF_XDP rxdrop anchor.
    RedirectAll,
}

impl Program {
    /// Every program of the embedded object, in [`abi::PROGRAMS`]' order.
    pub const ALL: [Program; 3] = [Program::Classify, Program::DropAll, Program::RedirectAll];

    /// The program's name in the object (and in the kernel, once loaded).
    pub fn name(self) -> &'static str {
        match self {
            Program::Classify => abi::PROGRAM_CLASSIFY,
            Program::DropAll => abi::PROGRAM_DROP_ALL,
            Program::RedirectAll => abi::PROGRAM_REDIRECT_ALL,
        }
    }
}

pub struct Classifier {
    ebpf: Ebpf,
    program: Program,
    slots: HashMap<MapData, Key, u32>,
    claimed: Array<MapData, u32>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, Counters>,
    events: RingBuf<MapData>,
    queues: u32,
    steering: Steering,
    attached: Option<(u32, XdpMode)>,
}

impl Classifier {
    /// Load the embedded object for a NIC with `queues` receive queues.
    pub fn load(program: Program, steering: Steering, queues: u32) -> Result<Self> {
        if queues == 0 || queues > abi::MAX_QUEUES {
            bail!("queue count {queues} out of range 1..={}", abi::MAX_QUEUES);
        }
        raise_memlock_limit();
        let config = Config {
            demux: match steering {
                Steering::PerEndpoint => abi::DEMUX_XDP,
                Steering::PerQueue => abi::DEMUX_USER,
            },
            queues,
        };
        let xsk_entries = match steering {
            Steering::PerEndpoint => abi::MAX_SLOTS * queues,
            Steering::PerQueue => queues,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(abi::GLOBAL_CONFIG, &config, true)
            .map_max_entries(abi::MAP_XSKS, xsk_entries)
            .load(abi::CLASSIFIER_OBJECT)
            .map_err(|e| explain_load_error(e.into()))?;
        let name = program.name();
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the embedded object"))?
            .try_into()?;
        prog.load()
            .map_err(|e| explain_load_error(e.into()))
            .with_context(|| format!("loading XDP program {name} into the kernel"))?;
        let slots = HashMap::try_from(take_map(&mut ebpf, abi::MAP_SLOTS)?)?;
        let claimed = Array::try_from(take_map(&mut ebpf, abi::MAP_CLAIMED)?)?;
        let xsks = XskMap::try_from(take_map(&mut ebpf, abi::MAP_XSKS)?)?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, abi::MAP_COUNTERS)?)?;
        let events = RingBuf::try_from(take_map(&mut ebpf, abi::MAP_EVENTS)?)?;
        Ok(Self {
            ebpf,
            program,
            slots,
            claimed,
            xsks,
            counters,
            events,
            queues,
            steering,
            attached: None,
        })
    }

    /// Attach to interface `ifindex` (in the calling thread's namespace). Returns the mode
    /// that worked: `Auto` resolves to `Native` or `Generic`. Why `Auto` fell back goes to
    /// `warnings`, for the caller to log or print.
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
        warnings: &mut Vec<String>,
    ) -> Result<XdpMode> {
        let name = self.program.name();
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .expect("program present since load")
            .try_into()?;
        let try_mode = |prog: &mut Xdp, m: AyaMode| prog.attach_to_if_index(ifindex, m).map(|_| ());
        let used = match mode {
            XdpMode::Native => {
                try_mode(prog, AyaMode::Driver).map_err(|e| {
                    anyhow!(e).context(format!(
                        "attaching XDP in native (driver) mode to {ifname}: the driver may not \
                         support it; use --xdp-mode generic or auto"
                    ))
                })?;
                XdpMode::Native
            }
            XdpMode::Generic => {
                try_mode(prog, AyaMode::Skb)
                    .with_context(|| format!("attaching XDP in generic mode to {ifname}"))?;
                XdpMode::Generic
            }
            XdpMode::Auto => match try_mode(prog, AyaMode::Driver) {
                Ok(()) => XdpMode::Native,
                Err(native) => {
                    try_mode(prog, AyaMode::Skb).with_context(|| {
                        format!("attaching XDP to {ifname}: native failed ({native}), generic too")
                    })?;
                    warnings.push(format!(
                        "{ifname}: native XDP refused ({native}); using generic XDP"
                    ));
                    XdpMode::Generic
                }
            },
        };
        self.attached = Some((ifindex, used));
        Ok(used)
    }

    pub fn attached(&self) -> Option<(u32, XdpMode)> {
        self.attached
    }

    pub fn queues(&self) -> u32 {
        self.queues
    }

    pub fn steering(&self) -> Steering {
        self.steering
    }

    /// Claim frames with `key` for endpoint `slot`, at once.
    pub fn insert_key(&mut self, key: Key, slot: u32) -> Result<()> {
        self.insert_key_with(key, slot, true)
    }

    /// Know `key` as endpoint `slot`'s; its frames are claimed only while `claimed` (see
    /// [`Self::set_claimed`]), else they go to the kernel, counted as `pass_unclaimed`.
    pub fn insert_key_with(&mut self, key: Key, slot: u32, claimed: bool) -> Result<()> {
        if slot >= abi::MAX_SLOTS {
            bail!(
                "slot {slot} out of range (at most {} endpoints)",
                abi::MAX_SLOTS
            );
        }
        // The flag first: the key must never be live with a stale flag of the slot's last user.
        self.set_claimed(slot, claimed)?;
        self.slots
            .insert(key, slot, 0)
            .with_context(|| format!("adding {key:?} to the classifier"))
    }

    /// Start (true) or stop claiming endpoint `slot`'s frames. Takes effect for the next
    /// frame the program sees; frames already redirected stay on their way.
    pub fn set_claimed(&mut self, slot: u32, claimed: bool) -> Result<()> {
        if slot >= abi::MAX_SLOTS {
            bail!(
                "slot {slot} out of range (at most {} endpoints)",
                abi::MAX_SLOTS
            );
        }
        let value = if claimed {
            abi::CLAIMED
        } else {
            abi::UNCLAIMED
        };
        self.claimed
            .set(slot, value, 0)
            .with_context(|| format!("setting the claim flag of endpoint slot {slot}"))
    }

    /// Stop claiming frames with `key`; a missing key is not an error.
    pub fn remove_key(&mut self, key: &Key) -> Result<()> {
        match self.slots.remove(key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("removing {key:?} from the classifier")),
        }
    }

    /// XSKMAP index of endpoint `slot`'s socket on `queue` (per-endpoint steering), or of
    /// the queue's socket (per-queue steering).
    pub fn xsk_index(&self, slot: u32, queue: u32) -> u32 {
        match self.steering {
            Steering::PerEndpoint => slot * self.queues + queue,
            Steering::PerQueue => queue,
        }
    }

    pub fn set_socket(&mut self, index: u32, socket: &impl AsRawFd) -> Result<()> {
        self.xsks
            .set(index, socket.as_raw_fd(), 0)
            .with_context(|| format!("inserting an AF_XDP socket at XSKMAP index {index}"))
    }

    pub fn clear_socket(&mut self, index: u32) -> Result<()> {
        match self.xsks.unset(index) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("clearing XSKMAP index {index}")),
        }
    }

    /// Run the loaded program once on `frame` with `BPF_PROG_TEST_RUN` (no interface needed)
    /// and return its verdict (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, …). The kernel refuses
    /// frames shorter than an Ethernet header or longer than a page's worth (EINVAL).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, std::io::Error> {
        use aya::programs::{ProgramError, TestRun, TestRunOptions};
        let name = self.program.name();
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .expect("program present since load");
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        match prog.test_run(opts) {
            Ok(result) => Ok(result.return_value),
            Err(ProgramError::SyscallError(e)) => Err(e.io_error),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// Hand every kernel event waiting in the ring buffer to `f` (no syscall: the ring is
    /// mapped). Call regularly, so the ring does not fill and hold events back.
    pub fn drain_events(&mut self, mut f: impl FnMut(Event)) -> usize {
        let mut drained = 0;
        while let Some(record) = self.events.next() {
            if let Some(event) = Event::parse(&record) {
                f(event);
            }
            drained += 1;
        }
        drained
    }

    /// The classifier's counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .context("reading the XDP counters")?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            total.add(c);
        }
        Ok(total)
    }
}

/// The name of loaded BPF program `id`, if it is still loaded.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so loading cannot fail
/// on its default of 64 KiB there. Harmless on newer kernels.
fn raise_memlock_limit() {
    crate::sys::raise_rlimit(libc::RLIMIT_MEMLOCK, libc::RLIM_INFINITY);
}

fn explain_load_error(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        e.context("loading the XDP program needs root, or CAP_BPF + CAP_NET_ADMIN (+ CAP_PERFMON)")
    } else {
        e.context("loading the embedded XDP classifier")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_named_in_the_abi_and_present_in_the_object() {
        let names: Vec<&str> = Program::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            abi::PROGRAMS,
            "abi::PROGRAMS recognizes leftovers by these names"
        );
        for name in names {
            // The ELF symbol table holds each program's name, NUL-terminated.
            let symbol = format!("{name}\0");
            assert!(
                abi::CLASSIFIER_OBJECT
                    .windows(symbol.len())
                    .any(|w| w == symbol.as_bytes()),
                "{name} missing from the embedded object"
            );
        }
    }
}
