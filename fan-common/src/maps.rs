//! Values carried in the BPF maps, laid out identically on both sides.

use crate::fan::FanMap;

/// Bumped whenever a map's key or value layout changes, so a loader never
/// reuses pinned maps written by an incompatible version.
pub const MAP_LAYOUT_VERSION: u32 = 4;

/// Most fans one host can carry (entries in the LPM trie keyed by overlay).
pub const MAX_FANS: u32 = 256;

/// Value of the fan configuration map, keyed by the overlay prefix (network
/// byte order) so that an LPM lookup of any address finds its fan in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FanEntry {
    pub map: FanMap,
    /// This host's underlay address (host byte order): the outer source, and
    /// the owner of the local slice.
    pub local_host: u32,
    /// The underlay device encapsulated packets leave by.
    pub underlay_ifindex: u32,
    /// The overlay MTU: the largest inner packet sent without the stack's
    /// say (normally the underlay MTU less the encapsulation's overhead,
    /// 20 or 50; lower when the path is narrower).
    pub overlay_mtu: u32,
    /// The wire format ([`Encap`]).
    pub encap: u8,
    pub _pad: [u8; 1],
    /// VXLAN: the UDP destination port (host byte order); 0 for IP-in-IP.
    pub vxlan_port: u16,
    /// VXLAN: the network identifier (24 bits); 0 for IP-in-IP.
    pub vni: u32,
    /// VXLAN: the overlay port's host end (`B`), where `fan_vxlan_out` runs
    /// at TC ingress and where frames for the slice bridge are redirected;
    /// 0 for IP-in-IP.
    pub overlay_port_ifindex: u32,
    /// The slice bridge.
    pub bridge_ifindex: u32,
}

impl FanEntry {
    /// An IP-in-IP fan's entry (no VXLAN fields, no bridge recorded).
    pub const fn ipip(
        map: FanMap,
        local_host: u32,
        underlay_ifindex: u32,
        overlay_mtu: u32,
    ) -> Self {
        Self {
            map,
            local_host,
            underlay_ifindex,
            overlay_mtu,
            encap: Encap::Ipip as u8,
            _pad: [0],
            vxlan_port: 0,
            vni: 0,
            overlay_port_ifindex: 0,
            bridge_ifindex: 0,
        }
    }

    /// Whether the fan speaks VXLAN (else IP-in-IP).
    #[inline(always)]
    pub const fn is_vxlan(&self) -> bool {
        self.encap == Encap::Vxlan as u8
    }

    /// Bytes each underlay packet of this fan spends on the encapsulation.
    #[inline(always)]
    pub const fn overhead(&self) -> u32 {
        if self.is_vxlan() {
            crate::vxlan::VXLAN_OVERHEAD
        } else {
            crate::ipv4::IPV4_HDR_LEN as u32
        }
    }

    /// The first address of this host's slice, in host byte order.
    #[inline(always)]
    pub const fn local_slice(&self) -> u32 {
        self.map.slice_of(self.local_host)
    }

    /// The slice gateway: the slice bridge's address, the first after the
    /// slice's network address.
    #[inline(always)]
    pub const fn gateway(&self) -> u32 {
        self.map.gateway_of(self.local_host)
    }

    /// Whether `addr` lies in this host's own slice (delivered locally).
    #[inline(always)]
    pub const fn is_local(&self, addr: u32) -> bool {
        self.map.slice_contains(self.local_host, addr)
    }
}

/// A fan's wire format (`FanEntry::encap`, `FanMeta::encap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Encap {
    /// IP-in-IP (protocol 4), the Fan's first format.
    #[default]
    Ipip = 0,
    /// VXLAN over UDP (RFC 7348), Ubuntu's Fan VXLAN and LXD's fan mode.
    Vxlan = 1,
}

impl Encap {
    /// As the command line, `show` and the metrics name it.
    pub const fn name(self) -> &'static str {
        match self {
            Encap::Ipip => "ipip",
            Encap::Vxlan => "vxlan",
        }
    }

    /// Bytes each underlay packet spends on the encapsulation.
    pub const fn overhead(self) -> u32 {
        match self {
            Encap::Ipip => crate::ipv4::IPV4_HDR_LEN as u32,
            Encap::Vxlan => crate::vxlan::VXLAN_OVERHEAD,
        }
    }
}

impl TryFrom<u8> for Encap {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Encap::Ipip),
            1 => Ok(Encap::Vxlan),
            other => Err(other),
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: FanEntry is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for FanEntry {}

/// A container's veth, for delivering decapsulated packets straight into its
/// namespace. Keyed by the container's overlay address (network byte order).
/// Written by `fan-xdp run` from the kernel's neighbour and bridge tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Endpoint {
    /// The host-side end of the container's veth pair (a port of the slice bridge).
    pub ifindex: u32,
    /// The container's MAC address: the new Ethernet destination.
    pub mac: [u8; 6],
    /// The slice bridge's MAC address (the gateway's): the new Ethernet source.
    pub gateway_mac: [u8; 6],
}

#[cfg(feature = "user")]
// SAFETY: Endpoint is repr(C), Copy, and made only of integers with no padding.
unsafe impl aya::Pod for Endpoint {}

/// Key of the VXLAN fans map (`FAN_VXLAN`): a UDP destination port and a
/// VNI, as a received packet's outer headers name them (host byte order).
/// Its value is the fan's overlay network (a [`crate::WireAddr`]), for the
/// fan map's lookup. User space derives it from the VXLAN fans' entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C)]
pub struct VxlanKey {
    pub vni: u32,
    pub port: u16,
    pub _pad: u16,
}

#[cfg(feature = "user")]
// SAFETY: VxlanKey is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for VxlanKey {}

/// Most containers one host can have direct delivery for.
pub const MAX_ENDPOINTS: u32 = 16384;

/// Value of the local hosts map, keyed by one of this host's underlay
/// addresses (network byte order). A fan packet is for this host only if its
/// outer destination is a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LocalHost {
    /// The widest underlay (host byte order) of the fans using this address:
    /// every fan host this host can send to lies in it.
    pub underlay: u32,
    pub underlay_len: u8,
    pub _pad: [u8; 3],
    /// How many attached fans use this address.
    pub fans: u32,
}

impl LocalHost {
    /// Whether `host` is another member of this address's underlay: inside
    /// it, and neither its network nor its broadcast address.
    #[inline(always)]
    pub const fn has_peer(&self, host: u32) -> bool {
        let mask = crate::fan::prefix_mask(self.underlay_len);
        let bits = host & !mask;
        host & mask == self.underlay && bits != 0 && bits != !mask
    }
}

#[cfg(feature = "user")]
// SAFETY: LocalHost is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for LocalHost {}

/// The path MTU learned towards one remote underlay host (keyed by its
/// address, network byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PathMtu {
    /// The largest outer packet the path carries.
    pub mtu: u32,
    pub _pad: u32,
    /// When it was learned (CLOCK_MONOTONIC, ns): it expires after
    /// [`crate::pmtu::PMTU_EXPIRES_NS`].
    pub learned_ns: u64,
}

#[cfg(feature = "user")]
// SAFETY: PathMtu is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for PathMtu {}

/// Values of the bypass map (`FAN_BYPASS`): whether the bridge and port
/// programs and direct delivery may skip the host's netfilter. Unset (0) is
/// on, as before the map existed.
pub mod bypass {
    pub const UNSET: u32 = 0;
    /// Decided by the rule (`--bypass auto`): netfilter has nothing to do.
    pub const AUTO_ON: u32 = 1;
    /// Decided by the rule: netfilter could act on forwarded fan traffic.
    pub const AUTO_OFF: u32 = 2;
    pub const FORCED_ON: u32 = 3;
    pub const FORCED_OFF: u32 = 4;

    /// Whether packets must take the host's stack.
    #[inline(always)]
    pub const fn is_off(value: u32) -> bool {
        value == AUTO_OFF || value == FORCED_OFF
    }
}

/// How long the programs trust the endpoint map after the agent's last
/// heartbeat (it beats every second): after a SIGKILL, nothing keeps
/// redirecting to ports that may have changed hands.
pub const AGENT_HEARTBEAT_TIMEOUT_NS: u64 = 3_000_000_000;

/// Most remote hosts with a learned path MTU (an LRU map: forged messages
/// about many hosts can only push older entries out).
pub const MAX_PATH_MTUS: u32 = 4096;

/// Key of the metadata map: `[prefix length, overlay network (host order)]`.
pub type FanMetaKey = [u32; 2];

/// Where decapsulation runs on the underlay device, as the record holds it
/// (`FanMeta::decap_mode`; 0 there means none yet, an interrupted attach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DecapMode {
    /// Native (driver) XDP: before GRO and before an skb exists.
    Xdp = 1,
    /// TC ingress: after GRO, keeps 64 KB aggregates whole (the choice on veth).
    Tc = 2,
}

impl DecapMode {
    /// As `show`, the command line and the pins name it.
    pub const fn name(self) -> &'static str {
        match self {
            DecapMode::Xdp => "xdp",
            DecapMode::Tc => "tc",
        }
    }
}

impl TryFrom<u8> for DecapMode {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            1 => Ok(DecapMode::Xdp),
            2 => Ok(DecapMode::Tc),
            other => Err(other),
        }
    }
}

/// Why the decapsulation hook was picked (`FanMeta::mode_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ModeReason {
    /// `--mode xdp` or `--mode tc`.
    Requested = 0,
    /// veth: XDP would strip TSO from the peer; TC keeps GSO aggregates whole.
    AutoVeth = 1,
    /// A NIC whose driver took the native XDP program.
    AutoNativeXdp = 2,
    /// A NIC whose driver refused native XDP.
    AutoNoNativeXdp = 3,
}

impl ModeReason {
    /// What `show` says.
    pub const fn text(self) -> &'static str {
        match self {
            ModeReason::Requested => "requested",
            ModeReason::AutoVeth => "auto: veth, where XDP would strip TSO from the peer",
            ModeReason::AutoNativeXdp => "auto: the driver runs native XDP",
            ModeReason::AutoNoNativeXdp => "auto: the driver refused native XDP",
        }
    }
}

impl TryFrom<u8> for ModeReason {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(ModeReason::Requested),
            1 => Ok(ModeReason::AutoVeth),
            2 => Ok(ModeReason::AutoNativeXdp),
            3 => Ok(ModeReason::AutoNoNativeXdp),
            other => Err(other),
        }
    }
}

/// A sysctl value not recorded (the fan was attached over one that already
/// held the record, or the value could not be read).
pub const SYSCTL_UNKNOWN: u8 = 0xff;

/// What user space remembers about one attached fan, kept in a pinned map so
/// that `show`, `stats` and `detach` need no other state. Not read by the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FanMeta {
    /// Underlay interface name, NUL-padded.
    pub iface: [u8; 16],
    /// Slice bridge name, NUL-padded.
    pub bridge: [u8; 16],
    pub decap_mode: u8,
    pub mode_reason: u8,
    /// Masquerade slice traffic leaving the overlay.
    pub nat: u8,
    /// Every attach step finished.
    pub complete: u8,
    /// net.ipv4.ip_forward, the underlay's rp_filter and conf.all.rp_filter
    /// before fan-xdp changed them.
    pub orig_forwarding: u8,
    pub orig_rp_filter: u8,
    pub orig_rp_filter_all: u8,
    pub underlay_len: u8,
    /// This host's underlay address (host byte order).
    pub host: u32,
    pub host_reserve: u32,
    pub mtu: u32,
    pub layout_version: u32,
    /// What attach made itself ([`owned`] bits), so detach removes exactly
    /// that and keeps what it adopted. Set before the thing is made.
    pub owned: u8,
    /// The MTU an adopted slice bridge had before attach set the fan's
    /// (with [`owned::BRIDGE_MTU`]), native byte order: detach puts it back.
    pub orig_bridge_mtu: [u8; 2],
    /// An adopted bridge's IPv6 accept_ra before attach set it to 0 (valid
    /// with the [`owned::BRIDGE_ACCEPT_RA`] bit).
    pub orig_bridge_accept_ra: u8,
    /// The wire format ([`Encap`]).
    pub encap: u8,
    pub _pad: [u8; 1],
    /// VXLAN: the UDP destination port (host byte order); 0 for IP-in-IP.
    pub vxlan_port: u16,
    /// VXLAN: the network identifier; 0 for IP-in-IP.
    pub vni: u32,
}

/// Bits of [`FanMeta::owned`].
pub mod owned {
    /// attach created the slice bridge.
    pub const BRIDGE: u8 = 1;
    /// attach added the gateway address to the slice bridge.
    pub const GATEWAY_ADDRESS: u8 = 2;
    /// Before Linux 6.6: attach added the clsact qdisc its TC filters need
    /// to the underlay device (shared by the fans of that device).
    pub const CLSACT_UNDERLAY: u8 = 4;
    /// Before Linux 6.6: attach added the clsact qdisc to the slice bridge.
    pub const CLSACT_BRIDGE: u8 = 8;
    /// attach set an adopted slice bridge's accept_ra to 0 (the host takes
    /// no router advertisement from a container); detach puts back
    /// `orig_bridge_accept_ra`. A bridge attach created goes with its setting.
    pub const BRIDGE_ACCEPT_RA: u8 = 16;
    /// attach changed the MTU of a slice bridge it adopted; the MTU it
    /// found is in [`super::FanMeta::orig_bridge_mtu`].
    pub const BRIDGE_MTU: u8 = 32;
}

#[cfg(feature = "user")]
// SAFETY: FanMeta is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for FanMeta {}
