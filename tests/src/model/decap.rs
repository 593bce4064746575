//! The decapsulating programs: the receive policy as docs/security.md states
//! it, then the outer header's removal.

use super::{
    Fate, Prediction, RunContext, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP,
    XDP_LINEAR_MAX, XDP_PASS,
    config::Config,
    pmtu::{self, Learning, PROTO_ICMP},
    untouched,
    wire::{ETH_LEN, ETHERTYPE_IPV4, Ipv4View, PROTO_IPIP, decrement_ttl, ethertype, set_ecn},
};

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
    let ecn = match (outer.ecn(), inner.ecn()) {
        (ECN_CE, ECN_NOT_ECT) => return Verdict::Drop("drop_ce_not_ect"),
        (ECN_CE, _) => ECN_CE,
        // Only CE is carried inward (as Linux's tunnels do): the stated policy (docs/security.md).
        (_, inner_ecn) => inner_ecn,
    };
    let mut updated = frame.to_vec();
    if ecn != inner.ecn() {
        set_ecn(&mut updated, inner_at, ecn);
    }
    Verdict::Deliver {
        frame: updated,
        outer_len: outer.header_len(),
    }
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
    if dst_fan.local_host != outer.dst() || !dst_fan.is_local(inner.dst()) {
        return Err(Verdict::Drop("drop_inner_dst_not_local"));
    }
    if dst_fan.map.is_slice_edge(dst_fan.local_host, inner.dst()) {
        return Err(Verdict::Drop("drop_inner_dst_reserved"));
    }
    let outer_src = outer.src();
    if !dst_fan.map.underlay_contains(outer_src) || !src_fan.map.underlay_contains(outer_src) {
        return Err(Verdict::Drop("drop_outer_src_outside_underlay"));
    }
    // The stated rule holds for the source's fan too: its network or
    // broadcast address names no host, so it owns no slice.
    if dst_fan.map.is_reserved_host(outer_src) || src_fan.map.is_reserved_host(outer_src) {
        return Err(Verdict::Drop("drop_outer_src_reserved"));
    }
    if config.is_local_host(outer_src) {
        return Err(Verdict::Drop("drop_outer_src_is_local"));
    }
    if src_fan.map.host_of(inner.src()) != outer_src {
        return Err(Verdict::Drop("drop_spoofed_source"));
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
