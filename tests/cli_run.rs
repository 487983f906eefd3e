//! `xmacvlan run` on a named interface: refusals that protect interfaces it does not own.
use std::path::PathBuf;

use xmacvlan::cli::run::{RunArgs, run};
use xmacvlan::dataplane::DemuxMode;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan::xdp::{AttachMode, Classifier, Program, Steering};
use xmacvlan::xsk::BindMode;
use xmacvlan_tests::require_root;

fn args(iface: &str, config: PathBuf, force: bool) -> RunArgs {
    RunArgs {
        iface: iface.into(),
        config,
        demux: DemuxMode::Xdp,
        xdp_mode: AttachMode::Auto,
        bind: BindMode::Auto,
        cores: None,
        duration: Some(0.3),
        force,
        fix_offloads: false,
        json: None,
    }
}

fn endpoints_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("endpoints.json");
    std::fs::write(
        &path,
        r#"{"endpoints": [{"name": "c1", "vid": 100, "mac": "02:42:c6:12:00:02"}]}"#,
    )
    .unwrap();
    path
}

#[test]
fn refuses_an_interface_with_another_xdp_program_and_runs_on_a_free_one() {
    require_root();
    let ns = NetnsGuard::create(&format!("xmvrun{}", std::process::id())).unwrap();
    let dir = std::env::temp_dir().join(format!("xmvrun{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = endpoints_file(&dir);
    ns.run(|| {
        let nl = Netlink::new()?;
        let nic = nl.add_veth("nic0", "peer0", 1)?;
        nl.set_up(nic)?;
        let peer = nl.require_link("peer0")?.index;
        nl.set_up(peer)?;

        // Another tool's program on nic0: refused, and left in place.
        let mut foreign = Classifier::load(Program::DropAll, Steering::PerEndpoint, 1)?;
        foreign.attach(nic, "nic0", AttachMode::Native)?;
        let before = nl.require_link("nic0")?.xdp_prog_id;
        assert!(before.is_some());
        let err = run(args("nic0", config.clone(), false)).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("already has an XDP program attached"),
            "{text}"
        );
        assert!(text.contains("--force"), "{text}");
        assert_eq!(
            nl.require_link("nic0")?.xdp_prog_id,
            before,
            "left untouched"
        );
        drop(foreign);
        assert_eq!(nl.require_link("nic0")?.xdp_prog_id, None);

        // A free interface: runs, then detaches on exit.
        run(args("nic0", config.clone(), false))?;
        assert_eq!(
            nl.require_link("nic0")?.xdp_prog_id,
            None,
            "detached on exit"
        );

        // No such interface: named in the error.
        let err = run(args("nosuch0", config.clone(), false)).unwrap_err();
        assert!(format!("{err:#}").contains("no interface named `nosuch0`"));
        Ok(())
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rejects_bad_endpoint_files_before_touching_anything() {
    let dir = std::env::temp_dir().join(format!("xmvrunbad{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, expect) in [
        ("{}", "missing field `endpoints`"),
        (r#"{"endpoints": []}"#, "no endpoints listed"),
        (
            r#"{"endpoints": [{"name": "a", "vid": 1, "mac": "zz"}]}"#,
            "invalid MAC address",
        ),
        (r#"{"endpoints": [], "extra": 1}"#, "unknown field `extra`"),
    ] {
        let path = dir.join("e.json");
        std::fs::write(&path, text).unwrap();
        let err = xmacvlan::cli::run::load_endpoints(&path).unwrap_err();
        assert!(format!("{err:#}").contains(expect), "{text}: {err:#}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
