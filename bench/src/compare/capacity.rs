//! Zero-loss capacity: the highest offered rate a mode carries losing under 0.1 % of the
//! frames, found by bisection on the offered rate. Flat-out throughput measures how much gets
//! through an overloaded receiver (and rewards whoever drops cheapest); capacity is what a
//! user can count on.
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::measure::{self, Measurement, Mode, Setup};

/// Loss at or above this makes a probe lossy.
pub const LOSS_BOUND: f64 = 0.001;

/// A row whose generator could not offer this much more than the capacity found is flagged:
/// the bound may be the generator's, not the receiver's.
pub const GENERATOR_HEADROOM: f64 = 1.2;

/// One probe of a bisection.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub offered_pps: f64,
    /// What reached the NIC (below `offered_pps` when the generator could not keep up).
    pub reached_pps: f64,
    pub loss: f64,
}

/// One bisection's result.
#[derive(Debug, Clone, Serialize)]
pub struct Bisection {
    /// The highest rate probed without loss (0: none was).
    pub capacity_pps: f64,
    pub probes: Vec<Probe>,
}

/// The capacity of one mode at one endpoint count, over repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityRow {
    pub mode: Mode,
    pub endpoints: usize,
    pub frame_size: usize,
    /// The median over repetitions, and the spread.
    pub capacity_pps: f64,
    pub min_pps: f64,
    pub max_pps: f64,
    /// The most that reached the NIC at this point, flat out or in a probe.
    pub generator_max_pps: f64,
    /// The generator could not offer `GENERATOR_HEADROOM` x the capacity.
    pub generator_limited: bool,
    pub repetitions: Vec<Bisection>,
}

/// Bisect between nothing and the generator's flat-out rate, `steps` probes. The first probe
/// is just under what flat out delivered (most runs end near it), the rest halve the bracket.
/// A lossless probe raises the floor to what reached the NIC, not what was asked.
pub fn bisect(
    setup: &Setup,
    mode: Mode,
    flat_out: &Measurement,
    steps: usize,
    duration: Duration,
) -> Result<Bisection> {
    let (mut lo, mut hi) = (0.0_f64, flat_out.reached_nic_pps);
    let mut probes = Vec::with_capacity(steps);
    if flat_out.loss < LOSS_BOUND {
        // Flat out lost nothing: the generator, not the receiver, was the bound.
        lo = flat_out.reached_nic_pps;
    }
    for step in 0..steps {
        if lo >= hi * 0.99 {
            break;
        }
        let offered = if step == 0 && lo == 0.0 {
            0.95 * flat_out.delivered_pps
        } else {
            (lo + hi) / 2.0
        };
        let m = measure::measure(setup, mode, Some(offered.max(1.0) as u64), duration)?;
        probes.push(Probe {
            offered_pps: offered,
            reached_pps: m.reached_nic_pps,
            loss: m.loss,
        });
        if m.loss < LOSS_BOUND && m.misdelivered == 0 {
            lo = lo.max(m.reached_nic_pps.min(offered));
        } else {
            hi = offered;
        }
    }
    Ok(Bisection {
        capacity_pps: lo,
        probes,
    })
}

/// The row of one mode's bisections at one point.
pub fn row(flat_out: &Measurement, repetitions: Vec<Bisection>) -> CapacityRow {
    let mut caps: Vec<f64> = repetitions.iter().map(|b| b.capacity_pps).collect();
    caps.sort_by(f64::total_cmp);
    let capacity_pps = caps.get(caps.len() / 2).copied().unwrap_or(0.0);
    let generator_max_pps = repetitions
        .iter()
        .flat_map(|b| b.probes.iter().map(|p| p.reached_pps))
        .fold(flat_out.reached_nic_pps, f64::max);
    CapacityRow {
        mode: flat_out.mode,
        endpoints: flat_out.endpoints,
        frame_size: flat_out.frame_size,
        capacity_pps,
        min_pps: caps.first().copied().unwrap_or(0.0),
        max_pps: caps.last().copied().unwrap_or(0.0),
        generator_max_pps,
        generator_limited: generator_max_pps < GENERATOR_HEADROOM * capacity_pps,
        repetitions,
    }
}

/// Which modes get a capacity at `endpoints`: every mode at the base count (T1), the demux
/// modes also at the smallest and largest counts (T4).
pub fn modes_at(endpoints: usize, base: usize, counts: &[usize], modes: &[Mode]) -> Vec<Mode> {
    let smallest = counts.iter().copied().min() == Some(endpoints);
    let largest = counts.iter().copied().max() == Some(endpoints);
    modes
        .iter()
        .copied()
        .filter(|&m| {
            endpoints == base || ((smallest || largest) && matches!(m, Mode::Xdp | Mode::User))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_count_gets_every_mode_the_extremes_the_demux_modes() {
        let counts = [1, 16, 256, 1024];
        let all = super::super::ALL_MODES;
        assert_eq!(modes_at(16, 16, &counts, &all), all.to_vec());
        assert_eq!(modes_at(1, 16, &counts, &all), [Mode::Xdp, Mode::User]);
        assert_eq!(modes_at(1024, 16, &counts, &all), [Mode::Xdp, Mode::User]);
        assert!(modes_at(256, 16, &counts, &all).is_empty());
    }
}
