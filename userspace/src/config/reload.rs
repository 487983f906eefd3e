//! What a SIGHUP can apply: `debug` and `log-level` live, everything else at the next start.
use std::fmt;

use serde_json::Value;

use super::{DaemonConfig, LIVE_KEYS, LogLevel};

/// One key whose value differs between the running configuration and the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: &'static str,
    pub old: Value,
    pub new: Value,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.old, self.new)
    }
}

/// The outcome of comparing the running configuration with the reloaded file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReloadPlan {
    /// Changes the daemon applies now.
    pub live: Vec<Change>,
    /// Changes that take effect only after a restart (the daemon keeps the old values).
    pub restart: Vec<Change>,
    /// The log level to switch to, if the level in force changes.
    pub new_log_level: Option<LogLevel>,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }

    /// The configuration to run with after the reload: `old` with only the live keys taken
    /// from `new`.
    pub fn apply_live(&self, old: &DaemonConfig, new: &DaemonConfig) -> DaemonConfig {
        DaemonConfig {
            debug: new.debug,
            log_level: new.log_level,
            ..old.clone()
        }
    }
}

impl fmt::Display for ReloadPlan {
    /// One line for the log, e.g. `applied: log-level "info" -> "debug"; needs a restart to
    /// take effect: cores [1] -> [0,1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("configuration unchanged");
        }
        let join = |changes: &[Change]| {
            changes
                .iter()
                .map(Change::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.live.is_empty() {
            parts.push(format!("applied: {}", join(&self.live)));
        }
        if !self.restart.is_empty() {
            parts.push(format!(
                "needs a restart to take effect (systemctl restart xmacvlan): {}",
                join(&self.restart)
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Sort the differences between the running configuration `old` and the reloaded `new`.
pub fn diff_for_reload(old: &DaemonConfig, new: &DaemonConfig) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for ((key, a), (_, b)) in old.entries().into_iter().zip(new.entries()) {
        if a == b {
            continue;
        }
        let change = Change {
            key,
            old: a,
            new: b,
        };
        if LIVE_KEYS.contains(&key) {
            plan.live.push(change);
        } else {
            plan.restart.push(change);
        }
    }
    let level = new.effective_log_level();
    if level != old.effective_log_level() {
        plan.new_log_level = Some(level);
    }
    plan
}
