//! Path MTU through the fan, as docs/design.md states it: what the
//! underlay device learns from routers' ICMP "fragmentation needed" about
//! fan-xdp's outer packets, and the answer a container gets for a packet
//! the learned path no longer carries.

use super::{
    config::{Config, Fan},
    wire::{
        ETH_LEN, IPV4_MIN_LEN, Ipv4Fields, Ipv4View, PROTO_IPIP, PROTO_UDP, be16, be32,
        ones_complement_sum, put16,
    },
};

pub const PROTO_ICMP: u8 = 1;
const DEST_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const ICMP_HEADER_LEN: usize = 8;
/// RFC 791: no link is narrower; a smaller report is no report.
const MIN_LINK_MTU: u32 = 68;
/// Linux's `net.ipv4.route.min_pmtu` default: smaller reports are raised to it.
const MIN_PMTU: u32 = 552;
/// Bytes of the packet after its header that an answer quotes.
const QUOTED_PAYLOAD: usize = 64;
/// ICMP errors answer no ICMP error (RFC 1122 3.2.2): destination
/// unreachable, source quench, redirect, time exceeded, parameter problem.
const ICMP_ERRORS: [u8; 5] = [3, 4, 5, 11, 12];

/// What a "fragmentation needed" message at the underlay device does.
pub struct Learning {
    pub counter: &'static str,
    /// The entry written: (host, MTU), and whether the host had none.
    pub learned: Option<(u32, u32, bool)>,
}

/// `None` unless `outer` (an unfragmented ICMP packet to one of this host's
/// addresses) is "fragmentation needed"; otherwise what the programs make
/// of it: learned only when it quotes one of our outer packets towards
/// another host of that address's underlay, with (when the quote is long
/// enough to show it) an inner header from our slice to that host's.
pub fn learn(config: &Config, frame: &[u8], outer: &Ipv4View) -> Option<Learning> {
    let icmp_at = ETH_LEN + outer.header_len();
    let icmp = frame.get(icmp_at..icmp_at + ICMP_HEADER_LEN)?;
    if icmp[0] != DEST_UNREACH || icmp[1] != FRAG_NEEDED {
        return None;
    }
    let ignored = |counter| {
        Some(Learning {
            counter,
            learned: None,
        })
    };
    let reported = u32::from(be16(icmp, 6));
    let quote_at = icmp_at + ICMP_HEADER_LEN;
    let Some(quoted) = Ipv4View::parse(frame, quote_at) else {
        return ignored("pmtu_rejected_quote");
    };
    let (local, remote) = (quoted.src(), quoted.dst());
    let after_quoted = quote_at + quoted.header_len();
    // Ours: IP-in-IP, or a VXLAN fan's VXLAN (the quote must show the
    // VXLAN header naming the fan; the inner header is an IPv4 frame's).
    let inner_at = match quoted.protocol() {
        PROTO_IPIP => Some(after_quoted),
        PROTO_UDP if config.vxlan_fan_at(frame, after_quoted).is_some() => {
            let inner_eth = after_quoted + 16;
            (frame.len() >= inner_eth + ETH_LEN && be16(frame, inner_eth + 12) == 0x0800)
                .then_some(inner_eth + ETH_LEN)
        }
        _ => return ignored("pmtu_rejected_quote"),
    };
    if local != outer.dst()
        || !config.is_underlay_peer(local, remote)
        || config.is_local_host(remote)
    {
        return ignored("pmtu_rejected_quote");
    }
    // The inner header, when the quote goes that far (RFC 792 promises
    // only 8 bytes past the quoted header).
    if let Some(inner_at) = inner_at
        && frame.len() >= inner_at + IPV4_MIN_LEN
    {
        let (src, dst) = (be32(frame, inner_at + 12), be32(frame, inner_at + 16));
        let from_us = config
            .fan_for(src)
            .is_some_and(|f| f.local_host == local && f.is_local(src));
        let to_remote = config
            .fan_for(dst)
            .is_some_and(|f| f.map.host_of(dst) == remote);
        if !from_us || !to_remote {
            return ignored("pmtu_rejected_inner");
        }
    }
    if reported < MIN_LINK_MTU {
        return ignored("pmtu_ignored_too_small");
    }
    if reported >= u32::from(quoted.total_len()) {
        // The packet it is about fitted: not a real refusal.
        return ignored("pmtu_ignored_not_smaller");
    }
    let mtu = reported.max(MIN_PMTU);
    if config.path_mtu(remote).is_some_and(|known| mtu >= known) {
        return ignored("pmtu_ignored_not_lower");
    }
    let first = config.path_mtu_entry(remote).is_none();
    Some(Learning {
        counter: "pmtu_learned",
        learned: Some((remote, mtu, first)),
    })
}

/// What a forwarding program does with a container's packet too big for the
/// path MTU `path`, fragmentable or not. `Ok`: the answer frame, ICMP
/// fragmentation needed (MTU `path` less the outer header) from the slice
/// gateway, back to the sender's MAC. `Err(Ok(counter))`: passed to the
/// stack; `Err(Err(counter))`: dropped.
/// `host`: the host's own packet (at fan-host's egress), answered from the
/// address it was sent to; else a container's, answered from its gateway.
pub fn answer(
    fan: &Fan,
    frame: &[u8],
    ip: &Ipv4View,
    path: u32,
    host: bool,
) -> Result<Vec<u8>, Result<&'static str, &'static str>> {
    const DF: u16 = 0x4000;
    const OFFSET: u16 = 0x1fff;
    let flags = be16(frame, ip.offset() + 6);
    if flags & DF == 0 {
        // A container's: the stack fragments it to the route MTU. The
        // host's: dropped (its stack learns from its DF packets' answers).
        return Err(if host {
            Err("drop_too_big_for_path")
        } else {
            Ok("stack_too_big_for_path")
        });
    }
    let after_header = frame.get(ETH_LEN + ip.header_len());
    let about_an_error = ip.protocol() == PROTO_ICMP
        && after_header.is_none_or(|icmp_type| ICMP_ERRORS.contains(icmp_type));
    let edge_source = !host && fan.map.is_slice_edge(fan.local_host, ip.src());
    if flags & OFFSET != 0 || edge_source || about_an_error {
        return Err(Err("drop_too_big_for_path"));
    }
    // The quote: the header and 64 bytes, cut from the packet (or padded
    // with zeros where the frame is shorter than its header says).
    let quote_len = ip.header_len() + QUOTED_PAYLOAD;
    let mut quote = frame[ETH_LEN..].to_vec();
    quote.resize(quote_len, 0);
    let mut icmp = vec![DEST_UNREACH, FRAG_NEEDED, 0, 0, 0, 0, 0, 0];
    put16(&mut icmp, 6, (path - fan.overhead()) as u16);
    icmp.extend_from_slice(&quote);
    let check = !ones_complement_sum(&icmp);
    put16(&mut icmp, 2, check);
    let header = Ipv4Fields {
        // Network control precedence, as Linux's own ICMP errors.
        tos: 0xc0,
        total_len: (IPV4_MIN_LEN + icmp.len()) as u16,
        id: 0,
        flags_offset: 0,
        ttl: 64,
        protocol: PROTO_ICMP,
        src: if host { ip.dst() } else { fan.gateway() },
        dst: ip.src(),
    }
    .to_bytes();
    // Back where it came from: the Ethernet addresses swapped.
    let mut out = Vec::with_capacity(ETH_LEN + header.len() + icmp.len());
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..ETH_LEN]);
    out.extend_from_slice(&header);
    out.extend_from_slice(&icmp);
    Ok(out)
}
