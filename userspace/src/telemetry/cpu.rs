//! Per-core CPU time from `/proc/stat`, for "receive-core CPU ns per frame": sample the pinned
//! cores before and after a run, take [`busy_ns_between`], divide by the frames delivered.
//!
//! Busy time counts user, nice, system, irq and softirq: on the kernel path most receive work is
//! softirq, so leaving it out would flatter the baseline. Steal (time the hypervisor gave to
//! someone else) and iowait are not work done on the core and are kept out; idle is idle.
use anyhow::{Context, Result, bail};

/// One core's counters, in USER_HZ ticks since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreTimes {
    pub core: usize,
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CoreTimes {
    /// Ticks spent doing work on this core (guest time is already inside `user`).
    pub fn busy_ticks(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }
}

/// Counters of a chosen set of cores at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSample {
    /// In the order the cores were asked for.
    pub cores: Vec<CoreTimes>,
    /// Nanoseconds per tick (1e9 / USER_HZ).
    pub tick_ns: u64,
}

impl CpuSample {
    /// Read `/proc/stat` for `cores` (their numbers as the kernel gives them, `cpuN`).
    pub fn read(cores: &[usize]) -> Result<CpuSample> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&text, cores, user_hz()?)
    }

    /// Parse the text of `/proc/stat`; `user_hz` is the tick rate of its counters.
    pub fn parse(text: &str, cores: &[usize], user_hz: u64) -> Result<CpuSample> {
        if user_hz == 0 || user_hz > 1_000_000_000 {
            bail!("implausible USER_HZ {user_hz}");
        }
        let mut found = Vec::with_capacity(cores.len());
        for &core in cores {
            let label = format!("cpu{core}");
            let line = text
                .lines()
                .find(|l| l.split_ascii_whitespace().next() == Some(label.as_str()))
                .with_context(|| {
                    format!("/proc/stat has no line for core {core} (is the core online?)")
                })?;
            found.push(parse_line(core, line)?);
        }
        Ok(CpuSample {
            cores: found,
            tick_ns: 1_000_000_000 / user_hz,
        })
    }
}

fn parse_line(core: usize, line: &str) -> Result<CoreTimes> {
    let mut fields = line.split_ascii_whitespace().skip(1);
    let mut next = |name: &str| -> Result<u64> {
        let field = fields.next().with_context(|| {
            format!("/proc/stat line for core {core} is too short (no `{name}` field): `{line}`")
        })?;
        field
            .parse()
            .with_context(|| format!("/proc/stat core {core}: `{name}` is not a number: `{field}`"))
    };
    // Field order fixed by proc(5); steal exists since Linux 2.6.11.
    Ok(CoreTimes {
        core,
        user: next("user")?,
        nice: next("nice")?,
        system: next("system")?,
        idle: next("idle")?,
        iowait: next("iowait")?,
        irq: next("irq")?,
        softirq: next("softirq")?,
        steal: next("steal")?,
    })
}

fn user_hz() -> Result<u64> {
    match crate::sys::clock_ticks_per_second() {
        0 => bail!("sysconf(_SC_CLK_TCK) failed"),
        hz => Ok(hz),
    }
}

/// Busy nanoseconds (user, nice, system, irq, softirq) between two samples of the same cores,
/// summed over the cores. Fails if the samples cover different cores.
pub fn busy_ns_between(a: &CpuSample, b: &CpuSample) -> Result<u64> {
    let same_cores = a.cores.len() == b.cores.len()
        && a.cores.iter().zip(&b.cores).all(|(x, y)| x.core == y.core);
    if !same_cores || a.tick_ns != b.tick_ns {
        bail!("CPU samples cover different cores or tick rates; sample the same cores twice");
    }
    let ticks: u64 = a
        .cores
        .iter()
        .zip(&b.cores)
        // Counters only grow; saturate rather than wrap if a sample pair is given backwards.
        .map(|(x, y)| y.busy_ticks().saturating_sub(x.busy_ticks()))
        .sum();
    Ok(ticks * a.tick_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const STAT: &str = "\
cpu  1000 20 300 40000 50 6 70 8 0 0
cpu0 400 10 100 20000 25 3 30 4 0 0
cpu1 600 10 200 20000 25 3 40 4 0 0
cpu3 1 2 3 4 5 6 7 8 9 10
intr 12345 0 0
ctxt 999
";

    #[test]
    fn parses_requested_cores_in_order() {
        let s = CpuSample::parse(STAT, &[1, 0], 100).unwrap();
        assert_eq!(s.tick_ns, 10_000_000);
        assert_eq!(
            s.cores[0],
            CoreTimes {
                core: 1,
                user: 600,
                nice: 10,
                system: 200,
                idle: 20000,
                iowait: 25,
                irq: 3,
                softirq: 40,
                steal: 4,
            }
        );
        assert_eq!(s.cores[1].core, 0);
        assert_eq!(s.cores[1].busy_ticks(), 400 + 10 + 100 + 3 + 30);
        // `cpu` (the total) must not be taken for `cpu0`/`cpu1`, nor `cpu3` for `cpu`.
        assert_eq!(CpuSample::parse(STAT, &[3], 100).unwrap().cores[0].user, 1);
    }

    #[test]
    fn missing_core_and_short_line_are_clear_errors() {
        let err = CpuSample::parse(STAT, &[0, 2], 100).unwrap_err();
        assert!(format!("{err:#}").contains("no line for core 2"), "{err:#}");
        let short = "cpu0 1 2 3 4 5 6\n";
        let err = CpuSample::parse(short, &[0], 100).unwrap_err();
        assert!(format!("{err:#}").contains("no `softirq` field"), "{err:#}");
        let bad = "cpu0 1 2 x 4 5 6 7 8\n";
        let err = CpuSample::parse(bad, &[0], 100).unwrap_err();
        assert!(
            format!("{err:#}").contains("`system` is not a number"),
            "{err:#}"
        );
        assert!(CpuSample::parse(STAT, &[0], 0).is_err());
    }

    #[test]
    fn busy_ns_sums_non_idle_time_including_irq_and_softirq() {
        let a = CpuSample::parse(STAT, &[0, 1], 100).unwrap();
        let later = "\
cpu0 410 10 100 20500 99 4 35 50
cpu1 600 11 200 20000 25 3 42 4
";
        let b = CpuSample::parse(later, &[0, 1], 100).unwrap();
        // core 0: 10 user + 1 irq + 5 softirq; core 1: 1 nice + 2 softirq. Idle, iowait and
        // steal changes are not counted.
        assert_eq!(busy_ns_between(&a, &b).unwrap(), 19 * 10_000_000);
        let only0 = CpuSample::parse(later, &[0], 100).unwrap();
        assert!(busy_ns_between(&a, &only0).is_err());
    }

    #[test]
    fn live_busy_core_shows_busy_time_within_wall_time() {
        let Some(core) = core_affinity::get_core_ids().and_then(|ids| ids.last().copied()) else {
            eprintln!("skipped: cannot list cores");
            return;
        };
        let (before, after, wall) = std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(core), "pinning to {core:?}");
            let before = CpuSample::read(&[core.id]).unwrap();
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(200) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let after = CpuSample::read(&[core.id]).unwrap();
            (before, after, start.elapsed())
        })
        .join()
        .unwrap();
        let busy = busy_ns_between(&before, &after).unwrap();
        assert!(busy > 0, "a spinning core showed no busy time");
        // Tick granularity can add a tick at each end; the bound is loose on purpose.
        let bound = wall.as_nanos() as u64 * 3 / 2 + 2 * before.tick_ns;
        assert!(busy <= bound, "busy {busy} ns over {wall:?} wall");
    }
}
