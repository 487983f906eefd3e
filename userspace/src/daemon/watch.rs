//! Endpoints whose container went away while the daemon served them.
//!
//! `ip netns del`, or a container runtime removing a container's namespace, takes the
//! endpoint's macvlan with it, but the fast path would go on steering the endpoint's frames
//! into sockets nobody is meant to read. Once per stats interval the daemon looks at the
//! namespace of each endpoint it serves (one `stat` each; the state file read once), detaches
//! the endpoints whose namespace is gone, logs each at warn and lists them in `stats`.
//!
//! Only a namespace that no longer exists counts: a namespace file that is there but not a
//! mount here (made in another mount namespace) is not proof the container went away.
use std::path::Path;

use super::server::Daemon;
use crate::control::State;
use crate::ipc::protocol::{Answer, Gone};

/// Most detached endpoints `stats` remembers (the oldest are forgotten first).
const REMEMBERED: usize = 64;

#[derive(Debug, Default)]
pub struct Watch {
    gone: Vec<Gone>,
}

impl Watch {
    /// Detach every served endpoint whose namespace (per the state under `data_root`) is gone.
    pub fn check(&mut self, daemon: &mut Daemon, data_root: &Path, uptime_s: u64) {
        let state = match State::load(data_root) {
            Ok(state) => state,
            Err(e) => {
                tracing::debug!("watch: reading the state: {e:#}");
                return;
            }
        };
        let served: Vec<(String, String)> = daemon
            .snapshots()
            .into_iter()
            .flat_map(|s| {
                let iface = s.interface;
                s.endpoints
                    .into_iter()
                    .map(move |e| (iface.clone(), e.name))
            })
            .collect();
        for (iface, name) in served {
            let Some(record) = state.endpoint(&name) else {
                continue;
            };
            let Some(reason) = namespace_gone(&record.netns) else {
                continue;
            };
            match daemon.detach(&name) {
                Ok(_) => {
                    tracing::warn!(
                        endpoint = %name,
                        iface = %iface,
                        netns = %record.netns,
                        "endpoint detached from the fast path: {reason}; remove its record with \
                         `xmacvlan endpoint rm {name}`"
                    );
                    if self.gone.len() == REMEMBERED {
                        self.gone.remove(0);
                    }
                    self.gone.push(Gone {
                        endpoint: name,
                        iface,
                        reason,
                        at_uptime_s: uptime_s,
                    });
                }
                Err(e) => tracing::warn!(endpoint = %name, "detaching a gone endpoint: {e:#}"),
            }
        }
    }

    /// Add the endpoints detached on the daemon's own initiative to a stats answer.
    pub fn annotate(&self, answer: Answer) -> Answer {
        match answer {
            Answer::Stats {
                demux,
                uptime_s,
                interfaces,
                ..
            } => Answer::Stats {
                demux,
                uptime_s,
                interfaces,
                detached: self.gone.clone(),
            },
            other => other,
        }
    }
}

/// Why the namespace `netns` (a name under /run/netns or a path) is gone, or None.
pub fn namespace_gone(netns: &str) -> Option<String> {
    let path = crate::netns::Netns::path_of(netns);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "its network namespace `{netns}` is gone ({} no longer exists)",
            path.display()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_absent_namespace_is_gone() {
        assert_eq!(namespace_gone("/proc/self/ns/net"), None);
        let reason = namespace_gone("xmv-no-such-netns-for-sure").unwrap();
        assert!(
            reason.contains("/run/netns/xmv-no-such-netns-for-sure no longer exists"),
            "{reason}"
        );
        // A plain file (a namespace mounted in another mount namespace looks like one).
        let file = std::env::temp_dir().join(format!("xmv-watch-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        assert_eq!(namespace_gone(file.to_str().unwrap()), None);
        std::fs::remove_file(&file).unwrap();
    }
}
