//! The performance targets (T1-T6, docs/benchmark.md), each judged from one run's numbers as
//! ratios within that run. A target the run has no numbers for says so instead of passing.
use serde::Serialize;

use super::capacity::CapacityRow;
use super::measure::{self, Mode};
use super::{Results, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    /// This run measured nothing the target could be judged by.
    NotMeasured,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::NotMeasured => "not measured",
        }
    }

    fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: &'static str,
    pub goal: &'static str,
    /// The ratios (or the reason there are none).
    pub measured: String,
    pub verdict: Verdict,
}

/// Where a target has numbers: what was measured, and whether it was met (None: the numbers
/// cannot judge it, the measured text says why).
type Judged = Option<(String, Option<bool>)>;

fn target(id: &'static str, goal: &'static str, judged: Judged) -> Target {
    match judged {
        Some((measured, met)) => Target {
            id,
            goal,
            measured,
            verdict: met.map_or(Verdict::NotMeasured, Verdict::of),
        },
        None => Target {
            id,
            goal,
            measured: "this run has no such numbers".into(),
            verdict: Verdict::NotMeasured,
        },
    }
}

/// Busy above this fraction of the receive core: saturated, so ns/frame is not a cost.
const SATURATED: f64 = 0.95;

/// Every target, in order.
pub fn judge(r: &Results) -> Vec<Target> {
    let base = base_count(r);
    let cap = |mode: Mode, endpoints: Option<usize>| -> Option<f64> {
        let e = endpoints?;
        r.capacity
            .iter()
            .find(|c: &&CapacityRow| c.mode == mode && c.endpoints == e)
            .map(|c| c.capacity_pps)
            .filter(|&c| c > 0.0)
    };
    let at_base = |x: &&Row| Some(x.median.endpoints) == base && x.median.frame_size == 64;
    // Latency (T3): the rows with the threads' usual spin, as a user runs them.
    let row = |mode: Mode, load: &str| -> Option<&Row> {
        r.runs
            .iter()
            .filter(at_base)
            .find(|x| x.median.mode == mode && x.load == load && !x.median.measures_cost())
    };
    // Cost (T2): the fixed-load rows whose threads block as soon as they are idle.
    let cost_row = |mode: Mode| -> Option<&Row> {
        r.runs
            .iter()
            .filter(at_base)
            .find(|x| x.median.mode == mode && x.load != "flat-out" && x.median.measures_cost())
    };
    // The AF_XDP rxdrop loop's capacity: reported next to T1 and T5, judged by neither.
    let rxdrop = cap(Mode::Rxdrop, base);
    let t1 = (|| {
        let (x, u, k, c) = (
            cap(Mode::Xdp, base)?,
            cap(Mode::User, base)?,
            cap(Mode::Kernel, base)?,
            cap(Mode::Ceiling, base)?,
        );
        let vs_rxdrop = rxdrop
            .map(|r| format!(", {:.2}x the AF_XDP rxdrop loop (not judged)", x / r))
            .unwrap_or_default();
        Some((
            format!(
                "xdp {:.2}x kernel, {:.2}x the XDP_DROP ceiling{vs_rxdrop}; user {:.2}x xdp",
                x / k,
                x / c,
                u / x
            ),
            Some(x / k >= 1.0 && x / c >= 0.65 && u / x >= 0.8),
        ))
    })();
    let t2 = (|| {
        let (x, k) = (cost_row(Mode::Xdp)?, cost_row(Mode::Kernel)?);
        let (xn, kn) = (x.median.cpu_ns_per_frame, k.median.cpu_ns_per_frame);
        let busy = |row: &Row| row.median.cpu_ns_per_frame * row.median.delivered_pps / 1e9;
        // What the socket path alone costs at the same load and idling.
        let vs_rxdrop = cost_row(Mode::Rxdrop)
            .map(|r| r.median.cpu_ns_per_frame)
            .filter(|&r| r > 0.0)
            .map(|r| format!("; the AF_XDP rxdrop loop {r:.0} ns, xdp {:.2}x it", xn / r))
            .unwrap_or_default();
        let measured = format!(
            "at {} load, {}: xdp {xn:.0} ns, kernel {kn:.0} ns ({:.2}x; receive core busy \
             {:.0} % and {:.0} %, loss {:.2} % and {:.2} %){vs_rxdrop}",
            x.load,
            measure::idling(x.median.idle_policy()).unwrap_or_default(),
            xn / kn,
            busy(x) * 100.0,
            busy(k) * 100.0,
            x.median.loss * 100.0,
            k.median.loss * 100.0
        );
        // A saturated core reads busy whatever the work: its ns/frame is 1/rate, not cost.
        // A row limited by the receiver (over 1 % lost) or the generator did not carry the
        // rate; the lab's own loss before rx (under 1 %, in every mode) does not change it.
        let carried = |row: &Row| row.limited_by == "offered";
        let why_not = if busy(x).max(busy(k)) >= SATURATED {
            Some("the receive core was saturated")
        } else if !carried(x) || !carried(k) {
            Some("the fixed rate was not carried (limited by receiver or generator)")
        } else {
            None
        };
        Some(match why_not {
            Some(why) => (format!("{measured}: {why}, not a cost"), None),
            None => (measured, Some(xn <= kn)),
        })
    })();
    let t3 = (|| {
        let p99 = |m: Mode, load: &str| row(m, load).map(|x| x.median.latency_ns.p99 as f64);
        let low = p99(Mode::Xdp, "0.10")? / p99(Mode::Kernel, "0.10")?;
        let half = p99(Mode::Xdp, "0.50")? / p99(Mode::Kernel, "0.50")?;
        Some((
            format!("xdp p99 {low:.2}x kernel at 10 % load, {half:.2}x at 50 %"),
            Some(low <= 0.1 && half <= 1.0),
        ))
    })();
    let (fewest, most) = (
        r.capacity.iter().map(|c| c.endpoints).min(),
        r.capacity.iter().map(|c| c.endpoints).max(),
    );
    let t4 = (|| {
        if fewest == most {
            return None;
        }
        let x = cap(Mode::Xdp, most)? / cap(Mode::Xdp, fewest)?;
        let u = cap(Mode::User, most)? / cap(Mode::User, fewest)?;
        Some((
            format!(
                "{} vs {} endpoints: xdp {x:.2}x, user {u:.2}x",
                most?, fewest?
            ),
            Some(x >= 0.8 && u >= 0.6),
        ))
    })();
    let t5 = (|| {
        let (x, t) = (cap(Mode::Xdp, base)?, cap(Mode::Testpmd, base)?);
        // Both are AF_XDP receivers: how close each comes to the bare socket loop.
        let vs_rxdrop = rxdrop
            .map(|r| {
                format!(
                    "; the AF_XDP rxdrop loop {:.3} Mpps: xdp {:.2}x, testpmd {:.2}x it (not judged)",
                    r / 1e6,
                    x / r,
                    t / r
                )
            })
            .unwrap_or_default();
        Some((
            format!(
                "zero-loss capacity at {} endpoints: xdp {:.3} Mpps, testpmd {:.3} Mpps \
                 ({:.2}x){vs_rxdrop}",
                base?,
                x / 1e6,
                t / 1e6,
                x / t
            ),
            Some(x / t >= 0.8),
        ))
    })();
    vec![
        target(
            "T1",
            "zero-loss capacity: xdp >= 1.0x kernel and >= 0.65x the ceiling; user >= 0.8x xdp",
            t1,
        ),
        target(
            "T2",
            "busy ns/frame at a fixed rate both carry, no spin: xdp <= 1.0x kernel",
            t2,
        ),
        target(
            "T3",
            "p99 one-way latency: xdp <= 0.1x kernel at 10 % load, <= 1.0x at 50 %",
            t3,
        ),
        target(
            "T4",
            "zero-loss capacity at the most endpoints >= 0.8x (xdp), 0.6x (user) that at the fewest",
            t4,
        ),
        target(
            "T5",
            "zero-loss capacity: xdp >= 0.8x DPDK testpmd net_af_xdp rxonly on the same NIC and core",
            t5,
        ),
        target(
            "T6",
            "an idle daemon, 16 endpoints: < 1 % of one core (bench/scripts/idle-daemon.sh)",
            None,
        ),
    ]
}

/// The endpoint count the ratios compare at: the one every mode has a capacity at, else the
/// one with fixed-load rows.
fn base_count(r: &Results) -> Option<usize> {
    r.capacity
        .iter()
        .find(|c| c.mode == Mode::Kernel)
        .map(|c| c.endpoints)
        .or_else(|| {
            r.runs
                .iter()
                .find(|x| x.load != "flat-out")
                .map(|x| x.median.endpoints)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::capacity::CapacityRow;
    use crate::compare::{Latency, Measurement};

    fn capacity(mode: Mode, endpoints: usize, pps: f64) -> CapacityRow {
        CapacityRow {
            mode,
            endpoints,
            frame_size: 64,
            capacity_pps: pps,
            min_pps: pps,
            max_pps: pps,
            generator_max_pps: 2.0 * pps,
            generator_limited: false,
            repetitions: Vec::new(),
        }
    }

    fn fixed(mode: Mode, load: &str, cpu_ns: f64, p99_ns: u64) -> Row {
        Row {
            median: Measurement {
                mode,
                endpoints: 16,
                frame_size: 64,
                offered_pps: 1e5,
                generator_pps: 1e5,
                reached_nic_pps: 1e5,
                delivered_pps: 1e5,
                loss: 0.0,
                cpu_ns_per_frame: cpu_ns,
                latency_ns: Latency {
                    p50: p99_ns / 2,
                    p99: p99_ns,
                    p999: p99_ns,
                    max: p99_ns,
                },
                sent: 1,
                delivered: 1,
                lost_in_feed: 0,
                receive_spin_us: 50,
                receive_coalesce_us: 0,
                lost_before_receive: 0,
                dropped_after_receive: 0,
                misdelivered: 0,
            },
            load: load.into(),
            repetitions: 1,
            limited_by: "offered",
            vs_ceiling: None,
            vs_rxdrop: None,
            vs_kernel: None,
        }
    }

    /// A cost row: `fixed` with the receive threads blocking as soon as they are idle.
    fn cost(mode: Mode, cpu_ns: f64, limited_by: &'static str) -> Row {
        let mut row = fixed(mode, "0.10", cpu_ns, 1_000_000);
        row.median.receive_spin_us = 0;
        row.limited_by = limited_by;
        row
    }

    fn results(capacity: Vec<CapacityRow>, runs: Vec<Row>) -> Results {
        Results {
            machine: "test".into(),
            load_average: [0.0; 2],
            rx_core: 1,
            generator_core: 0,
            ingress: crate::ingress::Ingress::XdpFrame,
            receive_threads: xmacvlan::modes::Threads::RunToCompletion,
            duration_s: 1.0,
            runs,
            through_ports: Vec::new(),
            capacity,
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn verdicts(r: &Results) -> Vec<Verdict> {
        judge(r).iter().map(|t| t.verdict).collect()
    }

    #[test]
    fn each_target_is_judged_by_its_ratios() {
        use Verdict::*;
        let r = results(
            vec![
                capacity(Mode::Ceiling, 16, 1.5e6),
                capacity(Mode::Xdp, 16, 1.0e6),
                capacity(Mode::User, 16, 0.85e6),
                capacity(Mode::Kernel, 16, 0.9e6),
                capacity(Mode::Xdp, 1, 1.1e6),
                capacity(Mode::User, 1, 1.0e6),
                capacity(Mode::Xdp, 1024, 0.9e6),
                capacity(Mode::User, 1024, 0.5e6),
                capacity(Mode::Testpmd, 16, 1.2e6),
            ],
            vec![
                fixed(Mode::Xdp, "0.10", 9_000.0, 10_000),
                fixed(Mode::Kernel, "0.10", 1000.0, 200_000),
                cost(Mode::Xdp, 900.0, "offered"),
                cost(Mode::Kernel, 1000.0, "offered"),
                fixed(Mode::Xdp, "0.50", 900.0, 300_000),
                fixed(Mode::Kernel, "0.50", 1000.0, 200_000),
            ],
        );
        // T1: 1.11x kernel, 0.67x ceiling, user 0.85x xdp. T2: 0.9x. T3: 0.05x but 1.5x at
        // half load. T4: xdp 0.82x, user 0.5x. T5: 0.83x testpmd.
        assert_eq!(verdicts(&r), [Met, Met, Missed, Missed, Met, NotMeasured]);
        assert_eq!(
            judge(&r)[4].measured,
            "zero-loss capacity at 16 endpoints: xdp 1.000 Mpps, testpmd 1.200 Mpps (0.83x)"
        );
        assert_eq!(
            judge(&r)[1].measured,
            "at 0.10 load, no spin: xdp 900 ns, kernel 1000 ns (0.90x; receive core busy 9 % and \
             10 %, loss 0.00 % and 0.00 %)",
            "T2 reads the cost rows, not the spinning ones (9000 ns)"
        );
        let t1 = &judge(&r)[0];
        assert_eq!(
            t1.measured,
            "xdp 1.11x kernel, 0.67x the XDP_DROP ceiling; user 0.85x xdp"
        );
    }

    #[test]
    fn the_rxdrop_anchor_is_reported_next_to_t1_t2_t5_and_judges_nothing() {
        let mut capacities = vec![
            capacity(Mode::Ceiling, 16, 1.5e6),
            capacity(Mode::Xdp, 16, 1.0e6),
            capacity(Mode::User, 16, 0.85e6),
            capacity(Mode::Kernel, 16, 0.9e6),
            capacity(Mode::Testpmd, 16, 1.2e6),
        ];
        let runs = vec![
            cost(Mode::Xdp, 900.0, "offered"),
            cost(Mode::Kernel, 1000.0, "offered"),
        ];
        let without = judge(&results(capacities.clone(), runs.clone()));
        capacities.push(capacity(Mode::Rxdrop, 16, 1.25e6));
        let mut runs = runs;
        runs.push(cost(Mode::Rxdrop, 300.0, "offered"));
        let with = judge(&results(capacities, runs));
        let verdicts = |t: &[Target]| t.iter().map(|t| t.verdict).collect::<Vec<_>>();
        assert_eq!(verdicts(&with), verdicts(&without));
        assert_eq!(
            with[0].measured,
            "xdp 1.11x kernel, 0.67x the XDP_DROP ceiling, 0.80x the AF_XDP rxdrop loop (not \
             judged); user 0.85x xdp"
        );
        assert!(
            with[1]
                .measured
                .ends_with("; the AF_XDP rxdrop loop 300 ns, xdp 3.00x it"),
            "{}",
            with[1].measured
        );
        assert_eq!(
            with[4].measured,
            "zero-loss capacity at 16 endpoints: xdp 1.000 Mpps, testpmd 1.200 Mpps (0.83x); \
             the AF_XDP rxdrop loop 1.250 Mpps: xdp 0.80x, testpmd 0.96x it (not judged)"
        );
    }

    #[test]
    fn a_run_without_the_numbers_says_so() {
        use Verdict::*;
        let r = results(vec![capacity(Mode::Xdp, 16, 1e6)], Vec::new());
        assert_eq!(verdicts(&r), [NotMeasured; 6]);
    }

    #[test]
    fn a_saturated_or_lossy_cost_row_judges_nothing() {
        let t2 = |x: Row, k: Row| judge(&results(Vec::new(), vec![x, k])).remove(1);
        let not_judged = |t: Target, why: &str| {
            assert_eq!(t.verdict, Verdict::NotMeasured, "{}", t.measured);
            assert!(t.measured.contains(why), "{}", t.measured);
        };
        // 9,600 ns per frame at 100,000 frames/s: the core was 96 % busy.
        not_judged(
            t2(
                cost(Mode::Xdp, 9_600.0, "offered"),
                cost(Mode::Kernel, 1000.0, "offered"),
            ),
            "the receive core was saturated, not a cost",
        );
        not_judged(
            t2(
                cost(Mode::Xdp, 900.0, "offered"),
                cost(Mode::Kernel, 1000.0, "receiver"),
            ),
            "the fixed rate was not carried",
        );
        not_judged(
            t2(
                cost(Mode::Xdp, 900.0, "generator"),
                cost(Mode::Kernel, 1000.0, "offered"),
            ),
            "the fixed rate was not carried",
        );
        let missed = t2(
            cost(Mode::Xdp, 1100.0, "offered"),
            cost(Mode::Kernel, 1000.0, "offered"),
        );
        assert_eq!(missed.verdict, Verdict::Missed);
    }
}
