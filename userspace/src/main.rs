fn main() {
    if let Err(e) = xmacvlan::cli::main() {
        eprintln!("xmacvlan: error: {e:#}");
        std::process::exit(1);
    }
}
