//! Endpoints whose container went away while the daemon served them.
//!
//! `ip netns del`, or a container runtime removing a container's namespace, takes the
//! endpoint's macvlan with it, but the fast path would go on steering the endpoint's frames
//! into sockets nobody is meant to read. Once per stats interval the daemon looks at the
//! namespace of each endpoint it serves (one `stat` each; the state file read once), detaches
//! the endpoints whose namespace is gone, logs each at warn and lists them in `stats`.
//!
//! Only a namespace that no longer exists counts: a namespace file that is there but not a
//! mount here (made in another mount namespace) is not proof the container went away, and
//! neither is a sandbox that does not exist *yet*: Docker records the sandbox at Join and
//! makes it, then moves the link in, a moment later. While the endpoint's link (its MAC) is
//! still in the host's namespace, the endpoint is on its way in (or back), not gone.
//!
//! An endpoint the daemon serves again (the plugin re-attaches it once its link reached the
//! sandbox) leaves the list `stats` shows.
use std::path::Path;

use super::server::Daemon;
use crate::control::State;
use crate::control::model::{Network, Owner};
use crate::ipc::protocol::{Answer, Gone, LeaseNote};

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
                let e = anyhow::Error::from(e);
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
        let mut host_macs: Option<Vec<[u8; 6]>> = None;
        for (iface, name) in served {
            let Some(record) = state.endpoint(&name) else {
                continue;
            };
            let Some(reason) = namespace_gone(&record.netns) else {
                continue;
            };
            let host_macs = host_macs.get_or_insert_with(host_macvlans);
            if host_macs.contains(&record.mac) {
                tracing::debug!(endpoint = %name, netns = %record.netns, "namespace not there yet, the link still in the host's: moving, not gone");
                continue;
            }
            let owner = state
                .network(&record.network)
                .map_or(Owner::Cli, Network::owner);
            match daemon.detach(&name) {
                Ok(_) => {
                    tracing::warn!(
                        endpoint = %name,
                        iface = %iface,
                        netns = %record.netns,
                        "endpoint detached from the fast path: {reason}; {} removes its record",
                        owner.removal(&name)
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

    /// The daemon serves `endpoint` again: it is no longer one the daemon detached.
    pub fn served_again(&mut self, endpoint: &str) {
        self.gone.retain(|g| g.endpoint != endpoint);
    }

    /// Add to a stats answer the endpoints detached on the daemon's own initiative and the
    /// DHCP leases it could not keep.
    pub fn annotate(&self, answer: Answer, leases: Vec<LeaseNote>) -> Answer {
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
                leases,
            },
            other => other,
        }
    }
}

/// The MACs of the macvlans in the daemon's (the host's) namespace; none if unreadable.
fn host_macvlans() -> Vec<[u8; 6]> {
    crate::netlink::Netlink::new()
        .and_then(|nl| nl.links())
        .map(|links| {
            links
                .into_iter()
                .filter(|l| l.kind.as_deref() == Some("macvlan"))
                .map(|l| l.mac)
                .collect()
        })
        .unwrap_or_else(|e| {
            let e = anyhow::Error::from(e);
            tracing::debug!("watch: listing the host's links: {e:#}");
            Vec::new()
        })
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
    fn an_endpoint_served_again_leaves_the_list() {
        let gone = |endpoint: &str| Gone {
            endpoint: endpoint.into(),
            iface: "v0".into(),
            reason: "its network namespace `x` is gone".into(),
            at_uptime_s: 1,
        };
        let mut watch = Watch {
            gone: vec![gone("a"), gone("b")],
        };
        watch.served_again("a");
        let stats = Answer::Stats {
            demux: "xdp".into(),
            uptime_s: 2.0,
            interfaces: Vec::new(),
            detached: Vec::new(),
            leases: Vec::new(),
        };
        let Answer::Stats { detached, .. } = watch.annotate(stats, Vec::new()) else {
            unreachable!()
        };
        assert_eq!(detached, [gone("b")]);
    }

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
