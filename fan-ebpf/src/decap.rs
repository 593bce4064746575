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
        ECN_MASK, ETH_HDR_LEN, IPPROTO_ICMP, IPPROTO_IPIP, decap_ecn, is_fragment, replace_word,
    },
};

use crate::{
    events::{self, Seen},
    maps::{FAN_ENDPOINTS, agent_alive, bypass_off, fan_for, is_local_host},
    parse::{EthHdr, eth, ipv4},
    pmtu,
    stats::count_in,
    tc::{device_mtu, ensure_ipv4_header, frame, gso_size},
};

/// What to do with a received frame.
pub enum Decision {
    /// Ours and genuine: remove `outer_len` bytes after the Ethernet header.
    Decapsulate { outer_len: usize },
    /// Not fan traffic (or not decapsulable here): the stack decides.
    Pass(StatReason),
    /// Fan traffic that must not be delivered.
    Drop(StatReason),
}

/// Classifies the frame in `[start, end)`: the receive policy, in one place.
///
/// A frame claims to be fan traffic for this host when it is IP-in-IP (not
/// an outer fragment) addressed to one of this host's underlay addresses and
/// at least one inner address lies in an attached overlay. (IP-in-IP whose
/// inner addresses are in no overlay is not the Fan's: a kernel tunnel may
/// own it, so the stack decides.) A claim is decapsulated only if
/// - the inner destination is in this host's slice of its fan, that fan's
///   local address is the outer destination, and it is neither the slice's
///   network nor its broadcast address (so nothing is forwarded on behalf of
///   another host, and limited broadcast or multicast can never be reached:
///   overlays exclude both);
/// - the outer source is a host of that fan's underlay: not one of this
///   host's own addresses, not the underlay's network or broadcast address;
/// - the inner source is in an attached overlay whose underlay contains the
///   outer source, and in that overlay its slice is the outer source's.
///
/// Every other claim is dropped with its own reason. If the outer header
/// carries an ECN CE mark, it is copied into the inner header here (RFC
/// 6040), since the outer header is about to go.
///
/// `found` gets the claim's fan once the inner addresses name one (the
/// destination's, else the source's), for the per-fan counters.
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
    let inner_src = inner.src();
    let src_fan = match dst_fan {
        Some(fan) if fan.map.overlay_contains(inner_src) => Some(fan),
        _ => fan_for(inner.src_wire()),
    };
    *found = dst_fan.or(src_fan);
    let (dst_fan, src_fan) = match (dst_fan, src_fan) {
        (None, None) => return Decision::Pass(StatReason::PassNotOverlay),
        (None, Some(_)) => return Decision::Drop(StatReason::DropInnerDstNotLocal),
        (Some(_), None) => return Decision::Drop(StatReason::DropInnerSrcOutsideOverlay),
        (Some(dst_fan), Some(src_fan)) => (dst_fan, src_fan),
    };

    // The inner destination: a container (or the gateway) of this host's slice.
    let inner_dst = inner.dst();
    if dst_fan.local_host != outer.dst() || !dst_fan.is_local(inner_dst) {
        return Decision::Drop(StatReason::DropInnerDstNotLocal);
    }
    if dst_fan.map.is_slice_edge(dst_fan.local_host, inner_dst) {
        return Decision::Drop(StatReason::DropInnerDstReserved);
    }
    // The outer source: another host of the fan's underlay.
    let outer_src = outer.src();
    if !dst_fan.map.underlay_contains(outer_src) || !src_fan.map.underlay_contains(outer_src) {
        return Decision::Drop(StatReason::DropOuterSrcOutsideUnderlay);
    }
    // Reserved in either fan: a source fan with a narrower underlay has
    // its own network and broadcast addresses, which own no slice there.
    if dst_fan.map.is_reserved_host(outer_src) || src_fan.map.is_reserved_host(outer_src) {
        return Decision::Drop(StatReason::DropOuterSrcReserved);
    }
    if is_local_host(outer.src_wire()) {
        return Decision::Drop(StatReason::DropOuterSrcIsLocal);
    }
    // The inner source: in the slice the outer source owns.
    if src_fan.map.host_of(inner_src) != outer_src {
        return Decision::Drop(StatReason::DropSpoofedSource);
    }

    let Some(ecn) = decap_ecn(outer.tos, inner.tos) else {
        return Decision::Drop(StatReason::DropCeNotEct);
    };
    if ecn != inner.tos & ECN_MASK {
        let old = inner.tos_word();
        let tos = (inner.tos & !ECN_MASK) | ecn;
        let new = u16::from_ne_bytes([inner.version_ihl, tos]);
        let check = replace_word(inner.check_word(), old, new);
        // SAFETY: `inner_ptr` was bounds-checked; both hooks may write packet data.
        unsafe {
            (*inner_ptr).tos = tos;
            (*inner_ptr).check = check.to_ne_bytes();
        }
    }
    Decision::Decapsulate { outer_len }
}

/// TC ingress on the underlay device.
#[inline(always)]
pub fn decapsulate_tc(ctx: &TcContext) -> i32 {
    let (outer_len, protocol) = ensure_ipv4_header(ctx, ETH_HDR_LEN);
    if protocol == IPPROTO_IPIP {
        ensure_ipv4_header(ctx, ETH_HDR_LEN + outer_len);
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
    // SAFETY: a lookup with a key on our stack; the value stays valid for this run.
    let endpoint = unsafe { FAN_ENDPOINTS.get(ip.dst_wire()) }?;
    // A map whose keeper stopped beating may name ports that changed hands;
    // with the bypass off, the host's netfilter must see the packet.
    if !agent_alive() || bypass_off() {
        return None;
    }
    if ip.ttl <= 1 {
        return None;
    }
    // A stale entry (its device gone) falls back to the stack instead of
    // delivering anywhere.
    let mtu = device_mtu(ctx, endpoint.ifindex)?;
    if gso_size(ctx) == 0 && ip.total_len() as u32 > mtu {
        return None;
    }
    // SAFETY: both headers were bounds-checked and nothing moved the data since.
    unsafe {
        (*ip_ptr).decrement_ttl();
        (*eth).dst = endpoint.mac;
        (*eth).src = endpoint.gateway_mac;
    }
    // SAFETY: the helper takes plain integers.
    Some(unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32)
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
