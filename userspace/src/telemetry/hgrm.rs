//! HdrHistogram's percentile distribution in the `.hgrm` text form that the HdrHistogram
//! plotters read (the output of Java's `Histogram.outputPercentileDistribution`):
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!        1.023 0.000000000000          1           1.00
//!        ...
//!       42.111 1.000000000000       1000
//! #[Mean    =        5.104, StdDeviation   =        2.977]
//! #[Max     =       42.111, Total count    =         1000]
//! #[Buckets =           22, SubBuckets     =         2048]
//! ```
//!
//! Values are divided by a unit ratio (1000 turns nanoseconds into microseconds) and printed
//! with as many decimals as the histogram has significant digits.
use std::io;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

/// How to print the distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HgrmOptions {
    /// Recorded values are divided by this before printing.
    pub unit_ratio: f64,
    /// Percentile rows per halving of the distance to 100% (HdrHistogram's default is 5).
    pub ticks_per_half_distance: u32,
}

impl HgrmOptions {
    /// Values recorded in nanoseconds, printed in microseconds.
    pub const NS_TO_US: Self = Self {
        unit_ratio: 1000.0,
        ticks_per_half_distance: 5,
    };
}

impl Default for HgrmOptions {
    fn default() -> Self {
        Self {
            unit_ratio: 1.0,
            ticks_per_half_distance: 5,
        }
    }
}

/// Write `hist` as an `.hgrm` percentile distribution.
pub fn write_hgrm<W: io::Write>(
    out: &mut W,
    hist: &Histogram<u64>,
    opts: &HgrmOptions,
) -> io::Result<()> {
    let ratio = if opts.unit_ratio > 0.0 {
        opts.unit_ratio
    } else {
        1.0
    };
    let digits = usize::from(hist.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if !hist.is_empty() {
        let mut total = 0u64;
        for v in hist.iter_quantiles(opts.ticks_per_half_distance.max(1)) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / ratio;
            let quantile = v.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:12.digits$} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(out, "{value:12.digits$} {quantile:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if hist.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            hist.mean() / ratio,
            hist.stdev() / ratio,
            hist.max() as f64 / ratio,
        )
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.digits$}, Total count    = {:12}]",
        hist.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        sub_bucket_count(hist.sigfig())
    )
}

/// The `.hgrm` text of `hist`.
pub fn to_hgrm(hist: &Histogram<u64>, opts: &HgrmOptions) -> String {
    let mut out = Vec::new();
    write_hgrm(&mut out, hist, opts).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the writer prints ASCII only")
}

/// Sub-buckets per bucket for `sigfig` significant digits: the power of two at or above
/// 2 * 10^sigfig (HdrHistogram's own rule).
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2.0 * 10f64.powi(i32::from(sigfig));
    1u64 << (largest.log2().ceil() as u32)
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HgrmRow {
    pub value: f64,
    pub percentile: f64,
    pub total_count: u64,
}

/// A parsed `.hgrm` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Hgrm {
    pub rows: Vec<HgrmRow>,
    pub mean: f64,
    pub std_deviation: f64,
    pub max: f64,
    pub total_count: u64,
    pub buckets: u64,
    pub sub_buckets: u64,
}

/// Read `.hgrm` text back (to check what [`write_hgrm`] or another tool produced).
pub fn parse_hgrm(text: &str) -> Result<Hgrm> {
    let mut rows = Vec::new();
    let mut footer = std::collections::HashMap::new();
    let mut saw_header = false;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("Value") {
            saw_header = true;
            continue;
        }
        if let Some(inner) = line.strip_prefix("#[") {
            let inner = inner
                .strip_suffix(']')
                .with_context(|| format!("line {n}: footer without closing ]"))?;
            for part in inner.split(',') {
                let (key, value) = part
                    .split_once('=')
                    .with_context(|| format!("line {n}: footer entry `{part}` has no ="))?;
                footer.insert(key.trim().to_string(), value.trim().to_string());
            }
            continue;
        }
        if !saw_header {
            bail!("line {n}: a row before the `Value Percentile ...` header");
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(3..=4).contains(&fields.len()) {
            bail!("line {n}: expected 3 or 4 columns, found {}", fields.len());
        }
        let number = |i: usize| -> Result<f64> {
            fields[i]
                .parse::<f64>()
                .with_context(|| format!("line {n}: column {} is not a number", i + 1))
        };
        rows.push(HgrmRow {
            value: number(0)?,
            percentile: number(1)?,
            total_count: fields[2]
                .parse()
                .with_context(|| format!("line {n}: TotalCount is not a whole number"))?,
        });
    }
    let get = |key: &str| -> Result<&String> {
        footer
            .get(key)
            .with_context(|| format!("footer has no `{key}`"))
    };
    let float = |key: &str| -> Result<f64> {
        get(key)?
            .parse()
            .with_context(|| format!("footer `{key}` is not a number"))
    };
    let int = |key: &str| -> Result<u64> {
        get(key)?
            .parse()
            .with_context(|| format!("footer `{key}` is not a whole number"))
    };
    Ok(Hgrm {
        rows,
        mean: float("Mean")?,
        std_deviation: float("StdDeviation")?,
        max: float("Max")?,
        total_count: int("Total count")?,
        buckets: int("Buckets")?,
        sub_buckets: int("SubBuckets")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_value_matches_the_reference_layout_exactly() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record(1000).unwrap();
        let text = to_hgrm(&h, &HgrmOptions::NS_TO_US);
        let expected = format!(
            "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
             \x20      1.000 0.000000000000          1           1.00\n\
             \x20      1.000 1.000000000000          1\n\
             #[Mean    =        1.000, StdDeviation   =        0.000]\n\
             #[Max     =        1.000, Total count    =            1]\n\
             #[Buckets = {:12}, SubBuckets     =         2048]\n",
            h.buckets()
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn output_parses_and_counts_match() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        // 1..=10000 µs in ns, plus a tail of 50 slow frames at 5 ms.
        for us in 1..=10_000u64 {
            h.record(us * 1000).unwrap();
        }
        h.record_n(5_000_000, 50).unwrap();
        let text = to_hgrm(&h, &HgrmOptions::NS_TO_US);
        let parsed = parse_hgrm(&text).unwrap();

        assert_eq!(parsed.total_count, h.len());
        assert_eq!(parsed.total_count, 10_050);
        let last = parsed.rows.last().unwrap();
        assert_eq!(last.total_count, h.len());
        assert_eq!(last.percentile, 1.0);
        assert!((parsed.max - h.max() as f64 / 1000.0).abs() < 0.001);
        assert!((parsed.max - 10_000.0).abs() / 10_000.0 < 0.001);
        assert!((parsed.mean - h.mean() / 1000.0).abs() < 0.001);
        assert!((parsed.std_deviation - h.stdev() / 1000.0).abs() < 0.001);
        assert_eq!(u64::from(h.buckets()), parsed.buckets);
        assert_eq!(parsed.sub_buckets, 2048);
        // Rows climb in value, percentile and count, and agree with the histogram.
        for pair in parsed.rows.windows(2) {
            assert!(pair[0].value <= pair[1].value);
            assert!(pair[0].percentile <= pair[1].percentile);
            assert!(pair[0].total_count <= pair[1].total_count);
        }
        for row in &parsed.rows {
            let below = h.count_between(0, (row.value * 1000.0).round() as u64);
            assert_eq!(row.total_count, below, "row {row:?}");
        }
        let median = parsed.rows.iter().find(|r| r.percentile >= 0.5).unwrap();
        assert!(
            (median.value - h.value_at_quantile(0.5) as f64 / 1000.0).abs() < 0.01,
            "{median:?}"
        );
    }

    #[test]
    fn empty_histogram_has_a_footer_and_no_rows() {
        let h = Histogram::<u64>::new(2).unwrap();
        let parsed = parse_hgrm(&to_hgrm(&h, &HgrmOptions::default())).unwrap();
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.total_count, 0);
        assert_eq!(parsed.sub_buckets, 256);
    }

    #[test]
    fn parser_rejects_broken_files() {
        assert!(parse_hgrm("1.0 0.5 3\n").is_err(), "row before header");
        let no_footer = "Value Percentile TotalCount 1/(1-Percentile)\n1.0 0.5 3 2.0\n";
        let e = parse_hgrm(no_footer).unwrap_err();
        assert!(e.to_string().contains("footer has no `Mean`"), "{e}");
    }
}
