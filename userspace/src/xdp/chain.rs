//! The classifier as one program of libxdp's multi-program dispatcher, beside other XDP
//! programs (`xdp-filter`, a load balancer, ...).
//!
//! libxdp loads the classifier from the same embedded object as an freplace program linked
//! into the dispatcher, and pins that link (and the dispatcher) under `BPFFS/xdp/`; its maps
//! are the ones aya created for the program loaded first (shared by fd), so the dataplane
//! works with them as when the classifier runs alone. A dispatcher is attached through
//! netlink, and libxdp replaces it atomically whenever a program joins or leaves.
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::MapInfo;

use super::bpffs::PinDir;
use super::libxdp::{self, Multiprog, Object};
use super::load::{load_object, program_mut};
use super::persist::{Wanted, adopt, open_pins, pin_maps, pin_replacing, why_replace};
use super::place::{self, AttachOptions, CHAIN_CALL, Occupant};
use super::{Classifier, Placement, Program, Takeover, XdpError, pinned_program_id};
use crate::abi;
use crate::modes::{XdpAttach, XdpMode};
use crate::netlink::Link;

/// The classifier joined to a dispatcher.
pub(super) struct Joined {
    /// The program libxdp loaded (the dispatcher's link holds it too).
    pub program: OwnedFd,
    pub program_id: u32,
    pub dispatcher_id: u32,
    /// Where the dispatcher runs.
    pub mode: XdpMode,
    /// The other programs of the chain, by name.
    pub others: Vec<String>,
}

/// Add `program` to the dispatcher on interface `ifname` (index `ifindex`, calling thread's
/// namespace), which runs `occupant` (free, or a dispatcher), sharing the maps of `loaded`:
/// the same program loaded by aya. `pin`: also pin the program there.
pub(super) fn join(
    loaded: &aya::programs::Xdp,
    program: Program,
    (ifindex, ifname): (u32, &str),
    occupant: &Occupant,
    opts: &AttachOptions,
    pin: Option<&Path>,
) -> Result<Joined> {
    let modes = match occupant {
        Occupant::Dispatcher { id, mode, .. } => {
            if opts.mode != XdpMode::Auto && opts.mode != *mode {
                return Err(XdpError::DispatcherMode {
                    iface: ifname.to_string(),
                    id: *id,
                    running: *mode,
                    wanted: opts.mode,
                }
                .into());
            }
            vec![*mode]
        }
        _ => match opts.mode {
            XdpMode::Auto => vec![XdpMode::Native, XdpMode::Generic],
            m => vec![m],
        },
    };
    let maps = maps_by_name(loaded)?;
    let mut object = Object::open(abi::CLASSIFIER_OBJECT)?;
    object.load_only(program.name())?;
    object.reuse_maps(|name| shared_map(&maps, name))?;
    let mut prog = libxdp::Program::of_object(&object, program.name())?;
    prog.set_priority(opts.priority)?;
    prog.set_chain_call(CHAIN_CALL)?;
    let mut failures = Vec::new();
    for mode in &modes {
        match prog.attach(ifindex, *mode) {
            Ok(()) => {
                failures.clear();
                break;
            }
            Err(e) => failures.push(format!("{mode}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "joining libxdp's dispatcher on {ifname}: {}",
            failures.join("; ")
        );
    }
    let program_id = prog.id();
    let (dispatcher_id, mode, others) = match Multiprog::of_interface(ifindex)? {
        Some(mp) if mp.is_dispatcher() && mp.programs().iter().any(|p| p.id == program_id) => {
            let others = mp
                .programs()
                .into_iter()
                .filter(|p| p.id != program_id)
                .map(|p| p.name)
                .collect();
            (mp.main_id(), mp.mode(), others)
        }
        _ => {
            // libxdp falls back to attaching a program alone when it cannot build a
            // dispatcher: not what was asked for.
            libxdp::detach(ifindex, program_id).ok();
            bail!(
                "libxdp attached the classifier to {ifname} without a dispatcher (it could not \
                 build one): detached again; `xmacvlan doctor` checks what the kernel allows \
                 (xdp-dispatcher)"
            );
        }
    };
    let fd = prog
        .fd()
        .ok_or_else(|| anyhow!("libxdp loaded the classifier but holds no descriptor"))?
        .try_clone_to_owned()
        .context("duplicating the classifier's descriptor")?;
    if let Some(path) = pin
        && let Err(e) = prog.pin(path)
    {
        libxdp::detach(ifindex, program_id).ok();
        return Err(e).context("pinning the classifier beside its maps");
    }
    Ok(Joined {
        program: fd,
        program_id,
        dispatcher_id,
        mode,
        others,
    })
}

/// Every map a loaded program uses, by the kernel's name (at most 15 bytes), with its
/// descriptor.
fn maps_by_name(loaded: &aya::programs::Xdp) -> Result<HashMap<String, aya::maps::MapFd>> {
    let ids = loaded
        .info()
        .context("reading the loaded classifier")?
        .map_ids()
        .context("listing the classifier's maps")?
        .unwrap_or_default();
    ids.into_iter()
        .map(|id| {
            let info = MapInfo::from_id(id).with_context(|| format!("opening map {id}"))?;
            let name = info.name_as_str().unwrap_or_default().to_string();
            Ok((name, info.fd()?))
        })
        .collect()
}

/// The map to share for libbpf's map `name`: the same name as the kernel keeps it (15 bytes),
/// or for a data section (libbpf: `OBJECT.rodata`) the section's (aya: `.rodata`).
fn shared_map<'m>(
    maps: &'m HashMap<String, aya::maps::MapFd>,
    name: &str,
) -> Option<std::os::fd::BorrowedFd<'m>> {
    let key = match name.find('.') {
        Some(dot) => &name[dot..],
        None => &name[..name.len().min(15)],
    };
    maps.get(key).map(|fd| fd.as_fd())
}

/// The dispatcher on `ifindex` and program `id`'s place in it, if it is one of its programs.
pub(super) fn member_of(ifindex: u32, id: u32) -> Option<(u32, XdpMode, libxdp::ChainProgram)> {
    let mp = Multiprog::of_interface(ifindex).ok()??;
    if !mp.is_dispatcher() {
        return None;
    }
    let me = mp.programs().into_iter().find(|p| p.id == id)?;
    Some((mp.main_id(), mp.mode(), me))
}

/// Remove program `id` from the dispatcher on `ifindex`, if it is there.
pub(super) fn leave(ifindex: u32, id: u32) -> Result<bool> {
    if member_of(ifindex, id).is_none() {
        return Ok(false);
    }
    libxdp::detach(ifindex, id)?;
    Ok(true)
}

/// Join libxdp's dispatcher on `link` (which runs `occupant`: nothing, or the dispatcher)
/// with a freshly loaded classifier, its program and maps pinned in `pins` to outlive the
/// daemon (libxdp's own pins hold it in the dispatcher).
pub(super) fn join_pinned(
    wanted: Wanted,
    link: &Link,
    occupant: &Occupant,
    opts: &AttachOptions,
    pins: &PinDir,
    replaced: Option<(u32, String)>,
) -> Result<(Classifier, Takeover)> {
    let Wanted {
        program,
        steering,
        queues,
    } = wanted;
    let mut ebpf = load_object(program, steering, queues)?;
    pins.create()?;
    let joined = (|| {
        pin_maps(&ebpf, pins)?;
        let loaded = program_mut(&mut ebpf, program.name())?;
        let at = (link.index, link.name.as_str());
        join(loaded, program, at, occupant, opts, Some(&pins.program()))
    })();
    let joined = match joined {
        Ok(joined) => joined,
        Err(e) => {
            pins.remove().ok();
            return Err(e);
        }
    };
    let placement = Placement::Dispatcher {
        priority: opts.priority,
    };
    let opened = open_pins(
        pins,
        (steering, queues),
        (link.index, joined.mode),
        placement,
    );
    let classifier = match opened {
        Ok(classifier) => classifier,
        Err(e) => {
            leave(link.index, joined.program_id).ok();
            pins.remove().ok();
            return Err(e);
        }
    };
    Ok((
        classifier,
        Takeover::Joined {
            dispatcher_id: joined.dispatcher_id,
            program_id: joined.program_id,
            priority: opts.priority,
            others: joined.others,
            replaced,
        },
    ))
}

/// Take over the classifier a previous daemon left in the dispatcher on `link` (program and
/// maps pinned in `pins`, no link of its own): adopt it as it is, or replace it with this
/// build's program, which joins before the old one leaves (the interface keeps its dispatcher
/// throughout, so no link flap). None: the pins are stale, or the classifier must leave the
/// dispatcher (`xdp-attach alone`): the caller releases them.
pub(super) fn take_over_member(
    wanted: Wanted,
    link: &Link,
    opts: &AttachOptions,
    pins: &PinDir,
    warnings: &mut Vec<String>,
) -> Result<Option<(Classifier, Takeover)>> {
    let iface = &link.name;
    let Some(old_id) = pinned_program_id(pins) else {
        warnings.push(format!(
            "{iface}: the program pinned in {} is unreadable: the pins are removed",
            pins.path().display()
        ));
        return Ok(None);
    };
    let Some((dispatcher_id, mode, me)) = member_of(link.index, old_id) else {
        warnings.push(format!(
            "{iface}: the pinned classifier (program {old_id}) is no longer one of {iface}'s XDP \
             programs (unloaded, or the device was re-created): its pins are removed"
        ));
        return Ok(None);
    };
    if opts.attach == XdpAttach::Alone {
        warnings.push(format!(
            "{iface}: xdp-attach is alone but the classifier a previous daemon left is in \
             libxdp's dispatcher (id {dispatcher_id}): it leaves the dispatcher"
        ));
        return Ok(None);
    }
    if opts.mode != XdpMode::Auto && opts.mode != mode {
        return Err(XdpError::DispatcherMode {
            iface: iface.clone(),
            id: dispatcher_id,
            running: mode,
            wanted: opts.mode,
        }
        .into());
    }
    let Wanted {
        program,
        steering,
        queues,
    } = wanted;
    let placement = Placement::Dispatcher {
        priority: opts.priority,
    };
    let at = (link.index, mode);
    let mut ebpf = load_object(program, steering, queues)?;
    let why = match why_replace(pins, &mut ebpf, wanted, Some((me.priority, opts.priority)))? {
        Some(why) => why,
        None => {
            drop(ebpf);
            match adopt(pins, wanted, at, placement, old_id) {
                Ok(done) => return Ok(Some(done)),
                Err(e) => {
                    ebpf = load_object(program, steering, queues)?;
                    format!("its pins could not be opened ({e:#})")
                }
            }
        }
    };
    let occupant = place::survey(link)?;
    let mut joined = None;
    pin_replacing(&pins.program(), |next| {
        let loaded = program_mut(&mut ebpf, program.name())?;
        let new = join(
            loaded,
            program,
            (link.index, iface),
            &occupant,
            opts,
            Some(next),
        )?;
        let id = new.program_id;
        joined = Some(new);
        pin_maps(&ebpf, pins).inspect_err(|_| {
            leave(link.index, id).ok();
        })
    })?;
    let joined = joined.expect("set by a successful pin");
    if let Err(e) = leave(link.index, old_id) {
        warnings.push(format!(
            "{iface}: the replaced classifier (program {old_id}) could not leave the dispatcher: \
             {e:#}; it claims nothing, and `xdp-loader unload {iface} --id {old_id}` removes it"
        ));
    }
    let classifier = open_pins(
        pins,
        (steering, queues),
        (link.index, joined.mode),
        placement,
    )?;
    Ok(Some((
        classifier,
        Takeover::Replaced {
            old_program_id: old_id,
            program_id: joined.program_id,
            why,
        },
    )))
}
