//! Encapsulation: wrap IPv4 packets bound for a remote slice in an outer
//! IPv4 header addressed by the fan arithmetic, and send them to the underlay.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT,
        TC_ACT_UNSPEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::generated::bpf_redirect_neigh,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use fan_common::{
    FanEntry, StatReason,
    ipv4::{ETH_HDR_LEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, outer_header},
};

use crate::{
    maps::fan_for,
    parse::{Ipv4Hdr, ipv4, ptr_at},
    stats::count,
    tc::{device_mtu, ensure_ipv4_header, ensure_linear, frame, gso_size},
};

/// Where the encapsulating program runs, which decides what routing
/// semantics it owes the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Ingress of the slice bridge: traffic from containers that the program
    /// forwards itself, bypassing the host's forwarding path. It must do what
    /// a router does: decrement the TTL and refuse what does not fit.
    Forward,
    /// Ingress of a container's veth, the slice bridge's port: Forward's
    /// duties one hop earlier. Whatever it passes goes on into the bridge,
    /// where the Forward program sees it again and counts it, so passes are
    /// not counted here: the counters read the same with or without
    /// `fan-xdp run` keeping port programs.
    Port,
    /// Egress of fan-xdp's own NOARP device, where the host's routing puts
    /// overlay traffic it originates (or forwards itself, TTL already handled).
    Output,
}

impl Hook {
    /// Whether the program forwards the packet in the host's place, owing it
    /// a router's TTL and MTU handling.
    #[inline(always)]
    fn forwards(self) -> bool {
        !matches!(self, Hook::Output)
    }
}

#[inline(always)]
pub fn encapsulate(ctx: &TcContext, hook: Hook) -> i32 {
    match try_encapsulate(ctx, hook) {
        Ok(action) => action,
        Err(Outcome::Pass(reason)) => {
            if hook != Hook::Port {
                count(reason, ctx.len() as usize);
            }
            TC_ACT_UNSPEC
        }
        Err(Outcome::Drop(reason)) => {
            count(reason, ctx.len() as usize);
            debug!(ctx, "encap drop: reason {}", reason as u32);
            TC_ACT_SHOT
        }
    }
}

enum Outcome {
    Pass(StatReason),
    Drop(StatReason),
}

#[inline(always)]
fn try_encapsulate(ctx: &TcContext, hook: Hook) -> Result<i32, Outcome> {
    let (ip_len, _) = ensure_ipv4_header(ctx, ETH_HDR_LEN);
    if gso_size(ctx) != 0 {
        // `fits_underlay` reads a GSO packet's TCP data offset (byte 12).
        ensure_linear(ctx, ETH_HDR_LEN + ip_len + TCP_DATA_OFFSET_END);
    }
    let (start, end) = frame(ctx);
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
    let Some(fan) = fan_for(ip.dst_raw()) else {
        return Err(Outcome::Pass(StatReason::PassNotOverlay));
    };
    let dst = ip.dst();
    if fan.is_local(dst) {
        return Err(Outcome::Pass(StatReason::PassLocalSlice));
    }
    let remote_host = fan.map.host_of(dst);
    if fan.map.is_reserved_host(remote_host) {
        return Err(Outcome::Drop(StatReason::DropReservedHost));
    }
    if !source_is_local(fan, &ip) {
        return Err(Outcome::Drop(StatReason::DropSourceNotLocal));
    }
    if hook.forwards() && ip.ttl <= 1 {
        return Err(Outcome::Pass(StatReason::StackTtlExpired));
    }
    if !fits_underlay(ctx, fan, &ip, start, end) {
        return Err(if hook.forwards() {
            Outcome::Pass(StatReason::StackTooBig)
        } else {
            Outcome::Drop(StatReason::DropTooBig)
        });
    }

    if hook.forwards() {
        // SAFETY: `ip_ptr` was bounds-checked and nothing has moved the data since.
        unsafe { (*ip_ptr).decrement_ttl() };
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

    let len = ctx.len() as usize;
    count(StatReason::Encapsulated, len);
    if gso_size(ctx) != 0 {
        count(StatReason::EncapsulatedGso, len);
    }
    // bpf_redirect_neigh rather than bpf_fib_lookup + bpf_redirect: the kernel
    // routes the new outer destination itself (so a routed underlay's gateway
    // works as well as a flat segment), fills both MAC addresses, and queues
    // the packet while ARP resolves instead of handing us a miss to handle.
    // SAFETY: a null params pointer with length 0 asks the kernel for the FIB lookup.
    let action = unsafe { bpf_redirect_neigh(fan.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(action as i32)
}

/// Whether the inner source belongs to this host's slice of its fan. Anything
/// else would be dropped as spoofed by the receiver; dropping it here keeps it
/// off the wire and names the reason on the host that sent it.
#[inline(always)]
fn source_is_local(dst_fan: &FanEntry, ip: &Ipv4Hdr) -> bool {
    let src = ip.src();
    if dst_fan.map.overlay_contains(src) {
        return dst_fan.is_local(src);
    }
    match fan_for(ip.src_raw()) {
        Some(src_fan) => src_fan.is_local(src),
        None => false,
    }
}

/// Bytes of a TCP header up to and including the data offset.
const TCP_DATA_OFFSET_END: usize = 13;

/// Whether every packet this skb becomes fits the fan's overlay MTU and,
/// with the outer header, the underlay device's current MTU. For a GSO
/// packet that is one segment: IP and transport headers plus `gso_size`.
#[inline(always)]
fn fits_underlay(ctx: &TcContext, fan: &FanEntry, ip: &Ipv4Hdr, start: usize, end: usize) -> bool {
    let Some(mtu) = device_mtu(ctx, fan.underlay_ifindex) else {
        return false;
    };
    let gso_size = gso_size(ctx);
    let packet_len = if gso_size == 0 {
        ip.total_len() as u32
    } else {
        let l4_offset = ETH_HDR_LEN + ip.header_len();
        let l4_header = match ip.protocol {
            IPPROTO_TCP => match ptr_at::<[u8; TCP_DATA_OFFSET_END]>(start, end, l4_offset) {
                // SAFETY: bounds-checked by `ptr_at`; byte 12 holds the data offset.
                Some(tcp) => ((unsafe { (*tcp)[12] } >> 4) as u32) * 4,
                None => return false,
            },
            IPPROTO_UDP => 8,
            _ => 0,
        };
        ip.header_len() as u32 + l4_header + gso_size
    };
    packet_len <= fan.overlay_mtu && packet_len + IPV4_HDR_LEN as u32 <= mtu
}
