//! What the model knows of the host it predicts for: the fans, the
//! containers with direct delivery, and the underlay's routes and neighbours
//! as the kernel's route lookup would see them.

use fan_common::FanMap;

/// One attached fan as the programs see it.
#[derive(Clone, Copy, Debug)]
pub struct Fan {
    pub map: FanMap,
    /// This host's underlay address in this fan.
    pub local_host: u32,
    pub underlay_ifindex: u32,
    /// The largest inner packet sent without the stack's say.
    pub overlay_mtu: u32,
    /// A VXLAN fan's settings; `None` for IP-in-IP.
    pub vxlan: Option<Vxlan>,
}

/// What a VXLAN fan adds: its UDP port and VNI, the overlay port `B` its
/// received frames are handed to, and the slice bridge.
#[derive(Clone, Copy, Debug)]
pub struct Vxlan {
    pub port: u16,
    pub vni: u32,
    pub overlay_port: u32,
    pub bridge: u32,
}

/// Outer IPv4, UDP and VXLAN headers and the inner Ethernet header.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;

impl Fan {
    /// Bytes each underlay packet spends on the encapsulation.
    pub fn overhead(&self) -> u32 {
        if self.vxlan.is_some() {
            VXLAN_OVERHEAD
        } else {
            IPIP_OVERHEAD
        }
    }

    /// Whether `addr` is in this host's own slice.
    pub fn is_local(&self, addr: u32) -> bool {
        self.map.overlay_contains(addr) && self.map.slice_contains(self.local_host, addr)
    }

    /// The slice gateway: the address after the local slice's network address.
    pub fn gateway(&self) -> u32 {
        self.map.slice_of(self.local_host) + 1
    }
}

/// A container with direct delivery (`fan-xdp run` keeps these).
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub addr: u32,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub gateway_mac: [u8; 6],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A unicast route out of `dev`.
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
}

#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub prefix: u32,
    pub len: u8,
    pub kind: RouteKind,
    pub dev: u32,
    /// `mtu lock N`: the route's MTU instead of the device's.
    pub locked_mtu: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
pub struct Device {
    pub ifindex: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub forwarding: bool,
}

/// A resolved neighbour entry (permanent in the bed).
#[derive(Clone, Copy, Debug)]
pub struct Neighbour {
    pub addr: u32,
    pub dev: u32,
    pub mac: [u8; 6],
}

/// The underlay as the route lookup sees it from the host's namespace.
#[derive(Clone, Debug, Default)]
pub struct Underlay {
    pub routes: Vec<Route>,
    /// Addresses the local table answers as local or broadcast: never forwarded.
    pub local_table: Vec<u32>,
    pub devices: Vec<Device>,
    pub neighbours: Vec<Neighbour>,
}

impl Underlay {
    pub fn device(&self, ifindex: u32) -> Option<&Device> {
        self.devices.iter().find(|d| d.ifindex == ifindex)
    }
}

/// A path MTU the programs have learned towards a remote underlay host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathMtu {
    pub host: u32,
    /// The largest outer packet the path carries.
    pub mtu: u32,
    /// Not yet expired (learned within the kernel's 10 minutes): an
    /// expired entry is as good as none, but still there.
    pub fresh: bool,
}

/// A place where the programs disagree with the stated policy (docs/security.md).
/// By default the model predicts what the programs do there (so the
/// fuzzer can look for other differences) and reports each case that hits
/// it; `Config::enforce` makes it predict the stated policy instead. None is open:
/// the one found (the outer source's reservation checked in the inner
/// destination's fan only) is fixed, and its reproducers are plain
/// regression cases in the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {}

impl Finding {
    pub const ALL: [Finding; 0] = [];

    /// The label corpus lines use (`known=<label>`).
    pub fn label(self) -> &'static str {
        match self {}
    }
}

/// Everything the model's prediction depends on besides the frame.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub fans: Vec<Fan>,
    pub endpoints: Vec<Endpoint>,
    pub underlay: Underlay,
    /// Findings for which the model predicts the stated policy rather
    /// than the programs' behaviour.
    pub enforce: Vec<Finding>,
    /// The bypass is off (the host's netfilter could act): what the
    /// programs would forward themselves goes to the stack, and nothing is
    /// delivered straight into a container.
    pub bypass_off: bool,
    /// The path MTU table as a case finds it (each case starts from it).
    pub path_mtus: Vec<PathMtu>,
}

impl Config {
    /// The fan whose overlay contains `addr`: the longest overlay prefix wins,
    /// as in the programs' LPM map (overlays never overlap on a valid host).
    pub fn fan_for(&self, addr: u32) -> Option<&Fan> {
        self.fans
            .iter()
            .filter(|fan| fan.map.overlay_contains(addr))
            .max_by_key(|fan| fan.map.overlay_len)
    }

    /// Whether `addr` is the gateway, network or broadcast address of one
    /// of this host's slices: no container's.
    pub fn is_slice_edge_or_gateway(&self, addr: u32) -> bool {
        self.fans.iter().any(|fan| {
            let slice = fan.map.slice_of(fan.local_host);
            let last = slice | (u32::MAX >> fan.map.slice_len());
            fan.is_local(addr) && (addr == slice || addr == slice + 1 || addr == last)
        })
    }

    /// Whether `addr` is this host's underlay address in some fan.
    pub fn is_local_host(&self, addr: u32) -> bool {
        self.fans.iter().any(|fan| fan.local_host == addr)
    }

    /// The table's entry for `host`, expired or not.
    pub fn path_mtu_entry(&self, host: u32) -> Option<&PathMtu> {
        self.path_mtus.iter().find(|p| p.host == host)
    }

    /// The unexpired path MTU towards `host`, if one was learned.
    pub fn path_mtu(&self, host: u32) -> Option<u32> {
        self.path_mtu_entry(host).filter(|p| p.fresh).map(|p| p.mtu)
    }

    /// Whether `remote` is another member of an underlay that `local`,
    /// one of this host's addresses, sends on: inside it, and neither its
    /// network nor its broadcast address.
    pub fn is_underlay_peer(&self, local: u32, remote: u32) -> bool {
        self.fans.iter().any(|fan| {
            fan.local_host == local
                && fan.map.underlay_contains(remote)
                && !fan.map.is_reserved_host(remote)
        })
    }

    /// The VXLAN fan a UDP packet to `port` with VNI `vni` is for.
    pub fn vxlan_fan(&self, port: u16, vni: u32) -> Option<&Fan> {
        self.fans
            .iter()
            .find(|fan| fan.vxlan.is_some_and(|v| v.port == port && v.vni == vni))
    }

    /// The VXLAN fan named by the UDP and VXLAN headers at `udp_at` of
    /// `frame` (the I flag set), if both are there.
    pub fn vxlan_fan_at(&self, frame: &[u8], udp_at: usize) -> Option<&Fan> {
        let headers = frame.get(udp_at..udp_at + 16)?;
        if headers[8] & 0x08 == 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, headers[12], headers[13], headers[14]]);
        self.vxlan_fan(u16::from_be_bytes([headers[2], headers[3]]), vni)
    }

    pub fn endpoint(&self, addr: u32) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}
