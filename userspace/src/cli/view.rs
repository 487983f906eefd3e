//! What `ls` and `inspect` print: table rows, and JSON views in Docker's layout (Docker's
//! key names where Docker has the concept) with the kernel's view and any drift added.
use std::io::Write;
use std::net::IpAddr;

use anyhow::Result;
use serde_json::{Value, json};

use crate::control::model::{Endpoint, Mode, Network};
use crate::control::provision::read_endpoint;
use crate::control::{State, drift};
use crate::ether::Mac;
use crate::netlink::Netlink;
use crate::telemetry::live::rfc3339;

/// `ls --format`: a table for people, JSON for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn print_rows(
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

pub fn network_row(net: &Network, state: &State) -> Value {
    json!({
        "ID": net.id[..12],
        "Name": net.name,
        "Driver": net.driver,
        "Parent": net.parent,
        "Subnets": net.subnets.iter().map(|s| s.subnet.to_string()).collect::<Vec<_>>(),
        "Endpoints": state.endpoints_of(&net.name).count(),
    })
}

pub fn endpoint_row(ep: &Endpoint) -> Value {
    json!({
        "Name": ep.name,
        "Network": ep.network,
        "Netns": ep.netns,
        "Ifname": ep.ifname,
        "MacAddress": Mac(ep.mac).to_string(),
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
pub fn network_view(nl: &Netlink, state: &State, net: &Network) -> Result<Value> {
    let mut drifts = drift::network(nl, net)?;
    let mut endpoints = serde_json::Map::new();
    for ep in state.endpoints_of(&net.name) {
        drifts.extend(drift::endpoint(ep, net.owner())?);
        endpoints.insert(
            ep.name.clone(),
            json!({
                "Name": ep.name,
                "MacAddress": Mac(ep.mac).to_string(),
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
            "Driver": if net.dhcp { "dhcp" } else { "default" },
            "Options": {},
            "Config": net.subnets.iter().map(|s| json!({
                "Subnet": s.subnet.to_string(),
                "IPRange": s.ip_range.map(|r| r.to_string()),
                "Gateway": s.gateway.to_string(),
                "AuxiliaryAddresses": s.aux_addresses,
            })).collect::<Vec<_>>(),
        },
        "Options": net.options,
        "Mtu": net.mtu,
        "Parent": {
            "Name": net.parent,
            "Link": net.link,
            "VlanId": net.vlan,
            "CreatedByXmacvlan": net.created_parent,
        },
        "MacvlanMode": net.mode.as_str(),
        "HostShim": net.host_shim.as_ref().map(|s| json!({
            "Ifname": s.ifname,
            "MacAddress": Mac(s.mac).to_string(),
            "Addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "Routes": s.routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        "Endpoints": endpoints,
        "Drift": drifts,
    }))
}

pub fn endpoint_view(state: &State, ep: &Endpoint) -> Result<Value> {
    let device = read_endpoint(ep)?.map(|d| {
        json!({
            "Kind": d.link.kind,
            "MacvlanMode": d.link.macvlan_mode.and_then(Mode::from_netlink).map(Mode::as_str),
            "MacAddress": Mac(d.link.mac).to_string(),
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
        "MacAddress": Mac(ep.mac).to_string(),
        "IPv4Address": address(ep, true),
        "IPv6Address": address(ep, false),
        "Gateway": gateway(ep, true),
        "IPv6Gateway": gateway(ep, false),
        "Netns": ep.netns,
        "Ifname": ep.ifname,
        "Device": device,
        "Mtu": ep.mtu,
        "Lease": ep.lease,
        "Drift": drift::endpoint(
            ep,
            state
                .network(&ep.network)
                .map_or(crate::control::model::Owner::Cli, Network::owner),
        )?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
