//! `xmacvlan-cni`: a CNI plugin (spec 1.1, `"type": "xmacvlan"`) for podman and Kubernetes.
//! A thin front end on the control path (the same checks and state as `xmacvlan endpoint`)
//! and the daemon's control socket: see [`ops`] for what each command does.
pub mod config;
pub mod error;
pub mod ipam;
pub mod ops;
pub mod types;

use config::{Command, Env, NetConf};
use error::{CniError, CniResult};

/// What the plugin prints and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub status: i32,
}

/// One invocation: the `CNI_*` environment and stdin in, what to print and the exit status
/// out (an error is CNI's JSON error on stdout with status 1).
pub fn run(vars: Vec<(String, String)>, stdin: &[u8]) -> Outcome {
    let version = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| config::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    match dispatch(vars, stdin) {
        Ok(None) => Outcome {
            stdout: String::new(),
            status: 0,
        },
        Ok(Some(v)) => Outcome {
            stdout: v.to_string(),
            status: 0,
        },
        Err(mut e) => {
            e.cni_version = version;
            failed(e)
        }
    }
}

/// An error as the plugin reports it.
pub fn failed(mut e: CniError) -> Outcome {
    if e.cni_version.is_empty() {
        e.cni_version = "1.1.0".into();
    }
    Outcome {
        stdout: serde_json::to_string(&e).expect("plain data"),
        status: 1,
    }
}

fn dispatch(vars: Vec<(String, String)>, stdin: &[u8]) -> CniResult<Option<serde_json::Value>> {
    if stdin.len() > config::MAX_CONFIG {
        return Err(CniError::new(
            error::DECODE_FAILURE,
            format!(
                "the configuration on stdin is larger than {} bytes",
                config::MAX_CONFIG
            ),
        ));
    }
    let env = Env::from_vars(vars)?;
    if env.command == Command::Version {
        return Ok(Some(ops::version(stdin)));
    }
    let conf = NetConf::parse(stdin, env.command)?;
    match env.command {
        Command::Add => ops::add(&env, &conf).map(Some),
        Command::Del => ops::del(&env, &conf).map(|()| None),
        Command::Check => ops::check(&env, &conf).map(|()| None),
        Command::Status => ops::status(&env, &conf).map(|()| None),
        Command::Gc => ops::gc(&env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}
