//! Compiles the C XDP classifier (ebpf/) with clang and embeds the object in the crate, and
//! records the C layout of the shared ABI header so src/abi.rs can check its mirror.
use std::path::PathBuf;
use std::process::Command;

#[path = "../ebpf/build_support.rs"]
mod build_support;
use build_support::{clang, compile_bpf, fail, multiarch_include, run};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for file in ["xmacvlan_abi.h", "abi_layout.c", "build_support.rs"] {
        println!("cargo::rerun-if-changed={}", ebpf.join(file).display());
    }
    compile_bpf(
        &ebpf.join("classifier.bpf.c"),
        &out.join("classifier.bpf.o"),
    );

    let clang = clang();
    let layout_bin = out.join("abi_layout");
    run(
        Command::new(&clang)
            .arg(multiarch_include())
            .arg(ebpf.join("abi_layout.c"))
            .arg("-o")
            .arg(&layout_bin),
        &clang,
    );
    let printed = Command::new(&layout_bin)
        .output()
        .unwrap_or_else(|e| fail(&format!("running {}: {e}", layout_bin.display())));
    std::fs::write(out.join("abi_layout.rs"), printed.stdout).unwrap();
}
