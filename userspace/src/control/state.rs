//! The persisted networks and endpoints: `DATA_ROOT/state.json`.
//!
//! Writers hold an exclusive `flock` on `DATA_ROOT/state.lock` from reading the state to
//! writing it back (a separate file, because the state file itself is replaced on every
//! write). A write goes to a temporary file that is fsynced and renamed over the old one, so
//! readers need no lock: they see the old state or the new one, never half of one.
//! A state file that does not parse is an error and stays untouched for a human to look at.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StateError;
use super::model::{Endpoint, Network};

pub const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";
const VERSION: u32 = 1;

/// Everything xmacvlan has provisioned. Plain data: the dataplane reads its endpoints here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
}

impl State {
    /// Read the state under `data_root`; an absent state file is an empty state.
    pub fn load(data_root: &Path) -> Result<State, StateError> {
        let path = data_root.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: VERSION,
                    ..State::default()
                });
            }
            Err(source) => {
                return Err(StateError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        let state: State = match serde_json::from_slice(&bytes) {
            Ok(state) => state,
            Err(reason) => return Err(StateError::Corrupted { path, reason }),
        };
        if state.version != VERSION {
            return Err(StateError::Version {
                path,
                found: state.version,
                understood: VERSION,
            });
        }
        Ok(state)
    }

    /// A network by name, or by a unique prefix (12+ digits) of its id, as Docker accepts.
    pub fn network(&self, name_or_id: &str) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| n.name == name_or_id)
            .or_else(|| {
                let mut by_id = self
                    .networks
                    .iter()
                    .filter(|n| name_or_id.len() >= 12 && n.id.starts_with(name_or_id));
                match (by_id.next(), by_id.next()) {
                    (Some(n), None) => Some(n),
                    _ => None,
                }
            })
    }

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    pub fn endpoints_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Endpoint> {
        self.endpoints.iter().filter(move |e| e.network == network)
    }
}

/// The state, locked for writing until dropped.
pub struct Store {
    root: PathBuf,
    _lock: File,
}

impl Store {
    /// Take the exclusive lock (waiting for other writers) and read the current state.
    pub fn lock(data_root: &Path) -> Result<(Store, State), StateError> {
        std::fs::create_dir_all(data_root).map_err(|e| {
            let what = format!(
                "creating the data root {} (choose another with --data-root)",
                data_root.display()
            );
            StateError::io(what, data_root, e)
        })?;
        let lock_path = data_root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StateError::io(format!("opening {}", lock_path.display()), data_root, e)
            })?;
        lock.lock().map_err(|source| StateError::Io {
            what: format!("locking {}", lock_path.display()),
            source,
        })?;
        let state = State::load(data_root)?;
        Ok((
            Store {
                root: data_root.to_path_buf(),
                _lock: lock,
            },
            state,
        ))
    }

    /// Replace the state file atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.root.join(STATE_FILE);
        let tmp = self
            .root
            .join(format!("{STATE_FILE}.tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut file, state)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.root)?.sync_all()?;
            Ok(())
        };
        write().map_err(|source| {
            std::fs::remove_file(&tmp).ok();
            StateError::Io {
                what: format!("writing {}", path.display()),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::Mode;

    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xmv-state-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    fn network(name: &str) -> Network {
        Network {
            id: format!("{name:0>64}"),
            name: name.into(),
            driver: "macvlan".into(),
            parent: "v0".into(),
            link: "v0".into(),
            vlan: 0,
            created_parent: false,
            mode: Mode::Bridge,
            subnets: vec![],
            host_shim: None,
            dhcp: false,
            mtu: None,
            options: Default::default(),
            created: 0,
        }
    }

    #[test]
    fn missing_file_is_empty_and_save_load_round_trips() {
        let root = temp_root("rt");
        assert!(State::load(&root).unwrap().networks.is_empty());
        let (store, mut state) = Store::lock(&root).unwrap();
        state.networks.push(network("n1"));
        store.save(&state).unwrap();
        drop(store);
        assert_eq!(State::load(&root).unwrap(), state);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn corrupted_file_is_an_error_and_is_kept() {
        let root = temp_root("bad");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(STATE_FILE), "{\"version\": 1, \"netw").unwrap();
        let e = State::load(&root).unwrap_err();
        assert!(matches!(e, StateError::Corrupted { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("corrupted") && e.contains("left as it is"),
            "{e}"
        );
        assert!(Store::lock(&root).is_err());
        assert_eq!(
            std::fs::read_to_string(root.join(STATE_FILE)).unwrap(),
            "{\"version\": 1, \"netw"
        );
        std::fs::write(
            root.join(STATE_FILE),
            r#"{"version": 9, "networks": [], "endpoints": []}"#,
        )
        .unwrap();
        assert!(
            State::load(&root)
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn lock_serializes_writers() {
        // Each thread opens the lock file itself (its own open file description), as separate
        // processes would; the read-modify-write of a counter must lose no update.
        let root = temp_root("lock");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let (store, mut state) = Store::lock(&root).unwrap();
                    state.networks.push(network(&format!("n{i}")));
                    store.save(&state).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(State::load(&root).unwrap().networks.len(), 8);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn network_lookup_by_name_or_id_prefix() {
        let mut state = State::default();
        let mut a = network("a");
        a.id = "abcdef0123456789".repeat(4);
        state.networks.push(a);
        assert!(state.network("a").is_some());
        assert!(state.network("abcdef012345").is_some());
        assert!(state.network("abcdef").is_none(), "too short a prefix");
        assert!(state.network("zzz").is_none());
    }
}
