//! The `xmacvlan` command line: a thin shell over library calls.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "xmacvlan",
    version,
    about = "AF_XDP fast path for macvlan-style container networks",
    long_about = "xmacvlan steers frames for macvlan containers by (802.1Q VLAN id, destination MAC) \
                  from an XDP program straight into AF_XDP sockets, and provisions the usual \
                  macvlan/VLAN kernel objects so everything else keeps working through the kernel."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options valid before any subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Where networks and endpoints are persisted.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/xmacvlan",
        env = "XMACVLAN_DATA_ROOT"
    )]
    pub data_root: PathBuf,
}

pub mod run;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the dataplane on a NIC with endpoints from a file, until Ctrl-C.
    Run(run::RunArgs),
    /// Check privileges, kernel features and interfaces; explain what stops frames and how to fix it.
    Doctor(crate::doctor::DoctorArgs),
    /// Manage macvlan networks (Docker's `network create|ls|inspect|rm`).
    #[command(subcommand)]
    Network(crate::control::cli::NetworkCommand),
    /// Manage endpoints: a container namespace's macvlan on a network.
    #[command(subcommand)]
    Endpoint(crate::control::cli::EndpointCommand),
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Doctor(args) => crate::doctor::main(args),
        Command::Network(cmd) => crate::control::cli::run_network(&cli.global, cmd),
        Command::Endpoint(cmd) => crate::control::cli::run_endpoint(&cli.global, cmd),
    }
}
