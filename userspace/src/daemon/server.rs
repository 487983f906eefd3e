//! The daemon's state: one dataplane per trunk interface, created when its first endpoint
//! attaches and stopped (XDP detached) when its last one leaves.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::config::DaemonConfig;
use crate::control::State;
use crate::dataplane::{ClaimPolicy, Dataplane, DataplaneConfig, EndpointSpec};
use crate::ether::Mac;
use crate::ipc::protocol::{Answer, Request};
use crate::memif::{PortEvent, PortServer, PortServerConfig};
use crate::modes::{Demux, DemuxMode};
use crate::telemetry::hgrm::{HgrmOptions, to_hgrm};
use crate::xdp::{PinDir, Release};

/// How the daemon builds each interface's dataplane (from daemon.json and flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `kernel`: no fast path (endpoints work through their macvlan devices).
    pub demux: DemuxMode,
    /// Every interface's dataplane starts from this (`demux-mode` and the other dataplane
    /// keys of `daemon.json`); its interface, queues and demux are filled in per interface.
    pub dataplane: DataplaneConfig,
    /// Where the endpoints' memif sockets go.
    pub port_dir: PathBuf,
    /// The secret every memif client must send (read from `port-secret-file` at start).
    pub port_secret: Option<[u8; crate::memif::wire::SECRET_SIZE]>,
    /// The control state (each endpoint's network namespace, for admitting its client).
    pub data_root: PathBuf,
    /// Detach XDP from every interface at exit (`--detach-on-exit`, for an uninstall); by
    /// default the classifier stays attached, pinned, for the next daemon to take over.
    pub detach_on_exit: bool,
    /// When endpoints' frames are claimed: the daemon runs with
    /// [`ClaimPolicy::WhileConnected`] (no client, no black hole); `Always` serves in-process
    /// tests of the dataplane path that count frames without a client.
    pub claim: ClaimPolicy,
}

impl Settings {
    pub fn from_config(cfg: &DaemonConfig) -> Self {
        Self {
            demux: cfg.demux_mode,
            dataplane: DataplaneConfig::from_daemon(cfg),
            port_dir: cfg.port_dir.clone(),
            port_secret: None,
            data_root: cfg.data_root.clone(),
            detach_on_exit: false,
            claim: ClaimPolicy::WhileConnected,
        }
    }
}

/// An endpoint's latency over the last stats interval: the total at the last tick, and the
/// difference between the last two totals.
struct Interval {
    total_at_tick: Histogram<u64>,
    last: Histogram<u64>,
    dropped_at_tick: u64,
    /// The endpoint's frame count read just before `total_at_tick` was copied.
    frames_at_tick: u64,
}

pub struct Daemon {
    settings: Settings,
    planes: BTreeMap<String, Dataplane>,
    intervals: HashMap<String, Interval>,
    started: Instant,
    /// The memif server, started with the first endpoint on the fast path.
    ports: Option<PortServer>,
}

impl Daemon {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            planes: BTreeMap::new(),
            intervals: HashMap::new(),
            started: Instant::now(),
            ports: None,
        }
    }

    pub fn handle(&mut self, request: Request) -> Result<Answer> {
        match request {
            Request::Ping => Ok(Answer::Pong {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                demux: self.settings.demux.to_string(),
                uptime_s: self.started.elapsed().as_secs_f64(),
            }),
            Request::Attach { iface, endpoint } => {
                let fast_path = self.attach(&iface, endpoint)?;
                Ok(Answer::Attached { iface, fast_path })
            }
            Request::Detach { endpoint } => Ok(Answer::Detached {
                attached: self.detach(&endpoint)?,
            }),
            Request::Stats => Ok(Answer::Stats {
                demux: self.settings.demux.to_string(),
                uptime_s: self.started.elapsed().as_secs_f64(),
                interfaces: self
                    .planes
                    .values()
                    .map(|p| p.snapshot())
                    .collect::<Result<_, _>>()?,
                detached: Vec::new(),
                leases: Vec::new(),
            }),
            Request::Histogram { endpoint, interval } => {
                let histogram = if interval {
                    self.plane_of(&endpoint)?;
                    match self.intervals.get(&endpoint) {
                        Some(i) => i.last.clone(),
                        None => crate::dataplane::latency_histogram(),
                    }
                } else {
                    self.plane_of(&endpoint)?.latency_histogram(&endpoint)?
                };
                Ok(Answer::Histogram {
                    hgrm: to_hgrm(&histogram, &HgrmOptions::NS_TO_US),
                    samples: histogram.len(),
                })
            }
        }
    }

    fn plane_of(&self, endpoint: &str) -> Result<&Dataplane> {
        self.planes
            .values()
            .find(|p| p.endpoints().iter().any(|e| e.name == endpoint))
            .with_context(|| format!("no endpoint named `{endpoint}` is attached to the fast path"))
    }

    /// Serve the endpoints recorded in the control state (at startup). Endpoints whose kernel
    /// objects drifted away are reported and skipped; one failing endpoint does not stop the
    /// others. Returns how many are served.
    pub fn restore(&mut self, state: &State) -> usize {
        let drifted: Vec<String> = match crate::control::drift::check(state) {
            Ok(found) => {
                for d in &found {
                    tracing::warn!(subject = %d.subject, "drift from the kernel: {}", d.problem);
                }
                found.into_iter().map(|d| d.subject).collect()
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                tracing::warn!("comparing the state with the kernel: {e:#}");
                Vec::new()
            }
        };
        let mut served = 0;
        for ep in &state.endpoints {
            if drifted.contains(&format!("endpoint {}", ep.name)) {
                continue;
            }
            let Some(net) = state.network(&ep.network) else {
                tracing::error!(endpoint = %ep.name, network = %ep.network, "endpoint of an unknown network: skipped");
                continue;
            };
            match self.attach(&net.link, ep.spec()) {
                Ok(_) => served += 1,
                Err(e) => {
                    tracing::error!(endpoint = %ep.name, "not served by the fast path: {e:#}")
                }
            }
        }
        served
    }

    /// Returns whether the endpoint is on the fast path (false in `kernel` demux mode).
    /// Attaching the same endpoint again to the same interface is a no-op (idempotent).
    pub fn attach(&mut self, iface: &str, endpoint: EndpointSpec) -> Result<bool> {
        let demux = self.settings.demux;
        if demux == DemuxMode::Kernel {
            tracing::info!(iface, endpoint = %endpoint.name, "demux-mode kernel: endpoint left to its macvlan device");
            return Ok(false);
        }
        for (name, plane) in &self.planes {
            if let Some(existing) = plane
                .endpoints()
                .into_iter()
                .find(|e| e.name == endpoint.name)
            {
                if name == iface && existing == endpoint {
                    return Ok(true);
                }
                bail!(
                    "endpoint `{}` is already attached on {name} with VLAN {} MAC {}",
                    endpoint.name,
                    existing.vid,
                    Mac(existing.mac)
                );
            }
        }
        let netns = self.netns_of(&endpoint.name)?;
        if self.ports.is_none() {
            let mut cfg = PortServerConfig::new(&self.settings.port_dir);
            cfg.secret = self.settings.port_secret;
            self.ports = Some(PortServer::start(cfg)?);
        }
        // With WhileConnected the endpoint's frames go to its kernel device until a client
        // connects its port.
        match self.planes.get_mut(iface) {
            Some(plane) => plane.add_endpoint_with(endpoint.clone(), self.settings.claim)?,
            None => {
                let cfg = self.config_for(iface, demux.fast_path().expect("not kernel"))?;
                let mut plane = super::lifecycle::start_plane(&cfg)?;
                for w in &plane.warnings {
                    tracing::warn!(iface, "{w}");
                }
                if let Err(e) = plane.add_endpoint_with(endpoint.clone(), self.settings.claim) {
                    plane.stop().ok();
                    return Err(e.into());
                }
                tracing::info!(
                    iface,
                    demux = ?demux,
                    xdp = ?plane.attached,
                    bind = ?plane.bound,
                    queues = cfg.queues,
                    "dataplane started"
                );
                self.planes.insert(iface.to_string(), plane);
            }
        }
        let ports = self.ports.as_ref().expect("started above");
        let socket = match ports.serve(&endpoint.name, &netns) {
            Ok(path) => path,
            Err(e) => {
                self.detach(&endpoint.name).ok();
                return Err(anyhow::Error::from(e)
                    .context(format!("endpoint {}: its memif port", endpoint.name)));
            }
        };
        tracing::info!(iface, endpoint = %endpoint.name, vid = endpoint.vid,
            mac = %Mac(endpoint.mac), socket = %socket.display(),
            "endpoint attached: its kernel device has its traffic until a memif client connects");
        Ok(true)
    }

    /// The path of `endpoint`'s network namespace, from the control state.
    fn netns_of(&self, endpoint: &str) -> Result<PathBuf> {
        let state = State::load(&self.settings.data_root)?;
        let ep = state
            .endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .with_context(|| {
                format!(
                    "endpoint `{endpoint}` is not in the control state under {}: create it with \
                 `xmacvlan endpoint create` (the daemon admits its memif client by its network \
                 namespace)",
                    self.settings.data_root.display()
                )
            })?;
        Ok(crate::netns::Netns::open(&ep.netns)?.path())
    }

    /// Hand connected ports to their dataplanes and take gone ones back (every loop).
    /// Readable when the port server has events for [`Daemon::pump_ports`].
    pub fn port_events_fd(&self) -> Option<std::os::fd::RawFd> {
        self.ports.as_ref().map(PortServer::events_fd)
    }

    pub fn pump_ports(&mut self) {
        let Some(ports) = &self.ports else { return };
        for event in ports.events() {
            match event {
                PortEvent::Connected {
                    endpoint,
                    port,
                    info,
                } => {
                    let plane = self
                        .planes
                        .values_mut()
                        .find(|p| p.endpoints().iter().any(|e| e.name == endpoint));
                    let result = match plane {
                        Some(plane) => plane
                            .connect_port(&endpoint, port, info)
                            .map_err(anyhow::Error::from),
                        None => Err(anyhow::anyhow!("the endpoint is not on the fast path")),
                    };
                    match result {
                        Ok(()) => {
                            tracing::info!(endpoint = %endpoint, "port connected: the endpoint's frames go to its client once it offers receive buffers")
                        }
                        Err(e) => ports.drop_client(&endpoint, &format!("{e:#}")),
                    }
                }
                PortEvent::Disconnected { endpoint, reason } => {
                    for plane in self.planes.values_mut() {
                        if plane.port(&endpoint).is_some() {
                            match plane.disconnect_port(&endpoint) {
                                Ok(last) => {
                                    tracing::info!(endpoint = %endpoint, rx = last.rx_frames, tx = last.tx_frames, port_ring_full = last.drop_ring_full,
                                    "port disconnected ({reason}): the endpoint's frames go to its kernel device again")
                                }
                                Err(e) => {
                                    tracing::warn!(endpoint = %endpoint, "disconnecting its port: {e:#}")
                                }
                            }
                        }
                    }
                }
            }
        }
        for plane in self.planes.values_mut() {
            for (endpoint, result) in plane.reap_disconnected() {
                match result {
                    Ok(last) => {
                        tracing::info!(endpoint = %endpoint, rx = last.rx_frames, tx = last.tx_frames, port_ring_full = last.drop_ring_full,
                        "port gone: the endpoint's frames go to its kernel device again")
                    }
                    Err(e) => tracing::warn!(endpoint = %endpoint, "reaping its port: {e:#}"),
                }
            }
        }
    }

    /// The served ports (socket, client), for `stats`.
    pub fn port_status(&self) -> Vec<crate::memif::PortStatus> {
        self.ports.as_ref().map(|p| p.status()).unwrap_or_default()
    }

    /// Returns whether the endpoint was attached.
    pub fn detach(&mut self, endpoint: &str) -> Result<bool> {
        let Some(iface) = self
            .planes
            .iter()
            .find(|(_, p)| p.endpoints().iter().any(|e| e.name == endpoint))
            .map(|(i, _)| i.clone())
        else {
            return Ok(false);
        };
        if let Some(ports) = &self.ports {
            ports.unserve(endpoint);
        }
        let plane = self.planes.get_mut(&iface).expect("found above");
        let result = plane.remove_endpoint(endpoint)?;
        self.intervals.remove(endpoint);
        tracing::info!(
            iface,
            endpoint,
            frames = result.frames,
            dropped = result.dropped,
            "endpoint detached"
        );
        if plane.endpoints().is_empty() {
            let mut plane = self.planes.remove(&iface).expect("present");
            plane.classifier_mut().set_release(Release::Detach);
            plane.stop()?;
            tracing::info!(iface, "last endpoint gone: dataplane stopped, XDP detached");
        }
        Ok(true)
    }

    /// The dataplane for `iface`.
    fn config_for(&self, iface: &str, demux: Demux) -> Result<DataplaneConfig> {
        let nl = crate::netlink::Netlink::new()?;
        let link = nl.require_link(iface)?;
        Ok(DataplaneConfig {
            ifname: iface.to_string(),
            queues: link.active_rx_queues(),
            demux,
            ..self.settings.dataplane.clone()
        })
    }

    /// Once per stats interval: close the interval histograms, log the totals at debug and
    /// warn about endpoints that dropped frames in the interval.
    pub fn tick(&mut self) {
        for plane in self.planes.values() {
            let snapshot = match plane.snapshot() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(iface = %plane.config().ifname, "reading counters: {e:#}");
                    continue;
                }
            };
            tracing::debug!(target: "xmacvlan::stats", "{}", crate::telemetry::live::summary_line(&snapshot));
            for ep in &snapshot.endpoints {
                let entry = self
                    .intervals
                    .entry(ep.name.clone())
                    .or_insert_with(|| Interval {
                        total_at_tick: crate::dataplane::latency_histogram(),
                        last: crate::dataplane::latency_histogram(),
                        dropped_at_tick: 0,
                        frames_at_tick: 0,
                    });
                let dropped = ep.dropped();
                if dropped > entry.dropped_at_tick {
                    tracing::warn!(
                        endpoint = %ep.name,
                        dropped = dropped - entry.dropped_at_tick,
                        ring_full = ep.dropped_ring_full,
                        socket_rx_ring_full = ep.socket.rx_ring_full,
                        socket_dropped = ep.socket.rx_dropped,
                        "endpoint dropped frames in the last interval (its consumer is not keeping up)"
                    );
                }
                entry.dropped_at_tick = dropped;
                if ep.frames == entry.frames_at_tick {
                    // No batch finished since the last copy (its counts are published with
                    // the batch): the total is unchanged. Idle, the consumer is not woken.
                    entry.last.reset();
                    continue;
                }
                let Ok(total) = plane.latency_histogram(&ep.name) else {
                    continue;
                };
                let mut last = total.clone();
                // The total only grows, so the previous total is a sub-histogram of it.
                if last.subtract(&entry.total_at_tick).is_err() {
                    last.reset();
                }
                entry.total_at_tick = total;
                entry.last = last;
                // Read before the copy: a batch finished in between is in the copy and makes
                // the next tick's count differ, so it is never missed.
                entry.frames_at_tick = ep.frames;
            }
        }
    }

    /// The endpoint's latency over the last stats interval.
    pub fn interval_histogram(&self, endpoint: &str) -> Option<Histogram<u64>> {
        self.intervals.get(endpoint).map(|i| i.last.clone())
    }

    /// Log what the classifiers reported from the kernel (malformed frames, failed
    /// redirects) at debug level; the kernel side already rate-limits them.
    pub fn log_kernel_events(&mut self) {
        for (iface, plane) in &mut self.planes {
            plane.drain_kernel_events(|ev| {
                tracing::debug!(
                    target: "xmacvlan::kernel",
                    iface = %iface,
                    kind = ?ev.kind(),
                    len = ev.len,
                    queue = ev.queue,
                    vid = ev.vid,
                    mac = %Mac(ev.mac),
                    suppressed = ev.suppressed,
                    "{}",
                    match ev.kind() {
                        crate::abi::EventKind::Malformed =>
                            "malformed frame: shorter than its Ethernet/802.1Q header; passed to the kernel",
                        crate::abi::EventKind::RedirectFailed =>
                            "an endpoint's frame found no AF_XDP socket for its queue; passed to the kernel",
                        crate::abi::EventKind::TooBig =>
                            "an endpoint's frame is longer than its AF_XDP socket takes whole (UMEM chunk); passed to the kernel",
                        crate::abi::EventKind::Other(_) => "unknown kernel event",
                    }
                );
            });
        }
    }

    /// Every interface's snapshot (for the metrics endpoint); unreadable ones are skipped.
    pub fn snapshots(&self) -> Vec<crate::dataplane::Snapshot> {
        self.planes
            .values()
            .filter_map(|p| p.snapshot().ok())
            .collect()
    }

    /// Stop every dataplane. Every endpoint goes back to its kernel device first, so no frame
    /// waits for a daemon that is gone; the frames already claimed reach the ports, which are
    /// closed last. The classifiers stay attached for the next daemon unless `detach_on_exit`.
    pub fn shutdown(&mut self) -> Result<()> {
        let mut first_error = None;
        for (iface, plane) in &mut self.planes {
            match plane.release_claims() {
                Ok(n) => tracing::info!(
                    iface,
                    endpoints = n,
                    "endpoints released to their kernel devices"
                ),
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    tracing::error!(iface, "releasing the endpoints' claims: {e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        for plane in self.planes.values() {
            super::lifecycle::wait_drained(plane);
        }
        for (iface, mut plane) in std::mem::take(&mut self.planes) {
            let release = match self.settings.detach_on_exit {
                true => Release::Detach,
                false => Release::Keep,
            };
            plane.classifier_mut().set_release(release);
            let pins = plane.classifier_mut().pins().cloned();
            let stopped = plane.stop();
            if let Ok(finished) = &stopped {
                for e in &finished.endpoints {
                    let port = e.port.as_ref();
                    tracing::info!(
                        iface,
                        endpoint = %e.spec.name,
                        frames = e.frames,
                        dropped = e.dropped,
                        rx = port.map_or(0, |p| p.rx_frames),
                        port_ring_full = port.map_or(0, |p| p.drop_ring_full),
                        "endpoint stopped"
                    );
                }
            }
            match stopped {
                Ok(_) if release == Release::Detach => {
                    tracing::info!(iface, "dataplane stopped, XDP detached")
                }
                Ok(_) => tracing::info!(
                    iface,
                    pins = %pins.map(|p| p.path().display().to_string()).unwrap_or_default(),
                    "dataplane stopped; XDP stays attached for the next daemon (`xmacvlan down {iface}` removes it)"
                ),
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    tracing::error!(iface, "stopping the dataplane: {e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        // Clients are told last: the frames claimed before the release are in their rings.
        drop(self.ports.take());
        first_error.map_or(Ok(()), Err)
    }

    /// Detach the classifiers a previous daemon left pinned on interfaces this one does not
    /// serve (their endpoints are gone), unless a live xmacvlan process still holds them.
    pub fn release_unserved(&mut self) {
        for (iface, pins) in PinDir::all(&crate::xdp::bpffs::bpffs_root()) {
            if self.planes.contains_key(&iface) {
                continue;
            }
            let id = crate::xdp::pinned_program_id(&pins);
            if let Some(pid) = id.and_then(|id| {
                crate::ipc::alive::holders_of_bpf_program(id)
                    .first()
                    .copied()
            }) {
                tracing::debug!(
                    iface,
                    pid,
                    "pinned classifier held by another xmacvlan process: left alone"
                );
                continue;
            }
            match crate::xdp::release_pinned(&pins) {
                Ok(_) => {
                    tracing::info!(iface, program = ?id, "no endpoint here any more: the classifier a previous daemon left is detached")
                }
                Err(e) => tracing::warn!(iface, "removing a previous daemon's classifier: {e}"),
            }
        }
    }
}
