//! The XDP classifier: the embedded C object loaded with aya, its maps, and how it is held on
//! an interface.
//!
//! Two ways to hold it: [`Classifier::load`] + [`Classifier::attach`] (or
//! [`Classifier::attach_with`]) own the attachment, which ends when the [`Classifier`] is
//! dropped (`xmacvlan run`, the benchmark, tests); [`Classifier::attach_persistent`]
//! (`persist.rs`) pins program and maps in bpffs (`bpffs.rs`), so the classifier stays
//! attached when its daemon stops and the next daemon takes it over without detaching.
//!
//! Either way it runs alone, attached through a bpf_link of its own, or as one program of
//! libxdp's multi-program dispatcher beside other XDP programs (`chain.rs`, through libxdp
//! itself: `libxdp.rs`); `place.rs` decides which (`xdp-attach`).
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf, XskMap};
use aya::programs::Xdp;

use crate::abi::{self, Counters, Event, Key};
use crate::modes::XdpMode;

pub mod bpffs;
mod chain;
#[allow(unsafe_code)]
mod libxdp;
mod load;
mod persist;
pub mod place;

pub use bpffs::PinDir;
pub use libxdp::{ChainProgram, LibxdpError, XdpAction};
pub use load::{SINGLE_BUFFER_MTU, mtu_needs_multi_buffer, probe_freplace};
pub use persist::{Release, Takeover, pinned_program_id, release_pinned};
pub use place::{AttachOptions, Occupant};

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
    /// XDP_DROP everything: the benchmark's ceiling, and the program `doctor`'s freplace
    /// probe replaces.
    DropAll,
    /// Every frame to its queue's socket (per-queue steering), no lookup: the benchmark's
    /// AF_XDP rxdrop anchor (feature `bench`).
    #[cfg(feature = "bench")]
    RedirectAll,
}

impl Program {
    /// Every program this build can run, in [`abi::PROGRAMS`]' order (the object always holds
    /// them all, so a leftover of any of them is recognized).
    #[cfg(feature = "bench")]
    pub const ALL: &[Program] = &[Program::Classify, Program::DropAll, Program::RedirectAll];
    #[cfg(not(feature = "bench"))]
    pub const ALL: &[Program] = &[Program::Classify, Program::DropAll];

    /// The program's name in the object (and in the kernel, once loaded).
    pub fn name(self) -> &'static str {
        match self {
            Program::Classify => abi::PROGRAM_CLASSIFY,
            Program::DropAll => abi::PROGRAM_DROP_ALL,
            #[cfg(feature = "bench")]
            Program::RedirectAll => abi::PROGRAM_REDIRECT_ALL,
        }
    }
}

/// The classifier's claim flags, from another thread ([`Classifier::claim_switch`]).
pub struct ClaimSwitch(Array<MapData, u32>);

impl ClaimSwitch {
    /// Claim (true) or release endpoint `slot`'s frames, from the next frame on.
    pub fn set(&mut self, slot: u32, claimed: bool) -> Result<()> {
        let value = if claimed {
            abi::CLAIMED
        } else {
            abi::UNCLAIMED
        };
        self.0
            .set(slot, value, 0)
            .with_context(|| format!("setting the claim flag of endpoint slot {slot}"))
    }
}

/// Errors of attaching and pinning the classifier that callers tell apart.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "{iface} runs libxdp's multi-program dispatcher (id {id}), through which other XDP \
         programs share it, and xdp-attach is `alone`: set xdp-attach to auto or dispatcher \
         (--xdp-attach) to join it beside them (see them with `xdp-loader status {iface}`), \
         or let xmacvlan replace them all (--force)"
    )]
    Dispatcher { iface: String, id: u32 },
    #[error(
        "{iface} runs libxdp's dispatcher (id {id}) but libxdp cannot read its programs{}: \
         their pins are not under {}/xdp as this process sees it. Either its loader used \
         another bpffs (run xmacvlan with LIBXDP_BPFFS set to it), or this process has a /sys \
         of its own (`ip netns exec` mounts a fresh one: use `nsenter --net=/run/netns/NS`)",
        cause.as_ref().map(|e| format!(" ({e:#})")).unwrap_or_default(),
        bpffs.display()
    )]
    UnreadableDispatcher {
        iface: String,
        id: u32,
        bpffs: PathBuf,
        /// libxdp's error, if it gave one (shown in the message, so not a `source` too).
        cause: Option<LibxdpError>,
    },
    #[error(
        "{}this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs ({refused}), which libxdp's \
         multi-program dispatcher is made of (some hardened kernels refuse every program \
         attached through a BPF trampoline): {}",
        match joining {
            Some(id) => format!("{iface} runs libxdp's dispatcher (id {id}), but "),
            None => format!("xdp-attach is `dispatcher` for {iface}, but "),
        },
        match joining {
            Some(_) => "xmacvlan cannot join it; unload its programs (`xdp-loader unload \
                        IFACE --all`) to let xmacvlan attach alone",
            None => "set xdp-attach to auto or alone to attach the classifier on its own \
                     (`xmacvlan doctor` shows the check: xdp-dispatcher)",
        }
    )]
    NoFreplace {
        iface: String,
        /// The dispatcher it would have joined; None when a new one was asked for.
        joining: Option<u32>,
        /// What the kernel answered (shown in the message, so not a `source` too).
        refused: std::io::Error,
    },
    #[error(
        "{iface}'s libxdp dispatcher (id {id}) runs in {running} mode and xdp-mode is \
         {wanted}: its other programs decide the mode; set xdp-mode to auto (or {running}) to \
         join it"
    )]
    DispatcherMode {
        iface: String,
        id: u32,
        running: XdpMode,
        wanted: XdpMode,
    },
    #[error(
        "{iface} already has another XDP program attached (id {id}{}); xmacvlan will not \
         replace it: see it with `bpftool prog show id {id}`, detach it with \
         `ip link set dev {iface} xdp off`, or let xmacvlan replace it (--force); {sharing}",
        name.as_ref().map(|n| format!(", `{n}`")).unwrap_or_default()
    )]
    Foreign {
        iface: String,
        id: u32,
        name: Option<String>,
        /// Why the two cannot share the interface here, and how they could.
        sharing: String,
    },
    #[error("bpffs at {}: {source} (xmacvlan pins the classifier there to keep it attached across restarts; \
             mount one with `mount -t bpf bpf /sys/fs/bpf`, or set LIBXDP_BPFFS to a bpffs mount)", path.display())]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The maps userspace works with, whichever way the program is held.
struct Maps {
    slots: HashMap<MapData, Key, u32>,
    claimed: Array<MapData, u32>,
    xsks: XskMap<MapData>,
    xsk_max_len: Array<MapData, u32>,
    counters: PerCpuArray<MapData, Counters>,
    events: RingBuf<MapData>,
}

/// Every map of the object by name, in the order they are pinned and taken over.
const MAP_NAMES: [&str; 7] = [
    abi::MAP_SLOTS,
    abi::MAP_CLAIMED,
    abi::MAP_XSKS,
    abi::MAP_XSK_MAX_LEN,
    abi::MAP_COUNTERS,
    abi::MAP_EVENTS,
    abi::MAP_EVENT_BUDGET,
];

impl Maps {
    /// Build from the object's maps by name (`take` hands each over once).
    fn from_named(mut take: impl FnMut(&str) -> Result<aya::maps::Map>) -> Result<Self> {
        Ok(Self {
            slots: HashMap::try_from(take(abi::MAP_SLOTS)?)?,
            claimed: Array::try_from(take(abi::MAP_CLAIMED)?)?,
            xsks: XskMap::try_from(take(abi::MAP_XSKS)?)?,
            xsk_max_len: Array::try_from(take(abi::MAP_XSK_MAX_LEN)?)?,
            counters: PerCpuArray::try_from(take(abi::MAP_COUNTERS)?)?,
            events: RingBuf::try_from(take(abi::MAP_EVENTS)?)?,
        })
    }
}

/// How the program is held on the interface.
enum Holder {
    /// Loaded by this process; its link (once attached) goes when the classifier is dropped.
    Owned {
        ebpf: aya::Ebpf,
        program: Program,
        /// Joined to libxdp's dispatcher instead (whose pins hold it there): it leaves the
        /// dispatcher when the classifier is dropped.
        member: Option<Member>,
    },
    /// Attached through pins in bpffs: it stays attached when dropped, unless released.
    Pinned {
        /// Held open so that whoever looks for the program's users finds this process.
        #[allow(dead_code)]
        program: aya::programs::ProgramFd,
        program_id: u32,
        pins: PinDir,
        on_drop: Release,
    },
}

/// The program libxdp loaded into a dispatcher for a classifier this process owns.
struct Member {
    /// Held open so that whoever looks for the program's users finds this process.
    #[allow(dead_code)]
    program: OwnedFd,
    id: u32,
}

/// Where the classifier runs on its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Attached on its own, through a bpf_link.
    Alone,
    /// One program of libxdp's multi-program dispatcher, at this run priority.
    Dispatcher { priority: u32 },
}

pub struct Classifier {
    holder: Holder,
    maps: Maps,
    queues: u32,
    steering: Steering,
    attached: Option<(u32, XdpMode)>,
    placement: Placement,
}

impl Classifier {
    pub fn attached(&self) -> Option<(u32, XdpMode)> {
        self.attached
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn queues(&self) -> u32 {
        self.queues
    }

    pub fn steering(&self) -> Steering {
        self.steering
    }

    /// The kernel's id of the running program (in a dispatcher: the program libxdp loaded).
    pub fn program_id(&self) -> Result<u32> {
        match &self.holder {
            Holder::Owned {
                member: Some(m), ..
            } => Ok(m.id),
            Holder::Owned { .. } => Ok(self.owned_program()?.info()?.id()),
            Holder::Pinned { program_id, .. } => Ok(*program_id),
        }
    }

    /// The program of a classifier this process loaded.
    fn owned_program(&self) -> Result<&Xdp> {
        match &self.holder {
            Holder::Owned { ebpf, program, .. } => ebpf
                .program(program.name())
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| anyhow!("program {} missing since load", program.name())),
            Holder::Pinned { .. } => bail!("a classifier held through its pins runs no test"),
        }
    }

    /// Claim frames with `key` for endpoint `slot`, at once.
    pub fn insert_key(&mut self, key: Key, slot: u32) -> Result<()> {
        self.insert_key_with(key, slot, true)
    }

    /// Know `key` as endpoint `slot`'s; its frames are claimed only while `claimed` (see
    /// [`Self::set_claimed`]), else they go to the kernel, counted as `pass_unclaimed`.
    pub fn insert_key_with(&mut self, key: Key, slot: u32, claimed: bool) -> Result<()> {
        check_slot(slot)?;
        // The flag first: the key must never be live with a stale flag of the slot's last user.
        self.set_claimed(slot, claimed)?;
        self.maps
            .slots
            .insert(key, slot, 0)
            .with_context(|| format!("adding {key:?} to the classifier"))
    }

    /// Start (true) or stop claiming endpoint `slot`'s frames. Takes effect for the next
    /// frame the program sees; frames already redirected stay on their way.
    pub fn set_claimed(&mut self, slot: u32, claimed: bool) -> Result<()> {
        check_slot(slot)?;
        let value = if claimed {
            abi::CLAIMED
        } else {
            abi::UNCLAIMED
        };
        self.maps
            .claimed
            .set(slot, value, 0)
            .with_context(|| format!("setting the claim flag of endpoint slot {slot}"))
    }

    /// Stop claiming every slot: from the next frame on, every endpoint's frames go to its
    /// kernel device. Returns how many slots were claimed.
    pub fn unclaim_all(&mut self) -> Result<u32> {
        let claimed = self.claimed_slots()?;
        for &slot in &claimed {
            self.set_claimed(slot, false)?;
        }
        Ok(claimed.len() as u32)
    }

    /// How many slots are claimed and how many keys are known.
    pub fn state_counts(&self) -> Result<(u32, u32)> {
        let claims = self.claimed_slots()?.len() as u32;
        Ok((claims, self.maps.slots.keys().count() as u32))
    }

    fn claimed_slots(&self) -> Result<Vec<u32>> {
        let mut claimed = Vec::new();
        for slot in 0..abi::MAX_SLOTS {
            let flag = self.maps.claimed.get(&slot, 0);
            if flag.context("reading a claim flag")? != abi::UNCLAIMED {
                claimed.push(slot);
            }
        }
        Ok(claimed)
    }

    /// Forget every key (their frames go to the kernel as misses). Returns how many there were.
    pub fn clear_keys(&mut self) -> Result<u32> {
        let keys = self
            .maps
            .slots
            .keys()
            .collect::<Result<Vec<Key>, _>>()
            .context("listing the classifier's keys")?;
        for key in &keys {
            self.remove_key(key)?;
        }
        Ok(keys.len() as u32)
    }

    /// A handle on the claim flags of its own, for the thread that serves an endpoint to
    /// claim and unclaim it as its port's client becomes ready or goes (a syscall per change,
    /// never per frame).
    pub fn claim_switch(&self) -> Result<ClaimSwitch> {
        use aya::maps::IterableMap;
        use std::os::fd::AsFd;
        let fd = self
            .maps
            .claimed
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the claim map's descriptor")?;
        let map = MapData::from_fd(fd).context("opening the claim map again")?;
        Ok(ClaimSwitch(Array::try_from(aya::maps::Map::Array(map))?))
    }

    /// Stop claiming frames with `key`; a missing key is not an error.
    pub fn remove_key(&mut self, key: &Key) -> Result<()> {
        match self.maps.slots.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
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

    /// Redirect to `socket` what index `index` steers, frames of at most `max_len` bytes (the
    /// most it takes whole, [`crate::xsk::QueueUmem::max_rx_frame`]); longer ones go to the
    /// kernel, counted as `pass_too_big`.
    pub fn set_socket(&mut self, index: u32, socket: &impl AsRawFd, max_len: u32) -> Result<()> {
        // The limit first: the socket must never be live with a stale limit of the index's last
        // user.
        self.maps
            .xsk_max_len
            .set(index, max_len, 0)
            .with_context(|| format!("setting the frame limit of XSKMAP index {index}"))?;
        self.maps
            .xsks
            .set(index, socket.as_raw_fd(), 0)
            .with_context(|| format!("inserting an AF_XDP socket at XSKMAP index {index}"))
    }

    pub fn clear_socket(&mut self, index: u32) -> Result<()> {
        match self.maps.xsks.unset(index) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("clearing XSKMAP index {index}")),
        }
    }

    /// Run the loaded program once on `frame` with `BPF_PROG_TEST_RUN` (no interface needed)
    /// and return its verdict (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, …). The kernel refuses
    /// frames shorter than an Ethernet header (EINVAL); one longer than a page reaches the
    /// program in several buffers (it is multi-buffer).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, std::io::Error> {
        use aya::programs::{ProgramError, TestRun, TestRunOptions};
        let prog = self
            .owned_program()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
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
        while let Some(record) = self.maps.events.next() {
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
            .maps
            .counters
            .get(&0, 0)
            .context("reading the XDP counters")?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            total.add(c);
        }
        Ok(total)
    }

    /// Start the counters from zero (a daemon taking over a classifier counts its own frames).
    fn reset_counters(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
        self.maps
            .counters
            .set(0, zeros, 0)
            .context("resetting the XDP counters")
    }
}

fn check_slot(slot: u32) -> Result<()> {
    if slot >= abi::MAX_SLOTS {
        bail!(
            "slot {slot} out of range (at most {} endpoints)",
            abi::MAX_SLOTS
        );
    }
    Ok(())
}

fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The name of loaded BPF program `id`, if it is still loaded.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_named_in_the_abi_and_present_in_the_object() {
        let names: Vec<&str> = Program::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            abi::PROGRAMS[..names.len()],
            "abi::PROGRAMS recognizes leftovers by these names"
        );
        for name in abi::PROGRAMS.iter().chain(&MAP_NAMES) {
            // The ELF symbol table holds each program's and map's name, NUL-terminated.
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
