//! `xmacvlan network …` and `xmacvlan endpoint …`, with Docker's flag names. `inspect`
//! prints JSON (Docker's key names where Docker has the concept), `ls` a table or, with
//! `--format json`, a JSON array.
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::endpoint::{self, EndpointCreate, Removed};
use super::model::{Endpoint, Network};
use super::network::{self, NetworkCreate};
use super::provision::{Removal, read_endpoint};
use super::{State, drift};
use crate::abi::MacDisplay;
use crate::cli::GlobalArgs;
use crate::netlink::Netlink;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

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
    /// Driver options: parent=IF|IF.VID, macvlan_mode=bridge|private|vepa|passthru, host_shim=true.
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// Add a macvlan in this namespace so the host can reach the endpoints.
    #[arg(long)]
    pub host_shim: bool,
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
    pub name: String,
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
    execute_network(&global.data_root, cmd, &mut std::io::stdout().lock())
}

pub fn run_endpoint(global: &GlobalArgs, cmd: EndpointCommand) -> Result<()> {
    execute_endpoint(&global.data_root, cmd, &mut std::io::stdout().lock())
}

/// Parse a whole command line (`xmacvlan [--data-root DIR] network|endpoint …`) with the real
/// CLI and run it, writing to `out`: what tests use to type commands as a user would.
pub fn execute_args(argv: &[&str], out: &mut dyn Write) -> Result<()> {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from(argv)?;
    match cli.command {
        crate::cli::Command::Network(c) => execute_network(&cli.global.data_root, c, out),
        crate::cli::Command::Endpoint(c) => execute_endpoint(&cli.global.data_root, c, out),
        _ => bail!("not a `network` or `endpoint` command: {}", argv.join(" ")),
    }
}

/// [`run_network`] writing to `out` (tests read what a user would see).
pub fn execute_network(root: &Path, cmd: NetworkCommand, out: &mut dyn Write) -> Result<()> {
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
pub fn execute_endpoint(root: &Path, cmd: EndpointCommand, out: &mut dyn Write) -> Result<()> {
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

fn json_only(format: Format) -> Result<()> {
    if format != Format::Json {
        bail!("inspect prints JSON only: drop --format or use --format json");
    }
    Ok(())
}

fn print_rows(
    out: &mut dyn Write,
    format: Format,
    rows: &[Value],
    columns: &[(&str, &str)],
) -> Result<()> {
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(rows)?)?;
        return Ok(());
    }
    let cell = |row: &Value, key: &str| match &row[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|(title, key)| {
            rows.iter()
                .map(|r| cell(r, key).len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   "));
            }
        }
        l
    };
    writeln!(
        out,
        "{}",
        line(columns.iter().map(|(t, _)| t.to_string()).collect())
    )?;
    for row in rows {
        writeln!(
            out,
            "{}",
            line(columns.iter().map(|(_, k)| cell(row, k)).collect())
        )?;
    }
    Ok(())
}

fn network_row(net: &Network, state: &State) -> Value {
    json!({
        "ID": net.id[..12],
        "Name": net.name,
        "Driver": net.driver,
        "Parent": net.parent,
        "Subnets": net.subnets.iter().map(|s| s.subnet.to_string()).collect::<Vec<_>>(),
        "Endpoints": state.endpoints_of(&net.name).count(),
    })
}

fn endpoint_row(ep: &Endpoint) -> Value {
    json!({
        "Name": ep.name,
        "Network": ep.network,
        "Netns": ep.netns,
        "Ifname": ep.ifname,
        "MacAddress": MacDisplay(&ep.mac).to_string(),
        "IPv4Address": address(ep, true),
        "IPv6Address": address(ep, false),
    })
}

fn address(ep: &Endpoint, v4: bool) -> String {
    ep.addresses
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn gateway(ep: &Endpoint, v4: bool) -> String {
    ep.gateways
        .iter()
        .find(|g| g.is_ipv4() == v4)
        .map(IpAddr::to_string)
        .unwrap_or_default()
}

/// Docker's `network inspect` layout, plus the parent, the host shim and the drift.
fn network_view(nl: &Netlink, state: &State, net: &Network) -> Result<Value> {
    let mut drifts = drift::network(nl, net)?;
    let mut endpoints = serde_json::Map::new();
    for ep in state.endpoints_of(&net.name) {
        drifts.extend(drift::endpoint(ep)?);
        endpoints.insert(
            ep.name.clone(),
            json!({
                "Name": ep.name,
                "MacAddress": MacDisplay(&ep.mac).to_string(),
                "IPv4Address": address(ep, true),
                "IPv6Address": address(ep, false),
                "Netns": ep.netns,
                "Ifname": ep.ifname,
            }),
        );
    }
    Ok(json!({
        "Name": net.name,
        "Id": net.id,
        "Created": rfc3339(net.created),
        "Scope": "local",
        "Driver": net.driver,
        "EnableIPv6": net.subnets.iter().any(|s| !s.subnet.is_ipv4()),
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": net.subnets.iter().map(|s| json!({
                "Subnet": s.subnet.to_string(),
                "IPRange": s.ip_range.map(|r| r.to_string()),
                "Gateway": s.gateway.to_string(),
                "AuxiliaryAddresses": s.aux_addresses,
            })).collect::<Vec<_>>(),
        },
        "Options": net.options,
        "Parent": {
            "Name": net.parent,
            "Link": net.link,
            "VlanId": net.vlan,
            "CreatedByXmacvlan": net.created_parent,
        },
        "MacvlanMode": net.mode.as_str(),
        "HostShim": net.host_shim.as_ref().map(|s| json!({
            "Ifname": s.ifname,
            "MacAddress": MacDisplay(&s.mac).to_string(),
            "Addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "Routes": s.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        "Endpoints": endpoints,
        "Drift": drifts,
    }))
}

fn endpoint_view(state: &State, ep: &Endpoint) -> Result<Value> {
    let device = read_endpoint(ep)?.map(|d| {
        json!({
            "Kind": d.link.kind,
            "MacvlanMode": d.link.macvlan_mode.map(|m| format!("{m:?}").to_lowercase()),
            "MacAddress": MacDisplay(&d.link.mac).to_string(),
            "Mtu": d.link.mtu,
            "Up": d.link.up,
            "Addresses": d.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>(),
            "Routes": d.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    });
    Ok(json!({
        "Name": ep.name,
        "Network": ep.network,
        "NetworkID": state.network(&ep.network).map(|n| n.id.clone()),
        "VlanId": ep.vlan,
        "MacAddress": MacDisplay(&ep.mac).to_string(),
        "IPv4Address": address(ep, true),
        "IPv6Address": address(ep, false),
        "Gateway": gateway(ep, true),
        "IPv6Gateway": gateway(ep, false),
        "Netns": ep.netns,
        "Ifname": ep.ifname,
        "Device": device,
        "Drift": drift::endpoint(ep)?,
    }))
}

/// `2026-11-22T12:00:00Z` from Unix seconds (UTC; civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_351_661), "2026-11-22T12:47:41Z");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            json!({"A": "x", "B": ["1", "2"]}),
            json!({"A": "longer", "B": []}),
        ];
        let mut out = Vec::new();
        print_rows(&mut out, Format::Table, &rows, &[("A", "A"), ("B", "B")]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A        B\nx        1,2\nlonger   \n"
        );
    }
}
