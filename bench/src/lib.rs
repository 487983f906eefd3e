//! The traffic generator, the namespace lab, and (issue 4) the demux-mode comparison.
pub mod apps;
pub mod background;
pub mod compare;
pub mod generator;
pub mod lab;
pub mod round_trip;
pub mod scenario;
pub mod test_frame;
// The generator's TX socket drives xsk-rs rings and UMEM memory directly; each unsafe
// block carries a `// SAFETY:` line.
#[allow(unsafe_code)]
pub mod xsk_tx;
