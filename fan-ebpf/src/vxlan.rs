//! The Fan's VXLAN mode. The slice bridge has an overlay port (a veth pair:
//! `A` enslaved, `B` in the host) standing in for the kernel's fan vxlan
//! device: what the bridge switches to `A` arrives at `B`'s TC ingress,
//! where `send` encapsulates it towards the host the Fan's arithmetic names
//! (IPv4 by its destination, ARP by its target; no FDB). The container
//! ports' program encapsulates remote-bound IPv4 itself (`port_hop`), and
//! the underlay's program hands decapsulated frames back to the bridge
//! through `B` (see `decap`).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_MASK, BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
        BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::generated::{
        bpf_get_hash_recalc, bpf_redirect, bpf_redirect_peer, bpf_skb_change_head,
        bpf_skb_vlan_pop, bpf_skb_vlan_push,
    },
    programs::TcContext,
};
use fan_common::{
    FanEntry, StatReason, WireAddr,
    events::Program,
    ipv4::{ETH_HDR_LEN, ETH_P_IPV4, IPPROTO_UDP},
    vxlan::{
        Outer, UDP_HDR_LEN, VXLAN_HDR_LEN, VXLAN_HEADERS_LEN, VXLAN_OVERHEAD, header_vni,
        vxlan_source_port,
    },
};

use crate::{
    decap::{carry_ecn, direct_endpoint},
    encap::{
        Hop, NextHop, RouteError, TCP_DATA_OFFSET_END, check_source, route_to, segment_len, send_to,
    },
    events::{self, Seen},
    fib,
    maps::{fan_for, vxlan_fan},
    parse::{ARP_IPV4_LEN, ArpIpv4, ETH_P_ARP, EthHdr, Ipv4Hdr, eth, ipv4, ptr_at},
    pmtu::path_mtu,
    port::Sender,
    stats::count_in,
    tc::{ensure_ipv4_header, ensure_linear, frame, gso_size},
};

/// The VXLAN fan a UDP packet (its header at `udp_offset` of
/// `[start, end)`) is for: its destination port and its VXLAN header's VNI
/// (with the I flag) name one.
#[inline(always)]
pub fn fan_of_udp(start: usize, end: usize, udp_offset: usize) -> Option<&'static FanEntry> {
    let headers = ptr_at::<[u8; UDP_HDR_LEN + VXLAN_HDR_LEN]>(start, end, udp_offset)?;
    // SAFETY: bounds-checked by `ptr_at`; copied out.
    let headers = unsafe { *headers };
    let port = u16::from_be_bytes([headers[2], headers[3]]);
    let mut vxlan = [0u8; VXLAN_HDR_LEN];
    vxlan.copy_from_slice(&headers[UDP_HDR_LEN..]);
    vxlan_fan(port, header_vni(&vxlan)?)
}

/// TC ingress of the overlay port `B`: every frame the bridge switched
/// there is encapsulated to its remote host or dropped with its reason
/// (nothing is left to the stack: `B` has no address).
#[inline(always)]
pub fn send(ctx: &TcContext) -> i32 {
    // The destination's fan, once known: its counters count the outcome too.
    let mut fan = None;
    match try_send(ctx, &mut fan) {
        Ok(action) => action,
        Err(reason) if is_flood_not_sent(ctx, reason) => {
            count_in(fan, StatReason::VxlanFloodNotSent, ctx.len() as usize);
            TC_ACT_SHOT
        }
        Err(reason) => {
            count_in(fan, reason, ctx.len() as usize);
            events::dropped(&Seen::tc(ctx), Program::VxlanOut, reason);
            TC_ACT_SHOT
        }
    }
}

/// Whether a frame refused for `reason` is one the bridge floods to every
/// port, the overlay port among them, without meaning it for another host.
#[inline(always)]
fn is_flood_not_sent(ctx: &TcContext, reason: StatReason) -> bool {
    let flooded = ctx.load::<u8>(0).is_ok_and(|first| first & 1 != 0);
    flooded
        && matches!(
            reason,
            StatReason::DropVxlanNotIpv4OrArp
                | StatReason::DropVxlanLocalSlice
                | StatReason::DropVxlanNotOverlay
        )
}

/// What `send` needs of a frame's IPv4 packet or ARP message.
struct Payload {
    /// The address the remote host is computed from (destination or target)
    /// and the one that must be this host's (source or sender), host order.
    dst: u32,
    src: u32,
    tos: u8,
    /// The largest packet the frame becomes on the overlay: an IPv4
    /// packet's (GSO: one segment's) length, the ARP message's.
    segment: u32,
    /// The inner frame's length, Ethernet header included.
    frame_len: u32,
    ipv4: bool,
}

#[inline(always)]
fn try_send(ctx: &TcContext, found: &mut Option<&'static FanEntry>) -> Result<i32, StatReason> {
    // SAFETY: reading a field of the program's own context.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        // A tag the kernel keeps beside the frame would go out on the
        // underlay with the outer packet.
        return Err(StatReason::DropVlanTagged);
    }
    ensure_linear(ctx, ETH_HDR_LEN + ARP_IPV4_LEN);
    let (start, end) = frame(ctx);
    let eth = eth(start, end).ok_or(StatReason::DropVxlanNotIpv4OrArp)?;
    // SAFETY: bounds-checked by `eth`.
    let payload = match unsafe { (*eth).ether_type() } {
        ETH_P_IPV4 => ipv4_payload(ctx)?,
        ETH_P_ARP => arp_payload(ctx)?,
        _ => return Err(StatReason::DropVxlanNotIpv4OrArp),
    };
    let fan = fan_for(WireAddr::from_host(payload.dst))
        .filter(|fan| fan.is_vxlan())
        .ok_or(StatReason::DropVxlanNotOverlay)?;
    *found = Some(fan);
    if fan.is_local(payload.dst) {
        return Err(StatReason::DropVxlanLocalSlice);
    }
    let remote_host = fan.map.host_of(payload.dst);
    if fan.map.is_reserved_host(remote_host) {
        return Err(StatReason::DropReservedHost);
    }
    check_source(fan, payload.src)?;
    // Switched, not routed: no TTL to take, nobody to answer when too big.
    if payload.frame_len + VXLAN_HEADERS_LEN as u32 > u16::MAX as u32 {
        return Err(StatReason::DropInnerTooLong);
    }
    if payload.segment > fan.overlay_mtu
        || path_mtu(remote_host).is_some_and(|path| payload.segment + VXLAN_OVERHEAD > path)
    {
        return Err(StatReason::DropVxlanTooBig);
    }
    let outer_len = payload.segment + VXLAN_OVERHEAD;
    let next_hop = match route_to(ctx, fan, remote_host, IPPROTO_UDP, payload.tos, outer_len) {
        Ok(next_hop) => next_hop,
        Err(RouteError::TooBig) => return Err(StatReason::DropVxlanTooBig),
        Err(RouteError::Drop(reason)) => return Err(reason),
    };
    if payload.ipv4 {
        encapsulate(
            ctx,
            fan,
            remote_host,
            payload.tos,
            payload.frame_len as u16,
            &next_hop,
        )
    } else {
        encapsulate_arp(ctx, fan, remote_host, payload.frame_len as u16, &next_hop)
    }
}

/// An IPv4 frame at the overlay port.
#[inline(always)]
fn ipv4_payload(ctx: &TcContext) -> Result<Payload, StatReason> {
    let (ip_len, _) = ensure_ipv4_header(ctx, ETH_HDR_LEN);
    if gso_size(ctx) != 0 {
        // `segment_len` reads a GSO packet's TCP data offset (byte 12).
        ensure_linear(ctx, ETH_HDR_LEN + ip_len + TCP_DATA_OFFSET_END);
    }
    let (start, end) = frame(ctx);
    let ip = ipv4(start, end, ETH_HDR_LEN).ok_or(StatReason::DropMalformedInner)?;
    // SAFETY: bounds-checked by `ipv4`; copied out.
    let ip = unsafe { *ip };
    let total_len = ip.total_len() as u32;
    if total_len == 0 {
        return Err(StatReason::DropInnerTooLong);
    }
    Ok(Payload {
        dst: ip.dst(),
        src: ip.src(),
        tos: ip.tos,
        segment: segment_len(ctx, &ip, start, end).ok_or(StatReason::DropMalformedInner)?,
        frame_len: ETH_HDR_LEN as u32 + total_len,
        ipv4: true,
    })
}

/// An ARP frame at the overlay port: an Ethernet/IPv4 request or reply,
/// sent to its target's host (a request for a remote container is unicast
/// to that host, whose bridge delivers it).
#[inline(always)]
fn arp_payload(ctx: &TcContext) -> Result<Payload, StatReason> {
    let (start, end) = frame(ctx);
    let arp = ptr_at::<ArpIpv4>(start, end, ETH_HDR_LEN)
        .ok_or(StatReason::DropVxlanArpNotRequestOrReply)?;
    // SAFETY: bounds-checked by `ptr_at`; copied out.
    let arp = unsafe { *arp };
    if !arp.is_request_or_reply() {
        return Err(StatReason::DropVxlanArpNotRequestOrReply);
    }
    Ok(Payload {
        dst: arp.target(),
        src: arp.head.sender(),
        tos: 0,
        segment: (ctx.len() as usize - ETH_HDR_LEN) as u32,
        frame_len: ctx.len(),
        ipv4: false,
    })
}

/// Where the container port's program stands for a VXLAN fan's packet to
/// a remote container (`ip`, in the frame behind `eth`, from `sender` as
/// the container edge found it bound to the port): a frame addressed
/// to a remote container's MAC (a container with the overlay on-link that
/// resolved it through the overlay port) is switched, carried as it is; one
/// addressed to the gateway is routed, to the remote container's MAC from
/// the host's neighbour table. `Err`: leave it to the bridge (a sender the
/// agent does not know, or a neighbour not resolved yet, which the host
/// resolves through the overlay port).
#[inline(always)]
pub fn port_hop(
    ctx: &TcContext,
    fan: &FanEntry,
    sender: Sender,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
) -> Result<Hop, StatReason> {
    let sender = sender.ok_or(StatReason::PortPassed)?;
    if eth.dst != sender.gateway_mac {
        return Ok(Hop::AsIs);
    }
    let mut slot = MaybeUninit::uninit();
    let params = fib::ipv4_query(
        &mut slot,
        fan.bridge_ifindex,
        ip.protocol,
        ip.tos,
        ip.src_wire().raw(),
        ip.dst_wire().raw(),
    );
    // No length: a GSO packet's would fail the route's MTU, which the
    // caller checks by the segment (against the fan's and the path's).
    // Given none, the kernel measures the frame against the bridge's MTU
    // instead: a frame that is not GSO and carries bytes past its IPv4
    // packet beyond that (a raw socket's) goes to the stack, which trims it.
    let ret = fib::lookup(ctx, params);
    // The overlay's prefix route is the bridge's: anything else (no
    // neighbour yet, another route) is the host's to handle.
    if ret != BPF_FIB_LKUP_RET_SUCCESS || params.ifindex != fan.bridge_ifindex {
        return Err(StatReason::PortPassed);
    }
    Ok(Hop::RoutedTo {
        dst_mac: params.dmac,
        src_mac: params.smac,
    })
}

/// The adjust_room flags of a VXLAN encapsulation: the kernel records the
/// inner offsets (the inner Ethernet header's length among them) and tags
/// GSO packets SKB_GSO_UDP_TUNNEL, so that segmentation gives valid VXLAN
/// segments. FIXED_GSO keeps gso_size: the overlay MTU leaves the room.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH
    | BPF_F_ADJ_ROOM_FIXED_GSO) as u64
    | ((ETH_HDR_LEN as u64 & BPF_ADJ_ROOM_ENCAP_L2_MASK as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);

/// Wraps the IPv4 frame (inner Ethernet header included, `inner_frame_len`
/// bytes up to the IPv4 packet's end) in outer IPv4, UDP and VXLAN headers
/// to `remote_host` and sends it to `next_hop`.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    fan: &FanEntry,
    remote_host: u32,
    tos: u8,
    inner_frame_len: u16,
    next_hop: &NextHop,
) -> Result<i32, StatReason> {
    let (start, end) = frame(ctx);
    let inner_eth = eth(start, end).ok_or(StatReason::DropEncapFailed)?;
    // SAFETY: bounds-checked by `eth`; copied out.
    let inner_eth = unsafe { *inner_eth };
    let headers = outer(ctx, fan, remote_host, tos).headers(inner_frame_len);
    // The headers and, behind them, the inner Ethernet header, written in
    // one store.
    let mut front = [0u8; VXLAN_HEADERS_LEN + ETH_HDR_LEN];
    let (outer_part, eth_part) = front.split_at_mut(VXLAN_HEADERS_LEN);
    outer_part.copy_from_slice(&headers);
    inner_eth.write_to(eth_part);
    // The room goes after the frame's Ethernet header: it becomes the outer
    // one, its type IPv4 already, and the inner one is written again
    // behind the new headers.
    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| StatReason::DropEncapFailed)?;
    ctx.store(ETH_HDR_LEN, &front, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| StatReason::DropEncapFailed)?;
    send_to(ctx, fan, next_hop, true)
}

/// As `encapsulate`, for an ARP frame of `frame_len` bytes: the kernel
/// makes room after the MAC header only for IP packets, so the headers go
/// in front of the whole frame, which stays as it is.
#[inline(always)]
fn encapsulate_arp(
    ctx: &TcContext,
    fan: &FanEntry,
    remote_host: u32,
    frame_len: u16,
    next_hop: &NextHop,
) -> Result<i32, StatReason> {
    let headers = outer(ctx, fan, remote_host, 0).headers(frame_len);
    let room = (ETH_HDR_LEN + VXLAN_HEADERS_LEN) as u32;
    // SAFETY: the context pointer is the program's; plain integers otherwise.
    if unsafe { bpf_skb_change_head(ctx.skb.skb as *mut _, room, 0) } != 0 {
        return Err(StatReason::DropEncapFailed);
    }
    let failed = |_| StatReason::DropEncapFailed;
    ctx.store(ETH_HDR_LEN, &headers, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(failed)?;
    // The frame's own Ethernet header, now the outer one, says ARP.
    ctx.store(12, &ETH_P_IPV4.to_be_bytes(), 0)
        .map_err(failed)?;
    retype_ipv4(ctx)?;
    send_to(ctx, fan, next_hop, true)
}

const ETH_P_8021Q: u16 = 0x8100;

/// Makes the kernel take the frame, an ARP frame with outer headers put in
/// front, for the IPv4 packet it now is (`skb->protocol`, which no helper
/// sets and which `bpf_redirect_neigh`, the neighbour queue and the
/// device's features go by): two VLAN tags pushed, the second moving the
/// first into the frame and typing the skb 802.1Q, then popped, the first
/// pop typing the skb by the Ethernet type behind the tag, IPv4.
#[inline(always)]
fn retype_ipv4(ctx: &TcContext) -> Result<(), StatReason> {
    let skb = ctx.skb.skb as *mut _;
    let tag = ETH_P_8021Q.to_be();
    // SAFETY (each call): the context pointer is the program's; plain
    // integers otherwise.
    let pushed =
        unsafe { bpf_skb_vlan_push(skb, tag, 0) == 0 && bpf_skb_vlan_push(skb, tag, 0) == 0 };
    // SAFETY: as above.
    let popped = unsafe { bpf_skb_vlan_pop(skb) == 0 && bpf_skb_vlan_pop(skb) == 0 };
    (pushed && popped)
        .then_some(())
        .ok_or(StatReason::DropEncapFailed)
}

/// The outer headers' fields of a packet from this host to `remote_host`:
/// the UDP source port from the inner flow's hash, as the kernel's vxlan.
#[inline(always)]
fn outer(ctx: &TcContext, fan: &FanEntry, remote_host: u32, tos: u8) -> Outer {
    // SAFETY: the context pointer is the program's.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb as *mut _) };
    Outer {
        src: fan.local_host,
        dst: remote_host,
        tos,
        src_port: vxlan_source_port(hash),
        dst_port: fan.vxlan_port,
        vni: fan.vni,
    }
}

/// What became of a decapsulated VXLAN frame.
pub struct HandedOver {
    pub action: i32,
    /// Delivered straight into the container's namespace.
    pub direct: bool,
}

/// Removes a received VXLAN packet's outer IPv4, UDP and VXLAN headers
/// (`outer_len` bytes after the Ethernet header) and puts the inner frame
/// back exactly as it was sent, then hands it to whoever the slice bridge
/// would: an IPv4 frame for a container the endpoint map knows, addressed
/// to that container's MAC, straight into its namespace (switched, so no
/// TTL is taken); everything else to the bridge, through the overlay port
/// (`B`'s transmit is `A`'s receive: the bridge learns the remote MAC on
/// `A` and delivers). `ipv4_outer_tos`: the outer header's TOS if the
/// inner frame is IPv4, whose ECN field takes an outer CE mark (RFC 6040), the policy
/// having refused CE over Not-ECT.
#[inline(always)]
pub fn hand_over(
    ctx: &TcContext,
    fan: &FanEntry,
    outer_len: usize,
    ipv4_outer_tos: Option<u8>,
) -> Result<HandedOver, StatReason> {
    let failed = |_| StatReason::DropDecapFailed;
    let inner_eth: EthHdr = ctx.load(ETH_HDR_LEN + outer_len).map_err(failed)?;
    // FIXED_GSO: without it a GRO packet's gso_size would grow by the
    // removed bytes and the resegmented TCP would exceed the MTU.
    let strip = (outer_len + ETH_HDR_LEN) as i32;
    ctx.adjust_room(-strip, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO as u64)
        .map_err(failed)?;
    ctx.store(0, &inner_eth, 0).map_err(failed)?;
    if let Some(outer_tos) = ipv4_outer_tos {
        let (start, end) = frame(ctx);
        let inner = ipv4(start, end, ETH_HDR_LEN).ok_or(StatReason::DropMalformedInner)?;
        carry_ecn(outer_tos, inner)?;
    }
    if ipv4_outer_tos.is_some()
        && let Some(endpoint) = switched_endpoint(ctx, &inner_eth)
    {
        return Ok(HandedOver {
            // SAFETY: the helper takes plain integers.
            action: unsafe { bpf_redirect_peer(endpoint, 0) } as i32,
            direct: true,
        });
    }
    Ok(HandedOver {
        // SAFETY: the helper takes plain integers.
        action: unsafe { bpf_redirect(fan.overlay_port_ifindex, 0) } as i32,
        direct: false,
    })
}

/// The veth of the container a decapsulated IPv4 frame is switched to,
/// if it may be delivered there directly (see `decap::direct_endpoint`)
/// and the frame is addressed to its MAC, as the bridge would deliver it.
#[inline(always)]
fn switched_endpoint(ctx: &TcContext, inner_eth: &EthHdr) -> Option<u32> {
    let (start, end) = frame(ctx);
    let ip = ipv4(start, end, ETH_HDR_LEN)?;
    // SAFETY: bounds-checked by `ipv4`; copied out.
    let ip = unsafe { *ip };
    let endpoint = direct_endpoint(ctx, &ip)?;
    (endpoint.mac == inner_eth.dst).then_some(endpoint.ifindex)
}
