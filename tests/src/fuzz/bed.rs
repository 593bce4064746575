//! The host the fuzzer runs the programs on: a namespace like programs.rs's
//! bed (eth0 the underlay, typed routes, a locked MTU, a route through
//! another device, resolved and unresolved neighbours), five fans with
//! different slice sizes, and containers with direct delivery. The same
//! description gives the model its configuration, so the two cannot drift.
//! The runs of the programs on it are in `runner`.

mod runner;

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use fan_common::{FanEntry, FanMap, fan::validate_fans, maps::Endpoint as MapEndpoint};
use fan_userspace::dataplane::Dataplane;

use crate::{
    model::{
        Config,
        config::{Device, Endpoint, Fan, Neighbour, PathMtu, Route, RouteKind, Underlay},
    },
    netns::Netns,
    topology,
};

pub use runner::{Observed, Runner};

/// Which of two hosts of the same fans a bed is: the fuzzed host (A,
/// 198.18.0.1 and 198.19.0.1) or its peer (B, .2), which decapsulates what A
/// encapsulates for the round trip.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    A,
    B,
}

impl Side {
    /// The last byte of this host's addresses on both underlays.
    fn host_byte(self) -> u8 {
        match self {
            Side::A => 1,
            Side::B => 2,
        }
    }

    fn mac(self) -> [u8; 6] {
        match self {
            Side::A => MAC_A,
            Side::B => MAC_B,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

pub const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
pub const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x22];
const ETH1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xe1];
/// A container port with a narrower MTU than the underlay, for direct delivery's MTU rule.
const NARROW_PORT_MTU: u32 = 1300;
/// The ifindex of a device that does not exist (a stale endpoint, a bogus port).
pub const MISSING_IFINDEX: u32 = 9999;

/// A fan of the bed: (overlay, its length, underlay, its length, overlay
/// MTU, what is added to the host's last address byte for its local address).
type FanSpec = ([u8; 4], u8, [u8; 4], u8, u32, u8);

/// The fans.
/// Slices /24 (three of them, two over one underlay), /30 (the smallest:
/// network, gateway, one container, broadcast) and /24 over a /20 underlay
/// that lies inside another fan's /16, from a second address of the host on
/// that network (198.18.0.3 on A, .4 on B).
const FANS: [FanSpec; 5] = [
    ([250, 0, 0, 0], 8, [198, 18, 0, 0], 16, 1480, 0),
    ([240, 0, 0, 0], 8, [198, 19, 0, 0], 16, 1480, 0),
    ([10, 0, 0, 0], 8, [198, 18, 0, 0], 16, 1480, 0),
    ([100, 64, 0, 0], 14, [198, 19, 0, 0], 16, 1400, 0),
    ([172, 16, 0, 0], 12, [198, 18, 0, 0], 20, 1480, 2),
];

/// Every underlay address of `side`'s eth0 (each fan's local address, once).
fn local_addresses(side: Side) -> Vec<u32> {
    let mut addresses: Vec<u32> = FANS.iter().map(|f| underlay_host(side, f.2, f.5)).collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Containers with direct delivery on host A: (address, port device or
/// `None` for a stale entry, container MAC's last byte).
const ENDPOINTS: [([u8; 4], Option<&str>, u8); 7] = [
    ([250, 0, 1, 10], Some("eth0-peer"), 0x02),
    ([250, 0, 1, 11], Some("eth1-peer"), 0x03),
    ([250, 0, 1, 12], None, 0x04),
    ([240, 0, 1, 10], Some("eth0-peer"), 0x05),
    ([10, 0, 1, 10], Some("eth1-peer"), 0x06),
    ([100, 64, 0, 6], Some("eth0-peer"), 0x07),
    ([172, 16, 1, 10], Some("eth0-peer"), 0x08),
];
const GATEWAY_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x01];

/// Path MTUs host A has learned: (remote host, MTU, unexpired). The hosts
/// are nobody else in the bed (their neighbours unresolved); 576 lies near
/// the kernel's floor of 552, and the expired entry must be ignored.
const PATH_MTUS: [([u8; 4], u32, bool); 3] = [
    ([198, 18, 0, 10], 1400, true),
    ([198, 19, 0, 11], 576, true),
    ([198, 18, 0, 12], 1000, false),
];

/// A loaded data plane in its own namespace, configured as `side`.
pub struct Bed {
    pub ns: Netns,
    pub dataplane: Dataplane,
    pub config: Config,
    pub side: Side,
    /// Ports by name, for the port program's ingress interface.
    ports: Vec<(String, u32)>,
}

fn addr(bytes: [u8; 4]) -> u32 {
    u32::from_be_bytes(bytes)
}

fn underlay_host(side: Side, underlay: [u8; 4], offset: u8) -> u32 {
    addr([underlay[0], underlay[1], 0, side.host_byte() + offset])
}

impl Bed {
    pub fn new(side: Side) -> Result<Self> {
        let ns = Netns::new(if side == Side::A { "fuzz-a" } else { "fuzz-b" })?;
        make_devices(&ns, side)?;
        if side == Side::A {
            make_routes(&ns)?;
        }
        let ifindex = |name: &str| -> Result<u32> {
            let name = name.to_string();
            ns.enter(move || topology::ifindex(&name))?
        };
        let eth0 = ifindex("eth0")?;
        let mut dataplane = Dataplane::load()?;
        let fans = fans(side, eth0);
        let maps: Vec<FanMap> = fans.iter().map(|f| f.map).collect();
        validate_fans(&maps).context("the fuzz bed's fans")?;
        for fan in &fans {
            dataplane.insert_fan(&FanEntry::ipip(
                fan.map,
                fan.local_host,
                fan.underlay_ifindex,
                fan.overlay_mtu,
            ))?;
        }
        let mut ports = vec![("eth0".to_string(), eth0)];
        let mut devices = vec![Device {
            ifindex: eth0,
            mtu: topology::UNDERLAY_MTU,
            mac: side.mac(),
            forwarding: true,
        }];
        let mut endpoints = Vec::new();
        if side == Side::A {
            for (name, mtu, mac) in [
                ("eth1", topology::UNDERLAY_MTU, ETH1_MAC),
                ("eth0-peer", topology::UNDERLAY_MTU, [0; 6]),
                ("eth1-peer", NARROW_PORT_MTU, [0; 6]),
            ] {
                let index = ifindex(name)?;
                ports.push((name.to_string(), index));
                devices.push(Device {
                    ifindex: index,
                    mtu,
                    mac,
                    forwarding: true,
                });
            }
            for (address, port, mac_byte) in ENDPOINTS {
                let ifindex = match port {
                    Some(name) => ports.iter().find(|(n, _)| n == name).unwrap().1,
                    None => MISSING_IFINDEX,
                };
                let endpoint = Endpoint {
                    addr: addr(address),
                    ifindex,
                    mac: [0x0a, 0, 0, 0, 0, mac_byte],
                    gateway_mac: GATEWAY_MAC,
                };
                dataplane.insert_endpoint(
                    fan_common::WireAddr::from_host(endpoint.addr),
                    &MapEndpoint {
                        ifindex: endpoint.ifindex,
                        mac: endpoint.mac,
                        gateway_mac: endpoint.gateway_mac,
                    },
                )?;
                endpoints.push(endpoint);
            }
        }
        let config = Config {
            fans,
            endpoints,
            underlay: underlay(side, eth0, &ports, devices),
            enforce: vec![],
            bypass_off: false,
            // Written by the runner, which keeps them as fresh (or as
            // expired) as they are meant to be.
            path_mtus: match side {
                Side::A => PATH_MTUS
                    .iter()
                    .map(|&(host, mtu, fresh)| PathMtu {
                        host: addr(host),
                        mtu,
                        fresh,
                    })
                    .collect(),
                Side::B => vec![],
            },
        };
        Ok(Self {
            ns,
            dataplane,
            config,
            side,
            ports,
        })
    }

    /// The bed's devices by name, for [`resolve_port`].
    pub fn ports(&self) -> Vec<(String, u32)> {
        self.ports.clone()
    }
}

/// The ifindex of a port by name: "0" is none, unknown names the missing device.
pub fn resolve_port(ports: &[(String, u32)], name: &str) -> u32 {
    match name {
        "0" => 0,
        _ => ports
            .iter()
            .find(|(n, _)| n == name)
            .map_or(MISSING_IFINDEX, |p| p.1),
    }
}

/// eth0 (a veth up with its peer, MAC and addresses of `side`), forwarding
/// on; on A also eth1, the other device a route may point to.
fn make_devices(ns: &Netns, side: Side) -> Result<()> {
    let mac = mac_text(side.mac());
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        &mac,
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])?;
    for host in local_addresses(side) {
        let host = Ipv4Addr::from(host);
        ns.ip(&["addr", "add", &format!("{host}/16"), "dev", "eth0"])?;
    }
    for underlay in [[198, 18, 0, 0], [198, 19, 0, 0]] {
        let peer = Ipv4Addr::from(underlay_host(side.other(), underlay, 0));
        let peer_mac = mac_text(side.other().mac());
        ns.ip(&[
            "neigh",
            "add",
            &peer.to_string(),
            "lladdr",
            &peer_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
    }
    if side == Side::A {
        ns.ip(&[
            "link",
            "add",
            "eth1",
            "address",
            &mac_text(ETH1_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "eth1-peer",
        ])?;
        ns.ip(&[
            "link",
            "set",
            "eth1-peer",
            "mtu",
            &NARROW_PORT_MTU.to_string(),
        ])?;
        for dev in ["eth1-peer", "eth1"] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
    }
    for dev in ["eth0-peer", "eth0"] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(())
}

/// Host A's special routes: as in programs.rs's bed.
const SPECIAL_ROUTES: [(u8, RouteKind, bool, Option<u32>); 5] = [
    (5, RouteKind::Blackhole, false, None),
    (6, RouteKind::Unreachable, false, None),
    (7, RouteKind::Prohibit, false, None),
    // Through eth1, not the underlay device.
    (8, RouteKind::Unicast, true, None),
    (9, RouteKind::Unicast, false, Some(1400)),
];

fn make_routes(ns: &Netns) -> Result<()> {
    for (host, kind, via_eth1, mtu) in SPECIAL_ROUTES {
        let dst = format!("198.18.0.{host}/32");
        let mut args: Vec<String> = vec!["route".into(), "add".into()];
        match kind {
            RouteKind::Blackhole => args.extend(["blackhole".into(), dst]),
            RouteKind::Unreachable => args.extend(["unreachable".into(), dst]),
            RouteKind::Prohibit => args.extend(["prohibit".into(), dst]),
            RouteKind::Unicast => {
                let dev = if via_eth1 { "eth1" } else { "eth0" };
                args.extend([dst, "dev".into(), dev.into()]);
            }
        }
        if let Some(mtu) = mtu {
            args.extend(["mtu".into(), "lock".into(), mtu.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.ip(&args)?;
    }
    Ok(())
}

fn fans(side: Side, eth0: u32) -> Vec<Fan> {
    FANS.iter()
        .map(|&(overlay, olen, underlay, ulen, mtu, offset)| Fan {
            map: FanMap::new(addr(overlay), olen, addr(underlay), ulen),
            local_host: underlay_host(side, underlay, offset),
            underlay_ifindex: eth0,
            overlay_mtu: mtu,
        })
        .collect()
}

/// The route lookup's view of the namespace built above.
fn underlay(side: Side, eth0: u32, ports: &[(String, u32)], devices: Vec<Device>) -> Underlay {
    let mut routes = vec![];
    let mut local_table = vec![];
    let mut neighbours = vec![];
    for underlay in [[198, 18, 0, 0], [198, 19, 0, 0]] {
        routes.push(Route {
            prefix: addr(underlay),
            len: 16,
            kind: RouteKind::Unicast,
            dev: eth0,
            locked_mtu: None,
        });
        local_table.push(addr(underlay) | 0xffff);
        neighbours.push(Neighbour {
            addr: underlay_host(side.other(), underlay, 0),
            dev: eth0,
            mac: side.other().mac(),
        });
    }
    if side == Side::A {
        let eth1 = ports.iter().find(|(n, _)| n == "eth1").unwrap().1;
        for (host, kind, via_eth1, locked_mtu) in SPECIAL_ROUTES {
            routes.push(Route {
                prefix: addr([198, 18, 0, host]),
                len: 32,
                kind,
                dev: if via_eth1 { eth1 } else { eth0 },
                locked_mtu,
            });
        }
    }
    local_table.extend(local_addresses(side));
    Underlay {
        routes,
        local_table,
        devices,
        neighbours,
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
