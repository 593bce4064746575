//! Counter slots: one per outcome of a packet, so every drop has a named reason.

/// Packets and bytes seen for one outcome, per CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: Counter is repr(C), Copy, and made of two u64 with no padding.
unsafe impl aya::Pod for Counter {}

/// Key of the per-fan counters (`FAN_STATS_BY_FAN`): a fan's overlay
/// network, in host byte order as `FanMap::overlay` has it, and the
/// [`StatReason`] slot. Every outcome decided once the packet's fan is
/// known is counted there as well as in the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FanStatKey {
    pub overlay: u32,
    pub reason: u32,
}

#[cfg(feature = "user")]
// SAFETY: FanStatKey is repr(C), Copy, and made of two u32 with no padding.
unsafe impl aya::Pod for FanStatKey {}

/// Entries of the per-fan counters: every reason of every fan.
pub const MAX_FAN_STATS: u32 = crate::maps::MAX_FANS * StatReason::COUNT;

macro_rules! stat_reasons {
    ($($variant:ident = $name:literal: $doc:literal,)*) => {
        /// What happened to a packet. The discriminant is the slot in the stats
        /// map: new reasons go last, so an upgrade carries every slot over
        /// as it is (see the loader's resized maps).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum StatReason {
            $(#[doc = $doc] $variant,)*
        }

        impl StatReason {
            pub const ALL: &'static [StatReason] = &[$(StatReason::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable snake_case name used by `fan-xdp stats` and its JSON.
            pub const fn name(self) -> &'static str {
                match self { $(StatReason::$variant => $name,)* }
            }

            pub const fn description(self) -> &'static str {
                match self { $(StatReason::$variant => $doc,)* }
            }

            pub fn from_index(index: u32) -> Option<Self> {
                Self::ALL.get(index as usize).copied()
            }
        }
    };
}

stat_reasons! {
    Encapsulated = "encapsulated": "encapsulated and sent to the underlay host owning the destination",
    EncapsulatedGso = "encapsulated_gso": "of the encapsulated packets, GSO super-packets (segmented later)",
    EncapsulatedNeighPending = "encapsulated_neigh_pending": "of the encapsulated packets, sent through bpf_redirect_neigh because the next hop's neighbour entry was unresolved (its discards show in the kernel's arp_cache statistics)",
    Decapsulated = "decapsulated": "outer header removed, inner packet handed on",
    DecapsulatedDirect = "decapsulated_direct": "of the decapsulated packets, delivered straight into the container's namespace (bpf_redirect_peer)",
    PassNotIpv4 = "pass_not_ipv4": "not an IPv4 frame: left to the stack",
    PassMalformedIpv4 = "pass_malformed_ipv4": "IPv4 header truncated or invalid: left to the stack to reject",
    PassNotOverlay = "pass_not_overlay": "destination outside every configured overlay: not fan traffic",
    PassLocalSlice = "pass_local_slice": "destination in this host's own slice: delivered locally",
    PassNotIpip = "pass_not_ipip": "neither IP-in-IP nor VXLAN to an attached VXLAN fan's port and VNI: left to the stack",
    PassNotLocalUnderlay = "pass_not_local_underlay": "outer destination is not this host's underlay address",
    PassOuterFragment = "pass_outer_fragment": "outer header is a fragment, which cannot be decapsulated before reassembly",
    StackBypassOff = "stack_bypass_off": "the host's netfilter could act on fan traffic (the bypass is off): encapsulated after the stack has forwarded it, delivered through the stack",
    StackTtlExpired = "stack_ttl_expired": "inner TTL would expire: the stack answers with ICMP time exceeded",
    StackTooBigForPath = "stack_too_big_for_path": "larger than the learned path MTU allows and fragmentable (no DF): the stack fragments it (by the route MTU fan-xdp run keeps)",
    StackFragmentForPath = "stack_fragment_for_path": "a fragment towards a host with a learned path MTU: to the stack, with the rest of its datagram (which the stack fragments to the route MTU fan-xdp run keeps)",
    PmtuAnswered = "pmtu_answered": "larger than the learned path MTU allows, with DF: answered with ICMP fragmentation needed from the slice gateway",
    PmtuAnswerSuppressed = "pmtu_answer_suppressed": "larger than the learned path MTU allows, with DF, but the per-CPU limit of ICMP answers was reached: dropped",
    DropAnswerFailed = "drop_answer_failed": "the kernel refused to reshape a packet into its ICMP answer",
    DropTooBigForPath = "drop_too_big_for_path": "larger than the learned path MTU allows and not to be answered (an ICMP error, a fragment, a host packet): dropped",
    PmtuLearned = "pmtu_learned": "ICMP fragmentation needed about one of our outer packets: path MTU to that host learned",
    PmtuHostAdded = "pmtu_host_added": "of the learned path MTUs, the first for a host (entries added; the LRU table evicts the oldest when full)",
    PmtuIgnoredTooSmall = "pmtu_ignored_too_small": "ICMP fragmentation needed reporting an MTU below 68: ignored",
    PmtuIgnoredNotSmaller = "pmtu_ignored_not_smaller": "ICMP fragmentation needed reporting an MTU not below the quoted packet's length: ignored",
    PmtuIgnoredNotLower = "pmtu_ignored_not_lower": "ICMP fragmentation needed reporting an MTU not below the unexpired one known: ignored",
    PmtuRejectedQuote = "pmtu_rejected_quote": "ICMP fragmentation needed whose quoted header is not one of our outer packets to a fan host: ignored",
    PmtuRejectedInner = "pmtu_rejected_inner": "ICMP fragmentation needed whose quoted inner header is not from our slice to the quoted host's: ignored",
    StackTooBig = "stack_too_big": "encapsulated packet would exceed the underlay MTU (the device's, or the route's): the stack answers with ICMP fragmentation needed",
    DropTooBig = "drop_too_big": "host-originated packet larger than the underlay MTU (the device's, or the route's) allows",
    DropInnerTooLong = "drop_inner_too_long": "inner packet over 65515 bytes (or BIG TCP's length 0): its outer total length would not fit 16 bits",
    DropReservedHost = "drop_reserved_host": "destination maps to the underlay's network or broadcast address",
    DropSourceNotLocal = "drop_source_not_local": "inner source (or a VXLAN fan's ARP sender) is not in this host's slice: it would be dropped as spoofed by the receiver",
    DropSourceNotBound = "drop_source_not_bound": "a container port sent from an address bound to another port (an IPv4 source or an ARP sender)",
    DropDhcpServerReply = "drop_dhcp_server_reply": "a container port sent UDP from port 67 or to port 68 (a DHCP server's side), or from 68 to another port than 67: of the DHCP pair a container sends only a client's messages (68 -> 67); only the slice's own DHCP server (fan-xdp's dnsmasq on the bridge) may answer its clients",
    DropCrossUnderlay = "drop_cross_underlay": "source and destination fans use different underlay addresses of this host: the receiver could not check the sender, so the packet would be dropped there",
    DropFibBlackhole = "drop_fib_blackhole": "the underlay route to the destination host is a blackhole",
    DropFibUnreachable = "drop_fib_unreachable": "the underlay route to the destination host is unreachable",
    DropFibProhibit = "drop_fib_prohibit": "the underlay route to the destination host is prohibited",
    DropFibNotForwarded = "drop_fib_not_forwarded": "no usable underlay route to the destination host through the underlay device",
    DropFibForwardingDisabled = "drop_fib_forwarding_disabled": "forwarding is disabled on the underlay device",
    DropFibUnsupportedLwt = "drop_fib_unsupported_lwt": "the underlay route needs a lightweight tunnel encapsulation",
    DropFibNoSourceAddress = "drop_fib_no_source_address": "the route lookup found no source address",
    DropFibFailed = "drop_fib_failed": "the route lookup failed (an unexpected result)",
    DropMalformedInner = "drop_malformed_inner": "fan traffic for this host whose inner IPv4 header is truncated or invalid",
    DropInnerDstNotLocal = "drop_inner_dst_not_local": "inner destination is not in this host's slice of the fan the outer destination names (fan-xdp never forwards another host's fan traffic)",
    DropInnerDstReserved = "drop_inner_dst_reserved": "inner destination is the local slice's network or broadcast address",
    DropOuterSrcOutsideUnderlay = "drop_outer_src_outside_underlay": "outer source is not in the underlay",
    DropOuterSrcReserved = "drop_outer_src_reserved": "outer source is the underlay's network or broadcast address",
    DropOuterSrcIsLocal = "drop_outer_src_is_local": "outer source is one of this host's own underlay addresses: a peer forging this host",
    DropInnerSrcOutsideOverlay = "drop_inner_src_outside_overlay": "inner source is outside every configured overlay",
    DropSpoofedSource = "drop_spoofed_source": "outer source is not the underlay host owning the inner source's slice",
    DropCeNotEct = "drop_ce_not_ect": "outer header marked CE but inner packet is not ECN-capable (RFC 6040)",
    DropEncapFailed = "drop_encap_failed": "the kernel refused to make room for the outer header",
    DropDecapFailed = "drop_decap_failed": "the kernel refused to remove the outer header",
    EventsSuppressed = "events_suppressed": "events for `fan-xdp monitor` left out by the per-CPU rate limit or a full ring buffer; not a packet outcome",
    PortPassed = "port_passed": "a container port's packet left to the bridge (the bridge's program counts its outcome if the bridge hands it up, the bridge alone delivers it if it goes to another port): one count per port program run",
    DropVlanTagged = "drop_vlan_tagged": "a container sent a VLAN-tagged frame (a tag in the frame, or one the kernel moved into the packet's metadata), or the bridge sent a VXLAN fan's overlay port one with a tag in the metadata: the host would strip the tag and take the inner packet unchecked, or carry the tag onto the underlay",
    DropNotIpv4OrArp = "drop_not_ipv4_or_arp": "a container port sent a frame that is neither IPv4 nor ARP (IPv6 among them: its router advertisements would reach the host)",
    DropArpNotEthernetIpv4 = "drop_arp_not_ethernet_ipv4": "a container port sent ARP that is not Ethernet/IPv4 (hardware type 1, protocol IPv4, address lengths 6 and 4), which the kernel may still learn from",
    DropSourceReserved = "drop_source_reserved": "a container sent from its slice's gateway, network or broadcast address (an IPv4 source, or at its port an ARP sender)",
    DropSourceOutsideSlice = "drop_source_outside_slice": "a container port sent from an address outside this host's slices, or from 0.0.0.0 other than a DHCP client's message to the server or to 255.255.255.255",
    DropTunnelToUnderlay = "drop_tunnel_to_underlay": "a container sent IP-in-IP, IPv6-in-IPv4, GRE or VXLAN of an attached VXLAN fan (its port and VNI) to an address of an attached fan's underlay: masqueraded by the host, it would reach that host as this host's own fan traffic",
    DropVxlanNotIpv4OrArp = "drop_vxlan_not_ipv4_or_arp": "a VXLAN fan's frame (at its overlay port, or received) that is neither IPv4 nor ARP (IPv6 among them): the Fan's VXLAN carries only those",
    DropVxlanNotOverlay = "drop_vxlan_not_overlay": "a frame at a VXLAN fan's overlay port whose IPv4 destination (or ARP target) is in no VXLAN fan's overlay: no host to send it to",
    DropVxlanLocalSlice = "drop_vxlan_local_slice": "a frame at a VXLAN fan's overlay port whose IPv4 destination (or ARP target) is in this host's own slice: a remote that is this host is not sent to",
    DropVxlanArpNotRequestOrReply = "drop_vxlan_arp_not_request_or_reply": "a VXLAN fan's ARP (at its overlay port, or received) that is not an Ethernet/IPv4 request or reply",
    DropVxlanBroadcastNotArp = "drop_vxlan_broadcast_not_arp": "a frame received over VXLAN to a broadcast or multicast MAC that is not an ARP request",
    DropVxlanTooBig = "drop_vxlan_too_big": "a frame at a VXLAN fan's overlay port larger than the fan's MTU (or the underlay route's, or a learned path MTU) allows after the 50-byte overhead: switched, not routed, so nobody answers its sender",
    PassVxlanViaOverlayPort = "pass_vxlan_via_overlay_port": "a VXLAN fan's packet at the slice bridge's program: the host routes it back to the bridge, whose overlay port sends it",
    VxlanFloodNotSent = "vxlan_flood_not_sent": "a broadcast or multicast frame the slice bridge flooded to a VXLAN fan's overlay port that names no remote host (IPv6 neighbour discovery, an ARP for this host's slice): not sent, as the kernel's fan vxlan discards it; not a drop event",
    PassVxlanAtXdp = "pass_vxlan_at_xdp": "a VXLAN fan's frame at the XDP hook: left to the TC program, which decapsulates VXLAN",
}

impl StatReason {
    /// Whether this counts what happened to a packet; `events_suppressed`
    /// counts events left out (the rate limit, a full ring) of packets
    /// already counted under their outcome.
    pub const fn is_outcome(self) -> bool {
        !matches!(self, StatReason::EventsSuppressed)
    }
}
