//! Opt-in Prometheus metrics (`metrics-addr`): the text exposition format over HTTP on a
//! loopback address or a Unix socket. The daemon renders the page once per stats interval;
//! a thread of its own serves it, so a slow scraper never stalls the daemon.
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::config::MetricsAddr;
use crate::counters::{Counts, Field, Kind};
use crate::dataplane::{EndpointSnapshot, Snapshot};

/// How long a scraper may take to send its request or read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The page the server thread hands out, replaced each stats interval.
pub struct Metrics {
    page: Arc<Mutex<String>>,
    unix_path: Option<PathBuf>,
}

impl Metrics {
    /// Bind `addr` and start serving (an empty page until the first [`Metrics::publish`]).
    pub fn serve(addr: &MetricsAddr) -> Result<Self> {
        let page = Arc::new(Mutex::new(String::new()));
        let shared = page.clone();
        let unix_path = match addr {
            MetricsAddr::Tcp(a) => {
                let listener = TcpListener::bind(a)
                    .with_context(|| format!("binding the metrics address {a} (metrics-addr)"))?;
                spawn(move || {
                    listener
                        .incoming()
                        .flatten()
                        .for_each(|s| answer(s, &shared))
                })?;
                None
            }
            MetricsAddr::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                std::fs::remove_file(path).ok();
                let listener = UnixListener::bind(path).with_context(|| {
                    format!(
                        "binding the metrics socket {} (metrics-addr)",
                        path.display()
                    )
                })?;
                spawn(move || {
                    listener
                        .incoming()
                        .flatten()
                        .for_each(|s| answer(s, &shared))
                })?;
                Some(path.clone())
            }
        };
        Ok(Self { page, unix_path })
    }

    pub fn publish(&self, page: String) {
        if let Ok(mut current) = self.page.lock() {
            *current = page;
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            std::fs::remove_file(path).ok();
        }
    }
}

fn spawn(serve: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("xmv-metrics".into())
        .spawn(serve)
        .context("starting the metrics thread")?;
    Ok(())
}

/// A scraper's connection.
trait Scrape: Read + Write {
    fn limit_time(&self, timeout: Duration);
}

impl Scrape for std::net::TcpStream {
    fn limit_time(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).ok();
        self.set_write_timeout(Some(timeout)).ok();
    }
}

impl Scrape for std::os::unix::net::UnixStream {
    fn limit_time(&self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).ok();
        self.set_write_timeout(Some(timeout)).ok();
    }
}

/// Read the request head (whatever it asks, the answer is the page) and answer HTTP/1.0.
fn answer(mut stream: impl Scrape, page: &Mutex<String>) {
    stream.limit_time(SCRAPE_TIMEOUT);
    let mut head = [0u8; 4096];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        if head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let body = page.lock().map(|p| p.clone()).unwrap_or_default();
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ).ok();
}

/// The exposition text of the interfaces' counters; `latency(endpoint)` gives the last
/// interval's histogram for the latency quantiles. Every counter set is written from its one
/// declaration (`crate::counters`): a counter added there appears here.
pub fn render(interfaces: &[Snapshot], latency: &dyn Fn(&str) -> Option<Histogram<u64>>) -> String {
    let mut page = Page::default();
    for s in interfaces {
        let iface = format!("interface=\"{}\"", s.interface);
        page.counts(&s.xdp, &iface);
        for (i, q) in s.queues.iter().enumerate() {
            let labels = format!("{iface},queue=\"{i}\"");
            page.counts(&q.counts, &labels);
            page.counts(&q.socket, &labels);
        }
        for e in &s.endpoints {
            let labels = endpoint_labels(s, e);
            page.counts(&e.counts, &labels);
            page.counts(&e.socket, &labels);
        }
    }
    port_families(&mut page, interfaces);
    let name = "xmacvlan_endpoint_latency_seconds";
    page.family(
        name,
        "gauge",
        "Generator-to-consumer latency over the last stats interval (frames carrying a timestamp).",
    );
    for s in interfaces {
        for e in &s.endpoints {
            let Some(h) = latency(&e.name).filter(|h| !h.is_empty()) else {
                continue;
            };
            for q in [0.5, 0.99, 0.999] {
                let seconds = h.value_at_quantile(q) as f64 / 1e9;
                page.sample(
                    name,
                    &format!("{},quantile=\"{q}\"", endpoint_labels(s, e)),
                    seconds,
                );
            }
        }
    }
    page.finish()
}

/// Per connected application port: who, and its frames, bytes and drops.
fn port_families(page: &mut Page, interfaces: &[Snapshot]) {
    let ports = || {
        interfaces.iter().flat_map(|s| {
            s.endpoints
                .iter()
                .filter_map(move |e| e.port.as_ref().map(|p| (s, e, p)))
        })
    };
    let name = "xmacvlan_port_connected";
    page.family(
        name,
        "gauge",
        "1 while the endpoint's application port is connected (0: gone, not yet reaped).",
    );
    for (s, e, p) in ports() {
        let labels = format!(
            "{},client=\"{}\",pid=\"{}\"",
            endpoint_labels(s, e),
            label_value(&p.client),
            p.pid
        );
        page.sample(name, &labels, u8::from(p.connected));
    }
    let name = "xmacvlan_port_connected_since_seconds";
    page.family(name, "gauge", "When the port connected (Unix time).");
    for (s, e, p) in ports() {
        page.sample(name, &endpoint_labels(s, e), p.connected_since);
    }
    for (s, e, p) in ports() {
        page.counts(&p.counts, &endpoint_labels(s, e));
    }
}

/// A label value in the exposition format: backslash, double quote and newline escaped (the
/// client name comes from the application).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn endpoint_labels(s: &Snapshot, e: &EndpointSnapshot) -> String {
    format!(
        "interface=\"{}\",endpoint=\"{}\",vlan=\"{}\"",
        s.interface, e.name, e.vid
    )
}

/// The page being written: families in the order first seen, each with its samples, so a
/// family's samples stay together under one HELP and TYPE whichever interface they are of.
#[derive(Default)]
struct Page {
    families: Vec<Family>,
}

struct Family {
    name: String,
    kind: &'static str,
    help: String,
    samples: Vec<String>,
}

impl Page {
    fn family(&mut self, name: &str, kind: &'static str, help: &str) -> &mut Family {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    kind,
                    help: help.to_string(),
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[at]
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let family = self.family(name, "counter", "");
        family.samples.push(format!("{name}{{{labels}}} {value}"));
    }

    /// Every counter of a set, each a sample of its family (see [`Field::metric`]).
    fn counts<C: Counts>(&mut self, counts: &C, labels: &str) {
        for (field, value) in counts.fields() {
            let (name, label) = field.metric(C::SET);
            let help = family_help::<C>(field);
            self.family(&name, "counter", &help);
            let labels = match label {
                Some((key, v)) => format!("{labels},{key}=\"{v}\""),
                None => labels.to_string(),
            };
            self.sample(&name, &labels, value);
        }
    }

    fn finish(self) -> String {
        let mut text = String::new();
        for f in self.families {
            writeln!(
                text,
                "# HELP {} {}\n# TYPE {} {}",
                f.name, f.help, f.name, f.kind
            )
            .ok();
            for s in f.samples {
                text.push_str(&s);
                text.push('\n');
            }
        }
        text
    }
}

/// The HELP of the family `field` of set `C` is a sample of: the field's own meaning when it
/// is alone in its family, else what the family counts and the label that tells its members
/// apart.
fn family_help<C: Counts>(field: &Field) -> String {
    let (family, label) = field.metric(C::SET);
    let members: Vec<&Field> = C::FIELDS
        .iter()
        .filter(|f| f.metric(C::SET).0 == family)
        .collect();
    let (Some((key, _)), [_, _, ..]) = (label, members.as_slice()) else {
        return field.help.to_string();
    };
    let of = match C::SET {
        "xdp" => "the XDP classifier",
        "xsk" => "the AF_XDP socket (the kernel's XDP_STATISTICS)",
        set => set,
    };
    let values: Vec<&str> = members
        .iter()
        .filter_map(|f| f.metric(C::SET).1.map(|(_, v)| v))
        .collect();
    let what = match field.kind {
        Kind::Bytes => "Bytes",
        Kind::Dropped => "Frames dropped",
        _ => "Frames",
    };
    format!("{what} at the {of}, by {key}: {}.", values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_once_with_labelled_samples() {
        let mut snap: Snapshot = serde_json::from_value(serde_json::json!({
            "interface": "v0", "demux": "xdp", "xdp_mode": "native", "bind": "copy",
            "xdp": {"seen": 10, "tagged": 0, "hit": 9, "redirected": 9, "pass_no_socket": 0,
                    "pass_miss": 1, "pass_bcast_mcast": 0, "pass_qinq": 0, "malformed": 0,
                    "pass_control": 0},
            "queues": [], "endpoints": []
        }))
        .unwrap();
        snap.endpoints.push(EndpointSnapshot {
            name: "c0".into(),
            vid: 100,
            mac: "02:42:c6:12:00:02".into(),
            counts: crate::dataplane::EndpointCounts {
                frames: 9,
                bytes: 576,
                dropped_ring_full: 2,
                ..Default::default()
            },
            socket: Default::default(),
            tx_queue: 0,
            claim: Default::default(),
            port: None,
        });
        let mut h = crate::dataplane::latency_histogram();
        h.record(1500).unwrap();
        let text = render(&[snap], &|_| Some(h.clone()));
        assert_eq!(
            text.matches("# TYPE xmacvlan_endpoint_frames_total counter")
                .count(),
            1
        );
        assert!(
            text.contains("xmacvlan_xdp_frames_total{interface=\"v0\",verdict=\"redirected\"} 9\n")
        );
        assert!(text.contains(
            "xmacvlan_endpoint_frames_total{interface=\"v0\",endpoint=\"c0\",vlan=\"100\"} 9\n"
        ));
        assert!(text.contains(
            "xmacvlan_endpoint_dropped_total{interface=\"v0\",endpoint=\"c0\",vlan=\"100\",reason=\"ring_full\"} 2\n"
        ));
        assert!(text.contains("quantile=\"0.99\"} 0.0000015"), "{text}");
        // Every sample line is `name{labels} value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;
    use crate::dataplane::{ClaimPolicy, PortSnapshot};

    #[test]
    fn renders_ports_with_client_and_drop_reasons() {
        let mut snap: Snapshot = serde_json::from_value(serde_json::json!({
            "interface": "v0", "demux": "user", "xdp_mode": "native", "bind": "copy",
            "xdp": {"seen": 0, "tagged": 0, "hit": 0, "redirected": 0, "pass_no_socket": 0,
                    "pass_miss": 0, "pass_bcast_mcast": 0, "pass_qinq": 0, "malformed": 0,
                    "pass_control": 0, "pass_unclaimed": 4},
            "queues": [], "endpoints": [{
                "name": "c0", "vid": 100, "mac": "02:42:c6:12:00:02", "frames": 9,
                "bytes": 540, "misdelivered": 0, "untimed": 9, "dropped_ring_full": 0,
                "socket": {"rx_dropped": 0, "rx_invalid_descs": 0, "rx_ring_full": 0,
                           "rx_fill_ring_empty_descs": 0, "tx_invalid_descs": 0,
                           "tx_ring_empty_descs": 0}
            }]
        }))
        .unwrap();
        let e = &mut snap.endpoints[0];
        assert_eq!(
            e.claim,
            ClaimPolicy::Always,
            "older snapshots: claimed at once"
        );
        e.claim = ClaimPolicy::WhileConnected;
        e.port = Some(PortSnapshot {
            client: "testpmd \"a\"\n\\".into(),
            pid: 42,
            connected_since: 1_700_000_000,
            connected: true,
            claimed: true,
            counts: crate::dataplane::PortCounts {
                rx_frames: 7,
                rx_bytes: 420,
                tx_frames: 3,
                tx_bytes: 180,
                drop_ring_full: 2,
                drop_spoofed: 5,
                drop_bad_chain: 1,
                ..Default::default()
            },
        });
        let text = render(&[snap.clone()], &|_| None);
        let labels = "interface=\"v0\",endpoint=\"c0\",vlan=\"100\"";
        for line in [
            "xmacvlan_xdp_frames_total{interface=\"v0\",verdict=\"pass_unclaimed\"} 4".to_string(),
            format!(
                "xmacvlan_port_connected{{{labels},client=\"testpmd \\\"a\\\"\\n\\\\\",pid=\"42\"}} 1"
            ),
            format!("xmacvlan_port_frames_total{{{labels},direction=\"rx\"}} 7"),
            format!("xmacvlan_port_bytes_total{{{labels},direction=\"tx\"}} 180"),
            format!("xmacvlan_port_dropped_total{{{labels},reason=\"ring_full\"}} 2"),
            format!("xmacvlan_port_dropped_total{{{labels},reason=\"spoofed\"}} 5"),
            format!("xmacvlan_port_dropped_total{{{labels},reason=\"bad_chain\"}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
        let table = crate::telemetry::live::tables("user", 1.0, &[snap]);
        assert!(table.contains("PORT"), "{table}");
        assert!(table.contains("(pid 42)"), "{table}");
        assert!(
            table.contains("RX-TOO-BIG") && table.contains("BAD-CHAIN"),
            "{table}"
        );
    }
}
