//! The encapsulating programs, as "Packet paths" in docs/design.md describes them.

use super::{
    Fate, Prediction, RunContext, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC,
    config::{Config, Fan},
    pmtu,
    route::Lookup,
    untouched, vxlan,
    wire::{
        ETH_LEN, ETHERTYPE_IPV4, IPV4_MIN_LEN, Ipv4Fields, Ipv4View, PROTO_IPIP, PROTO_TCP,
        PROTO_UDP, be16, be32, decrement_ttl, ethertype,
    },
};

#[derive(Clone, Copy, PartialEq, Eq)]
/// Where an encapsulating program runs, which decides the routing duties
/// it owes the packet.
pub enum Site {
    /// The slice bridge's ingress: forwards for the host.
    Forward,
    /// A container port's ingress: forwards for the host, one hop earlier;
    /// its passes are counted by the bridge's program, not here.
    Port,
    /// The host device's egress: the host's own packets.
    Output,
}

impl Site {
    /// Whether the program acts as a router (TTL, MTU answered by the stack).
    fn forwards(self) -> bool {
        self != Site::Output
    }
}

/// The outer header's TTL: the underlay is a network of its own.
const OUTER_TTL: u8 = 64;
const DONT_FRAGMENT: u16 = 0x4000;

/// Why a frame is not encapsulated: passed on (with the counter; the port
/// program counts every pass as `port_passed` instead) or dropped.
enum NotSent {
    Pass(&'static str),
    Drop(&'static str),
}

pub fn run(config: &Config, site: Site, frame: &[u8], ctx: RunContext) -> Prediction {
    match encapsulate(config, site, frame, ctx) {
        Ok(prediction) => prediction,
        Err(NotSent::Pass(counter)) => {
            let counted = if site == Site::Port {
                "port_passed"
            } else {
                counter
            };
            untouched(frame, TC_ACT_UNSPEC, Some(counted), Fate::Passed)
        }
        Err(NotSent::Drop(counter)) => untouched(frame, TC_ACT_SHOT, Some(counter), Fate::Dropped),
    }
}

fn encapsulate(
    config: &Config,
    site: Site,
    frame: &[u8],
    ctx: RunContext,
) -> Result<Prediction, NotSent> {
    if site.forwards() {
        container_edge(config, site, frame, ctx.ingress_ifindex).map_err(NotSent::Drop)?;
    }
    if ethertype(frame) != Some(ETHERTYPE_IPV4) {
        return Err(NotSent::Pass("pass_not_ipv4"));
    }
    let Some(ip) = Ipv4View::parse(frame, ETH_LEN) else {
        return Err(NotSent::Pass("pass_malformed_ipv4"));
    };
    let Some(fan) = config.fan_for(ip.dst()) else {
        return Err(NotSent::Pass("pass_not_overlay"));
    };
    if fan.is_local(ip.dst()) {
        return Err(NotSent::Pass("pass_local_slice"));
    }
    if fan.vxlan.is_some() && site != Site::Port {
        // The host routes it to the slice bridge, whose overlay port sends it.
        return Err(NotSent::Pass("pass_vxlan_via_overlay_port"));
    }
    if site.forwards() && config.bypass_off {
        // The stack forwards it (netfilter sees it), then fan-host's
        // program encapsulates it.
        return Err(NotSent::Pass("stack_bypass_off"));
    }
    let remote = fan.map.host_of(ip.dst());
    if fan.map.is_reserved_host(remote) {
        return Err(NotSent::Drop("drop_reserved_host"));
    }
    source_may_send_to(config, fan, ip.src()).map_err(NotSent::Drop)?;
    let hop = if !site.forwards() {
        Hop::AsIs
    } else if fan.vxlan.is_some() {
        port_hop(config, fan, frame, &ip, ctx.gso_size & 0xffff)?
    } else {
        Hop::Routed
    };
    if hop != Hop::AsIs && ip.ttl() <= 1 {
        return Err(NotSent::Pass("stack_ttl_expired"));
    }
    let inner_len = u32::from(ip.total_len());
    if inner_len == 0 || inner_len + fan.overhead() > u32::from(u16::MAX) {
        return Err(NotSent::Drop("drop_inner_too_long"));
    }
    let too_big = if site.forwards() {
        NotSent::Pass("stack_too_big")
    } else {
        NotSent::Drop("drop_too_big")
    };
    let gso_size = ctx.gso_size & 0xffff;
    let Some(largest) = largest_packet(frame, &ip, gso_size) else {
        return Err(too_big);
    };
    if largest > fan.overlay_mtu {
        return Err(too_big);
    }
    if let Some(path) = config.path_mtu(remote) {
        let too_big_for_path = largest + fan.overhead() > path;
        if site.forwards() && ip.is_fragment() {
            // A datagram's fragments all take the stack's path.
            return Err(NotSent::Pass("stack_fragment_for_path"));
        }
        if too_big_for_path {
            // The host's own packet is answered into fan-host, as its
            // stack would answer it for a tunnel.
            return match pmtu::answer(fan, frame, &ip, path, !site.forwards()) {
                Ok(answer) => Ok(Prediction {
                    verdict: TC_ACT_REDIRECT,
                    counters: vec![("pmtu_answered", answer.len() as u64)],
                    frame: answer,
                    fate: Fate::Answered,
                    learned: None,
                }),
                Err(Ok(passed)) => Err(NotSent::Pass(passed)),
                Err(Err(dropped)) => Err(NotSent::Drop(dropped)),
            };
        }
    }
    let outer_len = largest + fan.overhead();
    let next_hop = match vxlan::next_hop(config, fan, remote, outer_len) {
        Ok(next_hop) => next_hop,
        Err("frag_needed") => return Err(too_big),
        Err(reason) => return Err(NotSent::Drop(reason)),
    };

    let mut edited = frame.to_vec();
    match hop {
        Hop::AsIs => {}
        Hop::Routed => decrement_ttl(&mut edited, ETH_LEN),
        Hop::RoutedTo { dst_mac, src_mac } => {
            decrement_ttl(&mut edited, ETH_LEN);
            edited[0..6].copy_from_slice(&dst_mac);
            edited[6..12].copy_from_slice(&src_mac);
        }
    }
    let inner = edited[ETH_LEN..].to_vec();
    if gso_size != 0 {
        // The kernel grows a GSO skb only if it is TCP (or UDP with a fixed
        // segment size), and a test run's GSO skb has no GSO type at all:
        // making room fails, after the TTL was taken.
        let len = frame.len() as u64;
        return Ok(Prediction {
            verdict: TC_ACT_SHOT,
            frame: edited,
            counters: vec![("drop_encap_failed", len)],
            fate: Fate::Dropped,
            learned: None,
        });
    }
    if fan.vxlan.is_some() {
        let frame_len = ETH_LEN as u32 + inner_len;
        let out = vxlan::encapsulated(fan, remote, ip.tos(), frame_len, &edited);
        return Ok(vxlan::sent(out, next_hop, ctx));
    }
    let mut out = frame[..ETH_LEN].to_vec();
    out.extend_from_slice(&outer_header(fan, remote, &ip));
    out.extend_from_slice(&inner);
    let bytes = out.len() as u64;
    let mut counters = vec![("encapsulated", bytes)];
    match next_hop {
        Some((next_hop_mac, device_mac)) => {
            out[0..6].copy_from_slice(&next_hop_mac);
            out[6..12].copy_from_slice(&device_mac);
        }
        // The kernel writes the Ethernet header once ARP resolves.
        None => counters.push(("encapsulated_neigh_pending", bytes)),
    }
    Ok(Prediction {
        verdict: TC_ACT_REDIRECT,
        frame: out,
        counters,
        fate: Fate::Encapsulated,
        learned: None,
    })
}

/// The container edge, as docs/security.md states it: what the bridge's
/// program (`Site::Forward`) and a port's (`Site::Port`) refuse of what a
/// container sends, checked in the order the rule lists, first refusal
/// named. (Neither a VLAN tag in the skb's metadata nor a looped-back
/// packet of the host's can be given to a test run.)
fn container_edge(
    config: &Config,
    site: Site,
    frame: &[u8],
    port: u32,
) -> Result<(), &'static str> {
    let at_port = site == Site::Port;
    let Some(kind) = ethertype(frame) else {
        return Err("drop_not_ipv4_or_arp");
    };
    if [0x8100, 0x88a8, 0x9100].contains(&kind) {
        return Err("drop_vlan_tagged");
    }
    if kind == ETHERTYPE_IPV4 {
        let Some(ip) = Ipv4View::parse(frame, ETH_LEN) else {
            return Ok(());
        };
        if config.is_slice_edge_or_gateway(ip.src()) {
            return Err("drop_source_reserved");
        }
        let udp_at = ETH_LEN + ip.header_len();
        let vxlan = ip.protocol() == PROTO_UDP
            && be16(frame, ETH_LEN + 6) & 0x1fff == 0
            && config.vxlan_fan_at(frame, udp_at).is_some();
        let tunnel = [PROTO_IPIP, 41, 47].contains(&ip.protocol()) || vxlan;
        if tunnel
            && config
                .fans
                .iter()
                .any(|fan| fan.map.underlay_contains(ip.dst()))
        {
            return Err("drop_tunnel_to_underlay");
        }
        let dhcp_client = match udp_ports(frame, &ip) {
            Some((68, 67)) => true,
            Some((from, to)) if from == 67 || from == 68 || to == 68 => {
                return Err("drop_dhcp_server_reply");
            }
            _ => false,
        };
        if !at_port {
            return Ok(());
        }
        if ip.src() == 0 {
            let to_server = ip.dst() == u32::MAX
                || config
                    .fan_for(ip.dst())
                    .is_some_and(|fan| fan.gateway() == ip.dst());
            return if dhcp_client && to_server {
                Ok(())
            } else {
                Err("drop_source_outside_slice")
            };
        }
        return a_ports_own(config, ip.src(), port);
    }
    const ETHERTYPE_ARP: u16 = 0x0806;
    if kind != ETHERTYPE_ARP {
        return Err("drop_not_ipv4_or_arp");
    }
    let Some(sender) = arp_ipv4_sender(frame) else {
        return Err("drop_arp_not_ethernet_ipv4");
    };
    if sender == 0 {
        // A probe (RFC 5227) claims nothing.
        return Ok(());
    }
    if config.is_slice_edge_or_gateway(sender) {
        return Err("drop_source_reserved");
    }
    if !at_port {
        // A VXLAN fan's remote containers reach the bridge through its
        // overlay port, their ARP checked by the receive policy.
        let remote_vxlan = config.fan_for(sender).is_some_and(|f| f.vxlan.is_some());
        return if remote_vxlan {
            Ok(())
        } else {
            in_a_slice(config, sender)
        };
    }
    a_ports_own(config, sender, port)
}

/// A port's source: in one of this host's slices, and not bound to
/// another port (an address with no binding yet is anyone's in the slice).
fn a_ports_own(config: &Config, src: u32, port: u32) -> Result<(), &'static str> {
    in_a_slice(config, src)?;
    match config.endpoint(src) {
        Some(endpoint) if endpoint.ifindex != port => Err("drop_source_not_bound"),
        _ => Ok(()),
    }
}

/// A source in one of this host's slices.
fn in_a_slice(config: &Config, src: u32) -> Result<(), &'static str> {
    if config.fans.iter().any(|fan| fan.is_local(src)) {
        Ok(())
    } else {
        Err("drop_source_outside_slice")
    }
}

/// A UDP datagram's source and destination ports: in the first fragment
/// only, and only if inside the frame.
fn udp_ports(frame: &[u8], ip: &Ipv4View) -> Option<(u16, u16)> {
    const FRAGMENT_OFFSET: u16 = 0x1fff;
    let fragment_offset = be16(frame, ip.offset() + 6) & FRAGMENT_OFFSET;
    let ports_at = ip.offset() + ip.header_len();
    (ip.protocol() == PROTO_UDP && fragment_offset == 0 && frame.len() >= ports_at + 4)
        .then(|| (be16(frame, ports_at), be16(frame, ports_at + 2)))
}

/// The sender protocol address of an ARP packet for IPv4 over Ethernet
/// (RFC 826: hardware type 1, protocol 0x0800, lengths 6 and 4), right
/// after the Ethernet header; None for any other frame.
pub fn arp_ipv4_sender(frame: &[u8]) -> Option<u32> {
    const ETHERTYPE_ARP: u16 = 0x0806;
    let arp = frame.get(ETH_LEN..ETH_LEN + 18)?;
    let ipv4_over_ethernet = ethertype(frame) == Some(ETHERTYPE_ARP)
        && be16(arp, 0) == 1
        && be16(arp, 2) == ETHERTYPE_IPV4
        && arp[4] == 6
        && arp[5] == 4;
    ipv4_over_ethernet.then(|| be32(arp, 14))
}

/// The sender's half of the receive policy: the inner source must be in
/// this host's slice of its fan, and that fan must send from the same
/// underlay address as the destination's fan.
pub(super) fn source_may_send_to(
    config: &Config,
    dst_fan: &Fan,
    src: u32,
) -> Result<(), &'static str> {
    let Some(src_fan) = config.fan_for(src) else {
        return Err("drop_source_not_local");
    };
    if !src_fan.is_local(src) {
        return Err("drop_source_not_local");
    }
    if src_fan.local_host != dst_fan.local_host {
        return Err("drop_cross_underlay");
    }
    Ok(())
}

/// The hop an encapsulating program is for the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// The host's own packet, or a VXLAN frame a container switched to a
    /// remote container's MAC: carried as it is.
    AsIs,
    /// Routed in the host's place: the TTL taken.
    Routed,
    /// Routed onto a VXLAN overlay: the TTL taken, the frame addressed to
    /// the remote container's MAC from the bridge's.
    RoutedTo { dst_mac: [u8; 6], src_mac: [u8; 6] },
}

/// A VXLAN fan's packet at a container's port: addressed to a MAC other
/// than the sender's gateway it is switched (as it is); addressed to the
/// gateway it is routed, to the remote container's MAC as the host's
/// neighbour table on the bridge knows it. A sender the endpoint map does
/// not know, no neighbour (nor route) there, or a frame the bridge could
/// not forward: left to the bridge.
fn port_hop(
    config: &Config,
    fan: &Fan,
    frame: &[u8],
    ip: &Ipv4View,
    gso_size: u32,
) -> Result<Hop, NotSent> {
    let passed = NotSent::Pass("port_passed");
    let Some(sender) = config.endpoint(ip.src()) else {
        return Err(passed);
    };
    if frame[0..6] != sender.gateway_mac {
        return Ok(Hop::AsIs);
    }
    let bridge = fan.vxlan.expect("a VXLAN fan").bridge;
    // No length: the caller checks the segment against the MTUs. Given
    // none, the kernel's lookup measures the frame itself against the
    // bridge (`is_skb_forwardable`): one that is not GSO may be at most the
    // MTU, an Ethernet header and a VLAN tag long (IPv4 trailing bytes
    // beyond the packet's total length count too).
    let forwardable = |mtu: u32| gso_size != 0 || frame.len() as u32 <= mtu + 14 + 4;
    match config.underlay.lookup(bridge, ip.dst(), 0) {
        Lookup::Resolved {
            ifindex,
            next_hop_mac,
            device_mac,
        } if ifindex == bridge
            && config
                .underlay
                .device(bridge)
                .is_some_and(|bridge| forwardable(bridge.mtu)) =>
        {
            Ok(Hop::RoutedTo {
                dst_mac: next_hop_mac,
                src_mac: device_mac,
            })
        }
        _ => Err(passed),
    }
}

/// The longest packet this skb becomes on the wire, less the outer header:
/// itself, or for a GSO packet one segment (IP and transport header plus
/// the segment size). `None` when a GSO TCP packet's header is cut short.
pub(super) fn largest_packet(frame: &[u8], ip: &Ipv4View, gso_size: u32) -> Option<u32> {
    if gso_size == 0 {
        return Some(u32::from(ip.total_len()));
    }
    let l4_at = ETH_LEN + ip.header_len();
    let l4_header = match ip.protocol() {
        PROTO_TCP => {
            // The data offset, in the upper half of byte 12.
            let data_offset = *frame.get(l4_at + 12)?;
            u32::from(data_offset >> 4) * 4
        }
        PROTO_UDP => 8,
        _ => 0,
    };
    Some(ip.header_len() as u32 + l4_header + gso_size)
}

/// The outer header: protocol 4 from this host to the owner of the
/// destination, TOS (DSCP and ECN: RFC 6040's normal mode copies ECN)
/// copied, ID 0 with DF, TTL 64.
fn outer_header(fan: &Fan, remote: u32, inner: &Ipv4View) -> [u8; IPV4_MIN_LEN] {
    Ipv4Fields {
        tos: inner.tos(),
        total_len: inner.total_len() + IPV4_MIN_LEN as u16,
        id: 0,
        flags_offset: DONT_FRAGMENT,
        ttl: OUTER_TTL,
        protocol: PROTO_IPIP,
        src: fan.local_host,
        dst: remote,
    }
    .to_bytes()
}
