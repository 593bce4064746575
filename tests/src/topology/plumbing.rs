//! Plumbing a simulated host by hand, as `fan-xdp attach` would (the slice
//! bridge, the host device, the overlay route, the sysctls), and plugging
//! containers into a slice bridge.

use std::net::Ipv4Addr;

use anyhow::Result;
use fan_userspace::state::record::{HOST_DEVICE, HOST_DEVICE_PEER};

use super::{Container, Host, OVERLAY, OVERLAY_MTU, fan_map};
use crate::netns::Netns;

/// The slice bridge with its gateway address, as `fan-xdp attach` would
/// create it (and adopts it when it finds it).
pub fn add_bridge(host: &Host) -> Result<()> {
    let mtu = OVERLAY_MTU.to_string();
    let bridge = &host.bridge;
    host.ns
        .ip(&["link", "add", bridge, "mtu", &mtu, "type", "bridge"])?;
    host.ns.ip(&[
        "addr",
        "add",
        &format!("{}/{}", host.gateway, fan_map().slice_len()),
        "dev",
        bridge,
    ])?;
    host.ns.ip(&["link", "set", bridge, "up"])?;
    Ok(())
}

pub(super) fn plumb_by_hand(host: &Host) -> Result<()> {
    let ns = &host.ns;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        // Loose: decapsulated packets arrive on eth0 from overlay sources
        // that are routed via the fan device.
        ("net.ipv4.conf.eth0.rp_filter", "2"),
    ] {
        ns.sysctl(key, value)?;
    }
    add_bridge(host)?;
    let mtu = OVERLAY_MTU.to_string();
    ns.ip(&[
        "link",
        "add",
        HOST_DEVICE,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        HOST_DEVICE_PEER,
    ])?;
    ns.ip(&["link", "set", HOST_DEVICE, "arp", "off", "up"])?;
    ns.ip(&["link", "set", HOST_DEVICE_PEER, "up"])?;
    let overlay = format!("{}/{}", OVERLAY.0, OVERLAY.1);
    ns.ip(&[
        "route",
        "add",
        &overlay,
        "dev",
        HOST_DEVICE,
        "src",
        &host.gateway.to_string(),
    ])?;
    Ok(())
}

/// Container `j` of `host`: a namespace whose `eth0` is a veth on the slice
/// bridge, with address slice + 10 + j.
pub(super) fn add_container(host: &Host, j: u8) -> Result<Container> {
    add_container_at(
        host,
        j,
        Ipv4Addr::from(u32::from(host.slice) + 10 + j as u32),
    )
}

/// A container on `host`'s bridge through port `veth<j>` with address `addr`.
pub fn add_container_at(host: &Host, j: u8, addr: Ipv4Addr) -> Result<Container> {
    let i = host.underlay_addr.octets()[3];
    let ns = plug_container(
        &host.ns,
        &host.bridge,
        &format!("veth{j}"),
        &format!("c{i}-{j}"),
        (addr, fan_map().slice_len()),
        host.gateway,
    )?;
    Ok(Container { ns, addr })
}

/// A new namespace `label` whose `eth0` is the peer of `port`, a veth
/// plugged into `bridge` in `host_ns`: link MTU [`OVERLAY_MTU`] on both
/// ends, address `addr/len`, default route via `gateway`.
pub fn plug_container(
    host_ns: &Netns,
    bridge: &str,
    port: &str,
    label: &str,
    (addr, len): (Ipv4Addr, u8),
    gateway: Ipv4Addr,
) -> Result<Netns> {
    plug_container_with_mtu(
        host_ns,
        bridge,
        port,
        label,
        (addr, len),
        gateway,
        OVERLAY_MTU,
    )
}

/// [`plug_container`] with link MTU `mtu` (a VXLAN fan's is 50 below the underlay's).
pub fn plug_container_with_mtu(
    host_ns: &Netns,
    bridge: &str,
    port: &str,
    label: &str,
    (addr, len): (Ipv4Addr, u8),
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<Netns> {
    let ns = Netns::new(label)?;
    let mtu = mtu.to_string();
    host_ns.add_veth_to(port, &ns)?;
    host_ns.ip(&["link", "set", port, "mtu", &mtu, "master", bridge, "up"])?;
    ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
    ns.ip(&["addr", "add", &format!("{addr}/{len}"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    Ok(ns)
}
