//! A fleet of simulated Fan hosts: each host is a namespace with an underlay
//! NIC `eth0` plugged into a shared underlay switch (a bridge in a namespace
//! of its own), a slice bridge, and container namespaces on that bridge.
//! Addresses: host `i` (1-based) is 198.18.0.i/16 on the underlay and owns
//! slice 250.0.i.0/24 of overlay 250.0.0.0/8; its container `j` is 250.0.i.(10+j).
//!
//! Here the fleet and its hosts; fan-xdp run in them is in `fan_xdp`, the
//! plumbing of a slice by hand and of containers in `plumbing`.

mod fan_xdp;
mod plumbing;

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use fan_common::{FanEntry, FanMap};
use fan_userspace::{
    dataplane::{Dataplane, DecapMode},
    host::naming::bridge_name,
    state::record::HOST_DEVICE,
};

use crate::netns::Netns;

pub use fan_xdp::{Daemon, fan_xdp_binary, ports_taken_over, stdout_of_success};
pub use plumbing::{add_bridge, add_container_at, plug_container, plug_container_with_mtu};

pub const OVERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(250, 0, 0, 0), 8);
pub const UNDERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
pub const UNDERLAY_MTU: u32 = 1500;
/// IP-in-IP costs 20 bytes of every underlay packet.
pub const OVERLAY_MTU: u32 = UNDERLAY_MTU - 20;

pub fn fan_map() -> FanMap {
    FanMap::new(
        u32::from(OVERLAY.0),
        OVERLAY.1,
        u32::from(UNDERLAY.0),
        UNDERLAY.1,
    )
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
            let mut dataplane = Dataplane::load()?;
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
        Ok(FanEntry::ipip(
            fan_map(),
            u32::from(self.underlay_addr),
            ifindex,
            OVERLAY_MTU,
        ))
    }

    /// This host's slice as `a.b.c.d/len`.
    pub fn slice_cidr(&self) -> String {
        format!("{}/{}", self.slice, fan_map().slice_len())
    }
}

/// Hosts and containers; the switch namespace carries the underlay segment.
/// Field order is drop order: containers and hosts go before the switch.
pub struct Fleet {
    pub hosts: Vec<Host>,
    pub switch: Netns,
}

impl Fleet {
    /// `fan-xdp attach eth0 --overlay 250.0.0.0/8 EXTRA` on every host.
    pub fn attach_all(&self, extra: &[&str]) -> Result<()> {
        let overlay = format!("{}/{}", OVERLAY.0, OVERLAY.1);
        for host in &self.hosts {
            let args = [&["attach", "eth0", "--overlay", &overlay][..], extra].concat();
            host.fan_xdp_ok(&args)?;
        }
        Ok(())
    }

    /// `fan-xdp detach eth0` on every host.
    pub fn detach_all(&self) -> Result<()> {
        for host in &self.hosts {
            host.fan_xdp_ok(&["detach", "eth0"])?;
        }
        Ok(())
    }

    /// Plain routing between the slices (host-gw style, no encapsulation):
    /// one route per remote slice via its host's underlay address.
    pub fn route_slices(&self) -> Result<()> {
        for host in &self.hosts {
            host.ns.sysctl("net.ipv4.ip_forward", "1")?;
            for other in self.others(host) {
                let via = other.underlay_addr.to_string();
                host.ns
                    .ip(&["route", "add", &other.slice_cidr(), "via", &via])?;
            }
        }
        Ok(())
    }

    pub fn unroute_slices(&self) -> Result<()> {
        for host in &self.hosts {
            for other in self.others(host) {
                host.ns.ip(&["route", "del", &other.slice_cidr()])?;
            }
        }
        Ok(())
    }

    /// Every host but `host`.
    pub fn others<'a>(&'a self, host: &'a Host) -> impl Iterator<Item = &'a Host> {
        self.hosts
            .iter()
            .filter(move |o| o.underlay_addr != host.underlay_addr)
    }
}

impl Drop for Fleet {
    /// Deletes the namespaces, then the pinned state `fan-xdp` left for them
    /// if a test failed before detaching (a real host's would be swept by the
    /// next attach; tests must not leave it for the next test to find).
    fn drop(&mut self) {
        self.hosts.clear();
        if let Ok(dir) = fan_userspace::state::StateDir::locate(None) {
            let _ = fan_userspace::dataplane::sweep_stale(&dir);
        }
    }
}

/// A namespace for running the programs on single frames: its `eth0` (a
/// veth, MTU 1500, MAC 02:00:00:00:00:11, up, with its peer `eth0-peer` up)
/// is the underlay device of a loaded data plane that is host 198.18.0.1 of
/// the 250.0.0.0/8 fan. eth0 also holds 198.19.0.1/16 for fans over a second
/// underlay, and forwarding is on, so the programs' route lookups find the
/// underlay routes as on an attached host. Returns eth0's ifindex too.
pub fn single_host_dataplane(label: &str) -> Result<(Netns, Dataplane, u32)> {
    let ns = Netns::new(label)?;
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        "02:00:00:00:00:11",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])?;
    for addr in ["198.18.0.1/16", "198.19.0.1/16"] {
        ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
    }
    ns.ip(&["link", "set", "eth0-peer", "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    let ifindex = ns.enter(|| ifindex("eth0"))??;
    let mut dataplane = Dataplane::load()?;
    dataplane.insert_fan(&FanEntry::ipip(
        fan_map(),
        u32::from_be_bytes([198, 18, 0, 1]),
        ifindex,
        OVERLAY_MTU,
    ))?;
    Ok((ns, dataplane, ifindex))
}

/// The ifindex of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {name}"));
    }
    Ok(index)
}

impl Fleet {
    /// Builds `hosts` hosts on the underlay switch: namespaces with `eth0`
    /// addressed, and nothing of the fan yet.
    pub fn new(hosts: u8) -> Result<Self> {
        // State left by namespaces that died without a detach (a killed run)
        // would be swept by the first attach and change what tests compare.
        if let Ok(dir) = fan_userspace::state::StateDir::locate(None) {
            let _ = fan_userspace::dataplane::sweep_stale(&dir);
        }
        let switch = Netns::new("switch")?;
        switch.ip(&["link", "add", "sw", "type", "bridge"])?;
        switch.ip(&["link", "set", "sw", "up"])?;
        // The switch stands for a wire: with br_netfilter loaded (for some
        // other user of this kernel) it would run firewall hooks on every
        // frame, a cost no physical switch puts on the hosts.
        for family in ["iptables", "ip6tables", "arptables"] {
            let _ = switch.sysctl(&format!("net.bridge.bridge-nf-call-{family}"), "0");
        }
        let mut fleet = Self {
            hosts: Vec::new(),
            switch,
        };
        for i in 1..=hosts {
            let host = fleet.add_host(i)?;
            fleet.hosts.push(host);
        }
        Ok(fleet)
    }

    /// Hosts with their slice plumbing done by hand (bridge, host device,
    /// route, sysctls: what `fan-xdp attach` owns) and `containers` each, for
    /// tests of the data plane on its own.
    pub fn plumbed_by_hand(hosts: u8, containers: u8) -> Result<Self> {
        let fleet = Self::new(hosts)?;
        for host in &fleet.hosts {
            plumbing::plumb_by_hand(host)?;
        }
        fleet.with_containers(containers)
    }

    /// Adds `containers` containers on every host's slice bridge (which must exist).
    pub fn with_containers(mut self, containers: u8) -> Result<Self> {
        for host in &mut self.hosts {
            for _ in 0..containers {
                let index = host.containers.len() as u8 + 1;
                let container = plumbing::add_container(host, index)?;
                host.containers.push(container);
            }
        }
        Ok(self)
    }

    fn add_host(&self, i: u8) -> Result<Host> {
        let ns = Netns::new(&format!("h{i}"))?;
        let underlay_addr = Ipv4Addr::new(198, 18, 0, i);
        let fan = fan_map();
        let slice = Ipv4Addr::from(fan.slice_of(u32::from(underlay_addr)));
        let gateway = Ipv4Addr::from(u32::from(slice) + 1);
        let bridge = bridge_name(slice);
        let port = format!("sw-h{i}");
        self.switch.add_veth_to(&port, &ns)?;
        self.switch
            .ip(&["link", "set", &port, "master", "sw", "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{underlay_addr}/{}", UNDERLAY.1),
            "dev",
            "eth0",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        Ok(Host {
            ns,
            underlay_addr,
            slice,
            gateway,
            bridge,
            containers: Vec::new(),
        })
    }
}
