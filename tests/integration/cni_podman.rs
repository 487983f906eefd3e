//! podman (Debian's 4.3, CNI backend) runs a container on an xmacvlan CNI network: a private
//! store, run root, containers.conf, plugin and config directories; an image made by
//! `podman import` of a busybox root filesystem. The container gets its address from
//! host-local through xmacvlan-cni, frames to its MAC reach the fast path, and `podman rm`
//! leaves no link, state, lease or fast-path entry behind. podman runs in the lab's host
//! namespace (`nsenter --net`), where the daemon and the veth parent are.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use xmacvlan::ether::Mac;
use xmacvlan_tests::cni_lab::{
    CNI_DIR, Daemon, Lab, daemon_endpoints, served_by_fast_path, sibling_bin,
};

const BUSYBOX: &str = "/bin/busybox";

/// podman with everything private to the lab.
struct Podman<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl<'a> Podman<'a> {
    fn new(lab: &'a Lab) -> Podman<'a> {
        for tool in ["/usr/bin/podman", BUSYBOX, "/usr/bin/nsenter"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install podman busybox-static util-linux"
            );
        }
        let dir = lab.dir.join("podman");
        for sub in ["plugins", "conf", "rootfs/bin", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(sibling_bin("xmacvlan-cni"), dir.join("plugins/xmacvlan"))
            .unwrap();
        for p in ["host-local", "loopback", "tuning"] {
            std::os::unix::fs::symlink(Path::new(CNI_DIR).join(p), dir.join("plugins").join(p))
                .unwrap();
        }
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "xmvnet",
            "plugins": [
                {
                    "type": "xmacvlan",
                    "master": "v0",
                    "controlSocket": lab.socket(),
                    "dataRoot": lab.data_root(),
                    "portDir": lab.dir.join("ports"),
                    "ipam": {
                        "type": "host-local",
                        "dataDir": lab.ipam_dir("ours"),
                        "ranges": [[{"subnet": "198.18.40.0/24", "gateway": "198.18.40.1"}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}
            ]
        });
        std::fs::write(dir.join("conf/xmvnet.conflist"), conflist.to_string()).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
                 network_config_dir = \"{}\"\n[engine]\ntmp_dir = \"{}\"\n",
                dir.join("plugins").display(),
                dir.join("conf").display(),
                dir.join("tmp").display()
            ),
        )
        .unwrap();
        std::fs::copy(BUSYBOX, dir.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "ip", "sleep", "cat"] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        Podman { lab, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.lab.host.path().display()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd
    }

    /// Run to success; stdout. The command and its output go to the test's log.
    fn run(&self, args: &[&str]) -> String {
        let out: Output = self.command(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("# podman {}\n{stdout}", args.join(" "));
        assert!(
            out.status.success(),
            "podman {} failed: {}{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn import(&self) {
        let tar = Command::new("tar")
            .arg("-C")
            .arg(self.dir.join("rootfs"))
            .args(["-c", "."])
            .output()
            .unwrap();
        assert!(tar.status.success());
        let mut child = self
            .command(&["import", "-", "xmvbusybox"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        assert!(child.wait().unwrap().success(), "podman import failed");
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Whatever a failed test left running goes (its CNI DEL runs too).
        let _ = self.command(&["rm", "-a", "-f", "-t", "0"]).output();
    }
}

#[test]
fn podman_runs_a_container_on_an_xmacvlan_network_and_rm_leaves_nothing() {
    let lab = Lab::new("pm", 1, 0);
    let daemon: Daemon = lab.start_daemon();
    let podman = Podman::new(&lab);
    podman.import();
    let networks = podman.run(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(networks.contains("xmvnet xmacvlan"), "{networks}");

    podman.run(&[
        "run",
        "-d",
        "--name",
        "xmvc1",
        "--network",
        "xmvnet",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "xmvbusybox",
        "sleep",
        "600",
    ]);
    // The endpoint xmacvlan recorded: the container's namespace, MAC and address.
    let state = lab.state();
    assert_eq!(state.endpoints.len(), 1, "{state:?}");
    let ep = state.endpoints[0].clone();
    let mac = Mac(ep.mac).to_string();
    assert!(mac.starts_with("02:42:"), "a local MAC: {mac}");
    let addr = podman.run(&["exec", "xmvc1", "ip", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 198.18.40.2/24"), "{addr}");
    assert!(addr.contains(&format!("link/ether {mac}")), "{addr}");
    let route = podman.run(&["exec", "xmvc1", "ip", "route"]);
    assert!(
        route.contains("default via 198.18.40.1 dev eth0"),
        "{route}"
    );
    // tuning ran after xmacvlan on its result.
    let sysctl = podman.run(&[
        "exec",
        "xmvc1",
        "cat",
        "/proc/sys/net/ipv4/conf/eth0/arp_notify",
    ]);
    assert_eq!(sysctl.trim(), "1");
    let inspect = podman.run(&[
        "inspect", "xmvc1", "--format",
        "{{.NetworkSettings.Networks.xmvnet.IPAddress}} {{.NetworkSettings.Networks.xmvnet.MacAddress}}",
    ]);
    assert_eq!(inspect.trim(), format!("198.18.40.2 {mac}"));
    let sandbox = podman.run(&[
        "inspect",
        "xmvc1",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
    ]);
    let sandbox = PathBuf::from(sandbox.trim());
    assert!(sandbox.exists(), "{}", sandbox.display());
    assert_eq!(ep.netns, sandbox.display().to_string());

    // The container's kernel device gets its frames until an application attaches to its
    // port (through the by-netns link, from the container's namespace); then that does.
    served_by_fast_path(&lab, &ep.spec(), &ep.netns, "eth0", 500);

    podman.run(&["rm", "-f", "-t", "0", "xmvc1"]);
    let state = lab.state();
    assert!(
        state.endpoints.is_empty() && state.networks.is_empty(),
        "{state:?}"
    );
    assert!(
        daemon_endpoints(&lab.socket()).is_empty(),
        "still on the fast path"
    );
    assert_eq!(
        lab.xdp_on_v0(),
        None,
        "classifier gone with the last endpoint"
    );
    assert_eq!(Lab::links(&lab.host), ["lo", "v0", "v0p"]);
    assert!(lab.leases("ours").is_empty(), "{:?}", lab.leases("ours"));
    assert!(!sandbox.exists(), "podman's container namespace is gone");
    let links = std::fs::read_dir(lab.dir.join("ports/by-netns")).map_or(0, |d| d.count());
    assert_eq!(links, 0, "the container's port link is gone");
    drop(podman);
    drop(daemon);
}
