//! Compiles the C XDP classifier (ebpf/) with clang and embeds the object in the crate, and
//! records the C layout of the shared ABI header so src/abi.rs can check its mirror.
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &str = "apt-get install -y clang llvm libbpf-dev";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest.join("../ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for file in ["classifier.bpf.c", "xmacvlan_abi.h", "abi_layout.c"] {
        println!("cargo::rerun-if-changed={}", ebpf.join(file).display());
    }
    println!("cargo::rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());

    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "libbpf headers (/usr/include/bpf/bpf_helpers.h) are missing; install them: {PACKAGES}"
        ));
    }
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    run(
        Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-Wall",
                "-Werror",
                "-target",
                "bpf",
                &format!("-D__TARGET_ARCH_{}", target_arch_define()),
                &multiarch,
            ])
            .arg("-c")
            .arg(ebpf.join("classifier.bpf.c"))
            .arg("-o")
            .arg(out.join("classifier.bpf.o")),
        &clang,
    );

    let layout_bin = out.join("abi_layout");
    run(
        Command::new(&clang)
            .arg(&multiarch)
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

fn target_arch_define() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    }
}

fn run(cmd: &mut Command, clang: &str) {
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!("{cmd:?} failed with {status}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: the XDP classifier is C compiled with clang; install it: {PACKAGES}"
        )),
        Err(e) => fail(&format!("{cmd:?}: {e}")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
