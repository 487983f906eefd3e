//! The Kubernetes manifests in `deploy/kubernetes/` checked against what exists: no cluster
//! runs here, and no YAML parser is among the dependencies, so a careful line-based reading
//! of the subset they use (block scalars, `key: value`, lists of `- name:`). The JSON inside
//! them goes through the daemon's and the plugin's own parsers; the entrypoint runs for real.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use xmacvlan::cni::config::{Command as Cni, NetConf};
use xmacvlan::config::DaemonConfig;
use xmacvlan_tests::cni_lab::sibling_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(name: &str) -> String {
    let path = repo().join("deploy/kubernetes").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The text of the block scalar `key: |`, dedented.
fn block(text: &str, key: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no block `{key}: |`"));
    let base = indent(lines[start]);
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .copied()
        .collect();
    let cut = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .unwrap();
    body.iter()
        .map(|l| l.get(cut..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every value of `key: value` (also as a list item `- key: value`), unquoted.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("- ");
            let v = l.strip_prefix(&format!("{key}:"))?.trim();
            Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
        })
        .collect()
}

/// The `- name:` entries of the list under `key:`.
fn names_under(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("{key}:"))
        .unwrap();
    let base = indent(lines[start]);
    lines[start + 1..]
        .iter()
        .take_while(|l| {
            l.trim().is_empty()
                || indent(l) > base
                || l.trim_start().starts_with("- ") && indent(l) == base
        })
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- name:")
                .map(|n| n.trim().to_string())
        })
        .collect()
}

/// What the subset allows: spaces only, even indentation, `---` between documents.
fn check_shape(name: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        assert!(!line.contains('\t'), "{name}:{}: a tab", i + 1);
        assert_eq!(indent(line) % 2, 0, "{name}:{}: odd indentation", i + 1);
    }
    for doc in text.split("\n---\n") {
        assert_eq!(
            values(doc, "apiVersion").len(),
            1,
            "{name}: a document without apiVersion"
        );
        assert!(
            !values(doc, "kind").is_empty(),
            "{name}: a document without kind"
        );
    }
}

fn daemon_config() -> DaemonConfig {
    let ds = read("daemonset.yaml");
    DaemonConfig::from_json_str(&block(&ds, "daemon.json"), "daemonset.yaml daemon.json")
        .unwrap_or_else(|e| panic!("the ConfigMap's daemon.json: {e}"))
}

#[test]
fn the_daemonset_mounts_what_the_daemon_and_plugin_use() {
    let ds = read("daemonset.yaml");
    check_shape("daemonset.yaml", &ds);
    assert_eq!(values(&ds, "kind"), ["ConfigMap", "DaemonSet"]);
    assert_eq!(values(&ds, "hostNetwork"), ["true"]);
    let caps = values(&ds, "add").join(" ");
    for cap in [
        "NET_ADMIN",
        "NET_RAW",
        "BPF",
        "PERFMON",
        "IPC_LOCK",
        "SYS_ADMIN",
    ] {
        assert!(
            caps.contains(&format!("\"{cap}\"")),
            "capability {cap} missing: {caps}"
        );
    }
    let host_paths = values(&ds, "path");
    for p in ["/opt/cni/bin", "/run/xmacvlan", "/var/lib/xmacvlan"] {
        assert!(
            host_paths.contains(&p.to_string()),
            "no hostPath {p}: {host_paths:?}"
        );
    }
    let mounts = names_under(&ds, "volumeMounts");
    let volumes = names_under(&ds, "volumes");
    assert!(!mounts.is_empty());
    for m in &mounts {
        assert!(
            volumes.contains(m),
            "volumeMount {m} has no volume: {volumes:?}"
        );
    }
    assert_eq!(
        values(&ds, "name")
            .iter()
            .filter(|n| *n == "xmacvlan-config")
            .count(),
        2
    );

    // The daemon's own parser accepts the config, and its paths are on the host mounts.
    let cfg = daemon_config();
    let mount_paths = values(&ds, "mountPath");
    assert_eq!(cfg.data_root, PathBuf::from("/var/lib/xmacvlan"));
    assert!(mount_paths.contains(&"/var/lib/xmacvlan".to_string()));
    assert!(
        cfg.control_socket.starts_with("/run/xmacvlan"),
        "{:?}",
        cfg.control_socket
    );
    assert!(mount_paths.contains(&"/run/xmacvlan".to_string()));
    assert_eq!(
        cfg.port_dir,
        PathBuf::from("/run/xmacvlan/ports"),
        "the memif sockets on the host's /run/xmacvlan, where the pods mount them"
    );

    // The entrypoint: the image's, and it installs where the node's /opt/cni/bin is mounted.
    let command = values(&ds, "command");
    assert_eq!(command, ["[\"/usr/local/bin/xmacvlan-entrypoint\"]"]);
    let cf = read("Containerfile");
    assert!(cf.contains("COPY deploy/kubernetes/entrypoint.sh /usr/local/bin/xmacvlan-entrypoint"));
    assert!(cf.contains("ENTRYPOINT [\"/usr/local/bin/xmacvlan-entrypoint\"]"));
    let cni_bin = values(&ds, "value");
    assert_eq!(cni_bin, ["/host/opt/cni/bin"]);
    assert!(mount_paths.contains(&"/host/opt/cni/bin".to_string()));
}

#[test]
fn the_containerfile_builds_and_copies_what_exists() {
    let cf = read("Containerfile");
    let cargo = std::fs::read_to_string(repo().join("userspace/Cargo.toml")).unwrap();
    let bins: Vec<String> = cargo
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix("name = "))
                .map(|n| n.trim_matches('"').to_string())
        })
        .collect();
    assert_eq!(
        bins,
        [
            "xmacvlan",
            "xmacvlan-cni",
            "xmacvlan-sink",
            "xmacvlan-reflect"
        ]
    );
    for bin in &bins {
        assert!(
            cf.contains(&format!("--bin {bin}")),
            "the image does not build {bin}"
        );
        assert!(
            cf.contains(&format!("/src/target/release/{bin} /usr/local/bin/{bin}")),
            "the image does not install {bin}"
        );
    }
    for line in cf
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(
            repo().join(src).exists(),
            "COPY source {src} does not exist"
        );
    }
}

#[test]
fn the_entrypoint_installs_the_plugin_and_runs_the_daemon() {
    let script = repo().join("deploy/kubernetes/entrypoint.sh");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert_eq!(mode & 0o111, 0o111, "entrypoint.sh must be executable");
    assert!(
        Command::new("sh")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap()
            .success()
    );
    let dir = std::env::temp_dir().join(format!("xmvdeploy{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cni-bin")).unwrap();
    let config = dir.join("daemon.json");
    std::fs::write(&config, block(&read("daemonset.yaml"), "daemon.json")).unwrap();
    let run = |bin_dir: &Path| {
        Command::new(&script)
            .env("CNI_BIN_DIR", bin_dir)
            .env("XMACVLAN_CNI", sibling_bin("xmacvlan-cni"))
            .env("XMACVLAN", xmacvlan_tests::xmacvlan_bin())
            .env("XMACVLAN_CONFIG", &config)
            // `daemon --help` instead of the daemon itself: the exec and its arguments.
            .arg("--help")
            .output()
            .unwrap()
    };
    let out = run(&dir.join("cni-bin"));
    let _cleanup = Cleanup(dir.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Run the daemon"));
    let installed = dir.join("cni-bin/xmacvlan");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(sibling_bin("xmacvlan-cni")).unwrap()
    );
    let version = Command::new(&installed)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&version.stdout).unwrap();
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"1.1.0".into())
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("cni-bin"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(leftovers.len(), 1, "only the plugin, no temporary copy");
    // Without the node's directory mounted it says so.
    let out = run(&dir.join("missing"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not mounted"));
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_network_attachment_and_the_pod_match_the_plugin_and_the_daemon() {
    let nad = read("nad-vlan100.yaml");
    check_shape("nad-vlan100.yaml", &nad);
    assert_eq!(values(&nad, "kind"), ["NetworkAttachmentDefinition"]);
    let conf = NetConf::parse(block(&nad, "config").as_bytes(), Cni::Add)
        .unwrap_or_else(|e| panic!("the NAD's config: {e}"));
    let name = values(&nad, "name")[0].clone();
    assert_eq!(conf.name, name, "the CNI network is named as the NAD");
    assert_eq!(conf.master, "eth1.100");
    let cfg = daemon_config();
    assert_eq!(conf.control_socket, cfg.control_socket);
    assert_eq!(conf.data_root, cfg.data_root);
    assert_eq!(
        conf.port_dir, cfg.port_dir,
        "the NAD's portDir is the daemon's port-dir"
    );
    assert_eq!(
        cfg.docker_plugin, None,
        "no Docker plugin on a Kubernetes node"
    );
    assert!(
        Path::new(xmacvlan_tests::cni_lab::CNI_DIR)
            .join(&conf.ipam_type)
            .exists(),
        "IPAM plugin {} is not a reference plugin",
        conf.ipam_type
    );

    let pod = read("pod-memif.yaml");
    check_shape("pod-memif.yaml", &pod);
    let annotation = values(&pod, "k8s.v1.cni.cncf.io/networks");
    let networks: Value = serde_json::from_str(&annotation[0]).unwrap();
    assert_eq!(networks[0]["name"], name.as_str());
    let ifname = networks[0]["interface"].as_str().unwrap();
    let port_dir = conf.port_dir.display().to_string();
    assert!(
        values(&pod, "path").contains(&port_dir),
        "the pod mounts {port_dir}"
    );
    assert!(values(&pod, "mountPath").contains(&port_dir));
    assert!(
        port_dir.starts_with("/run/xmacvlan/"),
        "inside the DaemonSet's /run/xmacvlan"
    );
    // The script's socket path is the link xmacvlan-cni makes.
    let link = xmacvlan::cni::ops::port_link(&conf.port_dir, 7, ifname);
    let pattern = link.display().to_string().replace("/7/", "/$inode/");
    assert!(pod.contains(&format!("sock={pattern}")), "{pattern}");
}
