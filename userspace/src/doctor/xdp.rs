//! The interface's XDP side: what its driver can do (asked of the kernel, with lists of
//! drivers only where the kernel cannot say), and the XDP programs on it: xmacvlan's own,
//! kept attached between daemons, or someone else's.
use super::checks::{ok, problem};
use super::facts::{LinkFacts, PinnedFacts};
use super::{Finding, Severity};
use crate::netlink::XdpFeatures;
use crate::xdp::{AttachOptions, Occupant, SINGLE_BUFFER_MTU, mtu_needs_multi_buffer};

/// Drivers with native (driver-mode) XDP, as named by `ethtool -i` / the sysfs driver link:
/// the fallback on kernels that cannot say (before 6.3).
pub const NATIVE_XDP_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "mlx4_en",
    "mlx5_core",
    "ena",
    "bnxt_en",
    "qede",
    "nfp",
    "sfc",
    "hv_netvsc",
    "netfront",
    "stmmac",
    "st_gmac",
    "mvneta",
    "mvpp2",
    "dpaa2_eth",
    "fec",
    "enetc",
    "thunder-nicvf",
    "tsnep",
    "lan966x-switch",
    "bond",
];

/// Drivers with AF_XDP zero-copy support.
pub const ZEROCOPY_DRIVERS: &[&str] = &[
    "i40e",
    "ice",
    "ixgbe",
    "igc",
    "mlx5_core",
    "stmmac",
    "st_gmac",
    "tsnep",
];

/// What the verdicts rest on: the kernel's own flags, or the lists above.
enum Source<'a> {
    Kernel(&'a XdpFeatures),
    List(String),
}

/// Driver, native XDP, zero-copy, multi-buffer and VLAN-tag metadata support.
pub fn check_driver(name: &str, link: &LinkFacts) -> Vec<Finding> {
    let driver = link.driver.as_deref();
    let mut out = vec![match driver {
        Some(d) => ok("driver", format!("{name} uses driver {d}")),
        None => problem(
            "driver",
            Severity::Warn,
            format!("could not tell the driver of {name}"),
            "the fallback lists of native XDP and zero-copy drivers need its name",
            Some(format!(
                "install ethtool (apt-get install -y ethtool) and check `ethtool -i {name}`"
            )),
        ),
    }];
    let source = match &link.xdp_features {
        Ok(Some(f)) => Source::Kernel(f),
        Ok(None) => Source::List(
            "this kernel (before 6.3) cannot report XDP features: judged from a list of drivers"
                .into(),
        ),
        Err(e) => Source::List(format!(
            "asking the kernel failed ({e}): judged from a list of drivers"
        )),
    };
    let who = driver.map_or_else(|| name.to_string(), |d| format!("driver {d}"));
    let (native, zero_copy, from) = match &source {
        Source::Kernel(f) => (f.native_xdp(), f.zero_copy(), "the kernel says".to_string()),
        Source::List(why) => match driver {
            Some(d) => (
                NATIVE_XDP_DRIVERS.contains(&d),
                ZEROCOPY_DRIVERS.contains(&d),
                why.clone(),
            ),
            None => return out,
        },
    };
    out.push(if native {
        ok(
            "native-xdp",
            format!("{who} runs XDP natively, {from} (xdp-mode native or auto)"),
        )
    } else {
        problem(
            "native-xdp",
            Severity::Warn,
            format!("{who} has no native XDP, {from}: generic (skb) mode only"),
            "generic XDP runs after the kernel has built a socket buffer, which costs most of \
             what the fast path saves",
            Some(
                "nothing to set: with xdp-mode auto (the default) xmacvlan falls back to generic \
                 mode on its own; for speed use a NIC whose driver has native XDP (i40e, ice, \
                 mlx5_core, ...)"
                    .into(),
            ),
        )
    });
    out.push(if zero_copy {
        ok(
            "zero-copy",
            format!("{who} supports AF_XDP zero-copy, {from} (bind-mode zerocopy or auto)"),
        )
    } else {
        problem(
            "zero-copy",
            Severity::Warn,
            format!("{who} has no AF_XDP zero-copy, {from}: copy mode only"),
            "in copy mode the kernel copies every frame into the UMEM, roughly ten times the \
             cost of zero-copy",
            Some(
                "nothing to set: with bind-mode auto (the default) xmacvlan uses copy mode here \
                 on its own (bind-mode zerocopy would refuse to start); for zero-copy use a NIC \
                 whose driver has it: i40e, ice, mlx5_core, ixgbe, igc or igb (Linux 6.14+)"
                    .into(),
            ),
        )
    });
    if let Source::Kernel(f) = source {
        out.push(multi_buffer(name, &who, link.mtu, f.multi_buffer()));
        out.push(ok(
            "vlan-metadata",
            if f.vlan_tag_metadata() {
                format!(
                    "{who} hands XDP the VLAN tag it strips (rx VLAN tag metadata), the kernel says"
                )
            } else {
                format!(
                    "{who} does not hand XDP a stripped VLAN tag, the kernel says: tagged \
                     endpoints need the tag left in the frame (see rx-vlan-offload)"
                )
            },
        ));
    }
    out
}

/// Whether the driver takes XDP frames of several buffers, which native XDP needs for a
/// jumbo MTU (the classifier is multi-buffer).
fn multi_buffer(name: &str, who: &str, mtu: u32, multi_buffer: bool) -> Finding {
    let jumbo = mtu > SINGLE_BUFFER_MTU;
    match (multi_buffer, jumbo) {
        (true, false) => ok(
            "multi-buffer",
            format!("{who} takes XDP frames in several buffers (multi-buffer), the kernel says"),
        ),
        (true, true) => ok(
            "multi-buffer",
            format!(
                "{who} takes XDP frames in several buffers (multi-buffer), the kernel says: \
                 the classifier runs natively at MTU {mtu}, and multi-buffer AF_XDP sockets \
                 (XDP_USE_SG, Linux 6.6+) take longer frames as chains of UMEM chunks; where \
                 the socket bind refuses multi-buffer (the dataplane warns), a frame longer \
                 than one chunk less 256 bytes of headroom goes to the endpoint's kernel \
                 device, counted as TOO-BIG"
            ),
        ),
        (false, false) => ok(
            "multi-buffer",
            format!(
                "{who} has no XDP multi-buffer, the kernel says: native XDP needs an MTU \
                 whose frames fit one buffer ({SINGLE_BUFFER_MTU} or less)"
            ),
        ),
        (false, true) => problem(
            "multi-buffer",
            Severity::Warn,
            format!(
                "{}: {who} has none, the kernel says, so it refuses native XDP at this MTU",
                mtu_needs_multi_buffer(mtu)
            ),
            "xdp-mode auto falls back to generic XDP, which runs after the kernel has built a \
             socket buffer and costs most of what the fast path saves",
            Some(format!(
                "lower the MTU to {SINGLE_BUFFER_MTU} or less (`ip link set dev {name} mtu \
                 1500`), or use a NIC whose driver has XDP multi-buffer (i40e, ice, mlx5_core, \
                 virtio_net)"
            )),
        ),
    }
}

/// Whether libxdp's multi-program dispatcher (through which XDP programs share an interface)
/// can run on this kernel: it is made of freplace programs.
pub fn check_dispatcher_support(freplace: &Result<(), String>) -> Finding {
    match freplace {
        Ok(()) => ok(
            "xdp-dispatcher",
            "this kernel runs freplace programs: libxdp's multi-program dispatcher works here \
             (xdp-loader, xdp-filter, and xmacvlan with xdp-attach auto or dispatcher)"
                .into(),
        ),
        Err(e) => problem(
            "xdp-dispatcher",
            Severity::Warn,
            format!(
                "this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs ({e}): libxdp's \
                 multi-program dispatcher cannot run here"
            ),
            "XDP programs share an interface only through that dispatcher; without it libxdp \
             loads a program alone (`Falling back to loading single prog without dispatcher`), \
             and xmacvlan attaches alone too (xdp-attach dispatcher is refused) and needs the \
             interface to itself. Some hardened kernels refuse every \
             program attached through a BPF trampoline (fentry, LSM, freplace); the message \
             libxdp prints about `ulimit -l` is a guess: BPF memory has been charged to the \
             cgroup, not RLIMIT_MEMLOCK, since Linux 5.11",
            Some(
                "nothing xmacvlan can change: on this kernel run one XDP program per interface"
                    .into(),
            ),
        ),
    }
}

/// The XDP programs on the interface: xmacvlan's (kept attached between daemons, or left
/// behind), someone else's, or libxdp's dispatcher with its chain. `opts`: how the daemon's
/// configuration places the classifier.
pub fn check_xdp_programs(
    name: &str,
    link: &LinkFacts,
    daemon_running: bool,
    opts: &AttachOptions,
) -> Vec<Finding> {
    let chain = match &link.occupant {
        Ok(Occupant::Dispatcher { id, mode, programs }) => Some((*id, *mode, programs)),
        _ => None,
    };
    // xmacvlan's program on the interface: the attached one, or its place in the chain.
    let ours = match chain {
        Some((_, _, programs)) => programs
            .iter()
            .find(|p| super::chain::is_ours(p))
            .map(|p| p.id),
        None => link.xdp_prog_id,
    };
    let mut out = Vec::new();
    if let Some(pinned) = &link.pinned {
        out.push(check_pinned(name, pinned, ours, daemon_running));
    }
    let expected = daemon_running || link.pinned.is_some();
    match (ours, link.xdp_prog_holders.first()) {
        (Some(id), Some(pid)) if !daemon_running => out.push(held_by_xmacvlan(name, id, *pid)),
        _ => match (&link.occupant, chain) {
            (_, Some((id, mode, programs))) => out.extend(super::chain::check_dispatcher(
                name,
                (id, mode),
                programs,
                expected,
                opts,
            )),
            (Err(unreadable), None) => out.push(problem(
                "xdp-program",
                Severity::Error,
                unreadable.clone(),
                "xmacvlan cannot join a dispatcher whose programs libxdp cannot find, and will \
                 not replace it unless told to",
                Some(format!(
                    "find the bpffs its loader used (`xdp-loader status {name}` there lists \
                     them) and run xmacvlan with LIBXDP_BPFFS set to it; in a network \
                     namespace, enter it with `nsenter --net=/run/netns/NS`, not `ip netns \
                     exec` (which mounts a /sys without that bpffs)"
                )),
            )),
            (Ok(_), None) => out.push(check_xdp_program(
                name,
                link.xdp_prog_id,
                link.xdp_prog_name.as_deref(),
                expected,
            )),
        },
    }
    out
}

/// xmacvlan's classifier pinned for this interface: attached for the next daemon, with the
/// claims a daemon that died left behind.
pub fn check_pinned(
    name: &str,
    pinned: &PinnedFacts,
    attached: Option<u32>,
    daemon_running: bool,
) -> Finding {
    let dir = pinned.dir.display();
    if attached != Some(pinned.program_id) {
        return problem(
            "pinned",
            Severity::Warn,
            format!(
                "xmacvlan's pins in {dir} hold program {} but {name} runs {}",
                pinned.program_id,
                attached.map_or("no XDP program".into(), |id| format!("program {id}"))
            ),
            "pins left by a daemon whose interface went away or was re-created; the next \
             daemon removes them",
            Some(format!("xmacvlan down {name}")),
        );
    }
    if daemon_running {
        return ok(
            "pinned",
            format!("the daemon's classifier is pinned in {dir} (kept attached across restarts)"),
        );
    }
    if pinned.claims > 0 {
        return problem(
            "pinned",
            Severity::Warn,
            format!(
                "{} endpoint{} still claimed by the classifier pinned in {dir}, but no daemon runs",
                pinned.claims,
                if pinned.claims == 1 { " is" } else { "s are" }
            ),
            "a daemon died (killed, crashed) without releasing them; their sockets are gone, so \
             the frames still reach the kernel devices, but as failed redirects",
            Some(format!(
                "xmacvlan doctor --iface {name} --fix (or start the daemon: it clears them)"
            )),
        );
    }
    ok(
        "pinned",
        format!(
            "xmacvlan's classifier stays attached to {name} for the next daemon (pinned in {dir}); \
             no endpoint is claimed, so the kernel devices get every frame; `xmacvlan down {name}` \
             removes it"
        ),
    )
}

/// xmacvlan's classifier held by a live xmacvlan process that is not the daemon this doctor
/// looked for (another `xmacvlan run`, a daemon on another socket): `xdp off` cannot remove
/// a program held by a BPF link, stopping that process does.
fn held_by_xmacvlan(name: &str, id: u32, pid: u32) -> Finding {
    problem(
        "xdp-program",
        Severity::Warn,
        format!(
            "xmacvlan's classifier (id {id}) on {name} is held by xmacvlan process {pid}, not by \
             the daemon this doctor checked"
        ),
        "another `xmacvlan run`, or a daemon on another control socket, serves this interface; \
         a new daemon or run cannot attach to it while that process lives",
        Some(format!(
            "see it: ps -o pid,args -p {pid}; stop it: kill {pid} (or check that daemon: \
             xmacvlan --control-socket PATH doctor)"
        )),
    )
}

/// Another XDP program, or xmacvlan's own left behind by a dead process. `expected`: a daemon
/// runs, or the classifier is pinned to outlive it.
pub fn check_xdp_program(
    name: &str,
    prog_id: Option<u32>,
    prog_name: Option<&str>,
    expected: bool,
) -> Finding {
    let Some(id) = prog_id else {
        return ok(
            "xdp-program",
            format!("no XDP program is attached to {name}"),
        );
    };
    let ours = prog_name.is_some_and(|n| crate::abi::PROGRAMS.contains(&n));
    let label = match prog_name {
        Some(n) => format!("id {id}, `{n}`"),
        None => format!("id {id}"),
    };
    if ours && expected {
        return ok(
            "xdp-program",
            format!("xmacvlan's classifier is attached to {name} ({label})"),
        );
    }
    if ours {
        return problem(
            "xdp-program",
            Severity::Warn,
            format!(
                "xmacvlan's classifier is attached to {name} ({label}) but no daemon is running \
                 and it is not pinned"
            ),
            "a crashed `xmacvlan run` left it behind: it still steers frames into sockets \
             nobody reads, so endpoint traffic on the fast path is lost",
            Some(format!("ip link set dev {name} xdp off")),
        );
    }
    problem(
        "xdp-program",
        Severity::Error,
        format!("another XDP program is attached to {name} ({label})"),
        "an interface runs one XDP program: xmacvlan refuses to replace it unless told to, \
         and while it stays the fast path cannot start",
        Some(format!(
            "see what it is: bpftool prog show id {id}; detach it: ip link set dev {name} xdp off \
             (or start xmacvlan with --force to replace it)"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::XdpMode;
    use crate::netlink::features::{rx_metadata, xdp_act};

    fn link(features: Result<Option<XdpFeatures>, String>) -> LinkFacts {
        LinkFacts {
            index: 3,
            kind: None,
            up: true,
            promiscuous: true,
            mtu: 1500,
            rx_queues: 4,
            xdp_prog_id: None,
            xdp_prog_name: None,
            occupant: Ok(Occupant::Free),
            xdp_prog_holders: Vec::new(),
            driver: Some("igb".into()),
            ethtool_features: Err("not read".into()),
            xdp_features: features,
            pinned: None,
        }
    }

    fn severity_of(findings: &[Finding], check: &str) -> Severity {
        findings.iter().find(|f| f.check == check).unwrap().severity
    }

    #[test]
    fn the_kernel_beats_the_lists() {
        // igb is on no zero-copy list; the kernel (6.14+) says it has zero-copy.
        let f = XdpFeatures {
            xdp: xdp_act::BASIC | xdp_act::REDIRECT | xdp_act::XSK_ZEROCOPY,
            rx_metadata: Some(0),
            ..XdpFeatures::default()
        };
        let found = check_driver("eth0", &link(Ok(Some(f))));
        assert_eq!(severity_of(&found, "native-xdp"), Severity::Ok);
        assert_eq!(severity_of(&found, "zero-copy"), Severity::Ok);
        let zc = found.iter().find(|f| f.check == "zero-copy").unwrap();
        assert!(zc.what.contains("the kernel says"), "{}", zc.what);
        let meta = found.iter().find(|f| f.check == "vlan-metadata").unwrap();
        assert!(meta.what.contains("does not hand XDP"), "{}", meta.what);

        let f = XdpFeatures {
            rx_metadata: Some(rx_metadata::VLAN_TAG),
            ..XdpFeatures::default()
        };
        let found = check_driver("eth0", &link(Ok(Some(f))));
        assert_eq!(severity_of(&found, "native-xdp"), Severity::Warn);
        assert!(
            found
                .iter()
                .any(|f| f.what.contains("hands XDP the VLAN tag"))
        );
    }

    #[test]
    fn a_jumbo_mtu_without_multi_buffer_is_named_as_the_reason() {
        let without = XdpFeatures {
            xdp: xdp_act::BASIC | xdp_act::REDIRECT,
            ..XdpFeatures::default()
        };
        let with = XdpFeatures {
            xdp: without.xdp | xdp_act::RX_SG,
            ..XdpFeatures::default()
        };
        let at = |features: XdpFeatures, mtu: u32| {
            let facts = LinkFacts {
                mtu,
                ..link(Ok(Some(features)))
            };
            check_driver("eth1", &facts)
                .into_iter()
                .find(|f| f.check == "multi-buffer")
                .unwrap()
        };
        let refused = at(without, 9000);
        assert_eq!(refused.severity, Severity::Warn);
        assert!(
            refused
                .what
                .starts_with("MTU 9000 needs multi-buffer XDP: driver igb has none"),
            "{}",
            refused.what
        );
        assert!(
            refused
                .fix
                .unwrap()
                .contains("ip link set dev eth1 mtu 1500")
        );
        assert_eq!(at(without, 1500).severity, Severity::Ok);
        let native = at(with, 9000);
        assert_eq!(native.severity, Severity::Ok);
        assert!(
            native.what.contains("runs natively at MTU 9000"),
            "{}",
            native.what
        );
    }

    #[test]
    fn old_kernels_and_failures_fall_back_to_the_lists_and_say_so() {
        for (features, says) in [
            (Ok(None), "before 6.3"),
            (Err("EPERM".to_string()), "asking the kernel failed (EPERM)"),
        ] {
            let found = check_driver("eth0", &link(features));
            let native = found.iter().find(|f| f.check == "native-xdp").unwrap();
            assert_eq!(native.severity, Severity::Ok, "igb is on the native list");
            assert!(native.what.contains(says), "{}", native.what);
            assert_eq!(severity_of(&found, "zero-copy"), Severity::Warn);
            assert!(!found.iter().any(|f| f.check == "vlan-metadata"));
        }
    }

    #[test]
    fn a_pinned_classifier_without_a_daemon_is_expected_unless_it_still_claims() {
        let pinned = PinnedFacts {
            dir: "/sys/fs/bpf/xmacvlan/eth0".into(),
            program_id: 40,
            claims: 0,
            keys: 3,
        };
        let f = check_pinned("eth0", &pinned, Some(40), false);
        assert_eq!(f.severity, Severity::Ok);
        assert!(f.what.contains("xmacvlan down eth0"), "{}", f.what);
        let stale = PinnedFacts {
            claims: 2,
            ..pinned.clone()
        };
        let f = check_pinned("eth0", &stale, Some(40), false);
        assert_eq!(f.severity, Severity::Warn);
        assert!(f.fix.unwrap().contains("--fix"));
        assert_eq!(
            check_pinned("eth0", &stale, Some(40), true).severity,
            Severity::Ok
        );
        let f = check_pinned("eth0", &pinned, None, false);
        assert_eq!(f.fix.as_deref(), Some("xmacvlan down eth0"));

        let mut l = link(Ok(None));
        l.xdp_prog_id = Some(40);
        l.xdp_prog_name = Some("xmv_classify".into());
        l.pinned = Some(pinned);
        let found = check_xdp_programs("eth0", &l, false, &AttachOptions::alone(XdpMode::Auto));
        assert!(
            found.iter().all(|f| f.severity == Severity::Ok),
            "{found:#?}"
        );
    }

    #[test]
    fn a_kernel_refusing_freplace_is_told_and_a_dispatcher_is_named() {
        assert_eq!(check_dispatcher_support(&Ok(())).severity, Severity::Ok);
        let refused = check_dispatcher_support(&Err("Operation not permitted".into()));
        assert_eq!(refused.severity, Severity::Warn);
        assert!(
            refused.what.contains("refuses freplace"),
            "{}",
            refused.what
        );
        assert!(refused.why.unwrap().contains("not RLIMIT_MEMLOCK"));
        let mut l = link(Ok(None));
        l.xdp_prog_id = Some(7);
        l.xdp_prog_name = Some("xdp_dispatcher".into());
        l.occupant = Err(
            "eth0 runs libxdp's dispatcher (id 7) but libxdp cannot read its \
                          programs"
                .into(),
        );
        let found = check_xdp_programs("eth0", &l, false, &AttachOptions::alone(XdpMode::Auto));
        assert_eq!(found[0].severity, Severity::Error);
        assert!(found[0].fix.as_ref().unwrap().contains("LIBXDP_BPFFS"));
    }
}
