//! The daemon's live counters as text: the tables `xmacvlan stats` prints, its per-second
//! `--watch` line (in the spirit of `xdp-bench`) and the daemon's debug summary line.
use std::fmt::Write as _;

use crate::counters::{self, Counts, Kind};
use crate::dataplane::{
    EndpointCounts, PortCounts, PortSnapshot, QueueSnapshot, Snapshot, SocketStats,
};
use crate::telemetry::report::plural;

/// Per-second rates of one interface between two snapshots.
#[derive(Debug, serde::Serialize)]
pub struct Rates {
    pub interface: String,
    pub seen_pps: f64,
    pub redirected_pps: f64,
    pub passed_pps: f64,
    pub delivered_pps: f64,
    pub delivered_bps: f64,
    pub dropped_pps: f64,
    pub endpoints: usize,
}

impl Rates {
    pub fn between(old: Option<&Snapshot>, new: &Snapshot, secs: f64) -> Self {
        let per_s =
            |now: u64, then: Option<u64>| (now.saturating_sub(then.unwrap_or(0))) as f64 / secs;
        let totals = |s: &Snapshot| {
            let frames: u64 = s.endpoints.iter().map(|e| e.frames).sum();
            let bytes: u64 = s.endpoints.iter().map(|e| e.bytes).sum();
            let dropped: u64 = s.endpoints.iter().map(|e| e.dropped()).sum::<u64>()
                + s.queues
                    .iter()
                    .map(|q| q.counts.sum(Kind::Dropped))
                    .sum::<u64>();
            (frames, bytes, dropped)
        };
        let (frames, bytes, dropped) = totals(new);
        let before = old.map(totals);
        Self {
            interface: new.interface.clone(),
            seen_pps: per_s(new.xdp.seen, old.map(|o| o.xdp.seen)),
            redirected_pps: per_s(new.xdp.redirected, old.map(|o| o.xdp.redirected)),
            passed_pps: per_s(new.xdp.passed(), old.map(|o| o.xdp.passed())),
            delivered_pps: per_s(frames, before.map(|b| b.0)),
            delivered_bps: per_s(bytes, before.map(|b| b.1)) * 8.0,
            dropped_pps: per_s(dropped, before.map(|b| b.2)),
            endpoints: new.endpoints.len(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{:<12} seen {:>12} pps | redirected {:>12} pps | passed to kernel {:>10} pps | delivered {:>12} pps {:>9.1} Mbit/s | dropped {:>8} pps | {}",
            self.interface,
            group(self.seen_pps),
            group(self.redirected_pps),
            group(self.passed_pps),
            group(self.delivered_pps),
            self.delivered_bps / 1e6,
            group(self.dropped_pps),
            plural(self.endpoints, "endpoint")
        )
    }
}

/// `1234567.8` as `1,234,568`.
fn group(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line per interface for the daemon's debug log.
pub fn summary_line(s: &Snapshot) -> String {
    let frames: u64 = s.endpoints.iter().map(|e| e.frames).sum();
    let dropped: u64 = s.endpoints.iter().map(|e| e.dropped()).sum();
    format!(
        "{}: {}, {frames} frames delivered, {dropped} dropped | XDP seen {} redirected {} passed {} malformed {}",
        s.interface,
        plural(s.endpoints.len(), "endpoint"),
        s.xdp.seen,
        s.xdp.redirected,
        s.xdp.passed(),
        s.xdp.malformed
    )
}

/// The full picture, for a person: per interface the XDP verdicts, per queue the worker and
/// socket counters, per endpoint frames, bytes and drops by reason.
pub fn tables(demux: &str, uptime_s: f64, interfaces: &[Snapshot]) -> String {
    let mut s = String::new();
    writeln!(s, "demux mode {demux}, daemon up {uptime_s:.0} s").ok();
    if interfaces.is_empty() {
        writeln!(
            s,
            "no endpoints attached to the fast path (create one: xmacvlan endpoint create …)"
        )
        .ok();
    }
    for snap in interfaces {
        writeln!(
            s,
            "\n{} (demux {}, XDP {}, bind {}{})",
            snap.interface,
            snap.demux,
            snap.xdp_mode,
            snap.bind,
            if snap.multi_buffer {
                ", multi-buffer"
            } else {
                ""
            }
        )
        .ok();
        writeln!(s, "  XDP: {}", counters::line(&snap.xdp)).ok();
        for (i, q) in snap.queues.iter().enumerate() {
            writeln!(s, "  {}", queue_line(i, q)).ok();
        }
        writeln!(
            s,
            "  {:<16} {:>5} {:<17} {} {}",
            "ENDPOINT",
            "VLAN",
            "MAC",
            counters::header::<EndpointCounts>(),
            counters::header_of::<SocketStats>(&[Kind::Dropped]),
        )
        .ok();
        for e in &snap.endpoints {
            writeln!(
                s,
                "  {:<16} {:>5} {:<17} {} {}",
                e.name,
                e.vid,
                e.mac,
                counters::cells(&e.counts),
                counters::cells_of(&e.socket, &[Kind::Dropped]),
            )
            .ok();
        }
        port_table(&mut s, snap);
    }
    s
}

/// Endpoints served through application ports: who is connected, and the port's counters.
fn port_table(s: &mut String, snap: &Snapshot) {
    use crate::dataplane::ClaimPolicy;
    let served: Vec<_> = snap
        .endpoints
        .iter()
        .filter(|e| e.claim == ClaimPolicy::WhileConnected || e.port.is_some())
        .collect();
    if served.is_empty() {
        return;
    }
    writeln!(
        s,
        "  {:<16} {:<24} {:<19} {}",
        "PORT",
        "CLIENT",
        "SINCE (UTC)",
        counters::header::<PortCounts>()
    )
    .ok();
    for e in served {
        let Some(p) = &e.port else {
            writeln!(
                s,
                "  {:<16} {:<24} (no port: frames go to the kernel device; {} arrived unconnected)",
                e.name, "-", e.dropped_not_connected
            )
            .ok();
            continue;
        };
        writeln!(
            s,
            "  {:<16} {:<24} {:<19} {}",
            e.name,
            client_cell(p),
            utc(p.connected_since),
            counters::cells(&p.counts)
        )
        .ok();
    }
}

/// Who the port's client is, and whether its endpoint's frames come to it yet.
fn client_cell(p: &PortSnapshot) -> String {
    let client = p.client.escape_debug();
    match (p.connected, p.claimed) {
        (false, _) => format!("{client} (gone)"),
        // Its frames still go to the kernel device (docs/ports.md).
        (true, false) => format!("{client} (pid {}, no buffers yet)", p.pid),
        (true, true) => format!("{client} (pid {})", p.pid),
    }
}

/// `queue 0: rx 0 steered 0 … | frames 7680 free 0 in-kernel 7680 lost 0 duplicate 0 | tx pool 512/512 |
/// socket rx-dropped 0 …`: a queue's counters, where its frames are, and its socket's.
pub fn queue_line(i: usize, q: &QueueSnapshot) -> String {
    format!(
        "queue {i}: {} | frames {} free {} in-kernel {} lost {} duplicate {} | tx pool {}/{} | socket {}",
        counters::line(&q.counts),
        q.frames,
        q.frames_free,
        q.frames_in_kernel,
        q.frames_lost,
        q.frames_duplicate,
        q.tx_pool_free,
        q.tx_pool,
        counters::line(&q.socket)
    )
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
fn utc(secs: u64) -> String {
    let mut text = rfc3339(secs);
    text.pop(); // the `Z`
    text.replacen('T', " ", 1)
}

/// `2026-11-22T12:00:00Z` from Unix seconds (UTC; days to civil date: Howard Hinnant's method).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_named_with_its_state() {
        let mut p = PortSnapshot {
            client: "testpmd".into(),
            pid: 7,
            connected_since: 0,
            connected: true,
            claimed: false,
            counts: Default::default(),
        };
        assert_eq!(client_cell(&p), "testpmd (pid 7, no buffers yet)");
        p.claimed = true;
        assert_eq!(client_cell(&p), "testpmd (pid 7)");
        p.connected = false;
        assert_eq!(client_cell(&p), "testpmd (gone)");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_165_858), "2026-12-01 22:57:38");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_351_661), "2026-11-22T12:47:41Z");
    }

    #[test]
    fn groups_digits() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(1234567.8), "1,234,568");
    }
}
