//! Delegating addresses to an IPAM plugin (host-local, static, dhcp, …): found in CNI_PATH and
//! run as the runtime runs this plugin, with the same configuration on stdin and the same
//! environment. Its answer is bounded in size and time and checked before use; its error
//! keeps its code and message.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{Env, NetConf};
use super::error::*;
use super::types::Addressing;

/// An IPAM plugin gets this long (dhcp waits for a lease).
const TIMEOUT: Duration = Duration::from_secs(90);
/// The largest answer read from it.
const MAX_OUTPUT: u64 = 1 << 20;

/// The plugin's binary: the first `CNI_PATH` directory that has it.
pub fn find(env: &Env, plugin: &str) -> CniResult<PathBuf> {
    env.path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                format!(
                    "IPAM plugin `{plugin}` (ipam.type) is not in CNI_PATH ({}): install it there \
                     or fix ipam.type",
                    std::env::join_paths(&env.path)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ),
            )
        })
}

enum Bounded {
    Io(std::io::Error),
    Timeout,
}

/// Run `plugin` with the runtime's `CNI_*` variables (and `overrides`), `stdin` on its
/// stdin; its status, stdout and stderr, bounded in size and in time.
fn run_bounded(
    plugin: &Path,
    env: &Env,
    overrides: &[(&str, &str)],
    stdin_bytes: Vec<u8>,
) -> Result<(std::process::ExitStatus, Vec<u8>, String), Bounded> {
    let mut child = Process::new(plugin)
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(overrides.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Bounded::Io)?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(&stdin_bytes));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        (&mut stdout)
            .take(MAX_OUTPUT)
            .read_to_end(&mut out)
            .map(|_| out)
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        (&mut stderr).take(64 * 1024).read_to_end(&mut out).ok();
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Bounded::Io)? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            return Err(Bounded::Timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A plugin that exits without reading its stdin is fine (EPIPE here is not its error).
    writer.join().ok();
    let out = reader.join().ok().and_then(Result::ok).unwrap_or_default();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
        .trim()
        .to_string();
    Ok((status, out, err))
}

/// The configuration as given; but a 1.1.0 config goes to a plugin that only speaks up to
/// 1.0.0 (Debian's reference plugins) as 1.0.0, the same format, as its `VERSION` says.
fn config_for(plugin: &Path, env: &Env, conf: &NetConf) -> Vec<u8> {
    if conf.cni_version != "1.1.0" {
        return conf.raw.clone();
    }
    let supported = run_bounded(plugin, env, &[("CNI_COMMAND", "VERSION")], conf.raw.clone())
        .ok()
        .filter(|(status, _, _)| status.success())
        .and_then(|(_, out, _)| serde_json::from_slice::<Value>(&out).ok())
        .and_then(|v| v.get("supportedVersions").cloned())
        .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
        .unwrap_or_default();
    if supported.iter().any(|v| v == "1.1.0") || !supported.iter().any(|v| v == "1.0.0") {
        return conf.raw.clone();
    }
    let mut value: Value = serde_json::from_slice(&conf.raw).expect("parsed before");
    value["cniVersion"] = Value::from("1.0.0");
    serde_json::to_vec(&value).expect("plain data")
}

/// Run the IPAM plugin for `command` ("ADD", "DEL", "CHECK") on behalf of the attachment
/// (`container_id`, `ifname`); its stdout on success.
pub fn exec(
    env: &Env,
    conf: &NetConf,
    command: &str,
    container_id: &str,
    ifname: &str,
) -> CniResult<Vec<u8>> {
    let plugin = find(env, &conf.ipam_type)?;
    let (status, out, err_text) = run_bounded(
        &plugin,
        env,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_IFNAME", ifname),
        ],
        config_for(&plugin, env, conf),
    )
    .map_err(|e| match e {
        Bounded::Io(e) => CniError::new(
            IO_FAILURE,
            format!("running IPAM plugin {}: {e}", plugin.display()),
        ),
        Bounded::Timeout => CniError::new(
            IO_FAILURE,
            format!(
                "IPAM plugin `{}` did not answer {command} within {} s: it was stopped",
                conf.ipam_type,
                TIMEOUT.as_secs()
            ),
        ),
    })?;
    if status.success() {
        return Ok(out);
    }
    Err(match serde_json::from_slice::<CniError>(&out) {
        Ok(mut e) => {
            e.msg = format!("IPAM plugin `{}`: {}", conf.ipam_type, e.msg);
            e.cni_version = String::new();
            e
        }
        Err(_) => CniError {
            details: err_text,
            ..CniError::new(
                IO_FAILURE,
                format!(
                    "IPAM plugin `{}` failed ({status}) without a CNI error on stdout",
                    conf.ipam_type
                ),
            )
        },
    })
}

/// ADD: the addresses (and routes, DNS) the IPAM plugin assigned.
pub fn add(env: &Env, conf: &NetConf) -> CniResult<Addressing> {
    let out = exec(env, conf, "ADD", &env.container_id, &env.ifname)?;
    let value: Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            DECODE_FAILURE,
            format!(
                "IPAM plugin `{}` answered ADD with no JSON result: {e}",
                conf.ipam_type
            ),
        )
    })?;
    let addressing = Addressing::parse(&value, "the IPAM plugin's result")?;
    if addressing.ips.is_empty() {
        return Err(CniError::new(
            INVALID_CONFIG,
            format!(
                "IPAM plugin `{}` assigned no address: give it a range or address in `ipam`",
                conf.ipam_type
            ),
        ));
    }
    Ok(addressing)
}
