//! `cargo xtask bench` in miniature: the comparison driver end to end (every mode, a fixed
//! load, JSON, table, plots) with two endpoints and short runs. Checks the shape and the
//! sanity of what it writes, never its speed: numbers on a shared 2-core VM are not a test.
//! Needs root and two cores.
use std::time::Duration;

use serde_json::Value;
use xmacvlan_bench::compare::{self, ALL_MODES, BenchConfig};
use xmacvlan_tests::{namespaces_named, require_root};

#[test]
fn compare_writes_every_field_of_every_run() {
    require_root();
    let out = std::env::temp_dir().join(format!("xmv-bench-smoke-{}", std::process::id()));
    let cfg = BenchConfig {
        endpoint_counts: vec![2],
        frame_sizes: vec![64],
        load_fractions: vec![0.5],
        repetitions: 1,
        duration: Duration::from_millis(300),
        port_rate: Some(5_000),
        capacity_steps: 2,
        ..BenchConfig::quick(out.clone())
    };
    let mut calls = Vec::new();
    let results = compare::run(&cfg, &mut |done, total, _| calls.push((done, total)))
        .expect("running the comparison");
    let written = compare::write_outputs(&results, &out).expect("writing the results");

    // Progress: from 0 to the total, never backwards.
    // Flat out and one fixed load, each mode once; the testpmd anchor flat out; the cost
    // point (the fixed load again, no spin) in the three demux modes and rxdrop.
    let cost_rows = 4;
    let total = 2 * ALL_MODES.len() + 1 + cost_rows;
    let port_runs = 3 * 2; // xdp, user, kernel, each with sinks and with reflectors
    // One endpoint count is the base and both extremes: every mode's capacity and the
    // anchor's, 2 probes at most.
    let capacity_probes = (ALL_MODES.len() + 1) * 2;
    let total_runs = total + port_runs + capacity_probes;
    assert_eq!(calls.first(), Some(&(0, total_runs)));
    assert_eq!(calls.last(), Some(&(total_runs, total_runs)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap())
        .expect("bench-results.json is JSON");
    // The benchmark's default ingress hands the NIC xdp_frames, as a NIC does.
    assert_eq!(json["ingress"], "xdp-frame", "{json:#}");
    // And runs the dataplane as the daemon does by default: one thread to completion.
    assert_eq!(json["receive_threads"], "run-to-completion", "{json:#}");
    let runs = json["runs"].as_array().expect("a `runs` array");
    assert_eq!(runs.len(), total, "one row per mode and load: {json:#}");
    let mut modes: Vec<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    modes.sort_unstable();
    modes.dedup();
    assert_eq!(
        modes,
        ["ceiling", "kernel", "rxdrop", "testpmd", "user", "xdp"]
    );
    for run in runs {
        check_run(run);
        // rxdrop runs at every point, so every row has its ratio to it.
        assert!(
            run["vs_rxdrop"].as_f64().is_some_and(|r| r >= 0.0),
            "{run:#}"
        );
    }
    // The cost rows run the receive threads without a spin and with the run's coalescing;
    // every other row idles as the dataplane does by default.
    let us = |r: &Value, key: &str| r[key].as_u64().unwrap_or_else(|| panic!("{key}: {r:#}"));
    let (cost, usual): (Vec<&Value>, Vec<&Value>) =
        runs.iter().partition(|r| us(r, "receive_spin_us") == 0);
    let mut cost_modes: Vec<&str> = cost
        .iter()
        .map(|r| {
            assert_eq!(r["load"], "0.50", "{r:#}");
            let coalesce = cfg.cost_coalesce.as_micros() as u64;
            assert_eq!(us(r, "receive_coalesce_us"), coalesce, "{r:#}");
            r["mode"].as_str().unwrap()
        })
        .collect();
    cost_modes.sort_unstable();
    assert_eq!(cost_modes, ["kernel", "rxdrop", "user", "xdp"], "{json:#}");
    let spin = xmacvlan::dataplane::SPIN.as_micros() as u64;
    assert!(
        usual
            .iter()
            .all(|r| us(r, "receive_spin_us") == spin && us(r, "receive_coalesce_us") == 0)
    );
    // The fixed load is half the ceiling's flat-out rate.
    let ceiling = |load: &str| {
        runs.iter()
            .find(|r| r["mode"] == "ceiling" && r["load"] == load)
            .unwrap_or_else(|| panic!("no ceiling row at load {load}"))
    };
    let flat = ceiling("flat-out")["delivered_pps"].as_f64().unwrap();
    let half = ceiling("0.50")["offered_pps"].as_f64().unwrap();
    assert!(
        (half - flat / 2.0).abs() <= 1.0,
        "offered {half} for half of {flat}"
    );

    let through_ports = json["through_ports"]
        .as_array()
        .expect("a `through_ports` array");
    assert_eq!(through_ports.len(), port_runs, "{json:#}");
    for run in through_ports {
        check_port_run(run);
    }

    let capacity = json["capacity"].as_array().expect("a `capacity` array");
    let mut modes: Vec<&str> = capacity
        .iter()
        .map(|c| c["mode"].as_str().unwrap())
        .collect();
    modes.sort_unstable();
    assert_eq!(
        modes,
        ["ceiling", "kernel", "rxdrop", "testpmd", "user", "xdp"],
        "{json:#}"
    );
    for row in capacity {
        check_capacity(row);
    }
    let targets = json["targets"].as_array().expect("a `targets` array");
    let ids: Vec<&str> = targets.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["T1", "T2", "T3", "T4", "T5", "T6"]);
    for t in targets {
        assert!(
            !t["goal"].as_str().unwrap().is_empty() && !t["measured"].as_str().unwrap().is_empty()
        );
        assert!(
            ["met", "missed", "not-measured"].contains(&t["verdict"].as_str().unwrap()),
            "{t:#}"
        );
    }
    // T1 is judged exactly when every mode found a lossless rate, T5 when xdp and testpmd
    // did; T2 has its cost rows (judged unless they saturated the core or lost frames, which
    // its text then says); this run has no 10 % load (T3), one endpoint count (T4) and no
    // idle daemon (T6).
    let found = |mode: &str| {
        capacity
            .iter()
            .any(|c| c["mode"] == mode && c["capacity_pps"].as_f64().unwrap() > 0.0)
    };
    let judged = |t: &Value| t["verdict"] != "not-measured";
    let t1_modes = ["ceiling", "kernel", "user", "xdp"];
    assert_eq!(
        judged(&targets[0]),
        t1_modes.iter().all(|m| found(m)),
        "{json:#}"
    );
    assert_eq!(
        judged(&targets[4]),
        found("xdp") && found("testpmd"),
        "{json:#}"
    );
    // The rxdrop anchor is reported next to T1 and T5 when it has a capacity, next to T2
    // when it has a cost row (it always does here); it judges none of them.
    let measured = |t: &Value| t["measured"].as_str().unwrap().to_string();
    for t in [&targets[0], &targets[4]] {
        if judged(t) {
            assert_eq!(
                measured(t).contains("the AF_XDP rxdrop loop"),
                found("rxdrop"),
                "{t:#}"
            );
        }
    }
    assert!(
        measured(&targets[1]).contains("the AF_XDP rxdrop loop"),
        "{:#}",
        targets[1]
    );
    let t2 = targets[1]["measured"].as_str().unwrap();
    let idling = format!("no spin, {} us coalescing", cfg.cost_coalesce.as_micros());
    assert!(
        t2.starts_with(&format!("at 0.50 load, {idling}: xdp ")),
        "{t2}"
    );
    assert_eq!(
        judged(&targets[1]),
        !t2.ends_with("not a cost"),
        "{:#}",
        targets[1]
    );
    for t in [&targets[2], &targets[3], &targets[5]] {
        assert_eq!(t["verdict"], "not-measured", "{t:#}");
    }

    let table = std::fs::read_to_string(&written.table).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        total + 1 + port_runs + 1 + capacity.len() + 1 + targets.len() + 1,
        "a header and a line per run, in each table:\n{table}"
    );
    assert!(!written.plots.is_empty());
    for plot in &written.plots {
        let svg = std::fs::read_to_string(plot).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    let prefix = format!("xmvlab{}-", std::process::id());
    assert!(
        namespaces_named(&prefix).is_empty(),
        "the benchmark left namespaces behind: {:?}",
        namespaces_named(&prefix)
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// One run's fields are all there and consistent with each other.
fn check_run(run: &Value) {
    let num = |key: &str| {
        run[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` missing or not a number in {run:#}"))
    };
    let count = |key: &str| {
        run[key]
            .as_u64()
            .unwrap_or_else(|| panic!("`{key}` missing or not a count in {run:#}"))
    };
    assert_eq!(count("endpoints"), 2, "{run:#}");
    assert_eq!(count("frame_size"), 64, "{run:#}");
    let (sent, delivered) = (count("sent"), count("delivered"));
    assert!(sent > 0, "the generator sent nothing: {run:#}");
    // Loss is over what reached the NIC: what the lab's feed lost is the generator side's.
    let reached = sent - count("lost_in_feed");
    assert!(
        delivered <= reached,
        "delivered more than reached the NIC: {run:#}"
    );
    let loss = num("loss");
    assert!((0.0..=1.0).contains(&loss), "loss {loss}: {run:#}");
    let expected_loss = 1.0 - delivered as f64 / reached as f64;
    assert!((loss - expected_loss).abs() < 1e-9, "{run:#}");
    for key in [
        "offered_pps",
        "generator_pps",
        "reached_nic_pps",
        "delivered_pps",
    ] {
        let v = num(key);
        assert!(v.is_finite() && v >= 0.0, "{key} = {v}: {run:#}");
    }
    assert!(num("delivered_pps") <= num("reached_nic_pps") * (1.0 + 1e-9));
    assert!(num("reached_nic_pps") <= num("generator_pps") * (1.0 + 1e-9));
    let cpu = num("cpu_ns_per_frame");
    assert!(cpu.is_finite() && cpu >= 0.0, "{run:#}");
    assert_eq!(count("misdelivered"), 0, "{run:#}");
    assert!(count("lost_before_receive") + count("dropped_after_receive") <= reached);
    assert!(
        ["receiver", "generator", "offered"].contains(&run["limited_by"].as_str().unwrap()),
        "{run:#}"
    );
    let latency = &run["latency_ns"];
    let p = |key: &str| {
        latency[key]
            .as_u64()
            .unwrap_or_else(|| panic!("latency_ns.{key} missing in {run:#}"))
    };
    let (p50, p99, p999, max) = (p("p50"), p("p99"), p("p999"), p("max"));
    assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{run:#}");
    if run["mode"] == "ceiling" {
        // XDP_DROP delivers nothing to time.
        assert_eq!(max, 0, "{run:#}");
        assert!(run["vs_ceiling"].as_f64().is_some_and(|r| r == 1.0));
    } else if run["mode"] == "rxdrop" {
        // Recycled unread: nothing timed, but it received them, by its own socket.
        assert_eq!(max, 0, "{run:#}");
        assert!(delivered > 0, "rxdrop received nothing: {run:#}");
        assert!(num("cpu_ns_per_frame") > 0.0, "{run:#}");
        assert!(run["vs_rxdrop"].as_f64().is_some_and(|r| r == 1.0));
    } else if run["mode"] == "testpmd" {
        // rxonly frees frames unread: nothing timed, but it received them.
        assert_eq!(max, 0, "{run:#}");
        assert!(delivered > 0, "testpmd received nothing: {run:#}");
    } else if delivered > 0 {
        assert!(p50 > 0, "delivered frames are timed: {run:#}");
    }
}

/// A capacity row: every field there, the spread around the median, probes that add up.
fn check_capacity(row: &Value) {
    let num = |key: &str| {
        row[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` missing or not a number in {row:#}"))
    };
    assert_eq!(
        (row["endpoints"].as_u64(), row["frame_size"].as_u64()),
        (Some(2), Some(64))
    );
    let (cap, min, max) = (num("capacity_pps"), num("min_pps"), num("max_pps"));
    assert!(0.0 <= min && min <= cap && cap <= max, "{row:#}");
    let generator_max = num("generator_max_pps");
    assert!(cap <= generator_max * (1.0 + 1e-9), "{row:#}");
    assert_eq!(
        row["generator_limited"].as_bool(),
        Some(generator_max < 1.2 * cap),
        "{row:#}"
    );
    let repetitions = row["repetitions"].as_array().expect("repetitions");
    assert_eq!(repetitions.len(), 1, "{row:#}");
    for b in repetitions {
        let probes = b["probes"].as_array().expect("probes");
        assert!(probes.len() <= 2, "{row:#}");
        // The capacity is a lossless probe's achieved rate, or flat out's when that lost
        // nothing (then it may have no probe at all).
        let lossless = probes
            .iter()
            .filter(|p| p["loss"].as_f64().unwrap() < 0.001);
        for p in probes {
            assert!(p["offered_pps"].as_f64().unwrap() > 0.0, "{row:#}");
            assert!(
                (0.0..=1.0).contains(&p["loss"].as_f64().unwrap()),
                "{row:#}"
            );
        }
        let best = lossless
            .map(|p| {
                p["reached_pps"]
                    .as_f64()
                    .unwrap()
                    .min(p["offered_pps"].as_f64().unwrap())
            })
            .fold(0.0, f64::max);
        assert!(b["capacity_pps"].as_f64().unwrap() >= best, "{row:#}");
    }
}

/// A run through ports: every field there; frames reached every application, came back from
/// every reflector, and were timed.
fn check_port_run(run: &Value) {
    let count = |key: &str| {
        run[key]
            .as_u64()
            .unwrap_or_else(|| panic!("`{key}` missing or not a count in {run:#}"))
    };
    let num = |key: &str| {
        run[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` missing or not a number in {run:#}"))
    };
    assert!(["xdp", "user", "kernel"].contains(&run["mode"].as_str().unwrap()));
    assert_eq!(
        (count("endpoints"), count("frame_size")),
        (2, 64),
        "{run:#}"
    );
    assert_eq!(num("offered_pps"), 5_000.0, "{run:#}");
    let (sent, delivered) = (count("sent"), count("delivered"));
    assert!(sent > 0 && delivered > 0 && delivered <= sent, "{run:#}");
    assert_eq!(count("misdelivered"), 0, "{run:#}");
    let loss = num("loss");
    assert!((0.0..=1.0).contains(&loss), "{run:#}");
    let latency = |key: &str| {
        let l = &run[key];
        let p = |q: &str| {
            l[q].as_u64()
                .unwrap_or_else(|| panic!("{key}.{q}: {run:#}"))
        };
        let (p50, p99, p999, max) = (p("p50"), p("p99"), p("p999"), p("max"));
        assert!(
            0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
            "{run:#}"
        );
    };
    match run["app"].as_str() {
        Some("sink") => {
            latency("one_way_ns");
            assert!(run["round_trip_ns"].is_null() && run["returned"].is_null());
            let expected = 1.0 - delivered as f64 / sent as f64;
            assert!((loss - expected).abs() < 1e-9, "{run:#}");
        }
        Some("reflect") => {
            latency("round_trip_ns");
            assert!(run["one_way_ns"].is_null(), "{run:#}");
            let returned = count("returned");
            assert!(returned > 0 && returned <= sent, "{run:#}");
            let expected = 1.0 - returned as f64 / sent as f64;
            assert!((loss - expected).abs() < 1e-9, "{run:#}");
        }
        other => panic!("app {other:?} in {run:#}"),
    }
}
