//! CNI's error result: `{"cniVersion", "code", "msg", "details"}` on stdout, exit status 1.
//! Codes 1-99 are the spec's well-known ones; 100+ are xmacvlan's own.
use serde::{Deserialize, Serialize};

use crate::control::ControlError;
use crate::netns::NetnsError;

/// Incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Invalid necessary environment variables.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// I/O failure.
pub const IO_FAILURE: u32 = 5;
/// Failed to decode content.
pub const DECODE_FAILURE: u32 = 6;
/// Invalid network config.
pub const INVALID_CONFIG: u32 = 7;
/// The plugin is not available (the xmacvlan daemon does not answer).
pub const NOT_AVAILABLE: u32 = 50;
/// Creating or removing the attachment failed in the kernel.
pub const PROVISION_FAILED: u32 = 100;
/// CHECK: the kernel or the daemon differs from prevResult.
pub const CHECK_FAILED: u32 = 101;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An error with its cause chain in `details`.
    pub fn with_cause(code: u32, msg: impl Into<String>, cause: impl Into<anyhow::Error>) -> Self {
        Self {
            details: format!("{:#}", cause.into()),
            ..Self::new(code, msg)
        }
    }

    /// A control-path failure while `doing` something: the code says what kind of failure
    /// it is, the message has the whole chain.
    pub fn control(doing: impl std::fmt::Display, e: ControlError) -> Self {
        let code = code_of(&e);
        Self::new(code, format!("{doing}: {:#}", anyhow::Error::from(e)))
    }
}

/// The CNI code of a control-path failure, from what went wrong (under the steps' names).
pub fn code_of(e: &ControlError) -> u32 {
    match e.cause() {
        ControlError::Invalid(_) => INVALID_CONFIG,
        ControlError::State(_) => IO_FAILURE,
        ControlError::Namespace(NetnsError::Missing { .. } | NetnsError::NotANamespace { .. }) => {
            UNKNOWN_CONTAINER
        }
        _ => PROVISION_FAILED,
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

pub type CniResult<T> = Result<T, CniError>;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::control::StateError;

    #[test]
    fn the_code_follows_what_went_wrong_under_the_steps() {
        let invalid = ControlError::Invalid("`-o mtu=x` is not a number".into());
        let attached = invalid.rolled_back("attaching `eth0` to network `n`".into());
        assert_eq!(code_of(&attached), INVALID_CONFIG);
        let e = CniError::control("creating the endpoint", attached);
        assert_eq!(
            e.msg,
            "creating the endpoint: attaching `eth0` to network `n` (nothing was left behind): \
             `-o mtu=x` is not a number"
        );
        let conflict = ControlError::Conflict("MTU 9000 is larger".into());
        assert_eq!(code_of(&conflict), PROVISION_FAILED);
        let state = ControlError::State(StateError::Version {
            path: PathBuf::from("/x/state.json"),
            found: 9,
            understood: 1,
        });
        assert_eq!(code_of(&state), IO_FAILURE);
        let gone = ControlError::Namespace(NetnsError::Missing {
            name: "ns".into(),
            path: PathBuf::from("/run/netns/ns"),
        });
        assert_eq!(code_of(&gone), UNKNOWN_CONTAINER);
    }
}
