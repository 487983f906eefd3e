use std::collections::HashMap;
use std::path::PathBuf;

use super::checks::*;
use super::facts::*;
use super::xdp::*;
use super::*;

const ALL_CAPS: u64 = 0x000001ffffffffff;

fn system() -> SystemFacts {
    SystemFacts {
        euid: 0,
        cap_eff: Some(ALL_CAPS),
        af_xdp: Ok(()),
        bpf_jit_enable: Some("1\n".into()),
        kernel_release: "6.18.0".into(),
        kernel_config: None,
        kernel_config_source: None,
        vlan_loaded: true,
        macvlan_loaded: true,
        mounts: "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n"
            .into(),
        freplace: Ok(()),
    }
}

fn config(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn by_check<'a>(findings: &'a [Finding], check: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no `{check}` finding in {findings:#?}"))
}

#[test]
fn a_healthy_system_is_all_ok() {
    let findings = check_system(&system());
    assert!(
        findings.iter().all(|f| f.severity == Severity::Ok),
        "{findings:#?}"
    );
    let report = Report { findings };
    assert_eq!(report.exit_code(true), 0);
}

#[test]
fn privileges_need_the_three_capabilities() {
    let caps = |bits: &[u32]| bits.iter().map(|b| 1u64 << b).sum::<u64>();
    assert_eq!(
        check_privileges(1000, Some(caps(&[12, 13, 39]))).severity,
        Severity::Ok
    );
    // CAP_SYS_ADMIN stands in for CAP_BPF on its own.
    assert_eq!(
        check_privileges(1000, Some(caps(&[12, 13, 21]))).severity,
        Severity::Ok
    );
    let f = check_privileges(1000, Some(0));
    assert_eq!(f.severity, Severity::Error);
    assert!(
        f.what.contains("CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF"),
        "{}",
        f.what
    );
    assert!(f.fix.unwrap().contains("setcap"));
    let f = check_privileges(0, Some(caps(&[12])));
    assert_eq!(f.severity, Severity::Error);
    assert!(
        f.what
            .starts_with("running as root but without CAP_NET_RAW, CAP_BPF")
    );
}

#[test]
fn cap_eff_is_read_from_proc_status() {
    let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
    assert_eq!(parse_cap_eff(status), Some(ALL_CAPS));
    assert_eq!(parse_cap_eff("Name: x\n"), None);
}

#[test]
fn af_xdp_probe_results() {
    assert_eq!(check_af_xdp(Ok(())).severity, Severity::Ok);
    let f = check_af_xdp(Err(libc::EAFNOSUPPORT));
    assert_eq!(f.severity, Severity::Error);
    assert!(f.what.contains("CONFIG_XDP_SOCKETS"));
    assert_eq!(check_af_xdp(Err(libc::EPERM)).severity, Severity::Warn);
}

#[test]
fn bpf_jit_values() {
    assert_eq!(check_bpf_jit(Some("1\n"), None).severity, Severity::Ok);
    for v in [Some("0\n"), Some("2"), None] {
        let f = check_bpf_jit(v, None);
        assert_eq!(f.severity, Severity::Warn, "{v:?}");
        assert!(f.fix.is_some());
    }
    assert_eq!(
        check_bpf_jit(Some("0"), None).fix.unwrap(),
        "sysctl -w net.core.bpf_jit_enable=1"
    );
    // Inside a network namespace the sysctl is absent: fall back to the kernel config.
    let always = config(&[("CONFIG_BPF_JIT", "y"), ("CONFIG_BPF_JIT_ALWAYS_ON", "y")]);
    assert_eq!(check_bpf_jit(None, always.as_ref()).severity, Severity::Ok);
    let jit = config(&[("CONFIG_BPF_JIT", "y")]);
    let f = check_bpf_jit(None, jit.as_ref());
    assert_eq!(f.severity, Severity::Warn);
    assert!(f.what.contains("host's network namespace"), "{}", f.what);
    let f = check_bpf_jit(None, config(&[]).as_ref());
    assert!(f.what.contains("CONFIG_BPF_JIT is not set"), "{}", f.what);
}

#[test]
fn vlan_and_macvlan_from_modules_or_kernel_config() {
    assert_eq!(check_vlan(true, None).severity, Severity::Ok);
    assert_eq!(
        check_vlan(false, config(&[("CONFIG_VLAN_8021Q", "m")]).as_ref()).severity,
        Severity::Ok
    );
    // This project's VM: a config without CONFIG_VLAN_8021Q.
    let f = check_vlan(false, config(&[("CONFIG_MACVLAN", "y")]).as_ref());
    assert_eq!(f.severity, Severity::Warn);
    assert!(f.what.contains("no 802.1Q"), "{}", f.what);
    assert!(f.fix.unwrap().contains("modprobe 8021q"));
    let f = check_vlan(false, None);
    assert!(f.what.starts_with("could not tell"), "{}", f.what);

    assert_eq!(
        check_macvlan(false, config(&[("CONFIG_MACVLAN", "y")]).as_ref()).severity,
        Severity::Ok
    );
    assert_eq!(
        check_macvlan(false, config(&[]).as_ref()).severity,
        Severity::Error
    );
    assert_eq!(check_macvlan(false, None).severity, Severity::Warn);
}

#[test]
fn kernel_config_lines_are_parsed() {
    let text = "#\n# CONFIG_VLAN_8021Q is not set\nCONFIG_MACVLAN=y\nCONFIG_X=\"a b\"\n";
    let c = parse_kernel_config(text);
    assert_eq!(c.get("CONFIG_MACVLAN").map(String::as_str), Some("y"));
    assert_eq!(c.get("CONFIG_X").map(String::as_str), Some("a b"));
    assert!(!c.contains_key("CONFIG_VLAN_8021Q"));
}

#[test]
fn bpffs_from_proc_mounts() {
    assert_eq!(check_bpffs(&system().mounts).severity, Severity::Ok);
    let f = check_bpffs("sysfs /sys sysfs rw 0 0\ntmpfs /sys/fs/bpf tmpfs rw 0 0\n");
    assert_eq!(f.severity, Severity::Warn);
    assert_eq!(f.fix.unwrap(), "mount -t bpf bpf /sys/fs/bpf");
}

fn daemon() -> DaemonFacts {
    DaemonFacts {
        pid_file: PathBuf::from("/run/xmacvlan/xmacvlan.pid"),
        socket: PathBuf::from("/run/xmacvlan/xmacvlan.sock"),
        ..DaemonFacts::default()
    }
}

#[test]
fn daemon_state_finds_leftovers_of_a_crash() {
    let none = check_daemon_state(&daemon());
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].severity, Severity::Ok);

    let running = DaemonFacts {
        pid_file_content: Some("4242\n".into()),
        pid: Some(4242),
        pid_comm: Some("xmacvlan".into()),
        socket_connect: Some(Ok(())),
        ..daemon()
    };
    assert!(running.daemon_running());
    assert!(
        check_daemon_state(&running)
            .iter()
            .all(|f| f.severity == Severity::Ok)
    );

    let crashed = DaemonFacts {
        pid_file_content: Some("4242\n".into()),
        pid: Some(4242),
        pid_comm: None,
        socket_connect: Some(Err(libc::ECONNREFUSED)),
        ..daemon()
    };
    assert!(!crashed.daemon_running());
    let f = check_daemon_state(&crashed);
    assert_eq!(f.len(), 2);
    assert!(
        f[0].what
            .contains("stale pid file /run/xmacvlan/xmacvlan.pid"),
        "{}",
        f[0].what
    );
    assert!(
        f[0].fix
            .as_ref()
            .unwrap()
            .starts_with("rm /run/xmacvlan/xmacvlan.pid")
    );
    assert!(f[1].what.contains("stale control socket"), "{}", f[1].what);
    assert_eq!(f[1].fix.as_deref(), Some("rm /run/xmacvlan/xmacvlan.sock"));

    let reused = DaemonFacts {
        pid_file_content: Some("1".into()),
        pid: Some(1),
        pid_comm: Some("systemd".into()),
        ..daemon()
    };
    let f = check_daemon_state(&reused);
    assert_eq!(f[0].severity, Severity::Warn);
    assert!(
        f[0].what.contains("`systemd`, not xmacvlan"),
        "{}",
        f[0].what
    );
}

#[test]
fn daemon_facts_read_a_dead_pid_file() {
    let dir = std::env::temp_dir().join(format!("xmv-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("xmacvlan.pid");
    // A child that has exited and been reaped: its pid is free.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id() as i32;
    child.wait().unwrap();
    std::fs::write(&pid_file, format!("{dead}\n")).unwrap();
    let socket = dir.join("xmacvlan.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap()); // closed: refuses
    let facts = daemon_facts(&pid_file, &socket);
    assert_eq!(facts.pid, Some(dead));
    assert_eq!(facts.pid_comm, None);
    assert_eq!(facts.socket_connect, Some(Err(libc::ECONNREFUSED)));
    let findings = check_daemon_state(&facts);
    assert!(
        findings.iter().all(|f| f.severity == Severity::Warn),
        "{findings:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const VETH_ETHTOOL_K: &str = "Features for v0:\nrx-checksumming: on\nrx-vlan-offload: on\ntx-vlan-offload: on\nrx-vlan-filter: off [fixed]\n";

fn link(driver: &str) -> LinkFacts {
    LinkFacts {
        index: 7,
        kind: Some("veth".into()),
        up: true,
        promiscuous: false,
        mtu: 1500,
        rx_queues: 1,
        xdp_prog_id: None,
        xdp_prog_name: None,
        occupant: Ok(crate::xdp::Occupant::Free),
        xdp_prog_holders: Vec::new(),
        driver: Some(driver.into()),
        ethtool_features: Ok(VETH_ETHTOOL_K.into()),
        // A kernel that cannot say (before 6.3): the lists decide (see doctor::xdp's tests).
        xdp_features: Ok(None),
        pinned: None,
    }
}

fn iface(link: LinkFacts) -> InterfaceFacts {
    InterfaceFacts {
        name: "v0".into(),
        link: Some(link),
    }
}

#[test]
fn veth_interface_findings() {
    let f = check_interface(&iface(link("veth")), false, &Default::default());
    assert!(f.iter().all(|x| x.subject.as_deref() == Some("v0")));
    assert_eq!(by_check(&f, "exists").severity, Severity::Ok);
    assert_eq!(by_check(&f, "link-up").severity, Severity::Ok);
    assert_eq!(by_check(&f, "native-xdp").severity, Severity::Ok);
    assert_eq!(by_check(&f, "zero-copy").severity, Severity::Warn);
    assert_eq!(by_check(&f, "xdp-program").severity, Severity::Ok);
    // veth has no MAC filter and strips no tags: nothing to fix there.
    assert_eq!(by_check(&f, "promiscuous").severity, Severity::Ok);
    let vlan = by_check(&f, "rx-vlan-offload");
    assert_eq!(vlan.severity, Severity::Ok);
    assert!(vlan.what.contains("reaches XDP"), "{}", vlan.what);
    // The zero-copy fix is not a setting that is already the default.
    let zc = by_check(&f, "zero-copy");
    assert!(
        zc.fix.as_deref().unwrap().starts_with("nothing to set"),
        "{zc:?}"
    );
    assert_eq!(Report { findings: f }.exit_code(false), 0);
}

#[test]
fn a_real_nic_is_checked_for_filtering_and_tag_stripping() {
    let mut nic = link("ice");
    nic.kind = None;
    let f = check_interface(&iface(nic), false, &Default::default());
    // Its filters and tag stripping are xmacvlan's to handle while it serves endpoints.
    let promisc = by_check(&f, "promiscuous");
    assert_eq!(promisc.severity, Severity::Ok);
    assert!(
        promisc.what.contains("adds each endpoint's MAC"),
        "{promisc:?}"
    );
    let vlan = by_check(&f, "rx-vlan-offload");
    assert_eq!(vlan.severity, Severity::Ok);
    assert!(
        vlan.what.starts_with(
            "v0 (ice) strips VLAN tags before XDP (rx-vlan-offload on): xmacvlan turns that off"
        ),
        "{vlan:?}"
    );
}

#[test]
fn zero_copy_nic_and_unknown_driver() {
    let f = check_interface(&iface(link("ice")), false, &Default::default());
    assert_eq!(by_check(&f, "native-xdp").severity, Severity::Ok);
    assert_eq!(by_check(&f, "zero-copy").severity, Severity::Ok);
    let f = check_interface(&iface(link("r8169")), false, &Default::default());
    let native = by_check(&f, "native-xdp");
    assert_eq!(native.severity, Severity::Warn);
    assert!(native.what.contains("generic (skb) mode only"));
    let mut unknown = link("x");
    unknown.driver = None;
    let f = check_interface(&iface(unknown), false, &Default::default());
    assert_eq!(by_check(&f, "driver").severity, Severity::Warn);
}

#[test]
fn missing_or_down_interface_is_an_error() {
    let f = check_interface(
        &InterfaceFacts {
            name: "nope0".into(),
            link: None,
        },
        false,
        &Default::default(),
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Error);
    assert!(f[0].what.contains("no interface named nope0"));
    let mut down = link("veth");
    down.up = false;
    let f = check_interface(&iface(down), false, &Default::default());
    let up = by_check(&f, "link-up");
    assert_eq!(up.severity, Severity::Error);
    assert_eq!(up.fix.as_deref(), Some("ip link set v0 up"));
    assert_eq!(Report { findings: f }.exit_code(false), 1);
}

#[test]
fn vlan_offload_off_fixed_and_unreadable() {
    let ice = Some("ice");
    let off = Ok("rx-vlan-offload: off\n".to_string());
    assert_eq!(
        check_rx_vlan_offload("v0", ice, &off, false).severity,
        Severity::Ok
    );
    let fixed = Ok("rx-vlan-offload: on [fixed]\n".to_string());
    let f = check_rx_vlan_offload("v0", ice, &fixed, false);
    assert_eq!(f.severity, Severity::Warn);
    assert!(f.fix.unwrap().contains("does not let it be turned off"));
    let missing = Err("the ethtool program is not installed".to_string());
    let f = check_rx_vlan_offload("v0", ice, &missing, false);
    assert!(f.what.contains("ethtool program is not installed"));
    assert!(f.fix.unwrap().contains("apt-get install -y ethtool"));
    // A driver that offers the stripped tag to XDP: said, and still turned off.
    let on = Ok("rx-vlan-offload: on\n".to_string());
    let f = check_rx_vlan_offload("v0", ice, &on, true);
    assert_eq!(f.severity, Severity::Ok);
    assert!(f.what.contains("bpf_xdp_metadata_rx_vlan_tag"), "{f:?}");
}

#[test]
fn a_classifier_held_by_another_xmacvlan_is_named() {
    let mut held = link("veth");
    held.xdp_prog_id = Some(12);
    held.xdp_prog_name = Some("xmv_classify".into());
    held.xdp_prog_holders = vec![4321];
    let f = check_interface(&iface(held.clone()), false, &Default::default());
    let prog = by_check(&f, "xdp-program");
    assert!(
        prog.what.contains("held by xmacvlan process 4321"),
        "{}",
        prog.what
    );
    assert!(prog.fix.as_deref().unwrap().contains("kill 4321"));
    // The daemon it looked for holds it: all is well.
    let f = check_interface(&iface(held), true, &Default::default());
    assert_eq!(by_check(&f, "xdp-program").severity, Severity::Ok);
}

#[test]
fn xdp_programs_ours_or_foreign() {
    assert_eq!(
        check_xdp_program("v0", None, None, false).severity,
        Severity::Ok
    );
    let f = check_xdp_program("v0", Some(12), Some("xmv_classify"), true);
    assert_eq!(f.severity, Severity::Ok);
    let f = check_xdp_program("v0", Some(12), Some("xmv_classify"), false);
    assert_eq!(f.severity, Severity::Warn);
    assert!(f.what.contains("no daemon is running and it is not pinned"));
    assert_eq!(f.fix.as_deref(), Some("ip link set dev v0 xdp off"));
    let f = check_xdp_program("v0", Some(99), Some("xdp_filter"), true);
    assert_eq!(f.severity, Severity::Error);
    assert!(f.what.contains("id 99, `xdp_filter`"), "{}", f.what);
    assert!(f.fix.unwrap().contains("bpftool prog show id 99"));
}

#[test]
fn config_file_findings() {
    use crate::config::DaemonConfig;
    let path = std::path::Path::new("/etc/xmacvlan/daemon.json");
    let absent = check_config(path, false, &Ok(DaemonConfig::default()), None);
    assert_eq!(absent.severity, Severity::Ok);
    assert!(absent.what.contains("defaults"), "{}", absent.what);
    assert!(
        absent.what.contains("no daemon is running"),
        "{}",
        absent.what
    );
    let served = check_config(path, false, &Ok(DaemonConfig::default()), Some(42));
    assert!(
        served
            .what
            .contains("the running daemon (pid 42) runs with the defaults")
    );
    assert_eq!(
        check_config(path, true, &Ok(DaemonConfig::default()), None).what,
        "/etc/xmacvlan/daemon.json is valid (no daemon is running)"
    );
    assert_eq!(
        check_config(path, true, &Ok(DaemonConfig::default()), Some(42)).what,
        "/etc/xmacvlan/daemon.json is valid (the running daemon (pid 42) reads it)"
    );
    let bad = DaemonConfig::from_json_str(r#"{"log-level": "loud"}"#, "/etc/xmacvlan/daemon.json");
    let f = check_config(path, true, &bad, None);
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(
        f.what,
        r#"/etc/xmacvlan/daemon.json: key "log-level": "loud" is not one of debug, info, warn, error, fatal"#
    );
}

#[test]
fn ethtool_driver_line() {
    assert_eq!(
        parse_ethtool_driver("driver: veth\nversion: 1.0\n").as_deref(),
        Some("veth")
    );
    assert_eq!(parse_ethtool_driver("driver: \n"), None);
}

#[test]
fn report_text_json_and_exit_codes() {
    let mut findings = check_system(&system());
    let mut nic = link("ice");
    nic.kind = None;
    // A NIC that strips tags for good: the one warning.
    nic.ethtool_features = Ok("rx-vlan-offload: on [fixed]\n".into());
    findings.extend(check_interface(&iface(nic), false, &Default::default()));
    let report = Report { findings };
    assert_eq!(report.exit_code(false), 0);
    assert_eq!(report.exit_code(true), 1, "--strict counts warnings");
    let text = report.render_text();
    assert!(text.starts_with("system\n"), "{text}");
    assert!(text.contains("\ninterface v0\n"), "{text}");
    assert!(
        text.contains("  warn   rx-vlan-offload  v0 (ice) strips VLAN tags before XDP and"),
        "{text}"
    );
    assert!(
        text.contains("fix: the driver does not let it be turned off"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("0 errors, 1 warning, 14 ok"),
        "{text}"
    );
    let json = report.to_json();
    assert_eq!(json["warnings"], 1);
    assert_eq!(json["errors"], 0);
    let vlan = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "rx-vlan-offload")
        .unwrap();
    assert_eq!(vlan["severity"], "warn");
    assert_eq!(vlan["subject"], "v0");
    // Every finding has every key docs/operations.md lists; null where there is nothing.
    for f in json["findings"].as_array().unwrap() {
        for key in ["check", "subject", "severity", "what", "why", "fix"] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
    }
    assert!(
        json["findings"][0]["why"].is_null(),
        "ok findings have no why"
    );
    assert!(
        json["findings"][0]["subject"].is_null(),
        "system findings have no subject"
    );
}
