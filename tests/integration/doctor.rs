//! `xmacvlan doctor` on a lab veth inside a throw-away namespace: the interface checks see
//! what the kernel really reports (driver, promiscuity, attached XDP program).
use std::path::PathBuf;

use xmacvlan::doctor::{DoctorArgs, Finding, Severity, check_interface, examine, interface_facts};
use xmacvlan::modes::XdpMode;
use xmacvlan::netlink::Netlink;
use xmacvlan::netns::NetnsGuard;
use xmacvlan::xdp::{Classifier, Program, Steering};
use xmacvlan_tests::require_root;

fn finding<'a>(findings: &'a [Finding], check: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no `{check}` finding in {findings:#?}"))
}

fn severity(findings: &[Finding], check: &str) -> Severity {
    finding(findings, check).severity
}

#[test]
fn doctor_reports_the_expected_findings_on_a_lab_veth() {
    require_root();
    let ns = NetnsGuard::create(&format!("xmvdoc{}", std::process::id())).unwrap();
    ns.run(|| {
        let nl = Netlink::new()?;
        let index = nl.add_veth("xdoc0", "xdoc1", 1)?;
        let peer = nl.require_link("xdoc1")?.index;
        nl.set_up(index)?;
        nl.set_up(peer)?;

        // A fresh veth: native XDP yes, zero-copy no, nothing attached; not promiscuous and
        // rx-vlan-offload on, neither of which stops a frame on a veth (no MAC filter, no
        // hardware that strips tags): the fast-path tests deliver to tagged endpoints on
        // exactly such a veth.
        let facts = interface_facts(&nl, "xdoc0")?;
        let link = facts.link.as_ref().expect("xdoc0 exists");
        assert_eq!(link.driver.as_deref(), Some("veth"));
        // Asked of the kernel (netdev generic netlink, 6.3+): veth runs XDP in its driver,
        // redirects, takes multi-buffer frames, and has no zero-copy.
        let kernel = link.xdp_features.as_ref().unwrap().expect("a 6.3+ kernel");
        assert!(kernel.native_xdp() && kernel.redirect() && kernel.multi_buffer());
        assert!(!kernel.zero_copy());
        assert!(
            xmacvlan::netlink::xdp_features(index)?.is_some_and(|f| f == kernel),
            "the library function the dataplane calls says the same"
        );
        let f = check_interface(&facts, false, &Default::default());
        assert_eq!(severity(&f, "exists"), Severity::Ok);
        assert_eq!(severity(&f, "link-up"), Severity::Ok);
        assert_eq!(severity(&f, "native-xdp"), Severity::Ok);
        assert_eq!(severity(&f, "zero-copy"), Severity::Warn);
        assert_eq!(severity(&f, "xdp-program"), Severity::Ok);
        assert!(!link.promiscuous);
        assert_eq!(severity(&f, "promiscuous"), Severity::Ok);
        let vlan = finding(&f, "rx-vlan-offload");
        assert_eq!(vlan.severity, Severity::Ok);
        assert!(vlan.what.contains("reaches XDP"), "{}", vlan.what);
        assert!(
            link.ethtool_features
                .as_deref()
                .is_ok_and(|k| k.contains("rx-vlan-offload: on")),
            "the veth's rx-vlan-offload is on (ethtool is a test dependency)"
        );

        // The whole doctor, as the CLI runs it, sees the same interface.
        let args = DoctorArgs {
            ifaces: vec!["xdoc0".into(), "nope0".into()],
            json: false,
            strict: false,
            pid_file: Some(PathBuf::from("/nonexistent/xmacvlan.pid")),
            control_socket: Some(PathBuf::from("/nonexistent/xmacvlan.sock")),
            config: None,
            fix: false,
        };
        let report = examine(&args)?;
        let on_veth: Vec<Finding> = report
            .findings
            .iter()
            .filter(|f| f.subject.as_deref() == Some("xdoc0"))
            .cloned()
            .collect();
        assert_eq!(severity(&on_veth, "promiscuous"), Severity::Ok);
        assert_eq!(severity(&on_veth, "zero-copy"), Severity::Warn);
        let missing = report
            .findings
            .iter()
            .find(|f| f.subject.as_deref() == Some("nope0"))
            .unwrap();
        assert_eq!(missing.severity, Severity::Error);
        assert_eq!(
            report.exit_code(false),
            1,
            "a missing interface is an error"
        );
        assert!(report.render_text().contains("\ninterface xdoc0\n"));

        // xmacvlan's own classifier attached with no daemon: left behind by a crash.
        let mut classifier = Classifier::load(Program::Classify, Steering::PerEndpoint, 1)?;
        classifier.attach(index, "xdoc0", XdpMode::Native, &mut Vec::new())?;
        let facts = interface_facts(&nl, "xdoc0")?;
        let link = facts.link.as_ref().unwrap();
        assert!(link.xdp_prog_id.is_some());
        assert_eq!(link.xdp_prog_name.as_deref(), Some("xmv_classify"));
        let stale = check_interface(&facts, false, &Default::default());
        let prog = finding(&stale, "xdp-program");
        assert_eq!(prog.severity, Severity::Warn);
        assert!(prog.what.contains("no daemon is running"), "{}", prog.what);
        assert_eq!(prog.fix.as_deref(), Some("ip link set dev xdoc0 xdp off"));
        let live = check_interface(&facts, true, &Default::default());
        assert_eq!(severity(&live, "xdp-program"), Severity::Ok);

        drop(classifier);
        // The kernel releases a link's last reference from a work queue: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while nl.require_link("xdoc0")?.xdp_prog_id.is_some()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let f = check_interface(&interface_facts(&nl, "xdoc0")?, false, &Default::default());
        assert_eq!(
            severity(&f, "xdp-program"),
            Severity::Ok,
            "detached on drop"
        );
        Ok(())
    })
    .unwrap();
}
