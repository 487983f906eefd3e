//! `xmacvlan network …` and `xmacvlan endpoint …`, with Docker's flag names: clap types and
//! dispatch to the library. `inspect` prints JSON, `ls` a table or, with `--format json`, a
//! JSON array (see [`super::view`]).
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::GlobalArgs;
use super::view::{Format, endpoint_row, endpoint_view, network_row, network_view, print_rows};
use crate::control::State;
use crate::control::endpoint::{self, EndpointCreate, Removed};
use crate::control::network::{self, NetworkCreate};
use crate::control::provision::Removal;
use crate::ipc::Notified;
use crate::ipc::protocol::{Answer, Request};
use crate::netlink::Netlink;

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a macvlan network on a parent interface (IF, or IF.VID for an 802.1Q VLAN).
    Create(NetworkCreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks as JSON, with their endpoints and any drift from the kernel.
    Inspect(InspectArgs),
    /// Remove networks (their endpoints must be removed first).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct NetworkCreateArgs {
    /// Network name (letters, digits, `_.-`).
    pub name: String,
    /// Driver: only `macvlan`.
    #[arg(short = 'd', long, default_value = "macvlan")]
    pub driver: String,
    /// Subnet in CIDR form (repeatable: IPv4 and IPv6).
    #[arg(long)]
    pub subnet: Vec<String>,
    /// Gateway of the subnet containing it (default: the subnet's first address).
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Allocate endpoint addresses from this sub-range of a subnet.
    #[arg(long)]
    pub ip_range: Vec<String>,
    /// NAME=IP never handed out to endpoints (`host_shim=IP` is the host shim's address).
    #[arg(long)]
    pub aux_address: Vec<String>,
    /// Driver options: parent=IF|IF.VID, macvlan_mode=bridge|private|vepa|passthru,
    /// host_shim=true, dhcp=true, mtu=N.
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// Add a macvlan in this namespace so the host can reach the endpoints.
    #[arg(long)]
    pub host_shim: bool,
    /// Endpoints lease their addresses from the segment's DHCP server (no --subnet).
    #[arg(long)]
    pub dhcp: bool,
    /// Accepted for Docker compatibility: an IPv6 --subnet is what enables IPv6.
    #[arg(long)]
    pub ipv6: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Only `json` (the default).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Attach a network namespace to a network: a macvlan named --ifname inside it.
    Create(EndpointCreateArgs),
    /// List endpoints.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show endpoints as JSON, with the device read back from the kernel and any drift.
    Inspect(InspectArgs),
    /// Remove endpoints; removing one that does not exist succeeds.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct EndpointCreateArgs {
    /// Endpoint name (letters, digits, `_.-`), e.g. the container's.
    pub name: String,
    /// Network name or id.
    #[arg(long)]
    pub network: String,
    /// Network namespace: a name under /run/netns (`ip netns add NAME`) or a path.
    #[arg(long)]
    pub netns: String,
    /// Interface name inside the namespace.
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
    /// IPv4 address (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// IPv6 address (default: the next free one).
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    /// MAC address (default: 02:42 and the IPv4 address, as Docker derives it).
    #[arg(long)]
    pub mac_address: Option<String>,
}

pub fn run_network(global: &GlobalArgs, cmd: NetworkCommand) -> Result<()> {
    execute_network(global, cmd, &mut std::io::stdout().lock())
}

pub fn run_endpoint(global: &GlobalArgs, cmd: EndpointCommand) -> Result<()> {
    execute_endpoint(global, cmd, &mut std::io::stdout().lock())
}

/// Parse a whole command line (`xmacvlan [--data-root DIR] network|endpoint …`) with the real
/// CLI and run it, writing to `out`: what tests use to type commands as a user would.
pub fn execute_args(argv: &[&str], out: &mut dyn Write) -> Result<()> {
    use clap::Parser;
    let cli = super::Cli::try_parse_from(argv)?;
    match cli.command {
        super::Command::Network(c) => execute_network(&cli.global, c, out),
        super::Command::Endpoint(c) => execute_endpoint(&cli.global, c, out),
        _ => bail!("not a `network` or `endpoint` command: {}", argv.join(" ")),
    }
}

/// [`run_network`] writing to `out` (tests read what a user would see).
pub fn execute_network(
    global: &GlobalArgs,
    cmd: NetworkCommand,
    out: &mut dyn Write,
) -> Result<()> {
    let root = global.data_root.as_path();
    match cmd {
        NetworkCommand::Create(a) => {
            if a.ipv6 && !a.subnet.iter().any(|s| s.contains(':')) {
                bail!("--ipv6 needs an IPv6 --subnet (e.g. --subnet 2001:db8:1::/64)");
            }
            let net = network::create(
                root,
                &NetworkCreate {
                    name: a.name,
                    driver: a.driver,
                    subnets: a.subnet,
                    gateways: a.gateway,
                    ip_ranges: a.ip_range,
                    aux_addresses: a.aux_address,
                    options: a.opt,
                    host_shim: a.host_shim,
                    dhcp: a.dhcp,
                },
            )?;
            writeln!(out, "{}", net.id)?;
        }
        NetworkCommand::Ls(a) => {
            let state = State::load(root)?;
            let rows: Vec<Value> = state
                .networks
                .iter()
                .map(|n| network_row(n, &state))
                .collect();
            print_rows(
                out,
                a.format,
                &rows,
                &[
                    ("NETWORK ID", "ID"),
                    ("NAME", "Name"),
                    ("DRIVER", "Driver"),
                    ("PARENT", "Parent"),
                    ("SUBNETS", "Subnets"),
                    ("ENDPOINTS", "Endpoints"),
                ],
            )?;
        }
        NetworkCommand::Inspect(a) => {
            json_only(a.format)?;
            let state = State::load(root)?;
            let nl = Netlink::new()?;
            let mut views = Vec::new();
            for name in &a.names {
                let Some(net) = state.network(name) else {
                    bail!("no such network `{name}`: see `xmacvlan network ls`");
                };
                views.push(network_view(&nl, &state, net)?);
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
        }
        NetworkCommand::Rm { names } => {
            for name in names {
                let net = network::remove(root, &name)?;
                writeln!(out, "{}", net.name)?;
            }
        }
    }
    Ok(())
}

/// [`run_endpoint`] writing to `out`.
pub fn execute_endpoint(
    global: &GlobalArgs,
    cmd: EndpointCommand,
    out: &mut dyn Write,
) -> Result<()> {
    let root = global.data_root.as_path();
    match cmd {
        EndpointCommand::Create(a) => {
            let ep = endpoint::create(
                root,
                &EndpointCreate {
                    name: a.name,
                    network: a.network,
                    netns: a.netns,
                    ifname: a.ifname,
                    ip: a.ip,
                    ip6: a.ip6,
                    mac: a.mac_address,
                },
            )?;
            let link = State::load(root)?
                .network(&ep.network)
                .map(|n| n.link.clone())
                .unwrap_or_default();
            if let Some(lease) = &ep.lease {
                eprintln!(
                    "{}: leased {} from DHCP server {} for {} s",
                    ep.name,
                    lease.cidr(),
                    lease.server,
                    lease.lease_s
                );
                if std::os::unix::net::UnixStream::connect(&global.control_socket).is_err() {
                    eprintln!(
                        "warning: {}: no daemon is running: the lease is renewed only once one \
                         runs (`xmacvlan daemon`)",
                        ep.name
                    );
                }
            }
            tell_daemon(
                &global.control_socket,
                &Request::Attach {
                    iface: link,
                    endpoint: ep.spec(),
                },
                &ep.name,
            );
            writeln!(out, "{}", ep.name)?;
        }
        EndpointCommand::Ls(a) => {
            let state = State::load(root)?;
            let rows: Vec<Value> = state.endpoints.iter().map(endpoint_row).collect();
            print_rows(
                out,
                a.format,
                &rows,
                &[
                    ("NAME", "Name"),
                    ("NETWORK", "Network"),
                    ("NETNS", "Netns"),
                    ("IFNAME", "Ifname"),
                    ("MAC ADDRESS", "MacAddress"),
                    ("IPV4 ADDRESS", "IPv4Address"),
                    ("IPV6 ADDRESS", "IPv6Address"),
                ],
            )?;
        }
        EndpointCommand::Inspect(a) => {
            json_only(a.format)?;
            let state = State::load(root)?;
            let mut views = Vec::new();
            for name in &a.names {
                let Some(ep) = state.endpoint(name) else {
                    bail!("no such endpoint `{name}`: see `xmacvlan endpoint ls`");
                };
                views.push(endpoint_view(&state, ep)?);
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
        }
        EndpointCommand::Rm { names } => {
            for name in names {
                // The fast path lets go first, so no frame is steered to a socket being closed.
                tell_daemon(
                    &global.control_socket,
                    &Request::Detach {
                        endpoint: name.clone(),
                    },
                    &name,
                );
                match endpoint::remove(root, &name)? {
                    Removed::Unknown => {
                        eprintln!("endpoint `{name}` does not exist: nothing to remove");
                    }
                    Removed::Endpoint(_, Removal::NotOurs(why)) => eprintln!("warning: {why}"),
                    Removed::Endpoint(_, _) => {}
                }
                writeln!(out, "{name}")?;
            }
        }
    }
    Ok(())
}

/// Tell a running daemon about an endpoint change. Without a daemon there is nothing to do (it
/// reads the state when it starts); a daemon that refuses is reported, and the kernel's macvlan
/// device keeps serving the endpoint.
fn tell_daemon(socket: &Path, request: &Request, endpoint: &str) {
    match crate::ipc::notify(socket, request) {
        Ok(Notified::NoDaemon) => {}
        Ok(Notified::Answered(Answer::Attached {
            fast_path: false, ..
        })) => eprintln!("{endpoint}: the daemon runs in demux-mode kernel: no fast path"),
        Ok(Notified::Answered(Answer::Attached { iface, .. })) => {
            eprintln!("{endpoint}: the running daemon attached it to the fast path on {iface}")
        }
        Ok(Notified::Answered(Answer::Detached { attached: true })) => {
            eprintln!("{endpoint}: the running daemon detached it from the fast path")
        }
        Ok(Notified::Answered(_)) => {}
        Err(e) => eprintln!(
            "warning: {endpoint}: the daemon at {} did not take the change: {e:#}; the endpoint \
             works through its kernel macvlan meanwhile (`xmacvlan doctor` explains why)",
            socket.display()
        ),
    }
}

fn json_only(format: Format) -> Result<()> {
    if format != Format::Json {
        bail!("inspect prints JSON only: drop --format or use --format json");
    }
    Ok(())
}
