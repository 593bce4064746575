//! Events for `fan-xdp monitor`: every drop, and while a monitor asks for
//! them, samples of the packets passed on to the stack, each with the
//! packet's addresses.
//! Rate-limited per CPU (a hostile peer can make drops at will, and must
//! not make a flood of events of them); an event refused is counted as
//! `events_suppressed`.

use aya_ebpf::programs::{TcContext, XdpContext};
use fan_common::{
    StatReason, WireAddr,
    events::{EVENT_BURST, EVENTS_PER_SECOND, Event, EventKind, Program, SAMPLE_PASSES},
    ipv4::{ETH_HDR_LEN, IPPROTO_IPIP, IPPROTO_UDP},
    vxlan::{UDP_HDR_LEN, VXLAN_HDR_LEN},
};

use crate::{
    maps::{DROP_EVENT_BUDGET, FAN_EVENT_SETTINGS, FAN_EVENTS, SAMPLE_BUDGET},
    parse::{ArpIpv4, ETH_P_ARP, eth, ipv4, ptr_at},
    ratelimit::take_token,
    stats::count,
    vxlan::fan_of_udp,
};

/// The packet whose event is being sent: the readable bytes, its length
/// and the device the program runs on.
pub struct Seen {
    pub start: usize,
    pub end: usize,
    pub len: u32,
    pub ifindex: u32,
}

impl Seen {
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
            len: ctx.len(),
            // SAFETY: reading a field of the program's own context.
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
        }
    }

    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
            len: (ctx.data_end() - ctx.data()) as u32,
            // SAFETY: reading a field of the program's own context.
            ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        }
    }
}

/// Sends the event of a drop for `reason`, within the drop budget.
#[inline(always)]
pub fn dropped(seen: &Seen, program: Program, reason: StatReason) {
    if take_token(&DROP_EVENT_BUDGET, EVENTS_PER_SECOND, EVENT_BURST) {
        send(seen, program, EventKind::Drop, reason);
    } else {
        count(StatReason::EventsSuppressed, 0);
    }
}

/// Sends a sample of a packet passed on to the stack for `reason`, if a
/// monitor asked for samples, within the sample budget.
#[inline(always)]
pub fn passed(seen: &Seen, program: Program, reason: StatReason) {
    let asked = FAN_EVENT_SETTINGS
        .get(0)
        .is_some_and(|settings| settings & SAMPLE_PASSES != 0);
    if !asked {
        return;
    }
    if take_token(&SAMPLE_BUDGET, EVENTS_PER_SECOND, EVENT_BURST) {
        send(seen, program, EventKind::Pass, reason);
    } else {
        count(StatReason::EventsSuppressed, 0);
    }
}

#[inline(always)]
fn send(seen: &Seen, program: Program, kind: EventKind, reason: StatReason) {
    let mut event = Event {
        reason: reason as u32,
        ifindex: seen.ifindex,
        len: seen.len,
        kind: kind as u8,
        program: program as u8,
        ..Event::default()
    };
    read_addresses(seen, program, &mut event);
    if FAN_EVENTS.output::<Event>(&event, 0).is_err() {
        // The ring is full: the agent is behind (or not reading).
        count(StatReason::EventsSuppressed, 0);
    }
}

/// The addresses of the packet's IPv4 headers: an IP-in-IP or VXLAN
/// packet's outer and inner ones; an ARP message's sender and target as
/// inner ones; else the one header, as inner for the encapsulating
/// programs (a container's or the host's packet) and as outer for the
/// decapsulating ones (underlay traffic).
#[inline(always)]
fn read_addresses(seen: &Seen, program: Program, event: &mut Event) {
    let Some(eth) = eth(seen.start, seen.end) else {
        return;
    };
    // SAFETY: bounds-checked by `eth`.
    if unsafe { (*eth).ether_type() } == ETH_P_ARP {
        read_arp(seen, ETH_HDR_LEN, event);
        return;
    }
    // SAFETY: bounds-checked by `eth`.
    if !unsafe { (*eth).is_ipv4() } {
        return;
    }
    let Some(first) = ipv4(seen.start, seen.end, ETH_HDR_LEN) else {
        return;
    };
    // SAFETY: bounds-checked by `ipv4`.
    let first = unsafe { *first };
    event.protocol = first.protocol;
    let inner_at = match first.protocol {
        IPPROTO_IPIP => Some(ETH_HDR_LEN + first.header_len()),
        IPPROTO_UDP => vxlan_inner(seen, ETH_HDR_LEN + first.header_len()),
        _ => None,
    };
    if let Some(at) = inner_at {
        event.outer_src = first.src_wire();
        event.outer_dst = first.dst_wire();
        if let Some(inner) = ipv4(seen.start, seen.end, at) {
            // SAFETY: bounds-checked by `ipv4`.
            let inner = unsafe { *inner };
            event.inner_src = inner.src_wire();
            event.inner_dst = inner.dst_wire();
            event.protocol = inner.protocol;
        } else {
            // A VXLAN fan's ARP, or an unreadable inner header.
            read_arp(seen, at, event);
        }
    } else if program.decapsulates() {
        event.outer_src = first.src_wire();
        event.outer_dst = first.dst_wire();
    } else {
        event.inner_src = first.src_wire();
        event.inner_dst = first.dst_wire();
    }
}

/// Where the inner frame's payload starts, if the UDP packet at
/// `udp_offset` is a VXLAN fan's.
#[inline(always)]
fn vxlan_inner(seen: &Seen, udp_offset: usize) -> Option<usize> {
    fan_of_udp(seen.start, seen.end, udp_offset)?;
    Some(udp_offset + UDP_HDR_LEN + VXLAN_HDR_LEN + ETH_HDR_LEN)
}

/// An ARP message's sender and target, as the event's inner addresses.
#[inline(always)]
fn read_arp(seen: &Seen, at: usize, event: &mut Event) {
    if let Some(arp) = ptr_at::<ArpIpv4>(seen.start, seen.end, at) {
        // SAFETY: bounds-checked by `ptr_at`; copied out.
        let arp = unsafe { *arp };
        event.inner_src = WireAddr::from_octets(arp.head.sender_ip);
        event.inner_dst = WireAddr::from_octets(arp.target_ip);
    }
}
