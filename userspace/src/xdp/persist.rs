//! A classifier that outlives its daemon: attached through a bpf_link pinned in bpffs with its
//! program and maps (`PinDir`), taken over by the next daemon without a detach, or replaced in
//! place (`bpf_link_update`) when it is not the program this build would load.
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
use super::{Classifier, Holder, MAP_NAMES, Maps, Program, Steering, XdpError};
use crate::abi::{self, Config};
use crate::modes::XdpMode;
use crate::netlink::{Link, Netlink};

/// What [`Classifier::attach_persistent`] found on the interface and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// Nothing of a previous daemon: loaded, attached and pinned. `replaced` names a program
    /// that was detached first (a leftover of a crashed `xmacvlan run`, or one `--force` removed).
    Fresh { replaced: Option<(u32, String)> },
    /// The pinned classifier of a previous daemon is this build's program with this
    /// configuration: kept attached (same program id, no detach), its state cleared.
    Adopted {
        program_id: u32,
        /// Endpoints it still claimed: its daemon died without releasing them (killed, crashed).
        stale_claims: u32,
        stale_keys: u32,
    },
    /// The pinned classifier was another build's or configuration's: its link now runs this
    /// build's program (`bpf_link_update`, never detached).
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
    /// Unpinned, and so detached (the last endpoint left; `--detach-on-exit`; `xmacvlan down`).
    Detach,
}

impl Classifier {
    /// Attach `program` to `ifname` (calling thread's namespace) through a link pinned under
    /// the bpffs `root` (see [`bpffs::bpffs_root`]), taking over the classifier a previous
    /// daemon left there (see [`Takeover`]). Another program attached to the interface is
    /// refused ([`XdpError::Foreign`]) unless `force`. The caller makes sure no other live
    /// process serves the pinned classifier ([`pinned_program_id`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attach_persistent(
        program: Program,
        steering: Steering,
        queues: u32,
        ifname: &str,
        mode: XdpMode,
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
            match take_over(wanted, &link, mode, &pins, warnings)? {
                Some(done) => return Ok(done),
                None => pins.remove()?,
            }
        }
        // The pins' removal may have detached a stale link: read the interface again.
        let link = nl.require_link(ifname)?;
        let replaced = match link.xdp_prog_id {
            None => None,
            Some(id) => {
                let name = super::program_name(id);
                let ours = name.as_deref().is_some_and(|n| abi::PROGRAMS.contains(&n));
                if name.as_deref() == Some("xdp_dispatcher") && !force {
                    return Err(XdpError::Dispatcher {
                        iface: ifname.to_string(),
                        id,
                    }
                    .into());
                }
                if !ours && !force {
                    return Err(XdpError::Foreign {
                        iface: ifname.to_string(),
                        id,
                        name,
                    }
                    .into());
                }
                crate::nic::detach_xdp(&nl, link.index)?;
                Some((id, name.unwrap_or_else(|| "?".into())))
            }
        };
        let classifier = attach_fresh(wanted, &link, mode, &pins, warnings)?;
        Ok((classifier, Takeover::Fresh { replaced }))
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
        open_pins(pins, steering, queues, 0, XdpMode::Auto).map(Some)
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
        if let Holder::Pinned {
            pins,
            on_drop: Release::Detach,
            ..
        } = &self.holder
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

/// Remove the classifier pinned in `pins`, detaching it (`xmacvlan down`). Returns the id of
/// the program that was pinned, None when nothing was.
pub fn release_pinned(pins: &PinDir) -> Result<Option<u32>> {
    if !pins.exists() {
        return Ok(None);
    }
    let id = ProgramInfo::from_pin(pins.program()).ok().map(|i| i.id());
    pins.remove()?;
    Ok(id)
}

/// The program to load and the configuration to load it with.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    program: Program,
    steering: Steering,
    queues: u32,
}

/// Take over the pinned classifier when it is attached to this interface: adopt it, or replace
/// its program in place. None: the pins are stale (their link is not this interface's program,
/// or the XDP mode must change) and the caller removes them.
fn take_over(
    wanted: Wanted,
    link: &Link,
    mode: XdpMode,
    pins: &PinDir,
    warnings: &mut Vec<String>,
) -> Result<Option<(Classifier, Takeover)>> {
    let Wanted {
        program,
        steering,
        queues,
    } = wanted;
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
    let new_info = program_mut(&mut ebpf, program.name())?.info()?;
    let why = match ProgramInfo::from_pin(pins.program()) {
        Err(e) => format!("its program pin is unreadable ({e})"),
        Ok(old) if old.name_as_str() != Some(kernel_name(program)) => format!(
            "it runs program `{}`, not `{}`",
            old.name_as_str().unwrap_or("?"),
            program.name()
        ),
        Ok(old) if old.tag() != new_info.tag() => {
            "it was built from other code (another xmacvlan version)".to_string()
        }
        Ok(old) if pinned_config(&old) != Some(config(steering, queues)) => format!(
            "its configuration differs ({:?}, now {:?})",
            pinned_config(&old),
            config(steering, queues)
        ),
        Ok(_) => {
            drop(ebpf);
            match open_pins(pins, steering, queues, link.index, current) {
                Ok(mut classifier) => {
                    let (stale_claims, stale_keys) = classifier.clear_state()?;
                    classifier.reset_counters()?;
                    while classifier.drain_events(|_| {}) > 0 {}
                    let takeover = Takeover::Adopted {
                        program_id: old_id,
                        stale_claims,
                        stale_keys,
                    };
                    return Ok(Some((classifier, takeover)));
                }
                Err(e) => {
                    // Fresh maps and program through the same link: still no detach.
                    ebpf = load_object(program, steering, queues)?;
                    format!("its pins could not be opened ({e:#})")
                }
            }
        }
    };
    let xdp_link = XdpLink::try_from(pinned).map_err(|e| anyhow!("the pinned link: {e}"))?;
    let prog = program_mut(&mut ebpf, program.name())?;
    let id = prog
        .attach_to_link(xdp_link)
        .context("replacing the pinned classifier's program (bpf_link_update)")?;
    // The pin holds the link; this process needs no handle on it.
    drop(FdLink::try_from(prog.take_link(id)?)?);
    pin_program_and_maps(&mut ebpf, program, pins)?;
    let classifier = open_pins(pins, steering, queues, link.index, current)?;
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
        pin_program_and_maps(&mut ebpf, program, pins)?;
        let prog = program_mut(&mut ebpf, program.name())?;
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
        Ok(used) => open_pins(pins, steering, queues, link.index, used),
        Err(e) => {
            let _ = pins.remove();
            Err(e)
        }
    }
}

/// Pin the program and every map of a loaded object, each replacing its old pin in one step
/// (pinned under a temporary name, then renamed over it), so the directory is never missing a
/// pin a following daemon needs.
fn pin_program_and_maps(ebpf: &mut aya::Ebpf, program: Program, pins: &PinDir) -> Result<()> {
    for name in MAP_NAMES {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))?;
        pin_replacing(&pins.map(name), |p| {
            map.pin(p).with_context(|| format!("pinning map {name}"))
        })?;
    }
    let prog = program_mut(ebpf, program.name())?;
    pin_replacing(&pins.program(), |p| {
        prog.pin(p).context("pinning the classifier's program")
    })
}

fn pin_replacing(path: &Path, pin: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // bpffs refuses names with a dot.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("_new");
    let temporary = path.with_file_name(name);
    let _ = std::fs::remove_file(&temporary);
    pin(&temporary)?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} over {}", temporary.display(), path.display()))
}

/// The classifier behind the pins in `pins`, attached to `ifindex` in `mode`.
fn open_pins(
    pins: &PinDir,
    steering: Steering,
    queues: u32,
    ifindex: u32,
    mode: XdpMode,
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
