//! A memif port connected in-process, without sockets: the test runs the server's handshake
//! on a region it made, gets the port the daemon would hand the dataplane, and keeps the
//! rings to play the client by hand (hostile descriptors included).
use std::sync::Arc;

use xmacvlan::memif::ServerPort;
use xmacvlan::memif::handshake::{Handshake, Limits, ServerConfig, Step};
use xmacvlan::memif::shm::{Region, Ring};
use xmacvlan::memif::sock;
use xmacvlan::memif::wire::{self, AddRegion, AddRing, Init, Msg, VERSION};

/// The server's configuration for these ports: endpoint `ep`, no secret, default limits.
pub fn server() -> ServerConfig {
    ServerConfig {
        name: "ep".into(),
        secret: None,
        limits: Limits::default(),
    }
}

/// A port over a sealed region of `region_size` bytes with rings of `1 << log2`
/// descriptors, C2S at offset 0 and S2C at `s2c_at`; the descriptors are the test's to set.
pub fn handshake_port(
    log2: u8,
    region_size: u64,
    s2c_at: u32,
) -> (ServerPort, Ring, Ring, Arc<Region>) {
    let region = Arc::new(Region::create("raw memif", region_size as usize).unwrap());
    let c2s = Ring::new(region.clone(), 0, log2).unwrap();
    let s2c = Ring::new(region.clone(), s2c_at as u64, log2).unwrap();
    c2s.init();
    s2c.init();
    let mut hs = Handshake::new(server());
    let init = Init {
        version: VERSION,
        id: 0,
        mode: 0,
        secret: [0; 24],
        name: wire::name_field("raw"),
    };
    assert!(matches!(
        hs.on_message(Msg::Init(init), None),
        Ok(Step::Reply(Msg::Ack))
    ));
    let fd = region.fd().try_clone_to_owned().unwrap();
    hs.on_message(
        Msg::AddRegion(AddRegion {
            index: 0,
            size: region_size,
        }),
        Some(fd),
    )
    .unwrap();
    for (flags, offset) in [(wire::ADD_RING_FLAG_C2S, 0), (0, s2c_at)] {
        let ring = AddRing {
            flags,
            index: 0,
            region: 0,
            offset,
            log2_ring_size: log2,
            private_hdr_size: 0,
        };
        hs.on_message(Msg::AddRing(ring), Some(sock::eventfd().unwrap()))
            .unwrap();
    }
    match hs.on_message(Msg::Connect { if_name: [0; 32] }, None) {
        Ok(Step::Connected { port, .. }) => (port, c2s, s2c, region),
        _ => panic!("no connection"),
    }
}
