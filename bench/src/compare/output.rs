//! Writing the results: `bench-results.json`, a Markdown table, and SVG plots.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Latency, Mode, Results, Row, measure};
use crate::apps::AppKind;

pub struct Written {
    pub json: PathBuf,
    pub table: PathBuf,
    pub plots: Vec<PathBuf>,
}

pub fn write_outputs(results: &Results, dir: &Path) -> Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("bench-results.json");
    std::fs::write(&json, serde_json::to_string_pretty(results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let table = dir.join("bench-results.md");
    std::fs::write(&table, markdown(results))
        .with_context(|| format!("writing {}", table.display()))?;
    let mut plots = Vec::new();
    let flat64 = |r: &&Row| r.load == "flat-out" && r.median.frame_size == 64;
    let by_endpoints = |metric: fn(&Row) -> f64| -> Vec<(Mode, Vec<(f64, f64)>)> {
        series(results, flat64, |r| r.median.endpoints as f64, metric)
    };
    for (file, title, y_label, data) in [
        (
            "throughput-vs-endpoints.svg",
            "Delivered frames/s vs endpoints (64 B, flat out)",
            "Mpps",
            by_endpoints(|r| r.median.delivered_pps / 1e6),
        ),
        (
            "cpu-vs-endpoints.svg",
            "Receive-core CPU per frame vs endpoints (64 B, flat out)",
            "ns/frame",
            by_endpoints(|r| r.median.cpu_ns_per_frame),
        ),
        (
            "latency-vs-load.svg",
            "p99 latency vs offered load (64 B, fixed loads)",
            "p99 us",
            series(
                results,
                |r| r.load != "flat-out" && r.median.mode.timed() && !r.median.measures_cost(),
                |r| r.median.offered_pps / 1e6,
                |r| r.median.latency_ns.p99 as f64 / 1e3,
            ),
        ),
    ] {
        if data.iter().all(|(_, points)| points.is_empty()) {
            continue;
        }
        let log_x = file.contains("endpoints");
        let path = dir.join(file);
        let x_label = if log_x {
            "endpoints (log scale)"
        } else {
            "offered Mpps"
        };
        std::fs::write(&path, svg(title, x_label, y_label, &data, log_x))
            .with_context(|| format!("writing {}", path.display()))?;
        plots.push(path);
    }
    Ok(Written { json, table, plots })
}

fn series(
    results: &Results,
    keep: impl Fn(&&Row) -> bool,
    x: impl Fn(&Row) -> f64,
    y: impl Fn(&Row) -> f64,
) -> Vec<(Mode, Vec<(f64, f64)>)> {
    let mut out: Vec<(Mode, Vec<(f64, f64)>)> = Vec::new();
    for row in results.runs.iter().filter(keep) {
        let entry = match out.iter_mut().position(|(m, _)| *m == row.median.mode) {
            Some(i) => &mut out[i].1,
            None => {
                out.push((row.median.mode, Vec::new()));
                &mut out.last_mut().unwrap().1
            }
        };
        entry.push((x(row), y(row)));
    }
    for (_, points) in &mut out {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// `part` as a percentage of `whole`.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn markdown(results: &Results) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "Machine: {}. Generator on core {}, receive work on core {}, ingress `{}`, receive threads `{}`; {:.1} s per run, median of repetitions. Load average {:.1} at the start, {:.1} at the end.\n",
        results.machine,
        results.generator_core,
        results.rx_core,
        results.ingress.name(),
        results.receive_threads.name(),
        results.duration_s,
        results.load_average[0],
        results.load_average[1]
    ).ok();
    writeln!(
        s,
        "Ratios: delivered frames/s over that of the same setting's `ceiling` (vs ceiling: \
         XDP_DROP on the NIC, the most any mode could deliver), `rxdrop` (vs rxdrop: one AF_XDP \
         socket whose frames go straight back to the fill ring, the most any mode delivering \
         into sockets could) and `kernel` (vs kernel).\n"
    )
    .ok();
    writeln!(
        s,
        "| mode | endpoints | frame B | load | offered Mpps | generator Mpps | delivered Mpps | delivered Gbit/s | limited by | loss | lost in feed | lost before rx | dropped after rx | CPU ns/frame | p50 us | p99 us | p99.9 us | max us | vs ceiling | vs rxdrop | vs kernel |"
    ).ok();
    writeln!(
        s,
        "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    ).ok();
    for r in &results.runs {
        let m = &r.median;
        let us = |ns: u64| {
            // The anchors drop or recycle frames unread: no stamps.
            if !m.mode.timed() {
                "–".to_string()
            } else {
                format!("{:.1}", ns as f64 / 1e3)
            }
        };
        let ratio = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into());
        writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            m.mode.name(),
            m.endpoints,
            m.frame_size,
            match measure::idling(m.idle_policy()) {
                Some(idling) => format!("{} {idling}", r.load),
                None => r.load.clone(),
            },
            m.offered_pps / 1e6,
            m.generator_pps / 1e6,
            m.delivered_pps / 1e6,
            // Frame bits only (no preamble, gap or FCS).
            m.delivered_pps * m.frame_size as f64 * 8.0 / 1e9,
            r.limited_by,
            m.loss * 100.0,
            share(m.lost_in_feed, m.sent),
            share(m.lost_before_receive, m.sent - m.lost_in_feed),
            share(m.dropped_after_receive, m.sent - m.lost_in_feed),
            m.cpu_ns_per_frame,
            us(m.latency_ns.p50),
            us(m.latency_ns.p99),
            us(m.latency_ns.p999),
            us(m.latency_ns.max),
            ratio(r.vs_ceiling),
            ratio(r.vs_rxdrop),
            ratio(r.vs_kernel),
        ).ok();
    }
    if !results.through_ports.is_empty() {
        port_table(&mut s, results);
    }
    if !results.capacity.is_empty() {
        super::summary::capacity_table(&mut s, results);
    }
    if !results.targets.is_empty() {
        super::summary::targets_table(&mut s, results);
    }
    for note in &results.notes {
        writeln!(s, "\nNote: {note}").ok();
    }
    s
}

/// The runs through ports: one-way latency into a sink, round trip through a reflector.
fn port_table(s: &mut String, results: &Results) {
    writeln!(
        s,
        "\nThrough ports: every endpoint's frames into an application on the receive core \
         (`xdp`, `user`: one `xmacvlan-sink` or `xmacvlan-reflect` process per endpoint on its \
         memif port; `kernel`: an AF_PACKET application on each macvlan device), 64 B, at a \
         fixed rate. One way: generator to the application's read. Round trip: generator to \
         the reflected frame's arrival back on the wire.\n"
    )
    .ok();
    writeln!(
        s,
        "| mode | app | endpoints | offered fps | delivered fps | sent | returned | loss | unplaced | p50 us | p99 us | p99.9 us | max us |"
    ).ok();
    writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    .ok();
    for r in &results.through_ports {
        let m = &r.median;
        let latency = m.one_way_ns.or(m.round_trip_ns);
        let us = |pick: fn(&Latency) -> u64| {
            latency.map_or_else(
                || "–".to_string(),
                |l| format!("{:.1}", pick(&l) as f64 / 1e3),
            )
        };
        writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {:.2}% | {} | {} | {} | {} | {} |",
            m.mode.name(),
            match m.app {
                AppKind::Sink => "sink (one way)",
                AppKind::Reflect => "reflect (round trip)",
            },
            m.endpoints,
            m.offered_pps,
            m.delivered_pps,
            m.sent,
            m.returned
                .map_or_else(|| "–".to_string(), |n| n.to_string()),
            m.loss * 100.0,
            m.placed.unplaced,
            us(|l| l.p50),
            us(|l| l.p99),
            us(|l| l.p999),
            us(|l| l.max),
        )
        .ok();
    }
    writeln!(
        s,
        "\nWhere the frames went (each stage's loss by the counter that says why; `unplaced` \
         is a loss no counter explains):\n"
    )
    .ok();
    for r in &results.through_ports {
        let m = &r.median;
        writeln!(
            s,
            "- {} {} {}: {}",
            m.mode.name(),
            m.app.name(),
            m.endpoints,
            m.placed.summary()
        )
        .ok();
    }
}

/// Each mode's line in the plots.
fn colour(mode: Mode) -> &'static str {
    match mode {
        Mode::Ceiling => "#888888",
        Mode::Rxdrop => "#9467bd",
        Mode::Xdp => "#1f77b4",
        Mode::User => "#2ca02c",
        Mode::Kernel => "#d62728",
        Mode::Testpmd => "#ff7f0e",
    }
}

/// A plain line chart: one polyline per mode, axes with a few ticks, a legend.
fn svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    data: &[(Mode, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 150.0, 40.0, 50.0);
    let tx = |x: f64| if log_x { x.max(1.0).log2() } else { x };
    let points = data.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        x0 = x0.min(tx(x));
        x1 = x1.max(tx(x));
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let px = |x: f64| left + (tx(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - y / y1 * (h - top - bottom);
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    ).ok();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).ok();
    writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        w / 2.0
    )
    .ok();
    let (ax0, ay0, ax1, ay1) = (left, h - bottom, w - right, top);
    writeln!(
        s,
        r#"<path d="M{ax0},{ay1} L{ax0},{ay0} L{ax1},{ay0}" stroke="black" fill="none"/>"#
    )
    .ok();
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        writeln!(
            s,
            r##"<line x1="{ax0}" x2="{ax1}" y1="{0}" y2="{0}" stroke="#eeeeee"/><text x="{1}" y="{2}" text-anchor="end">{3}</text>"##,
            py(y),
            ax0 - 6.0,
            py(y) + 4.0,
            tick(y)
        ).ok();
    }
    let mut xs: Vec<f64> = data
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    for x in xs {
        writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            ay0 + 16.0,
            tick(x)
        )
        .ok();
    }
    writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (ax0 + ax1) / 2.0,
        h - 12.0
    )
    .ok();
    writeln!(
        s,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{y_label}</text>"#,
        (ay0 + ay1) / 2.0
    ).ok();
    for (n, (mode, pts)) in data.iter().enumerate() {
        let color = colour(*mode);
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        )
        .ok();
        for &(x, y) in pts {
            writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            )
            .ok();
        }
        let ly = top + 10.0 + n as f64 * 20.0;
        writeln!(
            s,
            r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            ax1 + 15.0,
            ax1 + 40.0,
            ax1 + 46.0,
            ly + 4.0,
            mode.name()
        ).ok();
    }
    s.push_str("</svg>\n");
    s
}

fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Latency, Measurement, PortRow, PortRun};

    fn row(mode: Mode, endpoints: usize, pps: f64) -> Row {
        Row {
            median: Measurement {
                mode,
                endpoints,
                frame_size: 64,
                offered_pps: pps,
                generator_pps: pps,
                reached_nic_pps: pps,
                delivered_pps: pps,
                loss: 0.0,
                cpu_ns_per_frame: 1e9 / pps,
                latency_ns: Latency {
                    p50: 1000,
                    p99: 2000,
                    p999: 3000,
                    max: 4000,
                },
                sent: 10,
                delivered: 10,
                lost_in_feed: 0,
                receive_spin_us: 50,
                receive_coalesce_us: 0,
                lost_before_receive: 0,
                dropped_after_receive: 0,
                misdelivered: 0,
            },
            load: "flat-out".into(),
            repetitions: 1,
            limited_by: "generator",
            vs_ceiling: Some(0.5),
            vs_rxdrop: None,
            vs_kernel: None,
        }
    }

    #[test]
    fn writes_json_table_and_plots() {
        let results = Results {
            machine: "test".into(),
            load_average: [1.0, 1.0],
            rx_core: 1,
            generator_core: 0,
            ingress: crate::ingress::Ingress::XdpFrame,
            receive_threads: xmacvlan::modes::Threads::RunToCompletion,
            duration_s: 1.0,
            runs: vec![
                row(Mode::Ceiling, 1, 2e6),
                row(Mode::Rxdrop, 1, 1.5e6),
                row(Mode::Xdp, 1, 1e6),
                row(Mode::Ceiling, 16, 2e6),
                row(Mode::Rxdrop, 16, 1.5e6),
                row(Mode::Xdp, 16, 0.9e6),
            ],
            through_ports: [AppKind::Sink, AppKind::Reflect]
                .into_iter()
                .map(|app| PortRow {
                    median: PortRun {
                        mode: Mode::Xdp,
                        app,
                        endpoints: 16,
                        frame_size: 64,
                        offered_pps: 20_000.0,
                        generator_pps: 20_000.0,
                        sent: 20_000,
                        delivered: 20_000,
                        delivered_pps: 20_000.0,
                        loss: 0.0,
                        returned: (app == AppKind::Reflect).then_some(19_990),
                        one_way_ns: (app == AppKind::Sink).then_some(Latency {
                            p50: 9_000,
                            p99: 20_000,
                            p999: 40_000,
                            max: 50_000,
                        }),
                        round_trip_ns: (app == AppKind::Reflect).then_some(Latency {
                            p50: 30_000,
                            p99: 60_000,
                            p999: 90_000,
                            max: 99_000,
                        }),
                        misdelivered: 0,
                        placed: crate::placed::Placed::new(20_000, Vec::new()),
                        nic_tx_dropped: 0,
                    },
                    repetitions: 1,
                })
                .collect(),
            capacity: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        };
        let dir = std::env::temp_dir().join(format!("xmv-bench-out-{}", std::process::id()));
        let written = write_outputs(&results, &dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
        let first = &json["runs"][0];
        for key in [
            "mode",
            "endpoints",
            "frame_size",
            "offered_pps",
            "delivered_pps",
            "cpu_ns_per_frame",
            "loss",
        ] {
            assert!(!first[key].is_null(), "{key} missing from {first}");
        }
        assert_eq!(first["mode"], "ceiling");
        assert_eq!(first["latency_ns"]["p999"], 3000);
        let table = std::fs::read_to_string(&written.table).unwrap();
        assert_eq!(table.lines().filter(|l| l.starts_with("| xdp")).count(), 4);
        assert!(
            table.contains("| vs ceiling | vs rxdrop | vs kernel |"),
            "{table}"
        );
        // The anchors read no stamps: no latencies; every ratio column is there.
        assert!(
            table.contains(
                "| rxdrop | 16 | 64 | flat-out | 1.500 | 1.500 | 1.500 | 0.77 | generator | 0.00% | \
                 0.00% | 0.00% | 0.00% | 667 | – | – | – | – | 0.50 | – | – |"
            ),
            "{table}"
        );
        assert_eq!(json["runs"][1]["mode"], "rxdrop");
        assert!(json["runs"][1]["vs_rxdrop"].is_null());
        assert!(
            table.contains("| xdp | sink (one way) | 16 | 20000 | 20000 | 20000 | – | 0.00% | 0 | 9.0 | 20.0 | 40.0 | 50.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| xdp | reflect (round trip) | 16 | 20000 | 20000 | 20000 | 19990 | 0.00% | 0 | 30.0 | 60.0 | 90.0 | 99.0 |"),
            "{table}"
        );
        assert_eq!(json["through_ports"][1]["returned"], 19_990);
        assert!(
            table.contains("- xdp reflect 16: 20000 of 20000 arrived, none lost"),
            "{table}"
        );
        assert_eq!(json["through_ports"][1]["placed"]["unplaced"], 0);
        assert_eq!(json["through_ports"][0]["app"], "sink");
        assert_eq!(json["through_ports"][0]["one_way_ns"]["p99"], 20_000);
        assert_eq!(
            written.plots.len(),
            2,
            "no fixed-load rows: no latency plot"
        );
        let svg = std::fs::read_to_string(&written.plots[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains(">xdp<"));
        assert!(svg.contains(">rxdrop<") && svg.contains(colour(Mode::Rxdrop)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
