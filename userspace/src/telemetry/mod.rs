//! What the dataplane reports: run reports, latency histograms, CPU accounting, exports.
pub mod cpu;
pub mod hgrm;
pub mod live;
pub mod report;
