//! Compiles the lab's feed program (ebpf/feed.bpf.c) with clang; src/ingress.rs embeds it.
use std::path::PathBuf;

#[path = "../ebpf/build_support.rs"]
mod build_support;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo::rerun-if-changed=../ebpf/build_support.rs");
    build_support::compile_bpf(&manifest.join("ebpf/feed.bpf.c"), &out.join("feed.bpf.o"));
}
