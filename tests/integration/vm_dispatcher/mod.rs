//! xmacvlan beside xdp-tools' `xdp-filter` in libxdp's multi-program dispatcher, inside the
//! stock guest of `cargo xtask vm-test` (this project's host kernel refuses freplace programs,
//! so no dispatcher can run there). Uses the system's `xdp-tools` (the guest runs the host's
//! root file system), a libxdp other than the one built into xmacvlan: the dispatcher must be
//! the one both recognise.
//!
//! 1. `xdp-filter` first (a source MAC denied); refused with the reason and nothing touched:
//!    `xdp-attach alone`, a mode other than the dispatcher's, a process without libxdp's bpffs;
//!    xmacvlan joins (`xdp-attach auto`): both are
//!    listed by `xdp-loader status`; the filter drops exactly the denied frames (its hit
//!    counter), every other frame reaches the classifier, each endpoint gets exactly its own;
//!    stopping xmacvlan leaves `xdp-filter` running alone in the dispatcher.
//! 2. xmacvlan first (`xdp-attach dispatcher` on a free interface), `xdp-filter` second: the
//!    same counts.
//! 3. (`pinned`) The daemon's way: a classifier pinned in the dispatcher stays there when its
//!    holder goes; one of another build is replaced (the new one joins, then the old one
//!    leaves); the next holder adopts it as it is (the dispatcher's id unchanged throughout);
//!    released, it leaves alone and `xdp-filter` stays.
//! 4. The same with the daemon itself across a SIGTERM restart, and `xmacvlan down`.
//!
//! Host runs skip these (`#[ignore]`); the VM harness runs them with `--include-ignored`.
mod pinned;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use xmacvlan::dataplane::{Dataplane, DataplaneConfig, Finished};
use xmacvlan::modes::{Demux, XdpAttach, XdpMode};
use xmacvlan::xdp::AttachOptions;
use xmacvlan_bench::generator::{Stream, StreamKind};
use xmacvlan_bench::lab::{self, KernelDevices, Lab, Topology};
use xmacvlan_bench::scenario::{Pacing, TrafficConfig, lab_streams, run_traffic};
use xmacvlan_bench::test_frame::TestFrame;
use xmacvlan_tests::accounting::Ledger;
use xmacvlan_tests::exact::{check_endpoints, sent_where};
use xmacvlan_tests::{dataplane_config, namespaces_named, require_root};

const PER_STREAM: u64 = 200;
/// The source `xdp-filter` denies.
const DENIED: [u8; 6] = [0x02, 0x58, 0x4d, 0xde, 0x71, 0xed];
const DENIED_TEXT: &str = "02:58:4d:de:71:ed";

fn in_vm() {
    require_root();
    assert!(
        std::env::var_os("XMACVLAN_IN_VM").is_some_and(|v| v == "1"),
        "needs a kernel that runs freplace programs: run it inside the VM with `sudo -E cargo \
         xtask vm-test -- --test vm_dispatcher`"
    );
}

fn build_lab() -> Lab {
    Lab::build(&Topology {
        vlans: vec![100, 0],
        endpoints_per_vlan: 1,
        kernel_devices: KernelDevices::None,
        ..Topology::default()
    })
    .expect("building the lab")
}

/// An xdp-tools command in the lab's host namespace. `nsenter`, not `ip netns exec`: that
/// mounts a fresh sysfs without bpffs, where libxdp finds no dispatcher state.
fn xdp_tool(lab: &Lab, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host.name()))
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} (is xdp-tools installed?)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// `xdp-filter` on the lab's NIC, unloaded (with its global pins) when dropped.
struct XdpFilter<'a>(&'a Lab);

impl<'a> XdpFilter<'a> {
    fn load(lab: &'a Lab) -> Result<Self> {
        xdp_tool(lab, &["xdp-filter", "load", "--mode", "native", lab::NIC])?;
        let filter = Self(lab);
        xdp_tool(lab, &["xdp-filter", "ether", DENIED_TEXT, "--mode", "src"])?;
        Ok(filter)
    }

    /// The denied source's hit counter.
    fn hits(&self) -> Result<u64> {
        let status = xdp_tool(self.0, &["xdp-filter", "status"])?;
        let line = status
            .lines()
            .find(|l| l.trim_start().starts_with(DENIED_TEXT))
            .with_context(|| format!("no rule for {DENIED_TEXT} in:\n{status}"))?;
        let hits = line.split_whitespace().last().unwrap_or_default();
        hits.parse()
            .with_context(|| format!("hit counter in `{line}`"))
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        if let Err(e) = xdp_tool(self.0, &["xdp-filter", "unload", lab::NIC]) {
            eprintln!("unloading xdp-filter: {e:#}");
        }
    }
}

/// `xdp-loader status` of the NIC: the dispatcher's programs, by name.
fn chain(lab: &Lab) -> Result<String> {
    let status = xdp_tool(lab, &["xdp-loader", "status", lab::NIC])?;
    println!("{status}");
    Ok(status)
}

fn assert_chain(status: &str, filter: bool, classifier: bool) {
    assert!(
        status.contains("xdp_dispatcher"),
        "no dispatcher:\n{status}"
    );
    assert_eq!(status.contains("xdpfilt_"), filter, "xdp-filter:\n{status}");
    assert_eq!(
        status.contains("xmv_classify"),
        classifier,
        "xmacvlan's classifier:\n{status}"
    );
}

/// The lab's streams plus one to the first endpoint from the denied source.
fn streams(lab: &Lab) -> Vec<Stream> {
    let ep = &lab.endpoints[0];
    let mut streams = lab_streams(&lab.endpoints, 64, true);
    streams.push(Stream::new(
        TestFrame {
            dst: ep.mac,
            src: DENIED,
            vid: (ep.vid != 0).then_some(ep.vid),
            qinq_outer: None,
            len: 64,
        },
        StreamKind::Other,
    ));
    streams
}

/// Send every stream through the running dataplane; returns what it finished with, the streams
/// and what each sent.
fn traffic(lab: &Lab, dp: Dataplane) -> Result<(Finished, Vec<Stream>, Vec<u64>)> {
    let streams = streams(lab);
    let traffic = TrafficConfig {
        count: Some(PER_STREAM),
        rate: Some(20_000),
        duration: Duration::from_secs(120),
        pace: Pacing::Delivered,
        ..TrafficConfig::default()
    };
    let sent = run_traffic(lab, &dp, 1, &streams, &traffic)?;
    Ok((dp.stop()?, streams, sent.per_stream))
}

/// The filter dropped exactly the denied frames before the classifier; the classifier saw
/// every other frame and each endpoint got exactly its own.
fn check_counts(filter: &XdpFilter, finished: &Finished, streams: &[Stream], sent: &[u64]) {
    let denied = sent_where(streams, sent, |s| s.frame.src == DENIED);
    let total: u64 = sent.iter().sum();
    assert_eq!(denied, PER_STREAM);
    assert_eq!(
        filter.hits().unwrap(),
        denied,
        "xdp-filter dropped the denied source"
    );
    let delivered = check_endpoints(finished, streams, sent);
    assert!(delivered > 0);
    Ledger::finished(total - denied, finished, &[]).assert_balanced("behind xdp-filter");
    println!(
        "sent {total}: xdp-filter dropped {denied}, the classifier saw {}, redirected {}, \
         endpoints got {delivered}",
        finished.xdp.seen, finished.xdp.redirected
    );
}

/// `doctor`'s findings on the NIC (this thread's namespace) while xmacvlan runs behind
/// xdp-filter: every program of the chain in order, and xdp-filter named as the first taker.
fn doctor_lists_the_chain(opts: &AttachOptions) -> Result<()> {
    use xmacvlan::doctor::{Report, Severity, check_interface, interface_facts};
    let facts = interface_facts(&xmacvlan::netlink::Netlink::new()?, lab::NIC)?;
    let findings = check_interface(&facts, true, opts);
    let chain: Vec<&str> = findings
        .iter()
        .filter(|f| f.check == "xdp-chain")
        .map(|f| f.what.as_str())
        .collect();
    let report = Report {
        findings: findings.clone(),
    };
    println!("{}", report.render_text());
    ensure!(chain.len() == 2, "{chain:?}");
    ensure!(chain[0].starts_with("1. xdpfilt_alw_all (id "), "{chain:?}");
    ensure!(
        chain[0].ends_with("priority 10, chain-call on pass"),
        "{chain:?}"
    );
    ensure!(chain[1].starts_with("2. xmv_classify (id "), "{chain:?}");
    ensure!(chain[1].ends_with("(xmacvlan's classifier)"), "{chain:?}");
    let find = |check: &str| findings.iter().find(|f| f.check == check);
    let program = find("xdp-program").context("no xdp-program finding")?;
    ensure!(program.severity == Severity::Ok, "{program:?}");
    ensure!(
        program
            .what
            .contains("xmacvlan's classifier is one of them"),
        "{program:?}"
    );
    let first = find("xdp-first").context("no xdp-first finding")?;
    ensure!(first.severity == Severity::Ok, "{first:?}");
    ensure!(first.what.starts_with("xdpfilt_alw_all (id "), "{first:?}");
    Ok(())
}

fn tear_down(lab: Lab) {
    let prefix = lab.prefix.clone();
    drop(lab);
    assert!(namespaces_named(&prefix).is_empty(), "namespaces left");
}

/// What xmacvlan refuses on the NIC while xdp-filter's dispatcher runs there, each saying
/// why and touching nothing: `xdp-attach alone`, an `xdp-mode` other than the dispatcher's,
/// and a process whose bpffs is not the one libxdp keeps the dispatcher's state in (`ip netns
/// exec` mounts a fresh /sys).
fn refusals_leave_the_dispatcher_alone(lab: &Lab, cfg: &DataplaneConfig) {
    let refused = |change: &dyn Fn(&mut DataplaneConfig)| {
        let mut cfg = cfg.clone();
        change(&mut cfg);
        let err = lab
            .host
            .run(|| match Dataplane::start(&cfg, &lab.endpoints) {
                Ok(_) => anyhow::bail!("started"),
                Err(e) => Ok(format!("{:#}", anyhow::Error::from(e))),
            })
            .unwrap();
        println!("refused: {err}");
        assert_chain(&chain(lab).unwrap(), true, false);
        err
    };
    let alone = refused(&|c| c.xdp_attach = XdpAttach::Alone);
    assert!(alone.contains("and xdp-attach is `alone`"), "{alone}");
    assert!(alone.contains("--force"), "{alone}");
    let generic = refused(&|c| c.xdp_mode = XdpMode::Generic);
    assert!(
        generic.contains("runs in native mode and xdp-mode is generic"),
        "{generic}"
    );

    let dir = std::env::temp_dir().join(format!("xmvdspr{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let endpoints = dir.join("endpoints.json");
    let ep = &lab.endpoints[0];
    std::fs::write(
        &endpoints,
        format!(
            r#"{{"endpoints": [{{"name": "{}", "vid": {}, "mac": "{}"}}]}}"#,
            ep.name,
            ep.vid,
            lab::describe_mac(&ep.mac)
        ),
    )
    .unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", lab.host.name()])
        .arg(xmacvlan_tests::xmacvlan_bin())
        .args(["run", "--iface", lab::NIC, "--duration", "0.3", "--config"])
        .arg(&endpoints)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("under `ip netns exec`: {stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains("libxdp cannot read its programs"),
        "{stderr}"
    );
    assert!(stderr.contains("LIBXDP_BPFFS"), "{stderr}");
    assert!(stderr.contains("nsenter --net=/run/netns/NS"), "{stderr}");
    assert_chain(&chain(lab).unwrap(), true, false);
}

#[test]
#[ignore = "VM only: the host kernel refuses freplace (cargo xtask vm-test)"]
fn xmacvlan_joins_xdp_filters_dispatcher_and_leaves_it_running() {
    in_vm();
    let lab = build_lab();
    {
        let filter = XdpFilter::load(&lab).unwrap();
        assert_chain(&chain(&lab).unwrap(), true, false);
        let cfg = lab.dataplane_config(&dataplane_config(Demux::Xdp, 1));
        assert_eq!(cfg.xdp_attach, XdpAttach::Auto, "the default joins");
        refusals_leave_the_dispatcher_alone(&lab, &cfg);
        let (finished, streams, sent) = lab
            .host
            .run(|| {
                let dp = Dataplane::start(&cfg, &lab.endpoints)?;
                let joined = dp.warnings.iter().find(|w| w.contains("joined libxdp's"));
                println!("{joined:?}");
                ensure!(joined.is_some(), "no word of joining: {:?}", dp.warnings);
                assert_chain(&chain(&lab)?, true, true);
                doctor_lists_the_chain(&cfg.attach_options())?;
                traffic(&lab, dp)
            })
            .unwrap();
        check_counts(&filter, &finished, &streams, &sent);
        // xmacvlan gone: xdp-filter still runs, alone in the dispatcher.
        assert_chain(&chain(&lab).unwrap(), true, false);
    }
    tear_down(lab);
}

#[test]
#[ignore = "VM only: the host kernel refuses freplace (cargo xtask vm-test)"]
fn xdp_filter_joins_the_dispatcher_xmacvlan_made() {
    in_vm();
    let lab = build_lab();
    let mut cfg = lab.dataplane_config(&dataplane_config(Demux::Xdp, 1));
    cfg.xdp_attach = XdpAttach::Dispatcher;
    let (finished, streams, sent, hits) = lab
        .host
        .run(|| {
            let dp = Dataplane::start(&cfg, &lab.endpoints)?;
            assert_chain(&chain(&lab)?, false, true);
            let filter = XdpFilter::load(&lab)?;
            assert_chain(&chain(&lab)?, true, true);
            let (finished, streams, sent) = traffic(&lab, dp)?;
            check_counts(&filter, &finished, &streams, &sent);
            assert_chain(&chain(&lab)?, true, false);
            Ok((finished, streams, sent, filter.hits()?))
        })
        .unwrap();
    assert_eq!(hits, PER_STREAM);
    assert!(
        finished.xdp.redirected > 0,
        "{:?} {streams:?} {sent:?}",
        finished.xdp
    );
    tear_down(lab);
}
