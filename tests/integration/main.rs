//! The integration tests, one binary (as aya's `integration-test`): one module per area, each
//! test named `area::test`. Most need root and make their own namespaces; the VM areas
//! (`vm_vlan`, `vm_fastpath`, `control_vlan`, `vm_dispatcher` in the stock guest, `vm_nic` in the igb guest) are
//! `#[ignore]` on the host and run inside `cargo xtask vm-test`. `cargo xtask test` runs the areas one after another, each with its
//! own tally line; one area by hand: `sudo -E cargo test -p xmacvlan-tests --test integration
//! -- fastpath:: --skip vm_fastpath::` (libtest filters match substrings). Run areas one at a
//! time, as xtask does: some tests measure every thread of their process (`idle`). The
//! counting allocators of `no_alloc.rs` and `no_alloc_ports.rs` stay in binaries of their own.
mod bench_smoke;
mod churn;
mod classifier;
mod cli_run;
mod cni;
mod cni_podman;
mod control;
mod control_socket;
mod control_vlan;
mod daemon;
mod deploy;
mod differential;
mod docker;
mod docker_dhcp;
mod docker_sandbox;
mod docker_shim;
mod docker_state;
mod doctor;
mod fastpath;
mod idle;
mod isolation;
mod jumbo;
mod lab_ports;
mod live;
mod newcomer;
mod nic_changes;
mod port_edges;
mod ports;
mod ports_chains;
mod ports_daemon;
mod proptests;
mod proptests_memif;
mod restart;
mod soak;
mod user_demux;
mod vm_dispatcher;
mod vm_fastpath;
mod vm_nic;
mod vm_nic_daemon;
mod vm_vlan;
mod walkthrough;
