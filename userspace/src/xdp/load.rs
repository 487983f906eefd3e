//! Loading the embedded object into the kernel, and attaching it with a link this process owns.
use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{Xdp, XdpMode as AyaMode};
use aya::{Ebpf, EbpfLoader};

use super::place::{self, AttachOptions};
use super::{Classifier, Holder, Maps, Member, Placement, Program, Steering, chain};
use crate::abi::{self, Config};
use crate::modes::XdpMode;

/// The load-time configuration of the program (a read-only global) for a NIC with `queues`
/// receive queues.
pub(super) fn config(steering: Steering, queues: u32) -> Config {
    Config {
        demux: match steering {
            Steering::PerEndpoint => abi::DEMUX_XDP,
            Steering::PerQueue => abi::DEMUX_USER,
        },
        queues,
    }
}

/// Load `program` of the embedded object (verified, not attached).
pub(super) fn load_object(program: Program, steering: Steering, queues: u32) -> Result<Ebpf> {
    if queues == 0 || queues > abi::MAX_QUEUES {
        bail!("queue count {queues} out of range 1..={}", abi::MAX_QUEUES);
    }
    raise_memlock_limit();
    let config = config(steering, queues);
    let xsk_entries = match steering {
        Steering::PerEndpoint => abi::MAX_SLOTS * queues,
        Steering::PerQueue => queues,
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(abi::GLOBAL_CONFIG, &config, true)
        .map_max_entries(abi::MAP_XSKS, xsk_entries)
        .map_max_entries(abi::MAP_XSK_MAX_LEN, xsk_entries)
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
    Ok(ebpf)
}

/// The program `name` of a loaded object.
pub(super) fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing since load"))?
        .try_into()?)
}

/// Take every map the classifier works with out of a loaded object.
pub(super) fn take_maps(ebpf: &mut Ebpf) -> Result<Maps> {
    Maps::from_named(|name| {
        ebpf.take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))
    })
}

impl Classifier {
    /// Load the embedded object for a NIC with `queues` receive queues.
    pub fn load(program: Program, steering: Steering, queues: u32) -> Result<Self> {
        let mut ebpf = load_object(program, steering, queues)?;
        let maps = take_maps(&mut ebpf)?;
        Ok(Self {
            holder: Holder::Owned {
                ebpf,
                program,
                member: None,
            },
            maps,
            queues,
            steering,
            attached: None,
            placement: Placement::Alone,
        })
    }

    /// Attach to interface `ifindex` (in the calling thread's namespace) for as long as this
    /// classifier lives. Returns the mode that worked: `Auto` resolves to `Native` or
    /// `Generic`. Why `Auto` fell back goes to `warnings`, for the caller to log or print.
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: XdpMode,
        warnings: &mut Vec<String>,
    ) -> Result<XdpMode> {
        let Holder::Owned {
            ebpf,
            program,
            member: None,
        } = &mut self.holder
        else {
            bail!("this classifier is attached already");
        };
        let prog = program_mut(ebpf, program.name())?;
        let used = attach_in_mode(ifname, mode, warnings, |m| {
            prog.attach_to_if_index(ifindex, m).map(|_| ())
        })?;
        self.attached = Some((ifindex, used));
        Ok(used)
    }
}

impl Classifier {
    /// Attach to interface `ifname` (index `ifindex`, calling thread's namespace) for as long
    /// as this classifier lives, as `opts` say: alone, or as one program of libxdp's dispatcher
    /// (see [`place::decide`]). Any other program on the interface is refused with an
    /// [`XdpError`](super::XdpError) naming the way out. Returns the mode it runs in.
    pub fn attach_with(
        &mut self,
        ifindex: u32,
        ifname: &str,
        opts: &AttachOptions,
        warnings: &mut Vec<String>,
    ) -> Result<XdpMode> {
        let link = crate::netlink::Netlink::new()?.require_link(ifname)?;
        let occupant = place::survey(&link)?;
        let decision = place::decide(ifname, &occupant, opts.attach, false, false)?;
        if !decision.join {
            return self.attach(ifindex, ifname, opts.mode, warnings);
        }
        let Holder::Owned {
            ebpf,
            program,
            member: member @ None,
        } = &mut self.holder
        else {
            bail!("this classifier is attached already");
        };
        let loaded = program_mut(ebpf, program.name())?;
        let joined = chain::join(loaded, *program, (ifindex, ifname), &occupant, opts, None)?;
        *member = Some(Member {
            program: joined.program,
            id: joined.program_id,
        });
        let beside = match joined.others.is_empty() {
            true => "alone, so other XDP programs can join".to_string(),
            false => format!("beside {}", joined.others.join(", ")),
        };
        warnings.push(format!(
            "{ifname}: joined libxdp's multi-program dispatcher (id {}, {} mode) at priority \
             {}, {beside}",
            joined.dispatcher_id, joined.mode, opts.priority
        ));
        self.attached = Some((ifindex, joined.mode));
        self.placement = Placement::Dispatcher {
            priority: opts.priority,
        };
        Ok(joined.mode)
    }
}

/// Run `attach` in the mode asked for; `Auto` tries native first, then generic.
pub(super) fn attach_in_mode(
    ifname: &str,
    mode: XdpMode,
    warnings: &mut Vec<String>,
    mut attach: impl FnMut(AyaMode) -> Result<(), aya::programs::ProgramError>,
) -> Result<XdpMode> {
    Ok(match mode {
        XdpMode::Native => {
            attach(AyaMode::Driver).map_err(|e| {
                let why = match jumbo_mtu(ifname) {
                    Some(mtu) => format!(
                        "{}: the driver of {ifname} takes no multi-buffer XDP program at this \
                         MTU; lower it to {SINGLE_BUFFER_MTU} or less (`ip link set dev \
                         {ifname} mtu 1500`), or use --xdp-mode generic or auto",
                        mtu_needs_multi_buffer(mtu)
                    ),
                    None => "the driver may not support it; use --xdp-mode generic or auto".into(),
                };
                anyhow!(e).context(format!(
                    "attaching XDP in native (driver) mode to {ifname}: {why}"
                ))
            })?;
            XdpMode::Native
        }
        XdpMode::Generic => {
            attach(AyaMode::Skb)
                .with_context(|| format!("attaching XDP in generic mode to {ifname}"))?;
            XdpMode::Generic
        }
        XdpMode::Auto => match attach(AyaMode::Driver) {
            Ok(()) => XdpMode::Native,
            Err(native) => {
                attach(AyaMode::Skb).with_context(|| {
                    format!("attaching XDP to {ifname}: native failed ({native}), generic too")
                })?;
                let why = jumbo_mtu(ifname)
                    .map(|mtu| format!("{}: ", mtu_needs_multi_buffer(mtu)))
                    .unwrap_or_default();
                warnings.push(format!(
                    "{ifname}: {why}native XDP refused ({native}); using generic XDP"
                ));
                XdpMode::Generic
            }
        },
    })
}

/// The largest MTU whose frames fit one XDP buffer (veth's limit; drivers' are near it):
/// above it, native XDP takes only a multi-buffer program, on a driver that supports it.
pub const SINGLE_BUFFER_MTU: u32 = 3498;

/// The MTU of `ifname` (calling thread's namespace) when it is above [`SINGLE_BUFFER_MTU`]:
/// the likely reason a driver refused native XDP. Asked only once it has.
fn jumbo_mtu(ifname: &str) -> Option<u32> {
    let mtu = crate::netlink::Netlink::new()
        .ok()?
        .require_link(ifname)
        .ok()?
        .mtu;
    (mtu > SINGLE_BUFFER_MTU).then_some(mtu)
}

/// How `run`, the daemon and `doctor` name the reason.
pub fn mtu_needs_multi_buffer(mtu: u32) -> String {
    format!("MTU {mtu} needs multi-buffer XDP")
}

/// Whether this kernel runs freplace (`BPF_PROG_TYPE_EXT`) programs, which libxdp's
/// multi-program dispatcher is built from (each program sharing an interface replaces a stub
/// of the dispatcher): loads a stub and a replacement for it, attaches nothing. Some
/// hardened kernels refuse every program attached through a BPF trampoline.
pub fn probe_freplace() -> Result<(), std::io::Error> {
    let err = |e: String| std::io::Error::other(e);
    let mut ebpf = load_object(Program::DropAll, Steering::PerEndpoint, 1)
        .map_err(|e| err(format!("{e:#}")))?;
    let target = program_mut(&mut ebpf, abi::PROGRAM_DROP_ALL)
        .and_then(|p| Ok(p.fd()?.try_clone()?))
        .map_err(|e| err(format!("{e:#}")))?;
    let probe: &mut aya::programs::Extension = ebpf
        .program_mut(abi::PROGRAM_FREPLACE_PROBE)
        .ok_or_else(|| err("the freplace probe is missing from the embedded object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| err(e.to_string()))?;
    match probe.load(target, abi::PROGRAM_DROP_ALL) {
        Ok(()) => Ok(()),
        Err(aya::programs::ProgramError::LoadError { io_error, .. }) => Err(io_error),
        Err(aya::programs::ProgramError::SyscallError(e)) => Err(e.io_error),
        Err(e) => Err(err(e.to_string())),
    }
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
