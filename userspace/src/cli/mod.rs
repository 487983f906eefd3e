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
        default_value = crate::config::DEFAULT_DATA_ROOT,
        env = "XMACVLAN_DATA_ROOT"
    )]
    pub data_root: PathBuf,
    /// The daemon's control socket (for `stats`, and so `endpoint create|rm` reach a running
    /// daemon).
    #[arg(
        long = "control-socket",
        global = true,
        default_value = crate::config::DEFAULT_CONTROL_SOCKET,
        env = "XMACVLAN_CONTROL_SOCKET"
    )]
    pub control_socket: PathBuf,
}

pub mod control;
pub mod down;
pub mod run;
pub mod stats;
pub mod view;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage macvlan networks (Docker's `network create|ls|inspect|rm`).
    #[command(subcommand)]
    Network(control::NetworkCommand),
    /// Manage endpoints: a container namespace's macvlan on a network.
    #[command(subcommand)]
    Endpoint(control::EndpointCommand),
    /// Run the daemon: serve the recorded endpoints on the fast path, answer the CLI, until SIGTERM.
    Daemon(crate::daemon::run::DaemonArgs),
    /// Show the running daemon's counters, rates (--watch) or an endpoint's latency histogram.
    Stats(stats::StatsArgs),
    /// Check privileges, kernel features and interfaces; explain what stops frames and how to fix it.
    Doctor(crate::doctor::DoctorArgs),
    /// Run the dataplane on a NIC with endpoints from a file, until Ctrl-C.
    Run(run::RunArgs),
    /// Detach the XDP classifier a stopped daemon left attached to IFACE, and remove its pins.
    Down(down::DownArgs),
}

pub fn main() -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = match Cli::command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            if let Some(hint) = docker_only_command(&args) {
                eprintln!("error: {hint}");
                std::process::exit(2);
            }
            e.exit()
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The daemon's config file names a data root and a socket too: only values given on the
    // command line (or in the environment) beat the file.
    let explicit = |id: &str| {
        let given = |m: &clap::ArgMatches| {
            matches!(
                m.value_source(id),
                Some(
                    clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
                )
            )
        };
        given(&matches) || matches.subcommand().is_some_and(|(_, sub)| given(sub))
    };
    let data_root_given = explicit("data_root");
    let socket_given = explicit("control_socket");
    match cli.command {
        Command::Run(mut args) => {
            args.control_socket = Some(cli.global.control_socket.clone());
            run::run(args)
        }
        Command::Doctor(mut args) => {
            if socket_given {
                args.control_socket = Some(cli.global.control_socket.clone());
            }
            crate::doctor::main(args)
        }
        Command::Network(cmd) => control::run_network(&cli.global, cmd),
        Command::Endpoint(cmd) => control::run_endpoint(&cli.global, cmd),
        Command::Daemon(mut args) => {
            if socket_given {
                args.flags.control_socket = Some(cli.global.control_socket.clone());
            }
            crate::daemon::run::main(args, data_root_given.then(|| cli.global.data_root.clone()))
        }
        Command::Stats(args) => stats::main(&cli.global.control_socket, args),
        Command::Down(args) => down::main(&cli.global.control_socket, args),
    }
}

/// Docker commands xmacvlan spells differently: clap would suggest the closest subcommand
/// (`connect` -> `inspect`), which is the wrong way.
pub fn docker_only_command(args: &[std::ffi::OsString]) -> Option<String> {
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    let at = words.iter().position(|w| *w == "network")?;
    match words.get(at + 1).copied()? {
        "connect" => Some(
            "xmacvlan has no `network connect`: attach a container's namespace to a network with \
             `xmacvlan endpoint create --network NETWORK --netns NETNS NAME`"
                .into(),
        ),
        "disconnect" => Some(
            "xmacvlan has no `network disconnect`: detach an endpoint with `xmacvlan endpoint rm NAME`"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_connect_points_to_endpoint_create() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let hint = docker_only_command(&args(&["xmacvlan", "network", "connect", "n", "c"]));
        assert!(hint.unwrap().contains("xmacvlan endpoint create --network"));
        let hint = docker_only_command(&args(&["xmacvlan", "network", "disconnect", "n", "c"]));
        assert!(hint.unwrap().contains("xmacvlan endpoint rm"));
        assert_eq!(
            docker_only_command(&args(&["xmacvlan", "network", "ls"])),
            None
        );
    }
}
