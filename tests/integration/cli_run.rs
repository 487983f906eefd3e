//! `xmacvlan run` on a named interface: refusals that protect interfaces it does not own.
use std::path::PathBuf;

use xmacvlan::cli::run::{RunArgs, run};
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan::xdp::{Classifier, Program, Steering};
use xmacvlan_tests::require_root;

fn args(iface: &str, config: PathBuf, force: bool) -> RunArgs {
    args_with(iface, config, force, Default::default())
}

fn args_with(
    iface: &str,
    config: PathBuf,
    force: bool,
    dataplane: xmacvlan::config::DataplaneFlags,
) -> RunArgs {
    RunArgs {
        iface: iface.into(),
        config,
        dataplane,
        duration: Some(std::time::Duration::from_millis(300)),
        force,
        json: None,
        control_socket: None,
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
        foreign.attach(
            nic,
            "nic0",
            xmacvlan::modes::XdpMode::Native,
            &mut Vec::new(),
        )?;
        let before = nl.require_link("nic0")?.xdp_prog_id;
        assert!(before.is_some());
        let err = run(args("nic0", config.clone(), false)).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("already has another XDP program attached"),
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

/// `--xdp-attach dispatcher` on a free interface: where the kernel runs freplace programs, the
/// classifier runs in a libxdp dispatcher and leaves it on exit; where it refuses them (this
/// project's host), the refusal says why and nothing is attached. (With other programs in the
/// dispatcher: `vm_dispatcher`, inside the VM.)
#[test]
fn a_dispatcher_is_used_where_the_kernel_runs_one_and_refused_with_the_reason_elsewhere() {
    require_root();
    let ns = NetnsGuard::create(&format!("xmvrund{}", std::process::id())).unwrap();
    let dir = std::env::temp_dir().join(format!("xmvrund{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = endpoints_file(&dir);
    let flags = xmacvlan::config::DataplaneFlags {
        xdp_attach: Some(xmacvlan::modes::XdpAttach::Dispatcher),
        ..Default::default()
    };
    ns.run(|| {
        let nl = Netlink::new()?;
        let nic = nl.add_veth("nic0", "peer0", 1)?;
        nl.set_up(nic)?;
        nl.set_up(nl.require_link("peer0")?.index)?;
        let result = run(args_with("nic0", config.clone(), false, flags.clone()));
        match xmacvlan::xdp::place::freplace_support() {
            Ok(()) => {
                result?;
            }
            Err(refused) => {
                let text = format!("{:#}", result.unwrap_err());
                assert!(
                    text.contains("xdp-attach is `dispatcher` for nic0"),
                    "{text}"
                );
                assert!(text.contains("refuses freplace"), "{text}");
                assert!(text.contains(&refused.to_string()), "{text}");
                assert!(text.contains("set xdp-attach to auto or alone"), "{text}");
                // Said once: the kernel's answer is not repeated as a cause.
                assert_eq!(text.matches(&refused.to_string()).count(), 1, "{text}");
            }
        }
        assert_eq!(nl.require_link("nic0")?.xdp_prog_id, None, "nothing left");
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
        (
            r#"[{"name": "a", "vid": 0, "mac": "02:00:00:00:00:01"}]"#,
            "the file is a bare list; put the list under \"endpoints\"",
        ),
    ] {
        let path = dir.join("e.json");
        std::fs::write(&path, text).unwrap();
        let err = xmacvlan::cli::run::load_endpoints(&path).unwrap_err();
        assert!(format!("{err:#}").contains(expect), "{text}: {err:#}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn rx_vlan_offload_of(ns: &NetnsGuard, iface: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-k", iface])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("rx-vlan-offload:"))
        .unwrap_or_else(|| panic!("ethtool -k {iface} lists no rx-vlan-offload"))
        .to_string()
}

/// On a veth, tagged endpoints match with rx-vlan-offload on: no warning, nothing changed,
/// and the report says the endpoint got no timed frame instead of a latency of 0.
#[test]
fn a_veth_with_tagged_endpoints_needs_no_offload_change() {
    let ns = xmacvlan_tests::veth_namespace("xmvrunv");
    let dir = std::env::temp_dir().join(format!("xmvrunv{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = endpoints_file(&dir);
    assert_eq!(rx_vlan_offload_of(&ns, "nic0"), "rx-vlan-offload: on");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(xmacvlan_tests::xmacvlan_bin())
        .args([
            "run",
            "--iface",
            "nic0",
            "--xdp-mode",
            "native",
            "--bind",
            "copy",
        ])
        .args(["--duration", "0.3", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("strips VLAN tags"), "{stderr}");
    assert!(!stderr.contains("rx VLAN offload"), "{stderr}");
    assert!(
        stderr
            .contains("xmacvlan: 1 endpoint on nic0 (1 queue), demux xdp, XDP native, AF_XDP copy"),
        "{stderr}"
    );
    assert_eq!(
        rx_vlan_offload_of(&ns, "nic0"),
        "rx-vlan-offload: on",
        "untouched"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("c1 "))
        .unwrap_or_else(|| panic!("no row for c1 in {stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[8..], ["0", "-", "-", "-", "-", "-"], "{stdout}");
    assert!(stdout.contains(" UNTIMED "), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
