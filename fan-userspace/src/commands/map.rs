//! `fan-xdp map`: the arithmetic, offline.

use std::net::Ipv4Addr;

use anyhow::Result;
use serde::Serialize;

use crate::{cli::MapArgs, host::naming::bridge_name, ipv4_network, state::record::fan_map};

#[derive(Serialize)]
struct Located {
    address: Ipv4Addr,
    /// The underlay host the address lives on, if any.
    host: Option<Ipv4Addr>,
    verdict: String,
}

#[derive(Serialize)]
struct Report {
    slice: String,
    bridge: String,
    gateway: Ipv4Addr,
    addresses: Vec<Located>,
}

pub fn run(args: &MapArgs) -> Result<()> {
    let overlay = ipv4_network(args.overlay, "overlay")?;
    let underlay = ipv4_network(args.underlay, "underlay")?;
    let host = u32::from(underlay.ip());
    let fan = fan_map(overlay, underlay);
    fan.validate()?;
    fan.validate_host(host)?;
    let slice = Ipv4Addr::from(fan.slice_of(host));
    let addresses = args
        .addresses
        .iter()
        .map(|&address| {
            let a = u32::from(address);
            let owner = Ipv4Addr::from(fan.host_of(a));
            let (host, verdict) = if !fan.overlay_contains(a) {
                (None, "not in the overlay: not fan traffic".to_string())
            } else if fan.slice_contains(host, a) {
                (
                    Some(underlay.ip()),
                    format!("local (this host, {})", underlay.ip()),
                )
            } else if fan.is_reserved_host(fan.host_of(a)) {
                (
                    None,
                    format!("none: maps to {owner}, the underlay's network or broadcast address"),
                )
            } else {
                (Some(owner), format!("on {owner}"))
            };
            Located {
                address,
                host,
                verdict,
            }
        })
        .collect();
    let report = Report {
        slice: format!("{slice}/{}", fan.slice_len()),
        bridge: bridge_name(slice),
        gateway: Ipv4Addr::from(fan.slice_of(host) + 1),
        addresses,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("slice    {}", report.slice);
    println!("bridge   {}", report.bridge);
    println!("gateway  {}", report.gateway);
    for a in &report.addresses {
        println!("{:<15}  {}", a.address, a.verdict);
    }
    Ok(())
}
