//! Daemon restarts without a detach: the classifier stays attached (pinned in a bpffs the test
//! mounts for itself, named by `LIBXDP_BPFFS`) and the next daemon takes it over; an endpoint's
//! frames reach its application or its kernel device, never nowhere. The old behaviour
//! (`--detach-on-exit`) runs beside it for comparison. Also: a pinned classifier of another
//! build is replaced in place, and `xmacvlan down` removes what a daemon left.
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xmacvlan::dataplane::EndpointSpec;
use xmacvlan::modes::XdpMode;
use xmacvlan::xdp::{AttachOptions, Classifier, PinDir, Program, Steering, Takeover};
use xmacvlan_tests::daemon_lab::{Daemon, Lab};

/// The daemon tests bind the same kind of lab: one at a time keeps their timing honest.
static SERIAL: Mutex<()> = Mutex::new(());

/// A private bpffs, unmounted (and so every pin in it released) on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(lab: &Lab) -> Bpffs {
        let dir = lab.dir.join("bpffs");
        std::fs::create_dir_all(&dir).unwrap();
        xmacvlan::sys::mount_bpffs(&dir).unwrap();
        Bpffs(dir)
    }

    fn env(&self) -> [(&'static str, &Path); 1] {
        [(xmacvlan::xdp::bpffs::BPFFS_ENV, self.0.as_path())]
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = xmacvlan::sys::unmount_detach(&self.0);
    }
}

/// Every value `v0`'s XDP program id took while it ran, in order (None: no program).
struct ProgramWatch<'a> {
    lab: &'a Lab,
    stop: AtomicBool,
    seen: Mutex<Vec<Option<u32>>>,
}

impl<'a> ProgramWatch<'a> {
    fn new(lab: &'a Lab) -> Self {
        Self {
            lab,
            stop: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Watch until [`Self::stop`] (or until the test fails: the stop guard it returns stops it
    /// when dropped, so a failing test's scope does not wait forever).
    fn stopper(&self) -> StopOnDrop<'_> {
        StopOnDrop(&self.stop)
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let id = self.lab.xdp_on_v0();
            let mut seen = self.seen.lock().unwrap();
            if seen.last() != Some(&id) {
                seen.push(id);
            }
            drop(seen);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Restart {
    sent: u64,
    to_app: u64,
    to_kernel: u64,
    /// Dropped, and counted, by a consumer or client that fell behind: not the restart's doing.
    dropped: u64,
    carrier_changes: u64,
    program_ids: Vec<Option<u32>>,
}

impl Restart {
    /// Frames neither delivered nor counted as dropped.
    fn lost(&self) -> i64 {
        self.sent as i64 - (self.to_app + self.to_kernel + self.dropped) as i64
    }
}

const FRAMES: u64 = 40_000;

fn setup(tag: &str) -> (std::sync::MutexGuard<'static, ()>, Lab, EndpointSpec) {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(tag);
    lab.create_network();
    let c0 = lab.create_endpoint(0);
    (serial, lab, c0)
}

/// Stop endpoint c0's daemon with `signal` while frames flow to c0, start the next one, and
/// count where every frame went.
fn restart_under_traffic(
    lab: &Lab,
    c0: &EndpointSpec,
    bpffs: &Bpffs,
    flags: &str,
    signal: &str,
) -> (Restart, Daemon) {
    let first = lab.start_daemon_with(flags, &bpffs.env());
    let first_log = first.log.clone();
    let mut first_sink = lab.attach_sink(&first, 0);
    let kernel_before = lab.kernel_unicast_rx(0);
    let carrier_before = lab.carrier_changes_of_v0();
    let watch = ProgramWatch::new(lab);
    let summary = |sink: &mut xmacvlan_tests::app::App| -> serde_json::Value {
        serde_json::from_str(sink.wait_output(Duration::from_secs(20)).trim()).unwrap()
    };
    let (sent, second, first_out, second_out, dropped) = std::thread::scope(|s| {
        s.spawn(|| watch.run());
        let _stop = watch.stopper();
        let traffic = s.spawn(|| lab.burst(std::slice::from_ref(c0), FRAMES));
        first.wait_for_frames(&[("c0", 2000)]);
        let (_, status) = first.stop_with(signal);
        assert!(signal == "KILL" || status.success(), "{status}");
        let second = lab.start_daemon_with(flags, &bpffs.env());
        // It leaves by itself once the frames stop: everything in its ring is read by then.
        let mut second_sink = lab.attach_sink_with(&second, 0, &["--idle", "1s"]);
        let sent = traffic.join().unwrap().total();
        let outs = (summary(&mut first_sink), summary(&mut second_sink));
        // Frames a slow consumer or client could not take, counted by the daemons: their
        // sockets' or ports' rings were full. Not lost to the restart.
        second.wait_for_log(
            "frames go to its kernel device again",
            Duration::from_secs(10),
        );
        let logged = |field: &str| {
            [first_log.as_path(), second.log.as_path()]
                .iter()
                .flat_map(|log| {
                    std::fs::read_to_string(log)
                        .unwrap_or_default()
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .filter(|l| l["message"] == "endpoint stopped" || field == "port_ring_full")
                .filter_map(|l| l[field].as_u64())
                .sum::<u64>()
        };
        let second_dropped: u64 = second
            .stats()
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| e.dropped())
            .sum();
        let dropped = logged("port_ring_full") + logged("dropped") + second_dropped;
        watch.stop.store(true, Ordering::Relaxed);
        (sent, second, outs.0, outs.1, dropped)
    });
    let restart = Restart {
        sent,
        to_app: first_out["frames"].as_u64().unwrap() + second_out["frames"].as_u64().unwrap(),
        to_kernel: lab.kernel_unicast_rx(0) - kernel_before,
        dropped,
        carrier_changes: lab.carrier_changes_of_v0() - carrier_before,
        program_ids: watch.seen.into_inner().unwrap(),
    };
    eprintln!(
        "restart ({signal}, flags `{flags}`): {restart:?}, lost {}",
        restart.lost()
    );
    (restart, second)
}

#[test]
fn sigterm_and_kill_keep_xdp_attached_and_every_frame_lands_somewhere() {
    let (_serial, lab, c0) = setup("restart");
    let bpffs = Bpffs::mount(&lab);

    let (term, second) = restart_under_traffic(&lab, &c0, &bpffs, "", "TERM");
    let program = term.program_ids[0];
    assert!(program.is_some(), "{term:?}");
    assert_eq!(
        term.program_ids,
        [program],
        "the classifier was never detached, never replaced"
    );
    assert_eq!(term.carrier_changes, 0);
    assert_eq!(
        term.lost(),
        0,
        "every frame to the app or the kernel: {term:?}"
    );
    assert!(term.to_app > 0 && term.to_kernel > 0, "{term:?}");
    second.terminate();

    // A daemon killed under traffic leaves its claims behind: its sockets are gone, so the
    // frames still reach the kernel (failed redirects pass), and the next daemon clears them.
    let (kill, second) = restart_under_traffic(&lab, &c0, &bpffs, "", "KILL");
    assert_eq!(kill.program_ids, [program], "{kill:?}");
    assert_eq!(kill.carrier_changes, 0);
    second.wait_for_log("claims are cleared", Duration::from_secs(1));
    // What a kill can lose: frames already in the dead daemon's socket and port rings.
    assert!(
        (0..=4096).contains(&kill.lost()),
        "at most the rings' worth lost: {kill:?}"
    );
    second.terminate();

    // The old behaviour: detached at exit, attached again at start.
    let (old, second) = restart_under_traffic(&lab, &c0, &bpffs, "--detach-on-exit", "TERM");
    // Detached, then attached again: a moment with no program (veth also drops what its
    // ring held when XDP goes off and on; a real NIC resets its rings, taking the link down).
    assert!(old.program_ids.contains(&None), "{old:?}");
    second.terminate();
    assert_eq!(
        lab.xdp_on_v0(),
        None,
        "--detach-on-exit leaves nothing attached"
    );
    assert!(!PinDir::new(&bpffs.0, "v0").exists());
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}

#[test]
fn a_pinned_classifier_of_another_build_is_replaced_in_place_and_down_removes_it() {
    let (_serial, lab, c0) = setup("replace");
    let bpffs = Bpffs::mount(&lab);
    // Stands for an older xmacvlan's classifier: other code under the same pins.
    let (older, _) = lab
        .host
        .run(|| {
            Classifier::attach_persistent(
                Program::RedirectAll,
                Steering::PerQueue,
                1,
                "v0",
                &AttachOptions::alone(XdpMode::Native),
                false,
                &bpffs.0,
                &mut Vec::new(),
            )
        })
        .unwrap();
    let older_id = older.program_id().unwrap();
    let link_id = pinned_link_id(&bpffs.0);
    drop(older);
    assert_eq!(
        lab.xdp_on_v0(),
        Some(older_id),
        "pinned: attached without us"
    );

    let watch = ProgramWatch::new(&lab);
    let daemon = std::thread::scope(|s| {
        s.spawn(|| watch.run());
        let _stop = watch.stopper();
        let daemon = lab.start_daemon_with("", &bpffs.env());
        let line = daemon.wait_for_log(
            "replaced the pinned classifier in place",
            Duration::from_secs(5),
        );
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .contains("it runs program"),
            "{line}"
        );
        std::thread::sleep(Duration::from_millis(50));
        watch.stop.store(true, Ordering::Relaxed);
        daemon
    });
    let seen = watch.seen.into_inner().unwrap();
    let new_id = lab.xdp_on_v0().unwrap();
    assert_ne!(new_id, older_id);
    assert_eq!(
        seen,
        [Some(older_id), Some(new_id)],
        "never without a program"
    );
    assert_eq!(pinned_link_id(&bpffs.0), link_id, "the same link, updated");

    // The replaced classifier serves exactly.
    let sink = lab.attach_sink(&daemon, 0);
    lab.burst(std::slice::from_ref(&c0), 1000);
    daemon.wait_for_frames(&[("c0", 1000)]);
    assert_eq!(sink.stop_sink()["frames"], 1000);

    // `down` refuses while the daemon serves v0, then removes what the stopped daemon left.
    let down = |expect_ok: bool| {
        let out = lab
            .command("down v0")
            .env(xmacvlan::xdp::bpffs::BPFFS_ENV, &bpffs.0)
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    down(false);
    // Killed while a client is connected: its claim stays behind, which doctor finds and
    // --fix clears.
    let _client = lab.attach_sink(&daemon, 0);
    daemon.stop_with("KILL");
    assert_eq!(
        lab.xdp_on_v0(),
        Some(new_id),
        "left attached for the next daemon"
    );
    let doctor = |extra: &str| -> serde_json::Value {
        let out = lab
            .command(&format!("doctor --iface v0 --json {extra}"))
            .env(xmacvlan::xdp::bpffs::BPFFS_ENV, &bpffs.0)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let check = |report: &serde_json::Value, name: &str| -> serde_json::Value {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} finding: {report}"))
    };
    let stale = check(&doctor(""), "pinned");
    assert_eq!(stale["severity"], "warn", "{stale}");
    assert!(
        stale["what"]
            .as_str()
            .unwrap()
            .starts_with("1 endpoint is still claimed")
    );
    let fixed = check(&doctor("--fix"), "fix");
    assert!(
        fixed["what"]
            .as_str()
            .unwrap()
            .starts_with("cleared 1 stale claims"),
        "{fixed}"
    );
    assert_eq!(check(&doctor(""), "pinned")["severity"], "ok");
    assert!(down(true).contains("detached"));
    assert_eq!(lab.xdp_on_v0(), None);
    assert!(!PinDir::new(&bpffs.0, "v0").exists());
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}

/// Set the MTU of `v0` and its peer, where the frames come from.
fn set_wire_mtu(lab: &Lab, mtu: u32) -> anyhow::Result<()> {
    lab.host.run(|| {
        let nl = xmacvlan::netlink::Netlink::new()?;
        for name in ["v0p", "v0"] {
            nl.set_mtu(nl.require_link(name)?.index, mtu)?;
        }
        Ok(())
    })
}

/// A classifier from before multi-buffer on a jumbo wire: native XDP refused its MTU, so it
/// ran in generic mode, and that is how it was pinned. The next daemon (xdp-mode auto) does
/// not keep it generic by replacing it in place: it attaches its multi-buffer classifier
/// natively, which serves exactly and passes the frames too long for its sockets to the
/// kernel, counted.
#[test]
fn a_single_buffer_classifier_left_generic_by_a_jumbo_mtu_is_attached_again_natively() {
    let (_serial, lab, c0) = setup("jumbo");
    let bpffs = Bpffs::mount(&lab);
    set_wire_mtu(&lab, 9000).unwrap();
    let older = lab
        .host
        .run(|| {
            let mut warnings = Vec::new();
            let mut attach = |mode| {
                Classifier::attach_persistent(
                    Program::RedirectAll,
                    Steering::PerQueue,
                    1,
                    "v0",
                    &AttachOptions::alone(mode),
                    false,
                    &bpffs.0,
                    &mut warnings,
                )
            };
            // What `run` and the daemon say when the driver (here: the program) is not
            // multi-buffer, rather than the kernel's bare ERANGE.
            let native = format!("{:#}", attach(XdpMode::Native).err().unwrap());
            assert!(
                native.contains("MTU 9000 needs multi-buffer XDP"),
                "{native}"
            );
            let (older, takeover) = attach(XdpMode::Auto)?;
            assert!(matches!(takeover, Takeover::Fresh { .. }));
            Ok((older, warnings))
        })
        .unwrap();
    let (older, warnings) = older;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("v0: MTU 9000 needs multi-buffer XDP: native XDP refused")),
        "{warnings:?}"
    );
    assert_eq!(older.attached().unwrap().1, XdpMode::Generic);
    let older_id = older.program_id().unwrap();
    drop(older);

    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.config()).unwrap()).unwrap();
    config["xdp-mode"] = "auto".into();
    std::fs::write(lab.config(), config.to_string()).unwrap();
    let daemon = lab.start_daemon_with("", &bpffs.env());
    daemon.wait_for_log(
        "the pinned classifier runs in generic mode and it runs program",
        Duration::from_secs(5),
    );
    let started = daemon.wait_for_log("dataplane started", Duration::from_secs(5));
    assert_eq!(started["xdp"], "Native", "{started}");
    assert_ne!(lab.xdp_on_v0(), Some(older_id));

    let sink = lab.attach_sink(&daemon, 0);
    lab.burst(std::slice::from_ref(&c0), 1000);
    daemon.wait_for_frames(&[("c0", 1000)]);
    let before = lab.kernel_unicast_rx(0);
    let jumbo = xmacvlan_bench::generator::Stream::new(
        xmacvlan_bench::test_frame::TestFrame {
            dst: c0.mac,
            src: xmacvlan_bench::lab::GENERATOR_MAC,
            vid: (c0.vid != 0).then_some(c0.vid),
            qinq_outer: None,
            len: 9000,
        },
        xmacvlan_bench::generator::StreamKind::Endpoint(0),
    );
    lab.send(&[jumbo], 100);
    // The sockets are multi-buffer: the jumbo frames take the fast path, whole, into the sink.
    daemon.wait_for_frames(&[("c0", 1100)]);
    let xdp = &daemon.stats()[0].xdp;
    assert_eq!(xdp.pass_too_big, 0, "{xdp:?}");
    assert_eq!(
        lab.kernel_unicast_rx(0),
        before,
        "none to c0's kernel device"
    );
    assert_eq!(
        sink.stop_sink()["frames"],
        1100,
        "the sink got the jumbo frames too"
    );
    drop(daemon);
    lab.cli("endpoint rm c0");
    lab.cli("network rm n1");
}

/// The id of the XDP link pinned for `v0` under `root`.
fn pinned_link_id(root: &Path) -> u32 {
    let link = aya::programs::links::PinnedLink::from_pin(PinDir::new(root, "v0").link()).unwrap();
    aya::programs::links::FdLink::from(link)
        .info()
        .unwrap()
        .id()
}
