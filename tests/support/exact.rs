//! Exact-delivery checks shared by the fast-path tests (host and VM).
use xmacvlan::dataplane::Finished;
use xmacvlan_bench::generator::{Stream, StreamKind};

/// Frames sent, summed over the streams `keep` selects.
pub fn sent_where(streams: &[Stream], sent: &[u64], keep: impl Fn(&Stream) -> bool) -> u64 {
    streams
        .iter()
        .zip(sent)
        .filter(|(s, _)| keep(s))
        .map(|(_, n)| n)
        .sum()
}

/// Every endpoint got exactly what was sent to it, each frame timed, nothing misdelivered or
/// dropped; returns the total delivered.
pub fn check_endpoints(finished: &Finished, streams: &[Stream], sent: &[u64]) -> u64 {
    let mut delivered = 0;
    for (i, e) in finished.endpoints.iter().enumerate() {
        let name = &e.spec.name;
        let expected = sent_where(streams, sent, |s| s.kind == StreamKind::Endpoint(i));
        assert_eq!(e.frames, expected, "endpoint {name} fast-path frames");
        assert_eq!(e.misdelivered, 0, "endpoint {name} misdelivered");
        assert_eq!(e.dropped, 0, "endpoint {name} dropped");
        assert_eq!(
            e.latency.len(),
            e.frames,
            "endpoint {name}: every frame timed"
        );
        delivered += e.frames;
    }
    delivered
}

/// Tests that need 802.1Q (VLAN devices) run inside `cargo xtask vm-test`, which sets
/// `XMACVLAN_IN_VM=1`; they also run on any host whose kernel has the `8021q` module loaded.
/// Elsewhere they fail, saying why: they never pass without having tested VLANs.
pub fn require_8021q(test: &str) {
    let in_vm = std::env::var_os("XMACVLAN_IN_VM").is_some_and(|v| v == "1");
    assert!(
        in_vm || std::path::Path::new("/proc/net/vlan").exists(),
        "{test} needs a kernel with 802.1Q (CONFIG_VLAN_8021Q / module 8021q, absent here): \
         run it inside the VM with `sudo -E cargo xtask vm-test`"
    );
}
