//! Compiling BPF C with clang, for the build scripts of the library (the classifier) and of
//! the benchmark (the lab's feed program). Each includes this file with `#[path]`.
use std::path::Path;
use std::process::Command;

pub(crate) const PACKAGES: &str = "apt-get install -y clang llvm libbpf-dev";

/// The C compiler: `$CLANG`, else `clang`.
pub(crate) fn clang() -> String {
    println!("cargo::rerun-if-env-changed=CLANG");
    std::env::var("CLANG").unwrap_or_else(|_| "clang".into())
}

/// `-I/usr/include/<arch>-linux-gnu`, where Debian keeps `asm/types.h`.
pub(crate) fn multiarch_include() -> String {
    format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH)
}

/// Compile `source` into the BPF object `object`, failing the build with the fix if the
/// toolchain or libbpf's headers are missing.
pub(crate) fn compile_bpf(source: &Path, object: &Path) {
    println!("cargo::rerun-if-changed={}", source.display());
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "libbpf headers (/usr/include/bpf/bpf_helpers.h) are missing; install them: {PACKAGES}"
        ));
    }
    let clang = clang();
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
                &multiarch_include(),
            ])
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(object),
        &clang,
    );
}

fn target_arch_define() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(crate) fn run(cmd: &mut Command, clang: &str) {
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!("{cmd:?} failed with {status}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: the XDP programs are C compiled with clang; install it: {PACKAGES}"
        )),
        Err(e) => fail(&format!("{cmd:?}: {e}")),
    }
}

pub(crate) fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
