//! `fan-xdp`: the Fan as an eBPF/XDP data plane.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use fan_common::FanMap;
use fan_userspace::naming::bridge_name;
use ipnetwork::{IpNetwork, Ipv4Network};

#[derive(Parser)]
#[command(name = "fan-xdp", version, about = "Fan networking as an eBPF/XDP data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline calculator: a host's slice, bridge and gateway, and where overlay addresses live.
    Map {
        /// The overlay prefix, e.g. 250.0.0.0/8.
        #[arg(long)]
        overlay: IpNetwork,
        /// This host's underlay address with the underlay prefix length, e.g. 172.30.0.28/16.
        #[arg(long)]
        underlay: IpNetwork,
        /// Overlay addresses to locate.
        addresses: Vec<Ipv4Addr>,
    },
}

fn ipv4(net: IpNetwork, what: &str) -> Result<Ipv4Network> {
    match net {
        IpNetwork::V4(v4) => Ok(v4),
        IpNetwork::V6(_) => bail!("{what} {net} is IPv6: fan-xdp maps IPv4 only"),
    }
}

fn map_command(overlay: IpNetwork, underlay: IpNetwork, addresses: &[Ipv4Addr]) -> Result<()> {
    let overlay = ipv4(overlay, "overlay")?;
    let underlay = ipv4(underlay, "underlay")?;
    let host = u32::from(underlay.ip());
    let fan = FanMap::new(
        u32::from(overlay.ip()),
        overlay.prefix(),
        u32::from(underlay.network()),
        underlay.prefix(),
    );
    fan.validate()?;
    fan.validate_host(host)?;
    let slice = Ipv4Addr::from(fan.slice_of(host));
    println!("slice    {slice}/{}", fan.slice_len());
    println!("bridge   {}", bridge_name(slice));
    println!("gateway  {}", Ipv4Addr::from(fan.slice_of(host) + 1));
    for address in addresses {
        let a = u32::from(*address);
        let verdict = if !fan.overlay_contains(a) {
            "not in the overlay: not fan traffic".to_string()
        } else if fan.slice_contains(host, a) {
            format!("local (this host, {})", underlay.ip())
        } else if fan.is_reserved_host(fan.host_of(a)) {
            format!(
                "none: maps to {}, the underlay's network or broadcast address",
                Ipv4Addr::from(fan.host_of(a))
            )
        } else {
            format!("on {}", Ipv4Addr::from(fan.host_of(a)))
        };
        println!("{address:<15}  {verdict}");
    }
    Ok(())
}

fn main() -> Result<()> {
    env_logger::init();
    match Cli::parse().command {
        Command::Map { overlay, underlay, addresses } => map_command(overlay, underlay, &addresses),
    }
}
