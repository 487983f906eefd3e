//! The run report: per-endpoint table, XDP counters and totals, as text and as JSON.
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::abi::Counters;
use crate::dataplane::{EndpointResult, Finished, QueueSnapshot, SocketStats};
use crate::ether::Mac;

/// `1 endpoint`, `2 endpoints`: a count with its noun, for every message that counts.
pub fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointRow {
    pub name: String,
    pub vid: u16,
    pub mac: String,
    pub frames: u64,
    pub bytes: u64,
    pub mpps: f64,
    pub dropped: u64,
    pub misdelivered: u64,
    /// Frames without xmacvlan's timestamp payload: counted, not timed.
    pub untimed: u64,
    /// Frames the generator sent to this endpoint, when known (the lab).
    pub expected: Option<u64>,
    /// Latency of the timed frames; `null` when none was timed (not a latency of 0).
    pub latency_ns: Option<Percentiles>,
    pub socket: SocketStats,
    /// The application on the endpoint's memif port, when the run had one (the lab).
    pub app: Option<AppRow>,
}

/// One endpoint's application and its port, as the lab saw them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppRow {
    /// Frames the dataplane copied into the application's ring.
    pub port_rx: u64,
    /// Frames the dataplane had for the port but could not give it (ring full, disconnected).
    pub port_rx_dropped: u64,
    /// Frames the application sent that left the NIC.
    pub port_tx: u64,
    /// Frames the application sent that the dataplane refused (spoofed, too big, no frame…).
    pub port_tx_dropped: u64,
    /// Frames the application itself counted.
    pub received: u64,
    /// Frames whose destination or tag was wrong for the endpoint, as the sink checked:
    /// must be 0.
    pub misdelivered: u64,
    /// A reflector's frames that came back to the generator on the wire.
    pub returned: Option<u64>,
    /// One-way latency, generator to the sink's read; `null` for a reflector.
    pub latency_ns: Option<Percentiles>,
}

/// The applications' totals: which program, and the latency over all endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct AppTotals {
    pub program: String,
    /// Frames all applications counted.
    pub received: u64,
    /// `received` per second of traffic.
    pub received_pps: f64,
    /// Sinks: one-way latency over every endpoint (histograms merged).
    pub one_way_ns: Option<Percentiles>,
    /// Reflectors: frames back on the wire, and generator-to-generator latency.
    pub returned: Option<u64>,
    pub round_trip_ns: Option<Percentiles>,
    /// Frames back on the wire from a source that is not their endpoint: must be 0.
    pub wrong_source: u64,
}

/// What the generator sent, by kind of frame.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SentTotals {
    pub total: u64,
    pub to_endpoints: u64,
    pub broadcast: u64,
    pub unknown_unicast: u64,
    pub other: u64,
    pub duration_s: f64,
    pub pps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub interface: String,
    pub demux: String,
    pub xdp_mode: String,
    pub bind: String,
    pub duration_s: f64,
    pub endpoints: Vec<EndpointRow>,
    pub xdp: Counters,
    pub queues: Vec<QueueSnapshot>,
    pub sent: Option<SentTotals>,
    /// The applications on the ports, when the run had them.
    pub apps: Option<AppTotals>,
    /// One-line notes, e.g. kernel objects that could not be created.
    pub notes: Vec<String>,
}

impl Report {
    pub fn endpoint_rows(finished: &Finished, duration_s: f64) -> Vec<EndpointRow> {
        finished
            .endpoints
            .iter()
            .map(|e: &EndpointResult| EndpointRow {
                name: e.spec.name.clone(),
                vid: e.spec.vid,
                mac: Mac(e.spec.mac).to_string(),
                frames: e.frames,
                bytes: e.bytes,
                mpps: if duration_s > 0.0 {
                    e.frames as f64 / duration_s / 1e6
                } else {
                    0.0
                },
                dropped: e.dropped,
                misdelivered: e.misdelivered,
                untimed: e.untimed,
                expected: None,
                latency_ns: (!e.latency.is_empty()).then(|| Percentiles::of(&e.latency)),
                socket: e.socket_stats,
                app: None,
            })
            .collect()
    }

    /// The human-readable form (also what `cargo xtask run` prints).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        writeln!(
            out,
            "xmacvlan on {}: demux {}, XDP {}, AF_XDP {}, {:.2} s",
            self.interface, self.demux, self.xdp_mode, self.bind, self.duration_s
        )
        .ok();
        writeln!(
            out,
            "{:<10} {:>4} {:<17} {:>10} {:>10} {:>7} {:>7} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "ENDPOINT",
            "VLAN",
            "MAC",
            "FRAMES",
            "SENT",
            "MPPS",
            "DROPS",
            "MISDLV",
            "UNTIMED",
            "P50(us)",
            "P90",
            "P99",
            "P99.9",
            "MAX"
        ).ok();
        for e in &self.endpoints {
            // No timed frame: `-`, so an untimed endpoint never reads as 0 µs.
            let us = |pick: fn(&Percentiles) -> u64| {
                e.latency_ns.as_ref().map_or_else(
                    || "-".to_string(),
                    |p| format!("{:.1}", pick(p) as f64 / 1000.0),
                )
            };
            writeln!(
                out,
                "{:<10} {:>4} {:<17} {:>10} {:>10} {:>7.3} {:>7} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
                e.name,
                if e.vid == 0 {
                    "-".to_string()
                } else {
                    e.vid.to_string()
                },
                e.mac,
                e.frames,
                e.expected
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                e.mpps,
                e.dropped,
                e.misdelivered,
                e.untimed,
                us(|p| p.p50),
                us(|p| p.p90),
                us(|p| p.p99),
                us(|p| p.p999),
                us(|p| p.max),
            ).ok();
        }
        writeln!(out, "XDP: {}", crate::counters::line(&self.xdp)).ok();
        if self.xdp.pass_too_big > 0 {
            writeln!(
                out,
                "too-big: {} frames to endpoints were longer than their AF_XDP sockets take whole \
                 (a UMEM chunk less 256 bytes): passed to the kernel, not the endpoints",
                self.xdp.pass_too_big
            )
            .ok();
        }
        for (q, s) in self.queues.iter().enumerate() {
            writeln!(out, "{}", super::live::queue_line(q, s)).ok();
        }
        if let Some(s) = &self.sent {
            writeln!(
                out,
                "sent: {} frames in {:.2} s ({:.3} Mpps): {} to endpoints, {} broadcast, {} unknown unicast, {} other",
                s.total,
                s.duration_s,
                s.pps / 1e6,
                s.to_endpoints,
                s.broadcast,
                s.unknown_unicast,
                s.other
            ).ok();
        }
        if let Some(apps) = &self.apps {
            self.write_apps(&mut out, apps);
        }
        for note in &self.notes {
            writeln!(out, "note: {note}").ok();
        }
        out
    }

    /// The applications' table and totals.
    fn write_apps(&self, out: &mut String, apps: &AppTotals) {
        writeln!(
            out,
            "through memif ports to {} (one per endpoint, in its namespace):",
            apps.program
        )
        .ok();
        writeln!(
            out,
            "{:<10} {:>10} {:>9} {:>10} {:>6} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "ENDPOINT",
            "PORT-RX",
            "RX-DROPS",
            "APP-RX",
            "MISDLV",
            "PORT-TX",
            "TX-DROPS",
            "RETURNED",
            "P50(us)",
            "P99",
            "P99.9",
            "MAX"
        )
        .ok();
        for e in &self.endpoints {
            let Some(a) = &e.app else { continue };
            let us = |pick: fn(&Percentiles) -> u64| {
                a.latency_ns.as_ref().map_or_else(
                    || "-".to_string(),
                    |p| format!("{:.1}", pick(p) as f64 / 1e3),
                )
            };
            writeln!(
                out,
                "{:<10} {:>10} {:>9} {:>10} {:>6} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
                e.name,
                a.port_rx,
                a.port_rx_dropped,
                a.received,
                a.misdelivered,
                a.port_tx,
                a.port_tx_dropped,
                a.returned
                    .map_or_else(|| "-".to_string(), |n| n.to_string()),
                us(|p| p.p50),
                us(|p| p.p99),
                us(|p| p.p999),
                us(|p| p.max),
            )
            .ok();
        }
        let line = |what: &str, p: &Percentiles| {
            format!(
                "{what} (us): p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
                p.p50 as f64 / 1e3,
                p.p90 as f64 / 1e3,
                p.p99 as f64 / 1e3,
                p.p999 as f64 / 1e3,
                p.max as f64 / 1e3
            )
        };
        write!(
            out,
            "apps: {} frames ({:.3} Mpps)",
            apps.received,
            apps.received_pps / 1e6
        )
        .ok();
        if let Some(p) = &apps.one_way_ns {
            write!(out, " | {}", line("one way, generator to sink", p)).ok();
        }
        if let Some(n) = apps.returned {
            write!(
                out,
                " | {n} back on the wire, {} from a wrong source",
                apps.wrong_source
            )
            .ok();
        }
        writeln!(out).ok();
        if let Some(p) = &apps.round_trip_ns {
            writeln!(
                out,
                "{}",
                line("round trip, generator to reflector and back to the wire", p)
            )
            .ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, untimed: u64, latency_ns: Option<Percentiles>) -> EndpointRow {
        EndpointRow {
            name: name.into(),
            vid: 0,
            mac: "02:00:00:00:00:01".into(),
            frames: 10,
            bytes: 640,
            mpps: 0.0,
            dropped: 0,
            misdelivered: 0,
            untimed,
            expected: None,
            latency_ns,
            socket: SocketStats::default(),
            app: None,
        }
    }

    #[test]
    fn counts_read_as_words() {
        assert_eq!(plural(1, "queue"), "1 queue");
        assert_eq!(plural(0, "endpoint"), "0 endpoints");
        assert_eq!(plural(2, "endpoint"), "2 endpoints");
    }

    #[test]
    fn untimed_endpoints_show_no_latency() {
        let timed = Percentiles {
            p50: 1500,
            p90: 2000,
            p99: 3000,
            p999: 4000,
            max: 5000,
        };
        let report = Report {
            interface: "nic0".into(),
            demux: "xdp".into(),
            xdp_mode: "native".into(),
            bind: "copy".into(),
            duration_s: 1.0,
            endpoints: vec![row("timed", 0, Some(timed)), row("ping", 10, None)],
            xdp: Counters::default(),
            queues: Vec::new(),
            sent: None,
            apps: None,
            notes: Vec::new(),
        };
        let text = report.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("UNTIMED"), "{text}");
        let timed_cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(&timed_cols[8..], ["0", "1.5", "2.0", "3.0", "4.0", "5.0"]);
        let untimed_cols: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            &untimed_cols[8..],
            ["10", "-", "-", "-", "-", "-"],
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["endpoints"][1]["latency_ns"], serde_json::Value::Null);
        assert_eq!(json["endpoints"][1]["untimed"], 10);
        assert_eq!(json["endpoints"][0]["latency_ns"]["p99"], 3000);
    }
}
