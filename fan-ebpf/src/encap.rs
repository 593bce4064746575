//! Encapsulation: wrap IPv4 packets bound for a remote slice in an outer
//! IPv4 header addressed by the fan arithmetic, and send them to the underlay.

use core::mem::{self, MaybeUninit};

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_RECOMPUTE_CSUM,
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LKUP_RET_UNSUPP_LWT, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::generated::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use fan_common::{
    FanEntry, StatReason, WireAddr,
    events::Program,
    ipv4::{
        ETH_HDR_LEN, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, is_fragment,
        outer_header,
    },
};

use crate::{
    events::{self, Seen},
    fib::{self, AF_INET},
    maps::{bypass_off, fan_for, source_fan},
    parse::{Ipv4Hdr, ipv4, ptr_at},
    pmtu::{Asker, answer_too_big, path_mtu},
    port::{UDP_TUNNEL_PEEK_LEN, admit},
    stats::{count, count_in},
    tc::{ensure_ipv4_header, ensure_linear, frame, gso_size},
    vxlan,
};

/// Whether `program` forwards the packet in the host's place, owing it a
/// router's TTL and MTU handling: the bridge's and the ports' programs
/// (traffic from containers) do; fan-host's egress (traffic the host
/// originates, or forwarded by the host itself, TTL already handled) does not.
/// The port program does Forward's duties one hop earlier; whatever it
/// passes goes on into the bridge, where the bridge's program sees it again
/// and counts it, so the port counts its passes as `port_passed` alone,
/// not by their reason: the other counters read the same with or without
/// `fan-xdp run` keeping port programs, and every run counts once.
#[inline(always)]
fn forwards(program: Program) -> bool {
    !matches!(program, Program::EncapOutput)
}

#[inline(always)]
pub fn encapsulate(ctx: &TcContext, program: Program) -> i32 {
    // The destination's fan, once known: its counters count the outcome too.
    let mut fan = None;
    match try_encapsulate(ctx, program, &mut fan) {
        Ok(action) => action,
        Err(Outcome::Pass(reason)) => {
            if program == Program::EncapPort {
                count(StatReason::PortPassed, ctx.len() as usize);
            } else {
                count_in(fan, reason, ctx.len() as usize);
                events::passed(&Seen::tc(ctx), program, reason);
            }
            TC_ACT_UNSPEC
        }
        Err(Outcome::Drop(reason)) => {
            count_in(fan, reason, ctx.len() as usize);
            events::dropped(&Seen::tc(ctx), program, reason);
            TC_ACT_SHOT
        }
    }
}

enum Outcome {
    Pass(StatReason),
    Drop(StatReason),
}

/// The hop the encapsulating program is for the inner packet.
pub enum Hop {
    /// Carried as it is: the host's own packet (routed already), or a VXLAN
    /// frame a container addressed to a remote container's MAC (switched).
    AsIs,
    /// Routed in the host's place: the TTL decremented (IP-in-IP's inner
    /// packet has no Ethernet header of its own).
    Routed,
    /// Routed onto a VXLAN overlay: the TTL decremented and the inner
    /// Ethernet header addressed to the remote container from the bridge.
    RoutedTo { dst_mac: [u8; 6], src_mac: [u8; 6] },
}

#[inline(always)]
fn try_encapsulate(
    ctx: &TcContext,
    program: Program,
    found: &mut Option<&'static FanEntry>,
) -> Result<i32, Outcome> {
    let (ip_len, protocol) = ensure_ipv4_header(ctx, ETH_HDR_LEN);
    if forwards(program) && protocol == IPPROTO_UDP {
        // The UDP ports and a VXLAN header, for the DHCP and tunnel guards.
        ensure_linear(ctx, ETH_HDR_LEN + ip_len + UDP_TUNNEL_PEEK_LEN);
    }
    if gso_size(ctx) != 0 {
        // `segment_len` reads a GSO packet's TCP data offset (byte 12).
        ensure_linear(ctx, ETH_HDR_LEN + ip_len + TCP_DATA_OFFSET_END);
    }
    let (start, end) = frame(ctx);
    let sender = if forwards(program) {
        // A container's frame: the container edge's rule first.
        admit(ctx, program == Program::EncapPort, start, end).map_err(Outcome::Drop)?
    } else {
        None
    };
    let Some(eth) = crate::parse::eth(start, end) else {
        return Err(Outcome::Pass(StatReason::PassNotIpv4));
    };
    // SAFETY: bounds-checked by `eth`.
    if !unsafe { (*eth).is_ipv4() } {
        return Err(Outcome::Pass(StatReason::PassNotIpv4));
    }
    let Some(ip_ptr) = ipv4(start, end, ETH_HDR_LEN) else {
        return Err(Outcome::Pass(StatReason::PassMalformedIpv4));
    };
    // SAFETY: bounds-checked by `ipv4`.
    let ip = unsafe { *ip_ptr };
    let Some(fan) = fan_for(ip.dst_wire()) else {
        return Err(Outcome::Pass(StatReason::PassNotOverlay));
    };
    *found = Some(fan);
    let dst = ip.dst();
    if fan.is_local(dst) {
        return Err(Outcome::Pass(StatReason::PassLocalSlice));
    }
    if fan.is_vxlan() && program != Program::EncapPort {
        // The host routes it to the slice bridge, whose overlay port sends it.
        return Err(Outcome::Pass(StatReason::PassVxlanViaOverlayPort));
    }
    if forwards(program) && bypass_off() {
        // Forwarded through the stack (FORWARD, NAT, conntrack), then
        // encapsulated at fan-host's egress.
        return Err(Outcome::Pass(StatReason::StackBypassOff));
    }
    let remote_host = fan.map.host_of(dst);
    if fan.map.is_reserved_host(remote_host) {
        return Err(Outcome::Drop(StatReason::DropReservedHost));
    }
    check_source(fan, ip.src()).map_err(Outcome::Drop)?;
    let hop = if !forwards(program) {
        Hop::AsIs
    } else if fan.is_vxlan() {
        // SAFETY: bounds-checked by `eth`; copied out.
        vxlan::port_hop(ctx, fan, sender, &unsafe { *eth }, &ip).map_err(Outcome::Pass)?
    } else {
        Hop::Routed
    };
    if !matches!(hop, Hop::AsIs) && ip.ttl <= 1 {
        return Err(Outcome::Pass(StatReason::StackTtlExpired));
    }
    let total_len = ip.total_len() as u32;
    let overhead = fan.overhead();
    if total_len == 0 || total_len + overhead > u16::MAX as u32 {
        return Err(Outcome::Drop(StatReason::DropInnerTooLong));
    }
    let too_big = if forwards(program) {
        Outcome::Pass(StatReason::StackTooBig)
    } else {
        Outcome::Drop(StatReason::DropTooBig)
    };
    let segment = match segment_len(ctx, &ip, start, end) {
        Some(len) if len <= fan.overlay_mtu => len,
        _ => return Err(too_big),
    };
    if let Some(path) = path_mtu(remote_host) {
        if forwards(program) && is_fragment(ip.frag_off()) {
            // Every fragment of a datagram takes one path: the stack, which
            // fragments what does not fit (or first reassembles, with
            // conntrack), where the fragments that fit would otherwise go
            // ahead and leave the others waiting for them in a reassembly queue.
            return Err(Outcome::Pass(StatReason::StackFragmentForPath));
        }
        if segment + overhead > path {
            // A container's packet is answered as its gateway would; the
            // host's own (sent before `fan-xdp run` gave its route the path
            // MTU, or with no agent at all) as its stack would for a tunnel.
            let asker = if forwards(program) {
                Asker::Container
            } else {
                Asker::Host
            };
            return match answer_too_big(ctx, fan, &ip, path, asker) {
                Ok(action) => Ok(action),
                Err(StatReason::StackTooBigForPath) => {
                    Err(Outcome::Pass(StatReason::StackTooBigForPath))
                }
                Err(reason) => Err(Outcome::Drop(reason)),
            };
        }
    }
    let protocol = if fan.is_vxlan() {
        IPPROTO_UDP
    } else {
        IPPROTO_IPIP
    };
    let next_hop = match route_to(ctx, fan, remote_host, protocol, ip.tos, segment + overhead) {
        Ok(next_hop) => next_hop,
        Err(RouteError::TooBig) => return Err(too_big),
        Err(RouteError::Drop(reason)) => return Err(Outcome::Drop(reason)),
    };

    match hop {
        Hop::AsIs => {}
        // SAFETY: `ip_ptr` was bounds-checked and nothing has moved the data since.
        Hop::Routed => unsafe { (*ip_ptr).decrement_ttl() },
        // SAFETY: `ip_ptr` and `eth` were bounds-checked and nothing has
        // moved the data since.
        Hop::RoutedTo { dst_mac, src_mac } => unsafe {
            (*ip_ptr).decrement_ttl();
            (*eth).readdress(&dst_mac, &src_mac);
        },
    }
    if fan.is_vxlan() {
        let inner_frame_len = (ETH_HDR_LEN as u32 + total_len) as u16;
        return vxlan::encapsulate(ctx, fan, remote_host, ip.tos, inner_frame_len, &next_hop)
            .map_err(Outcome::Drop);
    }

    // The encapsulation flags make the kernel record the inner header offsets
    // and tag GSO packets SKB_GSO_IPXIP4, so segmentation later produces valid
    // IP-in-IP segments. FIXED_GSO keeps gso_size: the overlay MTU already
    // leaves room for the outer header.
    let flags = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO) as u64;
    if ctx
        .adjust_room(IPV4_HDR_LEN as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return Err(Outcome::Drop(StatReason::DropEncapFailed));
    }
    let outer = outer_header(fan.local_host, remote_host, ip.tos, ip.total_len());
    if ctx
        .store(ETH_HDR_LEN, &outer, BPF_F_RECOMPUTE_CSUM as u64)
        .is_err()
    {
        return Err(Outcome::Drop(StatReason::DropEncapFailed));
    }
    send_to(ctx, fan, &next_hop, false).map_err(Outcome::Drop)
}

/// Sends an encapsulated packet to the next hop the route lookup found:
/// both MAC addresses written from its answer and out of the device, or
/// through `bpf_redirect_neigh` while the neighbour entry is unresolved
/// (to the next hop found with `explicit_next_hop`, else routed again).
/// Counts the packet as encapsulated.
#[inline(always)]
pub fn send_to(
    ctx: &TcContext,
    fan: &FanEntry,
    next_hop: &NextHop,
    explicit_next_hop: bool,
) -> Result<i32, StatReason> {
    let len = ctx.len() as usize;
    count_in(Some(fan), StatReason::Encapsulated, len);
    if gso_size(ctx) != 0 {
        count_in(Some(fan), StatReason::EncapsulatedGso, len);
    }
    let action = match next_hop.neighbour {
        Some((dst_mac, src_mac)) => {
            // The route lookup's answer, as Cilium's fib helpers use it: both
            // MAC addresses written here, straight out of the device.
            let mut macs = [0u8; 12];
            let (dst, src) = macs.split_at_mut(6);
            dst.copy_from_slice(&dst_mac);
            src.copy_from_slice(&src_mac);
            ctx.store(0, &macs, 0)
                .map_err(|_| StatReason::DropEncapFailed)?;
            // SAFETY: the helper takes plain integers.
            unsafe { bpf_redirect(next_hop.ifindex, 0) }
        }
        None if explicit_next_hop => {
            count_in(Some(fan), StatReason::EncapsulatedNeighPending, len);
            // A frame of the overlay port has no route of its own, and an
            // ARP frame no IPv4 protocol for the kernel to route it by: the
            // next hop is named.
            let mut params = bpf_redir_neigh {
                nh_family: AF_INET as u32,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    ipv4_nh: next_hop.address,
                },
            };
            // SAFETY: `params` lives on our stack for the duration of the call.
            unsafe {
                bpf_redirect_neigh(
                    next_hop.ifindex,
                    &mut params,
                    mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            }
        }
        None => {
            count_in(Some(fan), StatReason::EncapsulatedNeighPending, len);
            // The next hop's neighbour entry is unresolved: the kernel routes
            // the packet again (giving it the underlay route; a host packet
            // still carries its overlay route, which the neighbour queue
            // would follow back to the host device) and queues it while ARP
            // resolves. Packets the queue discards show in the kernel's
            // arp_cache statistics, not in fan-xdp's counters.
            // SAFETY: a null params pointer with length 0 asks the kernel for the route.
            unsafe { bpf_redirect_neigh(next_hop.ifindex, core::ptr::null_mut(), 0, 0) }
        }
    };
    Ok(action as i32)
}

/// Whether the inner source may be sent from this host to `dst_fan`: it
/// must lie in this host's slice of its own fan, and that fan must share the
/// underlay address `dst_fan` sends from. Anything else would be dropped by
/// the receiver (as spoofed, or as sent from outside the source's underlay);
/// dropping it here keeps it off the wire and names the reason on the host
/// that sent it.
#[inline(always)]
pub fn check_source(dst_fan: &'static FanEntry, src: u32) -> Result<(), StatReason> {
    let src_fan = source_fan(dst_fan, src).ok_or(StatReason::DropSourceNotLocal)?;
    if !src_fan.is_local(src) {
        return Err(StatReason::DropSourceNotLocal);
    }
    if src_fan.local_host != dst_fan.local_host {
        return Err(StatReason::DropCrossUnderlay);
    }
    Ok(())
}

/// Bytes of a TCP header up to and including the data offset.
pub const TCP_DATA_OFFSET_END: usize = 13;

/// The length of the largest packet this skb becomes: the packet itself, or
/// for a GSO packet one segment (IP and transport headers plus `gso_size`).
/// `None` if a GSO packet's TCP header is not there to measure.
#[inline(always)]
pub fn segment_len(ctx: &TcContext, ip: &Ipv4Hdr, start: usize, end: usize) -> Option<u32> {
    let gso_size = gso_size(ctx);
    if gso_size == 0 {
        return Some(ip.total_len() as u32);
    }
    let l4_offset = ETH_HDR_LEN + ip.header_len();
    let l4_header = match ip.protocol {
        IPPROTO_TCP => {
            let tcp = ptr_at::<[u8; TCP_DATA_OFFSET_END]>(start, end, l4_offset)?;
            // SAFETY: bounds-checked by `ptr_at`; byte 12 holds the data offset.
            ((unsafe { (*tcp)[12] } >> 4) as u32) * 4
        }
        IPPROTO_UDP => 8,
        _ => 0,
    };
    Some(ip.header_len() as u32 + l4_header + gso_size)
}

/// Where an encapsulated packet goes next, from the kernel's routing table.
pub struct NextHop {
    pub ifindex: u32,
    /// The next hop's and the device's MAC addresses, when the next hop's
    /// neighbour entry is resolved.
    pub neighbour: Option<([u8; 6], [u8; 6])>,
    /// The next hop's address (network byte order): the remote host, or
    /// the underlay gateway towards it.
    pub address: u32,
}

pub enum RouteError {
    /// The outer packet would not fit the route's MTU (a locked route MTU, a
    /// learned path MTU, or the device's).
    TooBig,
    Drop(StatReason),
}

/// Looks up the underlay route from this host to `remote_host` for an outer
/// packet of `outer_len` bytes (of IP `protocol`, with `tos`), as the kernel
/// would route it, and accepts only a route through the fan's underlay
/// device. Every failure has its own reason.
#[inline(always)]
pub fn route_to(
    ctx: &TcContext,
    fan: &FanEntry,
    remote_host: u32,
    protocol: u8,
    tos: u8,
    outer_len: u32,
) -> Result<NextHop, RouteError> {
    let mut slot = MaybeUninit::uninit();
    let params = fib::ipv4_query(
        &mut slot,
        fan.underlay_ifindex,
        protocol,
        tos,
        WireAddr::from_host(fan.local_host).raw(),
        WireAddr::from_host(remote_host).raw(),
    );
    params.__bindgen_anon_1.tot_len = outer_len as u16;
    let ret = fib::lookup(ctx, params);
    let resolved = match ret {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(RouteError::TooBig),
        BPF_FIB_LKUP_RET_BLACKHOLE => return Err(RouteError::Drop(StatReason::DropFibBlackhole)),
        BPF_FIB_LKUP_RET_UNREACHABLE => {
            return Err(RouteError::Drop(StatReason::DropFibUnreachable));
        }
        BPF_FIB_LKUP_RET_PROHIBIT => return Err(RouteError::Drop(StatReason::DropFibProhibit)),
        BPF_FIB_LKUP_RET_NOT_FWDED => {
            return Err(RouteError::Drop(StatReason::DropFibNotForwarded));
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => {
            return Err(RouteError::Drop(StatReason::DropFibForwardingDisabled));
        }
        BPF_FIB_LKUP_RET_UNSUPP_LWT => {
            return Err(RouteError::Drop(StatReason::DropFibUnsupportedLwt));
        }
        BPF_FIB_LKUP_RET_NO_SRC_ADDR => {
            return Err(RouteError::Drop(StatReason::DropFibNoSourceAddress));
        }
        _ => return Err(RouteError::Drop(StatReason::DropFibFailed)),
    };
    // The fan's packets leave by its underlay device; a route elsewhere is
    // not the underlay the receivers expect us on.
    if params.ifindex != fan.underlay_ifindex {
        return Err(RouteError::Drop(StatReason::DropFibNotForwarded));
    }
    Ok(NextHop {
        ifindex: params.ifindex,
        neighbour: resolved.then_some((params.dmac, params.smac)),
        // SAFETY: the lookup wrote the next hop's address into the IPv4 member.
        address: unsafe { params.__bindgen_anon_4.ipv4_dst },
    })
}
