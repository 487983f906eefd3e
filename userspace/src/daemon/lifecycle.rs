//! The classifier's side of the daemon's lifecycle: attaching through the pins a previous
//! daemon left (taken over without a detach), and draining the claimed frames at a stop.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::dataplane::{Dataplane, DataplaneConfig};
use crate::xdp::{Classifier, PinDir, Program, Takeover};

/// Start `cfg`'s dataplane on the interface's pinned classifier: the one a previous daemon
/// left is taken over without a detach (see [`Takeover`]).
pub(super) fn start_plane(cfg: &DataplaneConfig) -> Result<Dataplane> {
    let root = crate::xdp::bpffs::bpffs_root();
    let pins = PinDir::new(&root, &cfg.ifname);
    if let Some(id) = crate::xdp::pinned_program_id(&pins)
        && let Some(pid) = crate::ipc::alive::holders_of_bpf_program(id).first()
    {
        bail!(
            "{}'s classifier (program {id}, pinned in {}) is in use by xmacvlan process {pid}: \
             another daemon serves this interface; stop it first (kill {pid})",
            cfg.ifname,
            pins.path().display()
        );
    }
    let mut warnings = Vec::new();
    let (classifier, takeover) = Classifier::attach_persistent(
        Program::Classify,
        crate::dataplane::steering(cfg.demux),
        cfg.queues,
        &cfg.ifname,
        &cfg.attach_options(),
        false,
        &root,
        &mut warnings,
    )?;
    let iface = cfg.ifname.as_str();
    for w in &warnings {
        tracing::warn!(iface, "{w}");
    }
    match &takeover {
        Takeover::Fresh { replaced: None } => {}
        Takeover::Fresh {
            replaced: Some((id, name)),
        } => tracing::warn!(
            iface,
            id,
            name,
            "replaced the XDP program a previous xmacvlan left behind (crashed or killed)"
        ),
        Takeover::Joined {
            dispatcher_id,
            program_id,
            priority,
            others,
            replaced,
        } => {
            if let Some((id, name)) = replaced {
                tracing::warn!(
                    iface,
                    id,
                    name,
                    "replaced the XDP program a previous xmacvlan left behind (crashed or killed)"
                );
            }
            let beside = match others.is_empty() {
                true => "alone, so other XDP programs can join".to_string(),
                false => format!("beside {}", others.join(", ")),
            };
            tracing::info!(
                iface,
                dispatcher_id,
                program_id,
                priority,
                "joined libxdp's multi-program dispatcher ({beside})"
            );
        }
        Takeover::Adopted {
            program_id,
            stale_claims,
            stale_keys,
        } => {
            tracing::info!(
                iface,
                program_id,
                "took over the classifier a previous daemon left attached (no detach, no link flap)"
            );
            if *stale_claims > 0 {
                tracing::warn!(
                    iface,
                    stale_claims,
                    stale_keys,
                    "the previous daemon died without releasing its endpoints: their claims are cleared"
                );
            }
        }
        Takeover::Replaced {
            old_program_id,
            program_id,
            why,
        } => tracing::info!(
            iface,
            old_program_id,
            program_id,
            "replaced the pinned classifier in place (bpf_link_update, no detach): {why}"
        ),
    }
    Ok(Dataplane::start_with(cfg, classifier, &[])?)
}

/// After the claims are released: wait (at most a second) until the consumers have read the
/// frames claimed before from the sockets, so the stop closes none with frames in it. Done
/// when every redirected frame is read or counted as dropped, or when the counts stand still
/// (endpoints removed earlier keep the sum below the classifier's count).
pub(super) fn wait_drained(plane: &Dataplane) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let (mut last, mut still) = (u64::MAX, 0);
    while Instant::now() < deadline {
        let Ok(s) = plane.snapshot() else { return };
        let accounted = s
            .endpoints
            .iter()
            .map(|e| e.frames + e.dropped())
            .chain(s.queues.iter().map(|q| q.socket.dropped()))
            .sum::<u64>();
        still = if accounted == last { still + 1 } else { 0 };
        if accounted >= s.xdp.redirected || still >= 5 {
            return;
        }
        last = accounted;
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!(iface = %plane.config().ifname, "claimed frames still in the sockets after 1 s: the stop drops them");
}
