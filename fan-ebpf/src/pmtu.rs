//! Path MTU through the fan: learned at the underlay device from routers'
//! ICMP "fragmentation needed" about our outer packets, and answered to the
//! containers whose packets no longer fit, as the router they see (the slice
//! gateway) would answer them.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_redirect, bpf_skb_change_tail},
    },
    programs::TcContext,
};
use fan_common::{
    FanEntry, StatReason, WireAddr,
    ipv4::{
        ETH_HDR_LEN, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HDR_LEN, IP_DF, IP_OFFSET_MASK,
        IPPROTO_ICMP, IPPROTO_IPIP, IPPROTO_UDP, IPV4_HDR_LEN, icmp_error_ip_header,
        icmp_frag_needed_header, is_icmp_error,
    },
    maps::PathMtu,
    pmtu::{PmtuVerdict, is_fresh, judge},
    vxlan::{UDP_HDR_LEN, VXLAN_HDR_LEN},
};

use crate::{
    maps::{FAN_PATH_MTU, ICMP_BUDGET, fan_for, is_local_host, local_host},
    parse::{EthHdr, Ipv4Hdr, ipv4, ptr_at},
    ratelimit::take_token,
    stats::count,
    vxlan::fan_of_udp,
};

/// ICMP answers each CPU may send per second, and at once.
pub const ANSWERS_PER_SECOND: u64 = 1000;
pub const ANSWER_BURST: u64 = 1000;

/// The unexpired path MTU learned towards remote host `host` (host order).
#[inline(always)]
pub fn path_mtu(host: u32) -> Option<u32> {
    // SAFETY: a lookup with a key on our stack; the value is copied out.
    let entry = unsafe { FAN_PATH_MTU.get(WireAddr::from_host(host)) }?;
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    is_fresh(entry.learned_ns, now).then_some(entry.mtu)
}

/// Judges an ICMP message `outer` (the IPv4 header at the start of
/// `[start, end)` after Ethernet) sent to one of this host's underlay
/// addresses. `None` if it is not "fragmentation needed"; otherwise what
/// happened, having learned the path MTU if the message is about one of our
/// outer packets to a fan host and its MTU passes the kernel's rule. Called
/// only at the underlay device, so containers cannot feed it.
#[inline(always)]
pub fn learn(start: usize, end: usize, outer: &Ipv4Hdr) -> Option<StatReason> {
    let icmp_offset = ETH_HDR_LEN + outer.header_len();
    let icmp = ptr_at::<[u8; ICMP_HDR_LEN]>(start, end, icmp_offset)?;
    // SAFETY: bounds-checked by `ptr_at`; copied out.
    let icmp = unsafe { *icmp };
    if icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_FRAG_NEEDED {
        return None;
    }
    let reported = u16::from_be_bytes([icmp[6], icmp[7]]) as u32;
    let quote_offset = icmp_offset + ICMP_HDR_LEN;
    let Some(quoted) = ipv4(start, end, quote_offset) else {
        return Some(StatReason::PmtuRejectedQuote);
    };
    // SAFETY: bounds-checked by `ipv4`; copied out.
    let quoted = unsafe { *quoted };
    // Ours: IP-in-IP, or a VXLAN fan's VXLAN, from the address the message
    // came to, towards a fan host of that address's underlay (not one of ours).
    if quoted.src_wire() != outer.dst_wire() {
        return Some(StatReason::PmtuRejectedQuote);
    }
    let after_quoted = quote_offset + quoted.header_len();
    let inner_offset = match quoted.protocol {
        IPPROTO_IPIP => Some(after_quoted),
        IPPROTO_UDP => match quoted_vxlan_inner(start, end, after_quoted) {
            Some(inner_offset) => inner_offset,
            None => return Some(StatReason::PmtuRejectedQuote),
        },
        _ => return Some(StatReason::PmtuRejectedQuote),
    };
    let remote = quoted.dst();
    let ours = local_host(quoted.src_wire()).is_some_and(|local| local.has_peer(remote));
    if !ours || is_local_host(quoted.dst_wire()) {
        return Some(StatReason::PmtuRejectedQuote);
    }
    // RFC 792 promises only 8 bytes after the quoted header; a longer quote
    // shows the inner header, which must be from our slice to the remote's.
    if let Some(inner) = inner_offset.and_then(|at| ptr_at::<Ipv4Hdr>(start, end, at)) {
        // SAFETY: bounds-checked by `ptr_at`; copied out.
        let inner = unsafe { *inner };
        let from_us = fan_for(inner.src_wire())
            .is_some_and(|f| f.local_host == quoted.src() && f.is_local(inner.src()));
        let to_remote =
            fan_for(inner.dst_wire()).is_some_and(|f| f.map.host_of(inner.dst()) == remote);
        if !from_us || !to_remote {
            return Some(StatReason::PmtuRejectedInner);
        }
    }
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = quoted.dst_wire();
    // SAFETY: a lookup with a key on our stack; the value is copied out.
    let known = unsafe { FAN_PATH_MTU.get(key) }.copied();
    let current = match known {
        Some(entry) if is_fresh(entry.learned_ns, now) => Some(entry.mtu),
        _ => None,
    };
    Some(match judge(reported, quoted.total_len() as u32, current) {
        PmtuVerdict::Learn(mtu) => {
            let entry = PathMtu {
                mtu,
                _pad: 0,
                learned_ns: now,
            };
            if FAN_PATH_MTU.insert(key, entry, 0).is_err() {
                return Some(StatReason::PmtuRejectedQuote);
            }
            if known.is_none() {
                count(StatReason::PmtuHostAdded, 0);
            }
            StatReason::PmtuLearned
        }
        PmtuVerdict::TooSmall => StatReason::PmtuIgnoredTooSmall,
        PmtuVerdict::NotSmaller => StatReason::PmtuIgnoredNotSmaller,
        PmtuVerdict::NotLower => StatReason::PmtuIgnoredNotLower,
    })
}

/// Where the inner IPv4 header of a quoted UDP packet at `udp_offset`
/// would be, if the quote is a VXLAN fan's VXLAN: `Some(None)` when the
/// inner frame is not IPv4 or not quoted. `None` if the quote does not
/// show the VXLAN header naming a fan (RFC 792 promises only the UDP one).
#[inline(always)]
fn quoted_vxlan_inner(start: usize, end: usize, udp_offset: usize) -> Option<Option<usize>> {
    fan_of_udp(start, end, udp_offset)?;
    let inner_eth = udp_offset + UDP_HDR_LEN + VXLAN_HDR_LEN;
    let Some(eth) = ptr_at::<EthHdr>(start, end, inner_eth) else {
        return Some(None);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ipv4 = unsafe { (*eth).is_ipv4() };
    Some(ipv4.then_some(inner_eth + ETH_HDR_LEN))
}

/// What a forwarding program does with a container's packet too big for the
/// learned path MTU `path` towards its destination host: with DF, answer
/// ICMP fragmentation needed (MTU `path` less the fan's overhead) from the slice gateway, back
/// out of the device it came in by; without DF, let the stack fragment it.
/// `Ok` carries the redirect of the answer; `Err` what else happened.
#[inline(always)]
pub fn answer_too_big(
    ctx: &TcContext,
    fan: &FanEntry,
    ip: &Ipv4Hdr,
    path: u32,
) -> Result<i32, StatReason> {
    let frag_off = ip.frag_off();
    if frag_off & IP_DF == 0 {
        return Err(StatReason::StackTooBigForPath);
    }
    // Never about an ICMP error, a non-first fragment, or a source that is
    // not a container of the slice (the edges of the slice name none).
    let src = ip.src();
    if frag_off & IP_OFFSET_MASK != 0
        || fan.map.is_slice_edge(fan.local_host, src)
        || (ip.protocol == IPPROTO_ICMP && is_icmp_error_packet(ctx, ip))
    {
        return Err(StatReason::DropTooBigForPath);
    }
    if !take_token(&ICMP_BUDGET, ANSWERS_PER_SECOND, ANSWER_BURST) {
        return Err(StatReason::PmtuAnswerSuppressed);
    }
    let action = build_answer(ctx, fan, ip, (path - fan.overhead()) as u16)
        .ok_or(StatReason::DropAnswerFailed)?;
    count(StatReason::PmtuAnswered, ctx.len() as usize);
    Ok(action)
}

/// Whether the packet, an ICMP message, is an ICMP error (or unreadable).
#[inline(always)]
fn is_icmp_error_packet(ctx: &TcContext, ip: &Ipv4Hdr) -> bool {
    // A helper load: a slow path, where tracking a packet pointer at a
    // variable offset is not worth the verifier's trouble.
    match ctx.load::<u8>(ETH_HDR_LEN + ip.header_len()) {
        Ok(icmp_type) => is_icmp_error(icmp_type),
        Err(_) => true,
    }
}

/// Bytes quoted after the packet's IPv4 header. RFC 792 asks for 8; more
/// is allowed (RFC 1812 up to 576 in all), and a TCP packet whose checksum
/// the stack still has to fill in (CHECKSUM_PARTIAL) cannot be trimmed
/// short of its checksum field, 18 bytes in.
const QUOTED_PAYLOAD: usize = 64;
/// The longest quote: a header with 40 bytes of options, and the payload.
const MAX_QUOTE: usize = 60 + QUOTED_PAYLOAD;

/// Turns the packet into its ICMP answer in place and redirects it back:
/// trim to the quote, make room for the new IPv4 and ICMP headers, write
/// them, swap the Ethernet addresses. `None` if the kernel refused a step.
#[inline(always)]
fn build_answer(ctx: &TcContext, fan: &FanEntry, ip: &Ipv4Hdr, mtu: u16) -> Option<i32> {
    let old_eth: EthHdr = ctx.load(0).ok()?;
    let quote_len = ip.header_len() + QUOTED_PAYLOAD;
    // Trimming also ends GSO: the answer is one small packet.
    // SAFETY: the context pointer is the program's; plain integers otherwise.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (ETH_HDR_LEN + quote_len) as u32, 0) }
        != 0
    {
        return None;
    }
    let room = (IPV4_HDR_LEN + ICMP_HDR_LEN) as i32;
    ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).ok()?;
    let quote_offset = ETH_HDR_LEN + IPV4_HDR_LEN + ICMP_HDR_LEN;
    let mut sum = 0u32;
    let mut i = 0;
    while i < MAX_QUOTE / 2 {
        if 2 * i >= quote_len {
            break;
        }
        let word: [u8; 2] = ctx.load(quote_offset + 2 * i).ok()?;
        sum += u16::from_ne_bytes(word) as u32;
        i += 1;
    }
    let header = icmp_error_ip_header(fan.gateway(), ip.src(), (ICMP_HDR_LEN + quote_len) as u16);
    let icmp = icmp_frag_needed_header(mtu, sum);
    ctx.store(ETH_HDR_LEN, &header, 0).ok()?;
    ctx.store(ETH_HDR_LEN + IPV4_HDR_LEN, &icmp, 0).ok()?;
    // To the container, from the gateway it sent to.
    ctx.store(0, &old_eth.src, 0).ok()?;
    ctx.store(6, &old_eth.dst, 0).ok()?;
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the helper takes plain integers.
    Some(unsafe { bpf_redirect(ifindex, 0) } as i32)
}
