//! The Markdown tables that judge a run: the zero-loss capacities and the targets.
use std::fmt::Write as _;

use super::Results;
use super::capacity::{GENERATOR_HEADROOM, LOSS_BOUND};

/// The capacities: median over repetitions, the spread, and whether the generator had room.
pub(super) fn capacity_table(s: &mut String, results: &Results) {
    writeln!(
        s,
        "\nZero-loss capacity: the highest offered rate with under {:.1} % loss, by bisection \
         on the offered rate (64 B). A row is flagged when the generator could not offer \
         {GENERATOR_HEADROOM}x the capacity: the bound may then be the generator's. The \
         anchors: `ceiling` (XDP_DROP) is the most any mode could carry, `rxdrop` (an AF_XDP \
         socket recycling every frame unread) the most any mode delivering into sockets \
         could.\n",
        LOSS_BOUND * 100.0
    )
    .ok();
    writeln!(
        s,
        "| mode | endpoints | capacity Mpps | min Mpps | max Mpps | repetitions | generator max Mpps | flag |"
    ).ok();
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|").ok();
    for c in &results.capacity {
        writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} | {:.3} | {} |",
            c.mode.name(),
            c.endpoints,
            c.capacity_pps / 1e6,
            c.min_pps / 1e6,
            c.max_pps / 1e6,
            c.repetitions.len(),
            c.generator_max_pps / 1e6,
            if c.generator_limited {
                "generator-limited"
            } else {
                ""
            },
        )
        .ok();
    }
}

/// Each target, what this run measured, and the verdict.
pub(super) fn targets_table(s: &mut String, results: &Results) {
    writeln!(s, "\nTargets, judged from this run:\n").ok();
    writeln!(s, "| # | target | measured | verdict |").ok();
    writeln!(s, "|---|---|---|---|").ok();
    for t in &results.targets {
        writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.id,
            t.goal,
            t.measured,
            t.verdict.name()
        )
        .ok();
    }
}
