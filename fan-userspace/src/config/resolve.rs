//! A fan line on this host: which interface and underlay its UNDERLAY
//! names, and the `attach`/`detach` arguments it stands for. A line and the
//! equivalent `attach` are one plan: this is the only translation.

use anyhow::{Result, anyhow, bail};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::{
    cli::{AttachArgs, Bypass, DetachArgs, Mode},
    config::{FanLine, Underlay},
    host::Net,
    state::record::Fan,
};

/// The interface UNDERLAY names, and the underlay network to attach with
/// (None: the subnet of the interface's primary address, as attach's default).
pub async fn underlay(net: &Net, underlay: &Underlay) -> Result<(String, Option<Ipv4Network>)> {
    match underlay {
        Underlay::Address(addr, len) => {
            let network = Ipv4Network::new(*addr, *len)?;
            let network = Ipv4Network::new(network.network(), *len)?;
            let addrs = net.all_ipv4_addrs(None).await?;
            let index = match addrs.iter().find(|(_, a, _)| a == addr) {
                Some((index, _, _)) => *index,
                // The underlay's network address: whichever interface has an address in it.
                None if *addr == network.network() => addrs
                    .iter()
                    .find(|(_, a, _)| network.contains(*a))
                    .map(|(index, _, _)| *index)
                    .ok_or_else(|| anyhow!("no interface has an address in underlay {network}"))?,
                None => bail!(
                    "no interface holds {addr}: the underlay {addr}/{len} names this host's address"
                ),
            };
            Ok((name_of(net, index).await?, Some(network)))
        }
        Underlay::Interface(name, len) => {
            let link = net
                .device(name)
                .await?
                .ok_or_else(|| anyhow!("no such interface: {name}"))?;
            let (primary, _) = *net.ipv4_addrs(link.index).await?.first().ok_or_else(|| {
                anyhow!(
                    "{name} has no IPv4 address: the underlay {name}/{len} is its primary address"
                )
            })?;
            let network = Ipv4Network::new(primary, *len)?;
            Ok((
                name.clone(),
                Some(Ipv4Network::new(network.network(), *len)?),
            ))
        }
        Underlay::Default => {
            let route = net
                .find_route(std::net::Ipv4Addr::UNSPECIFIED, 0)
                .await?
                .ok_or_else(|| {
                    anyhow!("the underlay is `default`, but there is no default route")
                })?;
            let index = route
                .oif
                .ok_or_else(|| anyhow!("the default route names no interface"))?;
            Ok((name_of(net, index).await?, None))
        }
    }
}

async fn name_of(net: &Net, index: u32) -> Result<String> {
    Ok(net
        .device_by_index(index)
        .await?
        .ok_or_else(|| anyhow!("interface {index} went away"))?
        .name)
}

/// The `attach` a line stands for.
pub async fn attach_args(net: &Net, fan: &FanLine, no_agent: bool) -> Result<AttachArgs> {
    let (iface, underlay) = underlay(net, &fan.underlay).await?;
    Ok(AttachArgs {
        iface,
        overlay: IpNetwork::V4(fan.overlay),
        underlay: underlay.map(IpNetwork::V4),
        bridge: fan.bridge.clone(),
        host_reserve: fan.host_reserve.unwrap_or(1),
        mode: fan.mode.unwrap_or(Mode::Auto),
        fan_type: fan.fan_type.unwrap_or_default(),
        vni: fan.vni,
        port: fan.port,
        no_nat: fan.no_nat,
        mtu: fan.mtu,
        no_agent,
        bypass: fan.bypass.unwrap_or(Bypass::Auto),
        dhcp: fan.dhcp,
        // The file's lines give no ranges: the slice's default plan.
        dhcp_range: None,
        cni_range: None,
        docker_cidr: None,
        // A line that names this host's address attaches with that one,
        // not whichever address of the interface comes first.
        host: named_address(&fan.underlay),
    })
}

/// The host address a line's UNDERLAY names, if it names one (`ADDR/LEN`
/// with ADDR not the network's address): the fan is on that address and
/// no other.
pub fn named_address(underlay: &Underlay) -> Option<std::net::Ipv4Addr> {
    match underlay {
        Underlay::Address(addr, len) => Ipv4Network::new(*addr, *len)
            .ok()
            .filter(|network| network.network() != *addr)
            .map(|_| *addr),
        Underlay::Interface(..) | Underlay::Default => None,
    }
}

/// The `detach` of an attached fan.
pub fn detach_args(fan: &Fan) -> DetachArgs {
    DetachArgs {
        iface: fan.iface.clone(),
        overlay: Some(IpNetwork::V4(fan.overlay)),
    }
}
