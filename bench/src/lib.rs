//! The traffic generator, the namespace lab, and the demux-mode comparison.
//! Lab-only code with `unsafe` lives here, not in the library: the generator's AF_XDP TX
//! socket (`xsk_tx`) and the kernel baseline's packet sockets (`afpacket`).
#[allow(unsafe_code)]
pub mod afpacket;
pub mod apps;
pub mod background;
pub mod compare;
pub mod flow;
pub mod generator;
pub mod ingress;
pub mod lab;
pub mod placed;
pub mod round_trip;
pub mod scenario;
pub mod test_frame;
#[allow(unsafe_code)]
pub mod xsk_tx;
