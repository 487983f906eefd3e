//! The daemon keeps every DHCP lease recorded in the state (endpoints of `dhcp` networks,
//! whoever created them) for as long as its endpoint lives: at T1 it asks the granting server
//! to extend it, from T2 any server, each try on the endpoint's link as the record names it
//! then (a Docker link moves into its sandbox after it was leased). The schedule is the
//! lease's, in wall-clock time, so a daemon started later renews what the last one left.
//!
//! A lease that is refused (DHCPNAK), expires unanswered, or comes back for another address
//! is lost: that is logged, listed in `stats`, and the daemon keeps asking for the same
//! address; it never gives the endpoint another one (its container would not know).
//! Nothing is released when the daemon stops: the leases belong to the endpoints.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::control::lease::{link, segment};
use crate::control::state::Store;
use crate::control::{Endpoint, State, unix_now};
use crate::dhcp::{self, DhcpError, Extended, Lease, Phase};
use crate::ipc::protocol::LeaseNote;

/// How long one renewal waits for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// The longest the keeper sleeps before reading the state again (new endpoints).
const MAX_SLEEP: Duration = Duration::from_secs(2);
/// Bounds on the wait between tries that got no answer (RFC 2131 4.4.5: half the time left,
/// at least 60 s; short test leases need a shorter floor).
const MIN_RETRY: u64 = 2;
const MAX_RETRY: u64 = 60;
/// Exchanges run at once (each may wait [`ANSWER_WAIT`] for a dead server).
const PARALLEL: usize = 16;
/// Most lease problems `stats` remembers.
const REMEMBERED: usize = 64;

/// The keeper's thread; dropping it stops the thread.
pub struct LeaseKeeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    notes: Arc<Mutex<Vec<LeaseNote>>>,
}

impl LeaseKeeper {
    pub fn start(data_root: PathBuf) -> Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let notes = notes.clone();
            std::thread::Builder::new()
                .name("dhcp-leases".into())
                .spawn(move || Keeper::new(data_root, notes).run(&stopped))
                .context("starting the DHCP lease thread")?
        };
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            notes,
        })
    }

    /// The leases the daemon could not keep, for `stats`.
    pub fn notes(&self) -> Vec<LeaseNote> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

struct Keeper {
    data_root: PathBuf,
    started: Instant,
    notes: Arc<Mutex<Vec<LeaseNote>>>,
    /// Per endpoint: no try before this (Unix seconds), after one that got no answer.
    next_try: HashMap<String, u64>,
    /// The state as last read, and the state file's modification time then: the file is
    /// read again only once it changed (a daemon with no leases opens nothing).
    state: Option<(SystemTime, State)>,
}

/// What one try came to.
enum Outcome {
    Extended(Lease),
    NoAnswer,
    Lost(String),
}

impl Keeper {
    fn new(data_root: PathBuf, notes: Arc<Mutex<Vec<LeaseNote>>>) -> Self {
        Self {
            data_root,
            started: Instant::now(),
            notes,
            next_try: HashMap::new(),
            state: None,
        }
    }

    /// The state, read again only if its file changed since the last read.
    fn state(&mut self) -> Result<State> {
        let modified = std::fs::metadata(self.data_root.join(crate::control::state::STATE_FILE))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match &self.state {
            Some((at, state)) if *at == modified => Ok(state.clone()),
            _ => {
                let state = State::load(&self.data_root)?;
                self.state = Some((modified, state.clone()));
                Ok(state)
            }
        }
    }

    fn run(mut self, stopped: &mpsc::Receiver<()>) {
        loop {
            let sleep = match self.pass() {
                Ok(sleep) => sleep,
                Err(e) => {
                    tracing::warn!("DHCP leases: {e:#}");
                    MAX_SLEEP
                }
            };
            match stopped.recv_timeout(sleep) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// Try every lease that is due; how long to sleep until the next one is.
    fn pass(&mut self) -> Result<Duration> {
        let state = self.state()?;
        let now = unix_now();
        let leased: Vec<&Endpoint> = state
            .endpoints
            .iter()
            .filter(|e| e.lease.is_some())
            .collect();
        self.next_try
            .retain(|name, _| leased.iter().any(|e| &e.name == name));
        let mut due = Vec::new();
        let mut next = now + MAX_SLEEP.as_secs();
        for ep in leased {
            let lease = ep.lease.as_ref().expect("filtered");
            let at = self
                .next_try
                .get(&ep.name)
                .copied()
                .unwrap_or(0)
                .max(lease.renew_at());
            if at <= now {
                due.push(ep.clone());
            } else {
                next = next.min(at);
            }
        }
        for chunk in due.chunks(PARALLEL) {
            let outcomes: Vec<(Endpoint, Outcome)> = std::thread::scope(|s| {
                let tries: Vec<_> = chunk
                    .iter()
                    .map(|ep| {
                        let segment = state.network(&ep.network).map(segment).unwrap_or_default();
                        s.spawn(move || (ep.clone(), try_once(ep, segment, now)))
                    })
                    .collect();
                tries.into_iter().filter_map(|t| t.join().ok()).collect()
            });
            for (ep, outcome) in outcomes {
                self.settle(&ep, outcome, now)?;
            }
        }
        Ok(Duration::from_secs(next.saturating_sub(unix_now()))
            .clamp(Duration::from_millis(200), MAX_SLEEP))
    }

    fn settle(&mut self, ep: &Endpoint, outcome: Outcome, now: u64) -> Result<()> {
        let held = ep.lease.as_ref().expect("only leased endpoints are tried");
        match outcome {
            Outcome::Extended(lease) => {
                self.next_try.remove(&ep.name);
                if !self.record(ep, &lease)? {
                    return Ok(());
                }
                tracing::debug!(endpoint = %ep.name, address = %lease.address, renewals = lease.renewals, lease_s = lease.lease_s, "DHCP lease extended");
                let was_lost = self.forget(&ep.name);
                if was_lost {
                    tracing::warn!(endpoint = %ep.name, address = %lease.address, "DHCP lease held again");
                }
            }
            Outcome::NoAnswer => {
                let deadline = match held.phase(now) {
                    Phase::Renewing | Phase::Bound => held.rebind_at(),
                    Phase::Rebinding | Phase::Expired => held.expires_at(),
                };
                let wait = (deadline.saturating_sub(now) / 2).clamp(MIN_RETRY, MAX_RETRY);
                self.next_try.insert(ep.name.clone(), now + wait);
                if held.phase(now) == Phase::Expired {
                    self.lost(ep, "it expired with no DHCP server answering".into());
                }
            }
            Outcome::Lost(why) => {
                self.next_try.insert(ep.name.clone(), now + MAX_RETRY);
                self.lost(ep, why);
            }
        }
        Ok(())
    }

    /// Write the extended lease into the endpoint's record, if the endpoint still holds the
    /// same address (it may have been removed meanwhile: then the lease goes back at once).
    fn record(&self, ep: &Endpoint, lease: &Lease) -> Result<bool> {
        let (store, mut state) = Store::lock(&self.data_root)?;
        let Some(rec) = state.endpoints.iter_mut().find(|e| e.name == ep.name) else {
            drop(store);
            dhcp::release(&link(ep, String::new()), lease).ok();
            return Ok(false);
        };
        if rec.lease.as_ref().map(|l| l.address) != Some(lease.address) {
            return Ok(false);
        }
        rec.lease = Some(lease.clone());
        store.save(&state)?;
        Ok(true)
    }

    fn lost(&self, ep: &Endpoint, problem: String) {
        let address = ep
            .lease
            .as_ref()
            .map(|l| l.address.to_string())
            .unwrap_or_default();
        let Ok(mut notes) = self.notes.lock() else {
            return;
        };
        if notes
            .iter()
            .any(|n| n.endpoint == ep.name && n.problem == problem)
        {
            return;
        }
        tracing::warn!(
            endpoint = %ep.name,
            address,
            "DHCP lease lost: {problem}; the endpoint keeps its address and the daemon keeps \
             asking for it (remove and recreate the container for a new one)"
        );
        notes.retain(|n| n.endpoint != ep.name);
        if notes.len() == REMEMBERED {
            notes.remove(0);
        }
        notes.push(LeaseNote {
            endpoint: ep.name.clone(),
            address,
            problem,
            at_uptime_s: self.started.elapsed().as_secs(),
        });
    }

    /// Drop the endpoint's note; whether it had one.
    fn forget(&self, endpoint: &str) -> bool {
        let Ok(mut notes) = self.notes.lock() else {
            return false;
        };
        let before = notes.len();
        notes.retain(|n| n.endpoint != endpoint);
        notes.len() != before
    }
}

/// One try for a due lease: extend it (unicast before T2, broadcast after), or, once it is
/// lost or expired, ask for the same address again.
fn try_once(ep: &Endpoint, segment: String, now: u64) -> Outcome {
    let held = ep.lease.as_ref().expect("only leased endpoints are tried");
    let link = link(ep, segment);
    let phase = held.phase(now);
    let result = match phase {
        Phase::Bound | Phase::Renewing => dhcp::extend(&link, held, false, ANSWER_WAIT),
        Phase::Rebinding => dhcp::extend(&link, held, true, ANSWER_WAIT),
        Phase::Expired => match dhcp::acquire(&link, ANSWER_WAIT * 2, Some(held.address)) {
            Ok(lease) if lease.address == held.address => Ok(Extended::Lease(lease)),
            Ok(other) => {
                dhcp::release(&link, &other).ok();
                Err(DhcpError::AddressChanged {
                    server: other.server,
                    held: held.address,
                    offered: other.address,
                })
            }
            Err(DhcpError::NoServer { .. } | DhcpError::NoAck { .. }) => Ok(Extended::NoAnswer),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(Extended::Lease(lease)) => Outcome::Extended(lease),
        Ok(Extended::NoAnswer) => Outcome::NoAnswer,
        Err(
            e @ (DhcpError::Refused { .. }
            | DhcpError::AddressChanged { .. }
            | DhcpError::BadLease { .. }),
        ) => Outcome::Lost(e.to_string()),
        // The link is moving (Docker's Join) or the namespace is going: try again soon.
        Err(e) => {
            let e = anyhow::Error::from(e);
            tracing::debug!(endpoint = %ep.name, "DHCP renewal not tried: {e:#}");
            Outcome::NoAnswer
        }
    }
}
