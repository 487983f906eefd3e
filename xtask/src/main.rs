//! `cargo xtask …`: orchestration only. Builds the binaries and runs them; the work itself
//! lives in the `xmacvlan` and `xmacvlan-bench` crates so tests can call it too.
use std::process::ExitCode;

mod bench;
mod cargo;
mod deps;
mod run;
mod test;
mod vm;

const USAGE: &str = "\
usage: cargo xtask <command> [options] [-- program options]

commands:
  run        run xmacvlan: the namespace lab by default, or `-- --iface IF --config FILE`
  test       the test suite: lints, unit and namespace integration tests (root), VM tests
             (`--no-vm` skips the VM part)
  bench      compare the anchors (XDP_DROP, AF_XDP rxdrop, testpmd) and the xdp, user and
             kernel demux modes in the lab (about 22 minutes; `--quick` under one); results
             under target/bench/
  vm-test    integration tests inside a VM with a stock Debian kernel (802.1Q)
  deps       install the system packages the build and the tests need (Debian/Ubuntu, root)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "run" => run::run(rest),
        "test" => test::run_all(rest),
        "bench" => bench::run(rest),
        "vm-test" => vm::run(rest),
        "deps" => deps::ensure(true),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
