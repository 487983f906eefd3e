//! What the runtime gives the plugin: the `CNI_*` environment and the network configuration
//! on stdin, checked into typed form. Keys follow the reference `macvlan` plugin (`master`,
//! `mode`, `mtu`, `mac`, `ipam`), plus xmacvlan's `controlSocket`, `dataRoot` and `portDir`. Keys this
//! plugin does not know are left alone, as the spec asks (runtimes add their own).
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::*;
use crate::config::{DEFAULT_CONTROL_SOCKET, DEFAULT_DATA_ROOT, DEFAULT_PORT_DIR};
use crate::control::Mode;

/// The versions this plugin speaks; results are written in the config's version.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The largest configuration read from stdin.
pub const MAX_CONFIG: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(text: &str) -> CniResult<Self> {
        Ok(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            _ => {
                return Err(CniError::new(
                    INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND `{text}` is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    ),
                ));
            }
        })
    }

    /// The oldest spec version that has the command.
    fn since(self) -> &'static str {
        match self {
            Self::Check => "0.4.0",
            Self::Status | Self::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// The `CNI_*` variables, looked up through `get` (the process environment in the binary).
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub path: Vec<PathBuf>,
    /// Every `CNI_*` variable as given, for the IPAM plugin (it gets the same environment).
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn from_vars(vars: Vec<(String, String)>) -> CniResult<Self> {
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let command = Command::parse(&get("CNI_COMMAND").ok_or_else(|| {
            CniError::new(
                INVALID_ENVIRONMENT,
                "CNI_COMMAND is not set: xmacvlan-cni is a CNI plugin, run by a container runtime \
                 (ADD, DEL, CHECK, STATUS, GC or VERSION)",
            )
        })?)?;
        let need = |k: &str, wanted: bool| -> CniResult<String> {
            match get(k).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if wanted => Err(CniError::new(
                    INVALID_ENVIRONMENT,
                    format!("{k} is required for CNI_COMMAND={command:?} but is not set"),
                )),
                None => Ok(String::new()),
            }
        };
        use Command::*;
        let attach = matches!(command, Add | Del | Check);
        let container_id = need("CNI_CONTAINERID", attach)?;
        let netns = need("CNI_NETNS", matches!(command, Add | Check))?;
        let ifname = need("CNI_IFNAME", attach)?;
        let path = need("CNI_PATH", !matches!(command, Version))?;
        if attach {
            crate::control::model::check_ifname(&ifname, "CNI_IFNAME")
                .map_err(|e| CniError::new(INVALID_ENVIRONMENT, e.to_string()))?;
            let ok = container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok || container_id.len() > 256 {
                return Err(CniError::new(
                    INVALID_ENVIRONMENT,
                    format!(
                        "CNI_CONTAINERID `{container_id}` is not valid: use letters, digits, `_.-` (at most 256)"
                    ),
                ));
            }
        }
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            path: std::env::split_paths(&path).collect(),
            vars: vars
                .into_iter()
                .filter(|(k, _)| k.starts_with("CNI_"))
                .collect(),
        })
    }
}

/// One `{containerID, ifname}` of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration, checked.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// `master` (or `parent`): `IF` or `IF.VID`.
    pub master: String,
    pub mode: Mode,
    pub mtu: Option<u32>,
    /// `runtimeConfig.mac`, else `mac`.
    pub mac: Option<String>,
    /// The IPAM plugin's name (`ipam.type`).
    pub ipam_type: String,
    pub control_socket: PathBuf,
    pub data_root: PathBuf,
    /// The daemon's memif socket directory (`portDir`).
    pub port_dir: PathBuf,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The config as given: what the IPAM plugin reads on its stdin.
    pub raw: Vec<u8>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_CONFIG, msg)
}

fn string(obj: &Map<String, Value>, key: &str) -> CniResult<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "`{key}` must be a string, not {other}: e.g. \"{key}\": \"…\""
        ))),
    }
}

/// The version of a config, checked against what the command needs.
pub fn check_version(version: &str, command: Command) -> CniResult<()> {
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "cniVersion `{version}` is not supported: xmacvlan-cni speaks {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if version_key(version) < version_key(command.since()) {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "CNI_COMMAND={command:?} needs cniVersion {} or later, the config says {version}",
                command.since()
            ),
        ));
    }
    Ok(())
}

/// `"1.0.0"` → (1, 0, 0), for ordering.
pub fn version_key(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

impl NetConf {
    pub fn parse(raw: &[u8], command: Command) -> CniResult<Self> {
        let value: Value = serde_json::from_slice(raw).map_err(|e| {
            CniError::new(
                DECODE_FAILURE,
                format!("the network configuration on stdin is not JSON: {e}"),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                DECODE_FAILURE,
                "the network configuration on stdin must be a JSON object",
            ));
        };
        let cni_version = string(&obj, "cniVersion")?
            .ok_or_else(|| invalid("`cniVersion` is missing: e.g. \"cniVersion\": \"1.0.0\""))?;
        check_version(&cni_version, command)?;
        let name = string(&obj, "name")?
            .ok_or_else(|| invalid("`name` (the network's name) is missing"))?;
        crate::control::model::check_name(&name, "network").map_err(|e| invalid(e.to_string()))?;
        match string(&obj, "type")?.as_deref() {
            Some("xmacvlan") => {}
            other => {
                return Err(invalid(format!(
                    "`type` is {other:?}: this plugin is \"type\": \"xmacvlan\""
                )));
            }
        }
        let master = match (string(&obj, "master")?, string(&obj, "parent")?) {
            (Some(m), Some(p)) if m != p => {
                return Err(invalid(format!(
                    "`master` ({m}) and `parent` ({p}) disagree: give one of them"
                )));
            }
            (Some(m), _) | (None, Some(m)) => m,
            (None, None) => {
                return Err(invalid(
                    "`master` is required: name the host interface the macvlans attach to \
                     (IF.VID for a VLAN), e.g. \"master\": \"eth1.100\"",
                ));
            }
        };
        crate::control::model::ParentSpec::parse(&master)
            .map_err(|e| invalid(format!("`master`: {e}")))?;
        let mode = match string(&obj, "mode")? {
            None => Mode::Bridge,
            Some(m) => m.parse().map_err(|_| {
                invalid(format!(
                    "unknown macvlan mode `{m}` in `mode`: use bridge, private, vepa or passthru"
                ))
            })?,
        };
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if (68..=65535).contains(&n) => Some(n as u32),
                _ => return Err(invalid(format!("`mtu` {v} is not an MTU: use 68-65535"))),
            },
        };
        let runtime_mac = match obj.get("runtimeConfig") {
            Some(Value::Object(rc)) => string(rc, "mac")?,
            _ => None,
        };
        let mac = runtime_mac.or(string(&obj, "mac")?);
        if let Some(m) = &mac {
            m.parse::<crate::ether::Mac>()
                .map_err(crate::control::ControlError::from)
                .and_then(|parsed| crate::control::model::check_mac(&parsed))
                .map_err(|e| invalid(format!("`mac` {m}: {e}")))?;
        }
        let ipam_type = match obj.get("ipam") {
            Some(Value::Object(ipam)) => string(ipam, "type")?.filter(|t| !t.is_empty()),
            _ => None,
        }
        .ok_or_else(|| {
            invalid(
                "`ipam` with a `type` is required: e.g. \"ipam\": {\"type\": \"host-local\", \
                 \"subnet\": \"198.18.0.0/24\"}",
            )
        })?;
        if ipam_type.contains('/') || ipam_type.starts_with('.') {
            return Err(invalid(format!(
                "`ipam.type` `{ipam_type}` must be a plugin name found in CNI_PATH, not a path"
            )));
        }
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(invalid("`prevResult` must be an object")),
        };
        let valid_attachments = match obj.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(
                list.iter()
                    .map(|a| {
                        let o = a.as_object().ok_or_else(|| {
                            invalid("`cni.dev/valid-attachments` entries must be objects")
                        })?;
                        match (string(o, "containerID")?, string(o, "ifname")?) {
                            (Some(container_id), Some(ifname)) => Ok(Attachment {
                                container_id,
                                ifname,
                            }),
                            _ => Err(invalid(
                                "every `cni.dev/valid-attachments` entry needs `containerID` and `ifname`",
                            )),
                        }
                    })
                    .collect::<CniResult<_>>()?,
            ),
            Some(_) => return Err(invalid("`cni.dev/valid-attachments` must be an array")),
        };
        let path = |key: &str, default: &str| -> CniResult<PathBuf> {
            let p = PathBuf::from(string(&obj, key)?.unwrap_or_else(|| default.to_string()));
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "`{key}` {} must be an absolute path",
                    p.display()
                )));
            }
            Ok(p)
        };
        Ok(Self {
            control_socket: path("controlSocket", DEFAULT_CONTROL_SOCKET)?,
            data_root: path("dataRoot", DEFAULT_DATA_ROOT)?,
            port_dir: path("portDir", DEFAULT_PORT_DIR)?,
            cni_version,
            name,
            master,
            mode,
            mtu,
            mac,
            ipam_type,
            prev_result,
            valid_attachments,
            raw: raw.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: Value) -> Value {
        let mut base = serde_json::json!({
            "cniVersion": "1.0.0", "name": "n", "type": "xmacvlan", "master": "v0",
            "ipam": {"type": "host-local"}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn err(v: Value) -> CniError {
        NetConf::parse(v.to_string().as_bytes(), Command::Add).unwrap_err()
    }

    #[test]
    fn a_config_like_the_reference_plugins() {
        let c = NetConf::parse(
            conf(serde_json::json!({"mode": "private", "mtu": 1400,
                "runtimeConfig": {"mac": "02:00:00:00:00:01"}, "dataRoot": "/tmp/x"}))
            .to_string()
            .as_bytes(),
            Command::Add,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Private);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(c.ipam_type, "host-local");
        assert_eq!(c.data_root, PathBuf::from("/tmp/x"));
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let e = NetConf::parse(b"{nope", Command::Add).unwrap_err();
        assert_eq!(e.code, DECODE_FAILURE);
        let e = err(conf(serde_json::json!({"mode": "nat"})));
        assert_eq!(e.code, INVALID_CONFIG);
        assert!(e.msg.contains("unknown macvlan mode `nat`"), "{e}");
        let e = err(conf(serde_json::json!({"master": null})));
        assert!(e.msg.contains("`master` is required"), "{e}");
        let e = err(conf(serde_json::json!({"master": "eth0.5000"})));
        assert!(e.msg.contains("1-4094"), "{e}");
        let e = err(conf(serde_json::json!({"cniVersion": "0.2.0"})));
        assert_eq!(e.code, INCOMPATIBLE_VERSION);
        let e = err(conf(serde_json::json!({"ipam": {}})));
        assert!(e.msg.contains("`ipam` with a `type`"), "{e}");
        let e = err(conf(serde_json::json!({"mac": "01:00:5e:00:00:01"})));
        assert!(e.msg.contains("multicast"), "{e}");
        let e = err(conf(serde_json::json!({"runtimeConfig": {"mac": "zz"}})));
        assert!(e.msg.contains("`mac` zz"), "{e}");
        let e = err(conf(serde_json::json!({"mtu": 10})));
        assert!(e.msg.contains("68-65535"), "{e}");
        let e = err(conf(serde_json::json!({"type": "macvlan"})));
        assert!(e.msg.contains("\"type\": \"xmacvlan\""), "{e}");
        let e = err(conf(serde_json::json!({"ipam": {"type": "../x"}})));
        assert!(e.msg.contains("not a path"), "{e}");
        let v = conf(serde_json::json!({"cniVersion": "1.0.0"})).to_string();
        let e = NetConf::parse(v.as_bytes(), Command::Gc).unwrap_err();
        assert!(e.msg.contains("needs cniVersion 1.1.0"), "{e}");
    }

    #[test]
    fn environment_checks() {
        let vars = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let e = Env::from_vars(vars(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(e.code, INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e}");
        let e = Env::from_vars(vars(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert!(e.msg.contains("FROB"), "{e}");
        let env = Env::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a:/b"),
            ("HOME", "/root"),
        ]))
        .unwrap();
        assert_eq!(env.netns, "", "DEL tolerates a missing netns");
        assert_eq!(env.path.len(), 2);
        assert_eq!(env.vars.len(), 4, "only CNI_* variables are passed on");
        assert!(Env::from_vars(vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }
}
