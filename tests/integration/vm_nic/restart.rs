//! A daemon restart on a real NIC driver: attaching or detaching XDP resets igb's rings and
//! takes its link down (`carrier_changes` counts it); a classifier kept attached through its
//! pins and taken over by the next daemon does neither. Both behaviours side by side, with the
//! library calls the daemon makes (`Classifier::attach_persistent` at start, dropped at stop).
use std::path::Path;
use std::time::{Duration, Instant};

use xmacvlan::modes::XdpMode;
use xmacvlan::xdp::{AttachOptions, Classifier, PinDir, Program, Steering, Takeover};
use xmacvlan_tests::nic_guest::NicGuest;

fn carrier(nic: &str, file: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{nic}/{file}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Carrier changes once the link is up again (a reset brings it back within seconds).
fn settled_carrier_changes(nic: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while carrier(nic, "carrier") != 1 {
        assert!(Instant::now() < deadline, "{nic} stayed down");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    carrier(nic, "carrier_changes")
}

fn attach(nic: &str, root: &Path) -> (Classifier, Takeover) {
    Classifier::attach_persistent(
        Program::Classify,
        Steering::PerEndpoint,
        4,
        nic,
        &AttachOptions::alone(XdpMode::Native),
        false,
        root,
        &mut Vec::new(),
    )
    .unwrap()
}

#[test]
#[ignore = "needs the igb guest: runs inside `sudo -E cargo xtask vm-test` (IGB_VM_TESTS)"]
fn a_restart_keeps_the_classifier_and_igbs_link_up() {
    let guest = NicGuest::from_env("vm_nic::restart");
    let nic = guest.nic.as_str();
    let root = std::env::temp_dir().join(format!("xmv-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    xmacvlan::sys::mount_bpffs(&root).unwrap();
    let ifindex = xmacvlan::sys::if_index(nic).unwrap();

    // The old behaviour: attached at start, detached at stop, attached again.
    let before = settled_carrier_changes(nic);
    let mut first = Classifier::load(Program::Classify, Steering::PerEndpoint, 4).unwrap();
    first
        .attach(ifindex, nic, XdpMode::Native, &mut Vec::new())
        .unwrap();
    let attached = settled_carrier_changes(nic);
    drop(first);
    let mut second = Classifier::load(Program::Classify, Steering::PerEndpoint, 4).unwrap();
    second
        .attach(ifindex, nic, XdpMode::Native, &mut Vec::new())
        .unwrap();
    let restarted = settled_carrier_changes(nic);
    drop(second);
    let old_restart = restarted - attached;
    eprintln!(
        "igb carrier changes: first attach {}, detach + attach (old restart) {old_restart}",
        attached - before
    );
    assert!(old_restart > 0, "igb resets on detach and attach");

    // Now: the first daemon's classifier stays pinned; the next one takes it over.
    let detached = settled_carrier_changes(nic);
    let (first, takeover) = attach(nic, &root);
    assert_eq!(takeover, Takeover::Fresh { replaced: None });
    let id = first.program_id().unwrap();
    let attached = settled_carrier_changes(nic);
    drop(first);
    let (second, takeover) = attach(nic, &root);
    assert!(matches!(takeover, Takeover::Adopted { program_id, .. } if program_id == id));
    let restarted = settled_carrier_changes(nic);
    eprintln!(
        "igb carrier changes: pinned attach {}, restart with takeover {}",
        attached - detached,
        restarted - attached
    );
    assert_eq!(restarted, attached, "no link flap on a restart");
    drop(second);
    xmacvlan::xdp::release_pinned(&PinDir::new(&root, nic)).unwrap();
    let _ = xmacvlan::sys::unmount_detach(&root);
    settled_carrier_changes(nic);
}
