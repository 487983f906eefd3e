//! The classifier pinned in libxdp's dispatcher, as the daemon holds it: kept across a
//! holder's exit, replaced when of another build, adopted by the next holder, released alone;
//! then the real daemon across a SIGTERM restart, and `xmacvlan down`.
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use xmacvlan::modes::{XdpAttach, XdpMode};
use xmacvlan::xdp::bpffs::BPFFS_ENV;
use xmacvlan::xdp::{AttachOptions, Classifier, PinDir, Program, Release, Steering, Takeover};
use xmacvlan_bench::lab::{self, Lab};
use xmacvlan_tests::daemon_lab::Lab as DaemonLab;

use super::{XdpFilter, assert_chain, build_lab, chain, in_vm, tear_down};

/// The dispatcher's program id on the NIC.
fn attached_id(lab: &Lab) -> Result<u32> {
    lab.host.run(|| {
        let link = xmacvlan::netlink::Netlink::new()?.require_link(lab::NIC)?;
        link.xdp_prog_id.context("nothing attached")
    })
}

#[test]
#[ignore = "VM only: the host kernel refuses freplace (cargo xtask vm-test)"]
fn a_pinned_classifier_stays_in_the_dispatcher_between_daemons() {
    in_vm();
    let lab = build_lab();
    // Pins need a bpffs: the guest's own.
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/xmvdsp{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    {
        let filter = XdpFilter::load(&lab).unwrap();
        let dispatcher = attached_id(&lab).unwrap();
        let opts = AttachOptions {
            attach: XdpAttach::Auto,
            ..AttachOptions::alone(XdpMode::Native)
        };
        let attach = |program: Program, steering: Steering, warnings: &mut Vec<String>| {
            lab.host.run(|| {
                Classifier::attach_persistent(
                    program,
                    steering,
                    1,
                    lab::NIC,
                    &opts,
                    false,
                    &root,
                    warnings,
                )
            })
        };
        let mut warnings = Vec::new();
        // Stands for an older xmacvlan's classifier: other code under the same pins.
        let (older, takeover) =
            attach(Program::RedirectAll, Steering::PerQueue, &mut warnings).unwrap();
        let Takeover::Joined {
            program_id: older_id,
            ..
        } = takeover
        else {
            panic!("not joined: {takeover:?} {warnings:?}");
        };
        assert_ne!(
            attached_id(&lab).unwrap(),
            dispatcher,
            "libxdp swaps in a new dispatcher"
        );
        drop(older); // its daemon stops: Release::Keep
        let status = chain(&lab).unwrap();
        assert!(
            status.contains("xmv_redirect_all"),
            "kept in the chain:\n{status}"
        );

        // This build replaces it: joins before the old one leaves.
        let (first, takeover) =
            attach(Program::Classify, Steering::PerEndpoint, &mut warnings).unwrap();
        let Takeover::Replaced {
            old_program_id,
            program_id,
            ..
        } = takeover
        else {
            panic!("not replaced: {takeover:?} {warnings:?}");
        };
        assert_eq!(old_program_id, older_id);
        let status = chain(&lab).unwrap();
        assert_chain(&status, true, true);
        assert!(
            !status.contains("xmv_redirect_all"),
            "the old one left:\n{status}"
        );
        let joined_dispatcher = attached_id(&lab).unwrap();
        drop(first);
        assert_eq!(
            attached_id(&lab).unwrap(),
            joined_dispatcher,
            "nothing re-attached"
        );
        assert_chain(&chain(&lab).unwrap(), true, true);

        // The next daemon adopts it as it is.
        let (mut second, takeover) =
            attach(Program::Classify, Steering::PerEndpoint, &mut warnings).unwrap();
        assert!(
            matches!(takeover, Takeover::Adopted { program_id: id, .. } if id == program_id),
            "{takeover:?} {warnings:?}"
        );
        assert_eq!(
            attached_id(&lab).unwrap(),
            joined_dispatcher,
            "nothing re-attached"
        );
        second.set_release(Release::Detach);
        lab.host
            .run(|| {
                drop(second);
                Ok(())
            })
            .unwrap();
        assert_chain(&chain(&lab).unwrap(), true, false);
        assert!(
            !PinDir::new(&root, lab::NIC).exists(),
            "the pins went with the classifier"
        );
        drop(filter);
    }
    std::fs::remove_dir_all(&root).unwrap();
    tear_down(lab);
}

/// An xdp-tools command in the daemon lab's host namespace, on the lab's bpffs.
fn xdp_tool_on(lab: &DaemonLab, bpffs: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host.name()))
        .args(args)
        .env(BPFFS_ENV, bpffs)
        .output()
        .expect("running an xdp-tools command");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    text
}

/// The daemon (the real binary) joins xdp-filter's dispatcher, delivers to an endpoint's app,
/// stops with its classifier left in the chain (the dispatcher's program id unchanged), is
/// taken over by the next daemon without touching the dispatcher, and `xmacvlan down` removes
/// only xmacvlan's program. libxdp's state and xmacvlan's pins live in a bpffs of the lab's
/// (`LIBXDP_BPFFS`, given to xdp-tools too): `ip netns exec` gives each process a fresh /sys.
#[test]
#[ignore = "VM only: the host kernel refuses freplace (cargo xtask vm-test)"]
fn the_daemon_keeps_its_place_in_the_dispatcher_across_a_restart() {
    in_vm();
    let lab = DaemonLab::new("dsp");
    let bpffs = lab.dir.join("bpffs");
    std::fs::create_dir_all(&bpffs).unwrap();
    xmacvlan::sys::mount_bpffs(&bpffs).unwrap();
    let env = [(BPFFS_ENV, bpffs.as_path())];
    lab.create_network();
    let c0 = lab.create_endpoint(0);
    let tool = |args: &[&str]| xdp_tool_on(&lab, &bpffs, args);
    tool(&["xdp-filter", "load", "--mode", "native", "v0"]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let first = lab.start_daemon_with("", &env);
        first.wait_for_log(
            "joined libxdp's multi-program dispatcher",
            Duration::from_secs(60),
        );
        assert_chain(&tool(&["xdp-loader", "status", "v0"]), true, true);
        let sink = lab.attach_sink(&first, 0);
        lab.burst(std::slice::from_ref(&c0), 100);
        let stats = first.wait_for_frames(&[("c0", 100)]);
        let frames = stats
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| e.frames)
            .sum::<u64>();
        assert_eq!(
            frames, 100,
            "the endpoint's app got its frames behind xdp-filter"
        );
        let dispatcher = lab.xdp_on_v0();
        assert!(dispatcher.is_some());
        first.terminate();
        drop(sink);
        assert_eq!(
            lab.xdp_on_v0(),
            dispatcher,
            "the stopped daemon left the dispatcher as it was"
        );
        assert_chain(&tool(&["xdp-loader", "status", "v0"]), true, true);

        let second = lab.start_daemon_with("", &env);
        second.wait_for_log("took over the classifier", Duration::from_secs(60));
        assert_eq!(
            lab.xdp_on_v0(),
            dispatcher,
            "taken over without touching the dispatcher"
        );
        second.terminate();
        let down = lab
            .command("down v0")
            .env(BPFFS_ENV, &bpffs)
            .output()
            .unwrap();
        assert!(
            down.status.success(),
            "{}",
            String::from_utf8_lossy(&down.stderr)
        );
        let said = String::from_utf8_lossy(&down.stdout);
        println!("{said}");
        assert!(said.contains("left libxdp's dispatcher"), "{said}");
        assert_chain(&tool(&["xdp-loader", "status", "v0"]), true, false);
    }));
    tool(&["xdp-filter", "unload", "v0"]);
    let _ = xmacvlan::sys::unmount_detach(&bpffs);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
