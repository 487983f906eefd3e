//! A classifier that outlives its daemon: attached through a bpf_link pinned in bpffs with its
//! program and maps (`PinDir`), taken over by the next daemon without a detach, or replaced in
//! place (`bpf_link_update`) when it is not the program this build would load. (In libxdp's
//! dispatcher, libxdp's pins hold it attached, and `chain.rs` takes it over.)
//!
//! Why: on many real NICs (igb, i40e, ice, mlx5) attaching or detaching XDP reconfigures the
//! rings, which takes the link down for every user of the interface; replacing one program
//! by another does not.
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::maps::{Array, Map, MapData, MapInfo};
use aya::programs::ProgramInfo;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;

use super::bpffs::{self, PinDir};
use super::load::{attach_in_mode, config, load_object, program_mut};
use super::place::{self, AttachOptions, Occupant};
use super::{Classifier, Holder, MAP_NAMES, Maps, Placement, Program, Steering, chain};
use crate::abi::{self, Config};
use crate::modes::{XdpAttach, XdpMode};
use crate::netlink::{Link, Netlink};

/// What [`Classifier::attach_persistent`] found on the interface and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// Nothing of a previous daemon: loaded, attached alone and pinned. `replaced` names a
    /// program that was detached first (a leftover of a crashed `xmacvlan run`, or one
    /// `--force` removed).
    Fresh { replaced: Option<(u32, String)> },
    /// Nothing of a previous daemon: joined libxdp's dispatcher (the interface's, or a new
    /// one) at `priority`, beside `others` (their names); program and maps pinned.
    Joined {
        dispatcher_id: u32,
        program_id: u32,
        priority: u32,
        others: Vec<String>,
        replaced: Option<(u32, String)>,
    },
    /// The pinned classifier of a previous daemon is this build's program with this
    /// configuration: kept attached (same program id, no detach), its state cleared.
    Adopted {
        program_id: u32,
        /// Endpoints it still claimed: its daemon died without releasing them (killed, crashed).
        stale_claims: u32,
        stale_keys: u32,
    },
    /// The pinned classifier was another build's or configuration's: its link now runs this
    /// build's program (`bpf_link_update`, never detached); in a dispatcher, this build's
    /// program joined it before the old one left.
    Replaced {
        old_program_id: u32,
        program_id: u32,
        why: String,
    },
}

/// What becomes of a pinned classifier when its [`Classifier`] is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// It stays attached for the next daemon (the caller unclaims its endpoints first).
    Keep,
    /// Unpinned, and so detached (the last endpoint left; `--detach-on-exit`; `xmacvlan down`);
    /// in a dispatcher, only xmacvlan's program leaves it.
    Detach,
}

impl Classifier {
    /// Attach `program` to `ifname` (calling thread's namespace) as `opts` say, alone through
    /// a link pinned under the bpffs `root` (see [`bpffs::bpffs_root`]) or as one program of
    /// libxdp's dispatcher, with program and maps pinned there too, taking over the classifier
    /// a previous daemon left (see [`Takeover`]). Another program attached to the interface is
    /// refused ([`XdpError`]) unless `force`. The caller makes sure no other live process
    /// serves the pinned classifier ([`pinned_program_id`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attach_persistent(
        program: Program,
        steering: Steering,
        queues: u32,
        ifname: &str,
        opts: &AttachOptions,
        force: bool,
        root: &Path,
        warnings: &mut Vec<String>,
    ) -> Result<(Self, Takeover)> {
        if bpffs::ensure_mounted(root)? {
            warnings.push(format!("mounted a bpffs on {}", root.display()));
        }
        let pins = PinDir::new(root, ifname);
        let wanted = Wanted {
            program,
            steering,
            queues,
        };
        let nl = Netlink::new()?;
        let link = nl.require_link(ifname)?;
        if pins.exists() {
            let done = if pins.link().exists() {
                take_over(wanted, &link, opts, &pins, warnings)?
            } else {
                chain::take_over_member(wanted, &link, opts, &pins, warnings)?
            };
            match done {
                Some(done) => return Ok(done),
                None => {
                    let stale = release_pinned(&pins)?;
                    wait_for_release(&nl, ifname, stale)?;
                }
            }
        }
        let link = nl.require_link(ifname)?;
        let occupant = place::survey(&link)?;
        let decision = place::decide(ifname, &occupant, opts.attach, force, true)?;
        if let Some((id, _)) = &decision.replace {
            crate::nic::detach_xdp(&nl, link.index)
                .with_context(|| format!("detaching XDP program {id} from {ifname}"))?;
        }
        if decision.join {
            // Detached above: the interface is free now.
            let occupant = match decision.replace {
                Some(_) => Occupant::Free,
                None => occupant,
            };
            return chain::join_pinned(wanted, &link, &occupant, opts, &pins, decision.replace);
        }
        let classifier = attach_fresh(wanted, &link, opts.mode, &pins, warnings)?;
        Ok((
            classifier,
            Takeover::Fresh {
                replaced: decision.replace,
            },
        ))
    }

    /// Open the classifier pinned in `pins` without changing it (for `doctor`); None when
    /// there is none. Dropping it leaves it attached.
    pub fn open_pinned(pins: &PinDir) -> Result<Option<Self>> {
        if !pins.exists() {
            return Ok(None);
        }
        let info = ProgramInfo::from_pin(pins.program()).context("opening the pinned program")?;
        let (steering, queues) = match pinned_config(&info) {
            Some(c) if c.demux == abi::DEMUX_USER => (Steering::PerQueue, c.queues),
            Some(c) => (Steering::PerEndpoint, c.queues),
            None => (Steering::PerEndpoint, 1),
        };
        let placement = match pins.link().exists() {
            true => Placement::Alone,
            false => Placement::Dispatcher {
                priority: crate::sys::if_index(pins.interface())
                    .and_then(|ifindex| chain::member_of(ifindex, info.id()))
                    .map_or(abi::RUN_PRIORITY, |(_, _, me)| me.priority),
            },
        };
        open_pins(pins, (steering, queues), (0, XdpMode::Auto), placement).map(Some)
    }

    /// What happens to the pins when this classifier is dropped (no-op for one this process
    /// owns: it is detached on drop anyway).
    pub fn set_release(&mut self, release: Release) {
        if let Holder::Pinned { on_drop, .. } = &mut self.holder {
            *on_drop = release;
        }
    }

    /// The pin directory, for a classifier held through pins.
    pub fn pins(&self) -> Option<&PinDir> {
        match &self.holder {
            Holder::Pinned { pins, .. } => Some(pins),
            Holder::Owned { .. } => None,
        }
    }

    /// Clear what a dead daemon left in the maps: claims and keys. Returns their counts.
    pub fn clear_state(&mut self) -> Result<(u32, u32)> {
        let claims = self.unclaim_all()?;
        let keys = self.clear_keys()?;
        Ok((claims, keys))
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        let (ifindex, id, pins) = match &self.holder {
            Holder::Owned {
                member: Some(m), ..
            } => (self.attached.map(|(i, _)| i), m.id, None),
            Holder::Pinned {
                pins,
                program_id,
                on_drop: Release::Detach,
                ..
            } => (self.attached.map(|(i, _)| i), *program_id, Some(pins)),
            _ => return,
        };
        // Alone, the program goes with the last reference to its link (this process's, or
        // the pin); in a dispatcher, libxdp's pins hold it there until it leaves.
        if let (Some(ifindex), Placement::Dispatcher { .. }) = (ifindex, self.placement)
            && let Err(e) = chain::leave(ifindex, id)
        {
            tracing::warn!("removing the classifier from libxdp's dispatcher: {e:#}");
        }
        if let Some(pins) = pins
            && let Err(e) = pins.remove()
        {
            tracing::warn!("removing the classifier's pins: {e}");
        }
    }
}

/// The id of the program pinned in `pins`, if any.
pub fn pinned_program_id(pins: &PinDir) -> Option<u32> {
    ProgramInfo::from_pin(pins.program()).ok().map(|i| i.id())
}

/// Remove the classifier pinned in `pins`, detaching it (`xmacvlan down`); in libxdp's
/// dispatcher on its interface (calling thread's namespace), only xmacvlan's program leaves
/// it. Returns the id of the program that was pinned, None when nothing was.
pub fn release_pinned(pins: &PinDir) -> Result<Option<u32>> {
    if !pins.exists() {
        return Ok(None);
    }
    let id = pinned_program_id(pins);
    if !pins.link().exists()
        && let Some(id) = id
        && let Some(ifindex) = crate::sys::if_index(pins.interface())
    {
        chain::leave(ifindex, id)?;
    }
    pins.remove()?;
    Ok(id)
}

/// Wait until `ifname` no longer runs `program`, detached by the removal of its pins: the
/// kernel releases a link whose last pin went after an RCU grace period, from a workqueue. A
/// link someone else still holds stays: then the interface is read as it is, after a second.
fn wait_for_release(nl: &Netlink, ifname: &str, program: Option<u32>) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while program.is_some()
        && nl.require_link(ifname)?.xdp_prog_id == program
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// The program to load and the configuration to load it with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub program: Program,
    pub steering: Steering,
    pub queues: u32,
}

/// Take over the pinned classifier when it is attached to this interface: adopt it, or replace
/// its program in place. None: the pins are stale (their link is not this interface's program,
/// or the XDP mode must change) and the caller removes them.
fn take_over(
    wanted: Wanted,
    link: &Link,
    opts: &AttachOptions,
    pins: &PinDir,
    warnings: &mut Vec<String>,
) -> Result<Option<(Classifier, Takeover)>> {
    let Wanted {
        program,
        steering,
        queues,
    } = wanted;
    let mode = opts.mode;
    if opts.attach == XdpAttach::Dispatcher {
        warnings.push(format!(
            "{}: xdp-attach is dispatcher but the classifier a previous daemon left runs \
             alone: detaching it to join a dispatcher (the link may go down once)",
            link.name
        ));
        return Ok(None);
    }
    let Ok(pinned) = PinnedLink::from_pin(pins.link()) else {
        warnings.push(format!(
            "{}: pins without a link in {}: removed",
            link.name,
            pins.path().display()
        ));
        return Ok(None);
    };
    let pinned = FdLink::from(pinned);
    let old_id = pinned
        .info()
        .context("reading the pinned link")?
        .program_id();
    if link.xdp_prog_id != Some(old_id) {
        warnings.push(format!(
            "{}: the pinned classifier (program {old_id}) is not the interface's XDP program \
             (the device was re-created or renamed): its pins are removed",
            link.name
        ));
        return Ok(None);
    }
    let current = if link.xdp_generic {
        XdpMode::Generic
    } else {
        XdpMode::Native
    };
    if mode != XdpMode::Auto && mode != current {
        warnings.push(format!(
            "{}: xdp-mode is {mode:?} but the pinned classifier runs in {current:?} mode: \
             detaching it to attach again (the link may go down once)",
            link.name
        ));
        return Ok(None);
    }
    let mut ebpf = load_object(program, steering, queues)?;
    let at = (link.index, current);
    let why = match why_replace(pins, &mut ebpf, wanted, None)? {
        Some(why) => why,
        None => {
            drop(ebpf);
            match adopt(pins, wanted, at, Placement::Alone, old_id) {
                Ok(done) => return Ok(Some(done)),
                Err(e) => {
                    // Fresh maps and program through the same link: still no detach.
                    ebpf = load_object(program, steering, queues)?;
                    format!("its pins could not be opened ({e:#})")
                }
            }
        }
    };
    if mode == XdpMode::Auto && current == XdpMode::Generic {
        // Native XDP may have refused the old program for what this one has (multi-buffer, for
        // a jumbo MTU); detaching a generic program resets no rings, so try native again.
        warnings.push(format!(
            "{}: the pinned classifier runs in generic mode and {why}: attaching this build's \
             again, natively if the driver takes it",
            link.name
        ));
        return Ok(None);
    }
    let xdp_link = XdpLink::try_from(pinned).map_err(|e| anyhow!("the pinned link: {e}"))?;
    let prog = program_mut(&mut ebpf, program.name())?;
    let id = prog
        .attach_to_link(xdp_link)
        .context("replacing the pinned classifier's program (bpf_link_update)")?;
    // The pin holds the link; this process needs no handle on it.
    drop(FdLink::try_from(prog.take_link(id)?)?);
    pin_maps(&ebpf, pins)?;
    let prog = program_mut(&mut ebpf, program.name())?;
    pin_replacing(&pins.program(), |p| {
        prog.pin(p).context("pinning the classifier's program")
    })?;
    let classifier = open_pins(pins, (steering, queues), at, Placement::Alone)?;
    let program_id = classifier.program_id()?;
    Ok(Some((
        classifier,
        Takeover::Replaced {
            old_program_id: old_id,
            program_id,
            why,
        },
    )))
}

fn attach_fresh(
    wanted: Wanted,
    link: &Link,
    mode: XdpMode,
    pins: &PinDir,
    warnings: &mut Vec<String>,
) -> Result<Classifier> {
    let Wanted {
        program,
        steering,
        queues,
    } = wanted;
    let mut ebpf = load_object(program, steering, queues)?;
    pins.create()?;
    let attached = (|| -> Result<XdpMode> {
        pin_maps(&ebpf, pins)?;
        let prog = program_mut(&mut ebpf, program.name())?;
        prog.pin(pins.program())
            .context("pinning the classifier's program")?;
        let mut link_id = None;
        let used = attach_in_mode(&link.name, mode, warnings, |m| {
            link_id = Some(prog.attach_to_if_index(link.index, m)?);
            Ok(())
        })?;
        let xdp_link = prog.take_link(link_id.expect("set by a successful attach"))?;
        let fd_link = FdLink::try_from(xdp_link).map_err(|_| {
            anyhow!(
                "this kernel attached XDP through netlink, not a bpf_link (kernel < 5.9): \
                 the classifier cannot be pinned to outlive the daemon"
            )
        })?;
        fd_link
            .pin(pins.link())
            .context("pinning the classifier's XDP link")?;
        Ok(used)
    })();
    match attached {
        Ok(used) => open_pins(
            pins,
            (steering, queues),
            (link.index, used),
            Placement::Alone,
        ),
        Err(e) => {
            pins.remove().ok();
            Err(e)
        }
    }
}

/// Pin every map of a loaded object, each replacing its old pin in one step (see
/// [`pin_replacing`]); the caller pins the program after them.
pub(super) fn pin_maps(ebpf: &aya::Ebpf, pins: &PinDir) -> Result<()> {
    for name in MAP_NAMES {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))?;
        pin_replacing(&pins.map(name), |p| {
            map.pin(p).with_context(|| format!("pinning map {name}"))
        })?;
    }
    Ok(())
}

/// Pin with `pin` over `path` in one step (under a temporary name, then renamed over it), so
/// the directory is never missing a pin a following daemon needs.
pub(super) fn pin_replacing(path: &Path, pin: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // bpffs refuses names with a dot.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("_new");
    let temporary = path.with_file_name(name);
    std::fs::remove_file(&temporary).ok();
    pin(&temporary)?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} over {}", temporary.display(), path.display()))
}

/// Why the classifier pinned in `pins` is not `wanted` as `ebpf` (just loaded) and `priority`
/// (in a dispatcher: its priority there, and the one wanted); None: it is.
pub(super) fn why_replace(
    pins: &PinDir,
    ebpf: &mut aya::Ebpf,
    wanted: Wanted,
    priority: Option<(u32, u32)>,
) -> Result<Option<String>> {
    let Wanted {
        program,
        steering,
        queues,
    } = wanted;
    let new_info = program_mut(ebpf, program.name())?.info()?;
    Ok(match ProgramInfo::from_pin(pins.program()) {
        Err(e) => Some(format!("its program pin is unreadable ({e})")),
        Ok(old) if old.name_as_str() != Some(kernel_name(program)) => Some(format!(
            "it runs program `{}`, not `{}`",
            old.name_as_str().unwrap_or("?"),
            program.name()
        )),
        Ok(old) if old.tag() != new_info.tag() => {
            Some("it was built from other code (another xmacvlan version)".to_string())
        }
        Ok(old) if pinned_config(&old) != Some(config(steering, queues)) => Some(format!(
            "its configuration differs ({:?}, now {:?})",
            pinned_config(&old),
            config(steering, queues)
        )),
        Ok(_) => match priority {
            Some((was, now)) if was != now => Some(format!("its priority was {was}, now {now}")),
            _ => None,
        },
    })
}

/// Take over the classifier pinned in `pins` as it is (program `old_id`, attached to
/// interface index and mode `at`): its claims, keys, counters and events cleared.
pub(super) fn adopt(
    pins: &PinDir,
    wanted: Wanted,
    at: (u32, XdpMode),
    placement: Placement,
    old_id: u32,
) -> Result<(Classifier, Takeover)> {
    let mut classifier = open_pins(pins, (wanted.steering, wanted.queues), at, placement)?;
    let (stale_claims, stale_keys) = classifier.clear_state()?;
    classifier.reset_counters()?;
    while classifier.drain_events(|_| {}) > 0 {}
    let takeover = Takeover::Adopted {
        program_id: old_id,
        stale_claims,
        stale_keys,
    };
    Ok((classifier, takeover))
}

/// The classifier behind the pins in `pins`, attached to interface index and mode `at`.
pub(super) fn open_pins(
    pins: &PinDir,
    (steering, queues): (Steering, u32),
    (ifindex, mode): (u32, XdpMode),
    placement: Placement,
) -> Result<Classifier> {
    let info = ProgramInfo::from_pin(pins.program()).context("opening the pinned program")?;
    let pinned_ids = MAP_NAMES
        .iter()
        .map(|name| {
            MapInfo::from_pin(pins.map(name))
                .map(|m| m.id())
                .with_context(|| format!("opening pinned map {name}"))
        })
        .collect::<Result<Vec<u32>>>()?;
    let maps = Maps::from_named(|name| {
        let data = MapData::from_pin(pins.map(name))
            .with_context(|| format!("opening pinned map {name}"))?;
        Ok(Map::from_map_data(data)?)
    })?;
    // A directory half rewritten by a daemon that died while replacing the program: the
    // program's maps (but its read-only data) must be the pinned ones.
    for id in info.map_ids()?.unwrap_or_default() {
        let name = MapInfo::from_id(id)?
            .name_as_str()
            .unwrap_or_default()
            .to_string();
        if !name.contains('.') && !pinned_ids.contains(&id) {
            anyhow::bail!(
                "the pinned program uses map {name} (id {id}), which is not pinned beside it"
            );
        }
    }
    Ok(Classifier {
        holder: Holder::Pinned {
            program: info.fd()?,
            program_id: info.id(),
            pins: pins.clone(),
            on_drop: Release::Keep,
        },
        maps,
        queues,
        steering,
        attached: (ifindex != 0).then_some((ifindex, mode)),
        placement,
    })
}

/// A program's name as the kernel keeps it: at most 15 bytes.
fn kernel_name(program: Program) -> &'static str {
    let name = program.name();
    &name[..name.len().min(15)]
}

/// The load-time configuration of a loaded program, read from its read-only data map.
fn pinned_config(info: &ProgramInfo) -> Option<Config> {
    let ids = info.map_ids().ok()??;
    let id = ids.into_iter().find(|id| {
        MapInfo::from_id(*id)
            .ok()
            .is_some_and(|m| m.name_as_str().is_some_and(|n| n.ends_with(".rodata")))
    })?;
    let data = MapData::from_id(id).ok()?;
    let array: Array<MapData, Config> = Array::try_from(Map::from_map_data(data).ok()?).ok()?;
    array.get(&0, 0).ok()
}
