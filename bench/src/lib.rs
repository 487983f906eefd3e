//! The traffic generator, the namespace lab, and (issue 4) the demux-mode comparison.
pub mod apps;
pub mod background;
pub mod compare;
pub mod generator;
pub mod lab;
pub mod round_trip;
pub mod scenario;
