//! Where the classifier goes on an interface: what the interface runs now, and what to do about
//! it under `xdp-attach` (join a libxdp dispatcher, attach alone, refuse, or replace with
//! `--force`). One decision for the daemon, `xmacvlan run` and the library.
use super::XdpError;
use super::libxdp::{self, ChainProgram, Multiprog};
use crate::abi;
use crate::modes::{XdpAttach, XdpMode};
use crate::netlink::Link;

/// The name libxdp gives its dispatcher program (and the kernel shows).
pub const DISPATCHER_NAME: &str = "xdp_dispatcher";

/// How the classifier takes its place: `xdp-mode`, `xdp-attach` and `xdp-priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    pub mode: XdpMode,
    pub attach: XdpAttach,
    /// Its run priority in a dispatcher (lower runs first).
    pub priority: u32,
}

/// The daemon's defaults: `xdp-mode auto`, `xdp-attach auto`, the object's priority.
impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            mode: XdpMode::Auto,
            attach: XdpAttach::Auto,
            priority: abi::RUN_PRIORITY,
        }
    }
}

impl AttachOptions {
    /// Alone, in `mode` (the benchmark, tests, and callers that never share an interface).
    pub fn alone(mode: XdpMode) -> Self {
        Self {
            mode,
            attach: XdpAttach::Alone,
            priority: abi::RUN_PRIORITY,
        }
    }
}

/// The verdicts on which the dispatcher goes on from the classifier to the next program: a
/// frame it passes is not an endpoint's (or its endpoint is not claimed), so the programs after
/// it decide; a redirect into an AF_XDP socket must end the chain. The same as the object's
/// `.xdp_run_config` says, for libxdp loaders that read it.
pub const CHAIN_CALL: &[libxdp::XdpAction] = &[libxdp::XdpAction::Pass];

/// What an interface runs, as far as placing the classifier goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Occupant {
    Free,
    /// libxdp's dispatcher, with its programs in the order a frame meets them.
    Dispatcher {
        id: u32,
        mode: XdpMode,
        programs: Vec<ChainProgram>,
    },
    /// A program of xmacvlan's object attached alone (a daemon's, or a leftover).
    Ours {
        id: u32,
        name: String,
    },
    /// Anything else attached alone.
    Other {
        id: u32,
        name: Option<String>,
    },
}

/// What `link` runs (read in the calling thread's namespace).
pub fn survey(link: &Link) -> Result<Occupant, XdpError> {
    let Some(id) = link.xdp_prog_id else {
        return Ok(Occupant::Free);
    };
    let name = super::program_name(id);
    match name.as_deref() {
        Some(DISPATCHER_NAME) => read_dispatcher(link, id),
        Some(n) if abi::PROGRAMS.contains(&n) => Ok(Occupant::Ours {
            id,
            name: n.to_string(),
        }),
        _ => Ok(Occupant::Other { id, name }),
    }
}

fn read_dispatcher(link: &Link, id: u32) -> Result<Occupant, XdpError> {
    let unreadable = |cause| XdpError::UnreadableDispatcher {
        iface: link.name.clone(),
        id,
        bpffs: super::bpffs::bpffs_root(),
        cause,
    };
    match Multiprog::of_interface(link.index) {
        Ok(Some(mp)) if mp.is_dispatcher() && mp.main_id() == id => Ok(Occupant::Dispatcher {
            id,
            mode: mp.mode(),
            programs: mp.programs(),
        }),
        Ok(_) => Err(unreadable(None)),
        Err(e) => Err(unreadable(Some(e))),
    }
}

/// What to do on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Detach this program first (id, name): `--force`, or a leftover of xmacvlan's own.
    pub replace: Option<(u32, String)>,
    /// Join libxdp's dispatcher (the one there, or a new one), else attach alone.
    pub join: bool,
}

/// Decide for `ifname` running `occupant`. `replace_ours`: a program of xmacvlan's own that no
/// live process holds is a leftover to replace (the daemon; `run` asks for `--force`).
/// Joining needs a kernel that runs freplace programs: checked here.
pub fn decide(
    ifname: &str,
    occupant: &Occupant,
    attach: XdpAttach,
    force: bool,
    replace_ours: bool,
) -> Result<Decision, XdpError> {
    let decision = match occupant {
        Occupant::Free => Decision {
            replace: None,
            join: attach == XdpAttach::Dispatcher,
        },
        Occupant::Dispatcher { id, .. } if attach == XdpAttach::Alone => {
            if !force {
                return Err(XdpError::Dispatcher {
                    iface: ifname.to_string(),
                    id: *id,
                });
            }
            Decision {
                replace: Some((*id, DISPATCHER_NAME.to_string())),
                join: false,
            }
        }
        Occupant::Dispatcher { .. } => Decision {
            replace: None,
            join: true,
        },
        Occupant::Ours { id, name } if replace_ours || force => Decision {
            replace: Some((*id, name.clone())),
            join: attach == XdpAttach::Dispatcher,
        },
        Occupant::Other { id, name } if force => Decision {
            replace: Some((*id, name.clone().unwrap_or_else(|| "?".into()))),
            join: attach == XdpAttach::Dispatcher,
        },
        Occupant::Ours { id, name } => {
            return Err(foreign(ifname, *id, Some(name.clone())));
        }
        Occupant::Other { id, name } => return Err(foreign(ifname, *id, name.clone())),
    };
    if decision.join
        && let Err(source) = freplace_support()
    {
        return Err(XdpError::NoFreplace {
            iface: ifname.to_string(),
            joining: match occupant {
                Occupant::Dispatcher { id, .. } => Some(*id),
                _ => None,
            },
            refused: source,
        });
    }
    Ok(decision)
}

fn foreign(ifname: &str, id: u32, name: Option<String>) -> XdpError {
    let sharing = match freplace_support() {
        Ok(()) => "to share the interface instead, load that program through libxdp's \
                   multi-program dispatcher (`xdp-loader load`), which xmacvlan joins"
            .to_string(),
        Err(e) => format!(
            "the two cannot share it on this kernel: it refuses freplace programs ({e}), which \
             libxdp's multi-program dispatcher is made of (`xmacvlan doctor`: xdp-dispatcher)"
        ),
    };
    XdpError::Foreign {
        iface: ifname.to_string(),
        id,
        name,
        sharing,
    }
}

/// Whether this kernel runs freplace programs, which libxdp's dispatcher is made of: asked
/// once per process (without them libxdp would quietly attach the program alone).
pub fn freplace_support() -> Result<(), std::io::Error> {
    static ANSWER: std::sync::OnceLock<Result<(), (Option<i32>, String)>> =
        std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            super::load::probe_freplace().map_err(|e| (e.raw_os_error(), e.to_string()))
        })
        .clone()
        .map_err(|(errno, text)| match errno {
            Some(n) => std::io::Error::from_raw_os_error(n),
            None => std::io::Error::other(text),
        })
}

/// Where a program of `priority` named `name` would run in `programs` (sorted as libxdp sorts
/// them: by priority, then by name): the index it would take.
pub fn position_in_chain(programs: &[ChainProgram], priority: u32, name: &str) -> usize {
    programs
        .iter()
        .take_while(|p| (p.priority, p.name.as_str()) <= (priority, name))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libxdp::XdpAction;

    fn program(name: &str, priority: u32) -> ChainProgram {
        ChainProgram {
            name: name.into(),
            id: 7,
            priority,
            chain_call: vec![XdpAction::Pass],
        }
    }

    fn dispatcher() -> Occupant {
        Occupant::Dispatcher {
            id: 9,
            mode: XdpMode::Native,
            programs: vec![program("xdpfilt_alw_all", 10)],
        }
    }

    #[test]
    fn a_free_interface_gets_the_classifier_alone_unless_a_dispatcher_is_asked_for() {
        for attach in [XdpAttach::Auto, XdpAttach::Alone] {
            let d = decide("v0", &Occupant::Free, attach, false, false).unwrap();
            assert_eq!(
                d,
                Decision {
                    replace: None,
                    join: false
                }
            );
        }
    }

    #[test]
    fn alone_refuses_a_dispatcher_unless_forced_and_others_are_refused_as_before() {
        let err = decide("v0", &dispatcher(), XdpAttach::Alone, false, false).unwrap_err();
        assert!(matches!(err, XdpError::Dispatcher { id: 9, .. }), "{err}");
        assert!(err.to_string().contains("xdp-attach"), "{err}");
        let forced = decide("v0", &dispatcher(), XdpAttach::Alone, true, false).unwrap();
        assert_eq!(forced.replace, Some((9, DISPATCHER_NAME.into())));
        assert!(!forced.join);

        let other = Occupant::Other {
            id: 3,
            name: Some("xdp_prog".into()),
        };
        for attach in [XdpAttach::Auto, XdpAttach::Dispatcher, XdpAttach::Alone] {
            let err = decide("v0", &other, attach, false, false).unwrap_err();
            assert!(err.to_string().contains("already has another XDP program"));
        }
        let ours = Occupant::Ours {
            id: 4,
            name: abi::PROGRAM_CLASSIFY.into(),
        };
        assert!(decide("v0", &ours, XdpAttach::Auto, false, false).is_err());
        let leftover = decide("v0", &ours, XdpAttach::Auto, false, true).unwrap();
        assert_eq!(leftover.replace.unwrap().0, 4);
    }

    #[test]
    fn the_chain_position_follows_libxdps_order() {
        let chain = [program("xdpfilt_alw_all", 10), program("zz_last", 90)];
        assert_eq!(position_in_chain(&chain, 50, abi::PROGRAM_CLASSIFY), 1);
        assert_eq!(position_in_chain(&chain, 5, abi::PROGRAM_CLASSIFY), 0);
        assert_eq!(
            position_in_chain(&chain, 10, "a"),
            0,
            "same priority: by name"
        );
        assert_eq!(position_in_chain(&chain, 10, abi::PROGRAM_CLASSIFY), 1);
    }
}
