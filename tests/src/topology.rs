//! A fleet of simulated Fan hosts: each host is a namespace with an underlay
//! NIC `eth0` plugged into a shared underlay switch (a bridge in a namespace
//! of its own), a slice bridge, and container namespaces on that bridge.
//! Addresses: host `i` (1-based) is 198.18.0.i/16 on the underlay and owns
//! slice 250.0.i.0/24 of overlay 250.0.0.0/8; its container `j` is 250.0.i.(10+j).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use fan_common::{FanEntry, FanMap};
use fan_userspace::{
    loader::{Dataplane, DecapMode},
    naming::bridge_name,
};

use crate::netns::Netns;

pub const OVERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(250, 0, 0, 0), 8);
pub const UNDERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
pub const UNDERLAY_MTU: u32 = 1500;
/// IP-in-IP costs 20 bytes of every underlay packet.
pub const OVERLAY_MTU: u32 = UNDERLAY_MTU - 20;
/// fan-xdp's NOARP device for traffic the host originates, and its idle peer.
pub const HOST_DEVICE: &str = "fan-host";
pub const HOST_DEVICE_PEER: &str = "fan-host-sink";

pub fn fan_map() -> FanMap {
    FanMap::new(u32::from(OVERLAY.0), OVERLAY.1, u32::from(UNDERLAY.0), UNDERLAY.1)
}

pub struct Container {
    pub ns: Netns,
    pub addr: Ipv4Addr,
}

pub struct Host {
    pub ns: Netns,
    pub underlay_addr: Ipv4Addr,
    pub slice: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub containers: Vec<Container>,
}

impl Host {
    /// Loads fan-xdp's programs in this host's namespace, attaches them to
    /// eth0 (decapsulation in `mode`), the slice bridge and the host device,
    /// and writes the fan entry. Dropping the result detaches everything.
    pub fn attach(&self, mode: DecapMode) -> Result<Dataplane> {
        let entry = self.fan_entry()?;
        self.ns.enter(|| -> Result<Dataplane> {
            let mut dataplane = Dataplane::load(0)?;
            dataplane.insert_fan(&entry)?;
            dataplane.attach_decap("eth0", mode)?;
            dataplane.attach_encap_forward(&self.bridge)?;
            dataplane.attach_encap_output(HOST_DEVICE)?;
            Ok(dataplane)
        })?
    }

    /// The fan map entry of this host, with the ifindex of its `eth0`.
    pub fn fan_entry(&self) -> Result<FanEntry> {
        let ifindex = self.ns.enter(|| ifindex("eth0"))??;
        Ok(FanEntry {
            map: fan_map(),
            local_host: u32::from(self.underlay_addr),
            underlay_ifindex: ifindex,
        })
    }
}

/// Hosts and containers; the switch namespace carries the underlay segment.
/// Field order is drop order: containers and hosts go before the switch.
pub struct Fleet {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

/// The ifindex of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {name}"));
    }
    Ok(index)
}

impl Fleet {
    /// Builds `hosts` hosts with `containers` containers each, and plumbs each
    /// host's slice bridge, host device, routes and sysctls by hand (what
    /// `fan-xdp attach` will own), but attaches no programs.
    pub fn new(hosts: u8, containers: u8) -> Result<Self> {
        let switch = Netns::new("switch")?;
        switch.ip(&["link", "add", "sw", "type", "bridge"])?;
        switch.ip(&["link", "set", "sw", "up"])?;
        let mut fleet = Self { hosts: Vec::new(), switch };
        for i in 1..=hosts {
            let host = fleet.add_host(i, containers)?;
            fleet.hosts.push(host);
        }
        Ok(fleet)
    }

    fn add_host(&self, i: u8, containers: u8) -> Result<Host> {
        let ns = Netns::new(&format!("h{i}"))?;
        let underlay_addr = Ipv4Addr::new(198, 18, 0, i);
        let fan = fan_map();
        let slice = Ipv4Addr::from(fan.slice_of(u32::from(underlay_addr)));
        let gateway = Ipv4Addr::from(u32::from(slice) + 1);
        let bridge = bridge_name(slice);
        let port = format!("sw-h{i}");

        // Underlay: eth0 in the host, its peer on the switch.
        self.switch.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        self.switch.ip(&["link", "set", &port, "master", "sw", "up"])?;
        ns.ip(&["addr", "add", &format!("{underlay_addr}/{}", UNDERLAY.1), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // Loose: decapsulated packets arrive on eth0 from overlay sources
            // that are routed via the fan device.
            ("net.ipv4.conf.eth0.rp_filter", "2"),
            ("net.ipv6.conf.all.disable_ipv6", "1"),
        ] {
            ns.sysctl(key, value)?;
        }

        // The slice bridge with the gateway address and the overlay MTU.
        let mtu = OVERLAY_MTU.to_string();
        ns.ip(&["link", "add", &bridge, "mtu", &mtu, "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{gateway}/{}", fan.slice_len()), "dev", &bridge])?;
        ns.ip(&["link", "set", &bridge, "up"])?;

        // The NOARP device the host's own overlay traffic is routed to.
        ns.ip(&["link", "add", HOST_DEVICE, "mtu", &mtu, "type", "veth", "peer", "name", HOST_DEVICE_PEER])?;
        ns.ip(&["link", "set", HOST_DEVICE, "arp", "off", "up"])?;
        ns.ip(&["link", "set", HOST_DEVICE_PEER, "up"])?;
        let overlay = format!("{}/{}", OVERLAY.0, OVERLAY.1);
        ns.ip(&["route", "add", &overlay, "dev", HOST_DEVICE, "src", &gateway.to_string()])?;

        let mut host = Host { ns, underlay_addr, slice, gateway, bridge, containers: Vec::new() };
        for j in 1..=containers {
            let container = self.add_container(&host, i, j)?;
            host.containers.push(container);
        }
        Ok(host)
    }

    fn add_container(&self, host: &Host, i: u8, j: u8) -> Result<Container> {
        let ns = Netns::new(&format!("c{i}-{j}"))?;
        let addr = Ipv4Addr::from(u32::from(host.slice) + 10 + j as u32);
        let port = format!("veth{j}");
        let mtu = OVERLAY_MTU.to_string();
        host.ns.ip(&["link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        host.ns.ip(&["link", "set", &port, "master", &host.bridge, "up"])?;
        ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        ns.ip(&["addr", "add", &format!("{addr}/{}", fan_map().slice_len()), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &host.gateway.to_string()])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        Ok(Container { ns, addr })
    }
}
