//! Decapsulation: validate IP-in-IP packets addressed to this host and strip
//! the outer header. One decision function serves the XDP and the TC hook.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        xdp_action,
    },
    helpers::generated::{bpf_redirect_peer, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use fan_common::{
    FanEntry, StatReason,
    events::Program,
    ipv4::{
        ECN_MASK, ETH_HDR_LEN, ETH_P_IPV4, IP_OFFSET_MASK, IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_UDP,
        decap_ecn, is_fragment, replace_word,
    },
    maps::Endpoint,
    vxlan::{UDP_HDR_LEN, VXLAN_HDR_LEN},
};

use crate::{
    events::{self, Seen},
    maps::{FAN_ENDPOINTS, agent_alive, bypass_off, fan_for, is_local_host, source_fan},
    parse::{ARP_IPV4_LEN, ARP_OP_REQUEST, ArpIpv4, ETH_P_ARP, EthHdr, Ipv4Hdr, eth, ipv4, ptr_at},
    pmtu,
    stats::count_in,
    tc::{device_mtu, ensure_ipv4_header, ensure_linear, frame, gso_size},
    vxlan::{self, fan_of_udp},
};

/// What to do with a received frame.
pub enum Decision {
    /// Ours and genuine: remove `outer_len` bytes after the Ethernet header.
    Decapsulate { outer_len: usize },
    /// A VXLAN fan's genuine frame: remove `outer_len` bytes after the
    /// Ethernet header (outer IPv4, UDP and VXLAN), then the inner Ethernet
    /// header takes the outer one's place. `ipv4`: it carries IPv4 (else
    /// ARP), into which the TC program carries a CE mark of `outer_tos`
    /// (the XDP program passes the frame as it is).
    DecapsulateVxlan {
        outer_len: usize,
        fan: &'static FanEntry,
        ipv4: bool,
        outer_tos: u8,
    },
    /// Not fan traffic (or not decapsulable here): the stack decides.
    Pass(StatReason),
    /// Fan traffic that must not be delivered.
    Drop(StatReason),
}

/// Classifies the frame in `[start, end)`: the receive policy, in one place.
///
/// A frame claims to be fan traffic for this host when it is IP-in-IP (not
/// an outer fragment) addressed to one of this host's underlay addresses and
/// at least one inner address lies in an attached overlay, or VXLAN (UDP to
/// one of this host's underlay addresses) whose port and VNI are a VXLAN
/// fan's. (IP-in-IP whose inner addresses are in no overlay, or VXLAN of
/// another port or VNI, is not the Fan's: a kernel tunnel may own it, so
/// the stack decides.) A claim is decapsulated only if
/// - the inner destination (a VXLAN ARP message's target) is in this host's
///   slice of its fan (for VXLAN, the VNI's fan), that fan's local address
///   is the outer destination, and it is neither the slice's network nor
///   its broadcast address (so nothing is forwarded on behalf of another
///   host, and limited broadcast or multicast can never be reached:
///   overlays exclude both);
/// - the outer source is a host of that fan's underlay: not one of this
///   host's own addresses, not the underlay's network or broadcast address;
/// - the inner source (a VXLAN ARP message's sender) is in an attached
///   overlay whose underlay contains the outer source, and in that overlay
///   its slice is the outer source's;
/// - VXLAN only: the inner frame is IPv4 or an Ethernet/IPv4 ARP request
///   or reply, and only an ARP request goes to a broadcast (or multicast) MAC.
///
/// Every other claim is dropped with its own reason. If the outer header
/// carries an ECN CE mark, it is copied into the inner IPv4 header here (RFC
/// 6040), since the outer header is about to go.
///
/// `found` gets the claim's fan once the inner addresses (for VXLAN, the
/// port and VNI) name one (the destination's, else the source's), for the
/// per-fan counters.
#[inline(always)]
pub fn decide(start: usize, end: usize, found: &mut Option<&'static FanEntry>) -> Decision {
    let Some(eth) = eth(start, end) else {
        return Decision::Pass(StatReason::PassNotIpv4);
    };
    // SAFETY: `eth` was bounds-checked against the packet end.
    if !unsafe { (*eth).is_ipv4() } {
        return Decision::Pass(StatReason::PassNotIpv4);
    }
    let Some(outer) = ipv4(start, end, ETH_HDR_LEN) else {
        return Decision::Pass(StatReason::PassMalformedIpv4);
    };
    // SAFETY: bounds-checked above; the header is copied out, so later writes
    // through other pointers cannot alias it.
    let outer = unsafe { *outer };
    if outer.protocol == IPPROTO_UDP {
        return match decide_vxlan(start, end, &outer, found) {
            Ok(decision) => decision,
            Err(reason) => Decision::Drop(reason),
        };
    }
    if outer.protocol != IPPROTO_IPIP {
        // Routers' "fragmentation needed" about our outer packets: the
        // underlay device is the one place they may be learned from.
        if outer.protocol == IPPROTO_ICMP
            && !is_fragment(outer.frag_off())
            && is_local_host(outer.dst_wire())
            && let Some(reason) = pmtu::learn(start, end, &outer)
        {
            return Decision::Pass(reason);
        }
        return Decision::Pass(StatReason::PassNotIpip);
    }
    if is_fragment(outer.frag_off()) {
        return Decision::Pass(StatReason::PassOuterFragment);
    }
    if !is_local_host(outer.dst_wire()) {
        return Decision::Pass(StatReason::PassNotLocalUnderlay);
    }
    let outer_len = outer.header_len();
    let Some(inner_ptr) = ipv4(start, end, ETH_HDR_LEN + outer_len) else {
        return Decision::Drop(StatReason::DropMalformedInner);
    };
    // SAFETY: bounds-checked above.
    let inner = unsafe { *inner_ptr };
    let dst_fan = fan_for(inner.dst_wire());
    let src_fan = match dst_fan {
        Some(fan) => source_fan(fan, inner.src()),
        None => fan_for(inner.src_wire()),
    };
    *found = dst_fan.or(src_fan);
    let (dst_fan, src_fan) = match (dst_fan, src_fan) {
        (None, None) => return Decision::Pass(StatReason::PassNotOverlay),
        (None, Some(_)) => return Decision::Drop(StatReason::DropInnerDstNotLocal),
        (Some(_), None) => return Decision::Drop(StatReason::DropInnerSrcOutsideOverlay),
        (Some(dst_fan), Some(src_fan)) => (dst_fan, src_fan),
    };
    // A fan speaks one wire format: a VXLAN fan's slice takes no IP-in-IP.
    if dst_fan.is_vxlan() {
        return Decision::Drop(StatReason::DropIpipToVxlanFan);
    }
    let checked = check_receiver(dst_fan, &outer, inner.dst())
        .and_then(|()| check_sender(dst_fan, src_fan, &outer, inner.src()))
        .and_then(|()| carry_ecn(outer.tos, inner_ptr));
    match checked {
        Ok(()) => Decision::Decapsulate { outer_len },
        Err(reason) => Decision::Drop(reason),
    }
}

/// The inner destination (or ARP target) `dst`: a container (or the
/// gateway) of this host's slice of `dst_fan`, whose local address the
/// outer header was sent to.
#[inline(always)]
fn check_receiver(dst_fan: &FanEntry, outer: &Ipv4Hdr, dst: u32) -> Result<(), StatReason> {
    if dst_fan.local_host != outer.dst() || !dst_fan.is_local(dst) {
        return Err(StatReason::DropInnerDstNotLocal);
    }
    if dst_fan.map.is_slice_edge(dst_fan.local_host, dst) {
        return Err(StatReason::DropInnerDstReserved);
    }
    Ok(())
}

/// The outer source: another host of the fan's underlay, owning the slice
/// of the inner source (or ARP sender) `src`, which lies in `src_fan`.
#[inline(always)]
fn check_sender(
    dst_fan: &FanEntry,
    src_fan: &FanEntry,
    outer: &Ipv4Hdr,
    src: u32,
) -> Result<(), StatReason> {
    let outer_src = outer.src();
    if !dst_fan.map.underlay_contains(outer_src) || !src_fan.map.underlay_contains(outer_src) {
        return Err(StatReason::DropOuterSrcOutsideUnderlay);
    }
    // Reserved in either fan: a source fan with a narrower underlay has
    // its own network and broadcast addresses, which own no slice there.
    if dst_fan.map.is_reserved_host(outer_src) || src_fan.map.is_reserved_host(outer_src) {
        return Err(StatReason::DropOuterSrcReserved);
    }
    if is_local_host(outer.src_wire()) {
        return Err(StatReason::DropOuterSrcIsLocal);
    }
    if src_fan.map.host_of(src) != outer_src {
        return Err(StatReason::DropSpoofedSource);
    }
    Ok(())
}

/// Copies a CE mark of the outer header's `outer_tos` into the inner IPv4
/// header at `inner_ptr` (RFC 6040), or refuses a CE mark over a Not-ECT
/// inner packet.
#[inline(always)]
pub fn carry_ecn(outer_tos: u8, inner_ptr: *mut Ipv4Hdr) -> Result<(), StatReason> {
    // SAFETY: the caller bounds-checked `inner_ptr`; copied out.
    let inner = unsafe { *inner_ptr };
    let ecn = check_ecn(outer_tos, &inner)?;
    if ecn != inner.tos & ECN_MASK {
        let old = inner.tos_word();
        let tos = (inner.tos & !ECN_MASK) | ecn;
        let new = u16::from_ne_bytes([inner.version_ihl, tos]);
        let check = replace_word(inner.check_word(), old, new);
        // SAFETY: bounds-checked by the caller; both hooks may write packet data.
        unsafe {
            (*inner_ptr).tos = tos;
            (*inner_ptr).check = check.to_ne_bytes();
        }
    }
    Ok(())
}

/// The inner ECN field once an outer CE mark (in `outer_tos`) is carried
/// into `inner`; refused for a Not-ECT inner packet under CE.
#[inline(always)]
fn check_ecn(outer_tos: u8, inner: &Ipv4Hdr) -> Result<u8, StatReason> {
    decap_ecn(outer_tos, inner.tos).ok_or(StatReason::DropCeNotEct)
}

/// Bytes the receive policy reads of a VXLAN packet after its outer IPv4
/// header: UDP, VXLAN, the inner Ethernet header and an ARP message (an
/// inner IPv4 header is read with its options).
pub const VXLAN_POLICY_LEN: usize = UDP_HDR_LEN + VXLAN_HDR_LEN + ETH_HDR_LEN + ARP_IPV4_LEN;

/// The VXLAN branch of the receive policy, for UDP `outer`. `Ok` with a
/// pass for what is not a VXLAN fan's, or with the decapsulation; `Err`
/// with the reason a VXLAN fan's frame is dropped.
#[inline(always)]
fn decide_vxlan(
    start: usize,
    end: usize,
    outer: &Ipv4Hdr,
    found: &mut Option<&'static FanEntry>,
) -> Result<Decision, StatReason> {
    let not_ours = Ok(Decision::Pass(StatReason::PassNotIpip));
    // A later fragment has no UDP header to tell.
    if outer.frag_off() & IP_OFFSET_MASK != 0 {
        return not_ours;
    }
    let Some(fan) = fan_of_udp(start, end, ETH_HDR_LEN + outer.header_len()) else {
        return not_ours;
    };
    // Sent to the fan's own underlay address, as every packet of its own
    // is, it is sent to this host: the fans' local addresses are the
    // local-host map's, which is then asked only about the rest.
    if outer.dst() != fan.local_host && !is_local_host(outer.dst_wire()) {
        return not_ours;
    }
    *found = Some(fan);
    if is_fragment(outer.frag_off()) {
        return Ok(Decision::Pass(StatReason::PassOuterFragment));
    }
    let outer_len = outer.header_len() + UDP_HDR_LEN + VXLAN_HDR_LEN;
    let inner_eth = eth_at(start, end, ETH_HDR_LEN + outer_len)?;
    let payload = ETH_HDR_LEN + outer_len + ETH_HDR_LEN;
    let ipv4 = match inner_eth.ether_type() {
        ETH_P_IPV4 => {
            let inner_ptr = ipv4(start, end, payload).ok_or(StatReason::DropMalformedInner)?;
            // SAFETY: bounds-checked by `ipv4`; copied out.
            let inner = unsafe { *inner_ptr };
            check_receiver(fan, outer, inner.dst())?;
            check_sender(fan, vxlan_source_fan(fan, inner.src())?, outer, inner.src())?;
            if inner_eth.dst_is_group() {
                return Err(StatReason::DropVxlanBroadcastNotArp);
            }
            // Carried by the TC program alone: XDP passes the frame untouched.
            check_ecn(outer.tos, &inner)?;
            true
        }
        ETH_P_ARP => {
            let arp = ptr_at::<ArpIpv4>(start, end, payload)
                .ok_or(StatReason::DropVxlanArpNotRequestOrReply)?;
            // SAFETY: bounds-checked by `ptr_at`; copied out.
            let arp = unsafe { *arp };
            if !arp.is_request_or_reply() {
                return Err(StatReason::DropVxlanArpNotRequestOrReply);
            }
            check_receiver(fan, outer, arp.target())?;
            let sender = arp.head.sender();
            check_sender(fan, vxlan_source_fan(fan, sender)?, outer, sender)?;
            if inner_eth.dst_is_group() && arp.head.operation() != ARP_OP_REQUEST {
                return Err(StatReason::DropVxlanBroadcastNotArp);
            }
            false
        }
        _ => return Err(StatReason::DropVxlanNotIpv4OrArp),
    };
    Ok(Decision::DecapsulateVxlan {
        outer_len,
        fan,
        ipv4,
        outer_tos: outer.tos,
    })
}

/// The fan of a VXLAN frame's inner source (or ARP sender) `src`.
#[inline(always)]
fn vxlan_source_fan(fan: &'static FanEntry, src: u32) -> Result<&'static FanEntry, StatReason> {
    source_fan(fan, src).ok_or(StatReason::DropInnerSrcOutsideOverlay)
}

/// The Ethernet header at `offset`, copied out.
#[inline(always)]
fn eth_at(start: usize, end: usize, offset: usize) -> Result<EthHdr, StatReason> {
    let eth = ptr_at::<EthHdr>(start, end, offset).ok_or(StatReason::DropVxlanNotIpv4OrArp)?;
    // SAFETY: bounds-checked by `ptr_at`; copied out.
    Ok(unsafe { *eth })
}

/// TC ingress on the underlay device.
#[inline(always)]
pub fn decapsulate_tc(ctx: &TcContext) -> i32 {
    let (outer_len, protocol) = ensure_ipv4_header(ctx, ETH_HDR_LEN);
    if protocol == IPPROTO_IPIP {
        ensure_ipv4_header(ctx, ETH_HDR_LEN + outer_len);
    } else if protocol == IPPROTO_UDP {
        ensure_linear(ctx, ETH_HDR_LEN + outer_len + VXLAN_POLICY_LEN);
        let inner = ETH_HDR_LEN + outer_len + UDP_HDR_LEN + VXLAN_HDR_LEN + ETH_HDR_LEN;
        ensure_ipv4_header(ctx, inner);
    }
    let (start, end) = frame(ctx);
    let len = ctx.len() as usize;
    // The inner destination's fan, once known: its counters count too.
    let mut fan = None;
    match decide(start, end, &mut fan) {
        Decision::Decapsulate { outer_len } => {
            // FIXED_GSO: without it a GRO packet's gso_size would grow by the
            // removed bytes and the resegmented TCP would exceed the MTU.
            let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64;
            if ctx
                .adjust_room(-(outer_len as i32), BPF_ADJ_ROOM_MAC, flags)
                .is_err()
            {
                count_in(fan, StatReason::DropDecapFailed, len);
                return TC_ACT_SHOT;
            }
            count_in(fan, StatReason::Decapsulated, len);
            match deliver_direct(ctx) {
                Some(action) => {
                    count_in(fan, StatReason::DecapsulatedDirect, len);
                    action
                }
                // Next program in the chain, then the stack: a firewall or
                // another data plane attached after us sees the inner packet.
                None => TC_ACT_UNSPEC,
            }
        }
        Decision::DecapsulateVxlan {
            outer_len,
            fan: vxlan_fan,
            ipv4,
            outer_tos,
        } => match vxlan::hand_over(ctx, vxlan_fan, outer_len, ipv4.then_some(outer_tos)) {
            Ok(handed) => {
                count_in(fan, StatReason::Decapsulated, len);
                if handed.direct {
                    count_in(fan, StatReason::DecapsulatedDirect, len);
                }
                handed.action
            }
            Err(reason) => {
                count_in(fan, reason, len);
                TC_ACT_SHOT
            }
        },
        Decision::Pass(reason) => {
            count_in(fan, reason, len);
            events::passed(&Seen::tc(ctx), Program::DecapTc, reason);
            TC_ACT_UNSPEC
        }
        Decision::Drop(reason) => {
            count_in(fan, reason, len);
            events::dropped(&Seen::tc(ctx), Program::DecapTc, reason);
            TC_ACT_SHOT
        }
    }
}

/// Delivers a decapsulated packet straight into the namespace of the
/// container it is for, when `fan-xdp run` has told us which veth that is.
/// This bypasses the host's forwarding path (and the bridge, whose transmit
/// would segment the still-encapsulation-tagged GSO packet in software), so it
/// does what the router would have done: decrement the TTL, and leave to the
/// stack what would expire or not fit. `None`: let the stack deliver it.
#[inline(always)]
fn deliver_direct(ctx: &TcContext) -> Option<i32> {
    let (start, end) = frame(ctx);
    let eth = eth(start, end)?;
    let ip_ptr = ipv4(start, end, ETH_HDR_LEN)?;
    // SAFETY: bounds-checked by `ipv4`.
    let ip = unsafe { *ip_ptr };
    if ip.ttl <= 1 {
        return None;
    }
    let endpoint = direct_endpoint(ctx, &ip)?;
    // SAFETY: both headers were bounds-checked and nothing moved the data since.
    unsafe {
        (*ip_ptr).decrement_ttl();
        (*eth).readdress(&endpoint.mac, &endpoint.gateway_mac);
    }
    // SAFETY: the helper takes plain integers.
    Some(unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32)
}

/// The container a decapsulated IPv4 packet `ip` may be delivered straight
/// to: known to the endpoint map while its keeper beats, the bypass on,
/// its veth there and wide enough.
#[inline(always)]
pub fn direct_endpoint(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<&'static Endpoint> {
    // SAFETY: a lookup with a key on our stack; the value stays valid for this run.
    let endpoint = unsafe { FAN_ENDPOINTS.get(ip.dst_wire()) }?;
    // A map whose keeper stopped beating may name ports that changed hands;
    // with the bypass off, the host's netfilter must see the packet.
    if !agent_alive() || bypass_off() {
        return None;
    }
    // A stale entry (its device gone) falls back to the stack instead of
    // delivering anywhere.
    let mtu = device_mtu(ctx, endpoint.ifindex)?;
    if gso_size(ctx) == 0 && ip.total_len() as u32 > mtu {
        return None;
    }
    Some(endpoint)
}

/// XDP on the underlay device, before the stack (and GRO) sees the packet.
#[inline(always)]
pub fn decapsulate_xdp(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let len = end - start;
    // The inner destination's fan, once known: its counters count too.
    let mut fan = None;
    match decide(start, end, &mut fan) {
        Decision::Decapsulate { outer_len } => {
            // Keep the Ethernet header, drop everything up to the inner
            // header, and put the Ethernet header back in front of it.
            let Some(old_eth) = eth(start, end) else {
                count_in(fan, StatReason::DropDecapFailed, len);
                return xdp_action::XDP_DROP;
            };
            // SAFETY: bounds-checked by `eth`.
            let saved: EthHdr = unsafe { *old_eth };
            // SAFETY: the helper only needs the program's own context.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
                count_in(fan, StatReason::DropDecapFailed, len);
                return xdp_action::XDP_DROP;
            }
            let Some(new_eth) = eth(ctx.data(), ctx.data_end()) else {
                count_in(fan, StatReason::DropDecapFailed, len);
                return xdp_action::XDP_DROP;
            };
            // SAFETY: bounds-checked against the adjusted packet.
            unsafe { *new_eth = saved };
            count_in(fan, StatReason::Decapsulated, len);
            xdp_action::XDP_PASS
        }
        Decision::DecapsulateVxlan { .. } => {
            // Decapsulated at TC, which hands the inner frame to the bridge.
            count_in(fan, StatReason::PassVxlanAtXdp, len);
            xdp_action::XDP_PASS
        }
        Decision::Pass(reason) => {
            count_in(fan, reason, len);
            events::passed(&Seen::xdp(ctx), Program::DecapXdp, reason);
            xdp_action::XDP_PASS
        }
        Decision::Drop(reason) => {
            count_in(fan, reason, len);
            events::dropped(&Seen::xdp(ctx), Program::DecapXdp, reason);
            xdp_action::XDP_DROP
        }
    }
}
