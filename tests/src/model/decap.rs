//! The decapsulating programs: the receive policy as docs/security.md states
//! it, then the outer header's removal.

use super::{
    Fate, Prediction, RunContext, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP,
    XDP_LINEAR_MAX, XDP_PASS,
    config::{Config, Fan},
    pmtu::{self, Learning, PROTO_ICMP},
    untouched,
    wire::{
        ETH_LEN, ETHERTYPE_IPV4, Ipv4View, PROTO_IPIP, PROTO_UDP, be16, be32, decrement_ttl,
        ethertype, set_ecn,
    },
};

const ETHERTYPE_ARP: u16 = 0x0806;
/// UDP and VXLAN headers.
const UDP_VXLAN_LEN: usize = 16;
/// An Ethernet/IPv4 ARP message.
const ARP_IPV4_LEN: usize = 28;

const ECN_NOT_ECT: u8 = 0b00;
const ECN_CE: u8 = 0b11;

/// The policy's answer for one frame.
enum Verdict {
    /// Genuine: the frame with the inner ECN updated, and the length of
    /// the outer header to remove.
    Deliver {
        frame: Vec<u8>,
        outer_len: usize,
    },
    /// A VXLAN fan's genuine frame: the frame with the inner ECN updated,
    /// the length of the outer IPv4, UDP and VXLAN headers, and whether
    /// the inner frame is IPv4 (else ARP).
    DeliverVxlan {
        frame: Vec<u8>,
        outer_len: usize,
        ipv4: bool,
    },
    Pass(&'static str),
    Drop(&'static str),
    /// An ICMP "fragmentation needed" for the stack, judged (and perhaps
    /// learned from) on its way.
    Judged(Learning),
}

/// A judged "fragmentation needed" of `len` bytes (as the program counts
/// it), passed on with `verdict`: its counters and the entry it writes.
fn judged(learning: &Learning, frame: &[u8], len: u64, verdict: u32) -> Prediction {
    let mut counters = vec![(learning.counter, len)];
    if let Some((_, _, true)) = learning.learned {
        counters.push(("pmtu_host_added", 0));
    }
    Prediction {
        verdict,
        frame: frame.to_vec(),
        counters,
        fate: Fate::Passed,
        learned: learning.learned.map(|(host, mtu, _)| (host, mtu)),
    }
}

pub fn run_tc(config: &Config, frame: &[u8], ctx: RunContext) -> Prediction {
    let len = frame.len() as u64;
    match receive(config, frame) {
        Verdict::Pass(counter) => untouched(frame, TC_ACT_UNSPEC, Some(counter), Fate::Passed),
        Verdict::Drop(counter) => untouched(frame, TC_ACT_SHOT, Some(counter), Fate::Dropped),
        Verdict::Judged(learning) => judged(&learning, frame, len, TC_ACT_UNSPEC),
        // Removing the headers fails before the inner ECN is updated.
        Verdict::DeliverVxlan { .. } if ctx.gso_size & 0xffff != 0 => Prediction {
            verdict: TC_ACT_SHOT,
            frame: frame.to_vec(),
            counters: vec![("drop_decap_failed", len)],
            fate: Fate::Dropped,
            learned: None,
        },
        // The inner frame exactly as it was sent: straight into a container
        // it is switched to, else to the bridge through the overlay port.
        Verdict::DeliverVxlan {
            frame,
            outer_len,
            ipv4,
            ..
        } => {
            let inner = frame[ETH_LEN + outer_len..].to_vec();
            let direct = ipv4 && switched_to_endpoint(config, &inner, ctx);
            let mut counters = vec![("decapsulated", len)];
            if direct {
                counters.push(("decapsulated_direct", len));
            }
            Prediction {
                verdict: TC_ACT_REDIRECT,
                frame: inner,
                counters,
                fate: if direct {
                    Fate::DeliveredDirect
                } else {
                    Fate::Decapsulated
                },
                learned: None,
            }
        }
        // The kernel shrinks a GSO skb only if it is TCP (or UDP with a
        // fixed segment size), and a test run's GSO skb has no GSO type:
        // removing the header fails, after the inner ECN was updated.
        Verdict::Deliver { frame, .. } if ctx.gso_size & 0xffff != 0 => Prediction {
            verdict: TC_ACT_SHOT,
            frame,
            counters: vec![("drop_decap_failed", len)],
            fate: Fate::Dropped,
            learned: None,
        },
        Verdict::Deliver { frame, outer_len } => {
            match direct_delivery(config, &strip(&frame, outer_len), ctx) {
                Some((mac, gateway_mac)) => {
                    let mut inner = strip(&frame, outer_len);
                    decrement_ttl(&mut inner, ETH_LEN);
                    inner[0..6].copy_from_slice(&mac);
                    inner[6..12].copy_from_slice(&gateway_mac);
                    Prediction {
                        verdict: TC_ACT_REDIRECT,
                        frame: inner,
                        counters: vec![("decapsulated", len), ("decapsulated_direct", len)],
                        fate: Fate::DeliveredDirect,
                        learned: None,
                    }
                }
                None => Prediction {
                    verdict: TC_ACT_UNSPEC,
                    frame: strip(&frame, outer_len),
                    counters: vec![("decapsulated", len)],
                    fate: Fate::Decapsulated,
                    learned: None,
                },
            }
        }
    }
}

pub fn run_xdp(config: &Config, frame: &[u8]) -> Prediction {
    // XDP sees (and counts) the linear part of a test run's buffer.
    let linear = frame.len().min(XDP_LINEAR_MAX);
    let verdict = receive(config, &frame[..linear]);
    let len = linear as u64;
    let counted = |counter| vec![(counter, len)];
    match verdict {
        Verdict::Pass(counter) => Prediction {
            verdict: XDP_PASS,
            frame: frame.to_vec(),
            counters: counted(counter),
            fate: Fate::Passed,
            learned: None,
        },
        Verdict::Drop(counter) => Prediction {
            verdict: XDP_DROP,
            frame: frame.to_vec(),
            counters: counted(counter),
            fate: Fate::Dropped,
            learned: None,
        },
        Verdict::Judged(learning) => judged(&learning, frame, len, XDP_PASS),
        // Left to the TC program, which hands the inner frame to the bridge
        // (and carries an outer CE mark inward): untouched.
        Verdict::DeliverVxlan { .. } => Prediction {
            verdict: XDP_PASS,
            frame: frame.to_vec(),
            counters: counted("pass_vxlan_at_xdp"),
            fate: Fate::Passed,
            learned: None,
        },
        Verdict::Deliver {
            frame: updated,
            outer_len,
        } => {
            let mut inner = strip(&updated, outer_len);
            inner.extend_from_slice(&frame[linear..]);
            Prediction {
                verdict: XDP_PASS,
                frame: inner,
                counters: counted("decapsulated"),
                fate: Fate::Decapsulated,
                learned: None,
            }
        }
    }
}

/// The receive policy.
fn receive(config: &Config, frame: &[u8]) -> Verdict {
    if ethertype(frame) != Some(ETHERTYPE_IPV4) {
        return Verdict::Pass("pass_not_ipv4");
    }
    let Some(outer) = Ipv4View::parse(frame, ETH_LEN) else {
        return Verdict::Pass("pass_malformed_ipv4");
    };
    if outer.protocol() == PROTO_UDP {
        return receive_vxlan(config, frame, &outer).unwrap_or_else(Verdict::Drop);
    }
    if outer.protocol() != PROTO_IPIP {
        // Routers' "fragmentation needed" about our outer packets, to one
        // of this host's addresses: learned from here only.
        if outer.protocol() == PROTO_ICMP
            && !outer.is_fragment()
            && config.is_local_host(outer.dst())
            && let Some(learning) = pmtu::learn(config, frame, &outer)
        {
            return Verdict::Judged(learning);
        }
        return Verdict::Pass("pass_not_ipip");
    }
    if outer.is_fragment() {
        return Verdict::Pass("pass_outer_fragment");
    }
    if !config.is_local_host(outer.dst()) {
        return Verdict::Pass("pass_not_local_underlay");
    }
    let inner_at = ETH_LEN + outer.header_len();
    let Some(inner) = Ipv4View::parse(frame, inner_at) else {
        return Verdict::Drop("drop_malformed_inner");
    };
    if let Err(counter) = check_claim(config, &outer, &inner) {
        return counter;
    }
    match carry_ecn(frame, &outer, &inner) {
        Ok(updated) => Verdict::Deliver {
            frame: updated,
            outer_len: outer.header_len(),
        },
        Err(counter) => Verdict::Drop(counter),
    }
}

/// The frame with an outer CE mark carried into the inner IPv4 header.
fn carry_ecn(frame: &[u8], outer: &Ipv4View, inner: &Ipv4View) -> Result<Vec<u8>, &'static str> {
    let ecn = match (outer.ecn(), inner.ecn()) {
        (ECN_CE, ECN_NOT_ECT) => return Err("drop_ce_not_ect"),
        (ECN_CE, _) => ECN_CE,
        // Only CE is carried inward (as Linux's tunnels do): the stated policy (docs/security.md).
        (_, inner_ecn) => inner_ecn,
    };
    let mut updated = frame.to_vec();
    if ecn != inner.ecn() {
        set_ecn(&mut updated, inner.offset(), ecn);
    }
    Ok(updated)
}

/// The VXLAN branch of the receive policy, for a UDP `outer` packet: not
/// a VXLAN fan's (port and VNI) -> the stack's; a fan's is delivered only
/// if its inner frame is IPv4 or an Ethernet/IPv4 ARP request or reply
/// whose destination (target) is a container of this host's slice and
/// whose source (sender) lies in the slice the outer source owns, and
/// only an ARP request goes to a broadcast or multicast MAC.
fn receive_vxlan(config: &Config, frame: &[u8], outer: &Ipv4View) -> Result<Verdict, &'static str> {
    const OFFSET: u16 = 0x1fff;
    let not_ours = Ok(Verdict::Pass("pass_not_ipip"));
    // A later fragment has no UDP header to tell.
    if be16(frame, ETH_LEN + 6) & OFFSET != 0 || !config.is_local_host(outer.dst()) {
        return not_ours;
    }
    let udp_at = ETH_LEN + outer.header_len();
    let Some(fan) = config.vxlan_fan_at(frame, udp_at) else {
        return not_ours;
    };
    if outer.is_fragment() {
        return Ok(Verdict::Pass("pass_outer_fragment"));
    }
    let outer_len = outer.header_len() + UDP_VXLAN_LEN;
    let inner_eth = ETH_LEN + outer_len;
    let payload = inner_eth + ETH_LEN;
    if frame.len() < payload {
        return Err("drop_vxlan_not_ipv4_or_arp");
    }
    let to_group = frame[inner_eth] & 1 != 0;
    let (updated, ipv4) = match be16(frame, inner_eth + 12) {
        ETHERTYPE_IPV4 => {
            let inner = Ipv4View::parse(frame, payload).ok_or("drop_malformed_inner")?;
            check_receiver(fan, outer, inner.dst())?;
            check_sender(
                config,
                fan,
                vxlan_source_fan(config, fan, inner.src())?,
                outer,
                inner.src(),
            )?;
            if to_group {
                return Err("drop_vxlan_broadcast_not_arp");
            }
            (carry_ecn(frame, outer, &inner)?, true)
        }
        ETHERTYPE_ARP => {
            let arp = frame
                .get(payload..payload + ARP_IPV4_LEN)
                .ok_or("drop_vxlan_arp_not_request_or_reply")?;
            let operation = be16(arp, 6);
            let ethernet_ipv4 =
                be16(arp, 0) == 1 && be16(arp, 2) == ETHERTYPE_IPV4 && arp[4] == 6 && arp[5] == 4;
            if !ethernet_ipv4 || !(operation == 1 || operation == 2) {
                return Err("drop_vxlan_arp_not_request_or_reply");
            }
            let (sender, target) = (be32(arp, 14), be32(arp, 24));
            check_receiver(fan, outer, target)?;
            check_sender(
                config,
                fan,
                vxlan_source_fan(config, fan, sender)?,
                outer,
                sender,
            )?;
            if to_group && operation != 1 {
                return Err("drop_vxlan_broadcast_not_arp");
            }
            (frame.to_vec(), false)
        }
        _ => return Err("drop_vxlan_not_ipv4_or_arp"),
    };
    Ok(Verdict::DeliverVxlan {
        frame: updated,
        outer_len,
        ipv4,
    })
}

/// The fan of a VXLAN frame's inner source (or ARP sender): the VNI's fan
/// if its overlay holds it, else the one whose overlay does.
fn vxlan_source_fan<'a>(
    config: &'a Config,
    fan: &'a Fan,
    src: u32,
) -> Result<&'a Fan, &'static str> {
    if fan.map.overlay_contains(src) {
        return Ok(fan);
    }
    config.fan_for(src).ok_or("drop_inner_src_outside_overlay")
}

/// Whether a decapsulated VXLAN IPv4 frame goes straight into the container
/// it is switched to: a known endpoint on a device that exists and takes
/// it (unless GSO), addressed to that container's MAC (no TTL is taken).
fn switched_to_endpoint(config: &Config, frame: &[u8], ctx: RunContext) -> bool {
    let Some(ip) = Ipv4View::parse(frame, ETH_LEN) else {
        return false;
    };
    let Some(endpoint) = config.endpoint(ip.dst()) else {
        return false;
    };
    if config.bypass_off {
        return false;
    }
    let Some(device) = config.underlay.device(endpoint.ifindex) else {
        return false;
    };
    if ctx.gso_size & 0xffff == 0 && u32::from(ip.total_len()) > device.mtu {
        return false;
    }
    frame[0..6] == endpoint.mac
}

/// The frame without the outer header: the Ethernet header, then the inner packet.
fn strip(frame: &[u8], outer_len: usize) -> Vec<u8> {
    let mut out = frame[..ETH_LEN].to_vec();
    out.extend_from_slice(&frame[ETH_LEN + outer_len..]);
    out
}

/// The three conditions on a claim (inner destination, outer source, inner
/// source), each failure with its own counter.
fn check_claim(config: &Config, outer: &Ipv4View, inner: &Ipv4View) -> Result<(), Verdict> {
    let dst_fan = config.fan_for(inner.dst());
    let src_fan = config.fan_for(inner.src());
    let (dst_fan, src_fan) = match (dst_fan, src_fan) {
        // IP-in-IP that is not the Fan's: a kernel tunnel may own it.
        (None, None) => return Err(Verdict::Pass("pass_not_overlay")),
        (None, Some(_)) => return Err(Verdict::Drop("drop_inner_dst_not_local")),
        (Some(_), None) => return Err(Verdict::Drop("drop_inner_src_outside_overlay")),
        (Some(dst_fan), Some(src_fan)) => (dst_fan, src_fan),
    };
    // One wire format per fan: a VXLAN fan's slice takes no IP-in-IP.
    if dst_fan.vxlan.is_some() {
        return Err(Verdict::Drop("drop_ipip_to_vxlan_fan"));
    }
    check_receiver(dst_fan, outer, inner.dst()).map_err(Verdict::Drop)?;
    check_sender(config, dst_fan, src_fan, outer, inner.src()).map_err(Verdict::Drop)
}

/// The inner destination (a VXLAN ARP target) `dst`: a container of this
/// host's slice of `dst_fan`, whose local address the outer header names.
fn check_receiver(dst_fan: &Fan, outer: &Ipv4View, dst: u32) -> Result<(), &'static str> {
    if dst_fan.local_host != outer.dst() || !dst_fan.is_local(dst) {
        return Err("drop_inner_dst_not_local");
    }
    if dst_fan.map.is_slice_edge(dst_fan.local_host, dst) {
        return Err("drop_inner_dst_reserved");
    }
    Ok(())
}

/// The outer source: another host of the fan's underlay, owning the slice
/// of the inner source (a VXLAN ARP sender) `src`, which lies in `src_fan`.
fn check_sender(
    config: &Config,
    dst_fan: &Fan,
    src_fan: &Fan,
    outer: &Ipv4View,
    src: u32,
) -> Result<(), &'static str> {
    let outer_src = outer.src();
    if !dst_fan.map.underlay_contains(outer_src) || !src_fan.map.underlay_contains(outer_src) {
        return Err("drop_outer_src_outside_underlay");
    }
    // The stated rule holds for the source's fan too: its network or
    // broadcast address names no host, so it owns no slice.
    if dst_fan.map.is_reserved_host(outer_src) || src_fan.map.is_reserved_host(outer_src) {
        return Err("drop_outer_src_reserved");
    }
    if config.is_local_host(outer_src) {
        return Err("drop_outer_src_is_local");
    }
    if src_fan.map.host_of(src) != outer_src {
        return Err("drop_spoofed_source");
    }
    Ok(())
}

/// The container's MAC and its gateway's, when the decapsulated packet can
/// go straight into it: a known endpoint on a device that exists, a TTL
/// that survives the hop, and (unless GSO) a length the device takes.
fn direct_delivery(config: &Config, frame: &[u8], ctx: RunContext) -> Option<([u8; 6], [u8; 6])> {
    let ip = Ipv4View::parse(frame, ETH_LEN)?;
    let endpoint = config.endpoint(ip.dst())?;
    // With the bypass off the host's netfilter must see the packet.
    if config.bypass_off || ip.ttl() <= 1 {
        return None;
    }
    let device = config.underlay.device(endpoint.ifindex)?;
    if ctx.gso_size & 0xffff == 0 && u32::from(ip.total_len()) > device.mtu {
        return None;
    }
    Some((endpoint.mac, endpoint.gateway_mac))
}
