//! A VXLAN fan's sending side: the overlay port's program (`fan_vxlan_out`,
//! what the slice bridge switches to the overlay) and the VXLAN wire format
//! the container ports' program shares with it (docs/design.md, "VXLAN").

use super::{
    Fate, Prediction, RunContext, TC_ACT_REDIRECT, TC_ACT_SHOT,
    config::{Config, Fan, VXLAN_OVERHEAD},
    encap::{largest_packet, source_may_send_to},
    route::Lookup,
    untouched,
    wire::{ETH_LEN, ETHERTYPE_IPV4, IPV4_MIN_LEN, Ipv4Fields, Ipv4View, PROTO_UDP, be16, be32},
};

const ETHERTYPE_ARP: u16 = 0x0806;
/// Outer IPv4, UDP and VXLAN headers.
const HEADERS_LEN: usize = IPV4_MIN_LEN + 16;
const DONT_FRAGMENT: u16 = 0x4000;
const OUTER_TTL: u8 = 64;
/// What the overlay port reads of an ARP message: Ethernet/IPv4's 28 bytes.
const ARP_IPV4_LEN: usize = 28;

/// What the overlay port needs of a frame's IPv4 packet or ARP message.
struct Payload {
    /// The address the remote host comes from (destination or target) and
    /// the one that must be this host's (source or sender).
    dst: u32,
    src: u32,
    tos: u8,
    /// The largest packet the frame becomes on the overlay.
    segment: u32,
    /// The inner frame's length, its Ethernet header included.
    frame_len: u32,
    ipv4: bool,
}

/// `fan_vxlan_out`: every frame is encapsulated to its remote host or
/// dropped with its reason; a broadcast or multicast frame naming no remote
/// host is counted apart (the bridge floods it there, meaning no one).
pub fn run_out(config: &Config, frame: &[u8], ctx: RunContext) -> Prediction {
    match send(config, frame, ctx) {
        Ok(prediction) => prediction,
        Err(reason)
            if frame[0] & 1 != 0
                && matches!(
                    reason,
                    "drop_vxlan_not_ipv4_or_arp"
                        | "drop_vxlan_local_slice"
                        | "drop_vxlan_not_overlay"
                ) =>
        {
            untouched(
                frame,
                TC_ACT_SHOT,
                Some("vxlan_flood_not_sent"),
                Fate::Dropped,
            )
        }
        Err(reason) => untouched(frame, TC_ACT_SHOT, Some(reason), Fate::Dropped),
    }
}

fn send(config: &Config, frame: &[u8], ctx: RunContext) -> Result<Prediction, &'static str> {
    let payload = match be16(frame, 12) {
        ETHERTYPE_IPV4 => ipv4_payload(frame, ctx)?,
        ETHERTYPE_ARP => arp_payload(frame)?,
        _ => return Err("drop_vxlan_not_ipv4_or_arp"),
    };
    let fan = config
        .fan_for(payload.dst)
        .filter(|fan| fan.vxlan.is_some())
        .ok_or("drop_vxlan_not_overlay")?;
    if fan.is_local(payload.dst) {
        return Err("drop_vxlan_local_slice");
    }
    let remote = fan.map.host_of(payload.dst);
    if fan.map.is_reserved_host(remote) {
        return Err("drop_reserved_host");
    }
    source_may_send_to(config, fan, payload.src)?;
    // Switched, not routed: no TTL to take, nobody to answer when too big.
    if payload.frame_len + HEADERS_LEN as u32 > u32::from(u16::MAX) {
        return Err("drop_inner_too_long");
    }
    let too_big_for_path = config
        .path_mtu(remote)
        .is_some_and(|path| payload.segment + VXLAN_OVERHEAD > path);
    if payload.segment > fan.overlay_mtu || too_big_for_path {
        return Err("drop_vxlan_too_big");
    }
    let outer_len = payload.segment + VXLAN_OVERHEAD;
    let next_hop = next_hop(config, fan, remote, outer_len).map_err(|reason| match reason {
        "frag_needed" => "drop_vxlan_too_big",
        other => other,
    })?;
    if !payload.ipv4 {
        // Headers put in front of the whole frame (zeros where the
        // Ethernet header goes until the route lookup's addresses).
        let mut out = vec![0; 12];
        out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        out.extend_from_slice(&headers(fan, remote, 0, payload.frame_len));
        out.extend_from_slice(frame);
        return Ok(sent(out, next_hop, ctx));
    }
    if ctx.gso_size & 0xffff != 0 {
        // A test run's GSO skb has no GSO type: growing it fails.
        return Ok(untouched(
            frame,
            TC_ACT_SHOT,
            Some("drop_encap_failed"),
            Fate::Dropped,
        ));
    }
    Ok(sent(
        encapsulated(fan, remote, payload.tos, payload.frame_len, frame),
        next_hop,
        ctx,
    ))
}

/// An IPv4 frame at the overlay port.
fn ipv4_payload(frame: &[u8], ctx: RunContext) -> Result<Payload, &'static str> {
    let ip = Ipv4View::parse(frame, ETH_LEN).ok_or("drop_malformed_inner")?;
    let total_len = u32::from(ip.total_len());
    if total_len == 0 {
        return Err("drop_inner_too_long");
    }
    Ok(Payload {
        dst: ip.dst(),
        src: ip.src(),
        tos: ip.tos(),
        segment: largest_packet(frame, &ip, ctx.gso_size & 0xffff).ok_or("drop_malformed_inner")?,
        frame_len: ETH_LEN as u32 + total_len,
        ipv4: true,
    })
}

/// An ARP frame at the overlay port: an Ethernet/IPv4 request or reply.
fn arp_payload(frame: &[u8]) -> Result<Payload, &'static str> {
    let arp = frame
        .get(ETH_LEN..ETH_LEN + ARP_IPV4_LEN)
        .ok_or("drop_vxlan_arp_not_request_or_reply")?;
    let ethernet_ipv4 =
        be16(arp, 0) == 1 && be16(arp, 2) == ETHERTYPE_IPV4 && arp[4] == 6 && arp[5] == 4;
    if !ethernet_ipv4 || !matches!(be16(arp, 6), 1 | 2) {
        return Err("drop_vxlan_arp_not_request_or_reply");
    }
    Ok(Payload {
        dst: be32(arp, 24),
        src: be32(arp, 14),
        tos: 0,
        segment: (frame.len() - ETH_LEN) as u32,
        frame_len: frame.len() as u32,
        ipv4: false,
    })
}

/// The next hop's and the device's MACs, when the next hop is resolved.
pub type NextHopMacs = Option<([u8; 6], [u8; 6])>;

/// The underlay's next hop towards `remote` for an outer packet of
/// `outer_len` bytes: its and the device's MACs when resolved. `Err` with
/// the drop's counter, or "frag_needed" when the route's MTU is too small.
pub fn next_hop(
    config: &Config,
    fan: &Fan,
    remote: u32,
    outer_len: u32,
) -> Result<NextHopMacs, &'static str> {
    match config
        .underlay
        .lookup(fan.underlay_ifindex, remote, outer_len)
    {
        Lookup::Resolved { ifindex, .. } | Lookup::Unresolved { ifindex }
            if ifindex != fan.underlay_ifindex =>
        {
            Err("drop_fib_not_forwarded")
        }
        Lookup::Resolved {
            next_hop_mac,
            device_mac,
            ..
        } => Ok(Some((next_hop_mac, device_mac))),
        Lookup::Unresolved { .. } => Ok(None),
        Lookup::FragNeeded => Err("frag_needed"),
        Lookup::Blackhole => Err("drop_fib_blackhole"),
        Lookup::Unreachable => Err("drop_fib_unreachable"),
        Lookup::Prohibit => Err("drop_fib_prohibit"),
        Lookup::NotForwarded => Err("drop_fib_not_forwarded"),
        Lookup::ForwardingDisabled => Err("drop_fib_forwarding_disabled"),
    }
}

/// The IPv4 frame `frame` (its first `frame_len` bytes the inner frame as
/// the headers count it) behind outer IPv4, UDP and VXLAN headers, the
/// outer Ethernet header the frame's own until the next hop's is written.
pub fn encapsulated(fan: &Fan, remote: u32, tos: u8, frame_len: u32, frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..ETH_LEN].to_vec();
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out.extend_from_slice(&headers(fan, remote, tos, frame_len));
    out.extend_from_slice(frame);
    out
}

/// The outer IPv4, UDP (source port 0: see `VXLAN_SOURCE_PORT`, checksum
/// 0) and VXLAN headers in front of an inner frame of `frame_len` bytes.
fn headers(fan: &Fan, remote: u32, tos: u8, frame_len: u32) -> Vec<u8> {
    let vxlan = fan.vxlan.expect("a VXLAN fan");
    let mut out = Ipv4Fields {
        tos,
        total_len: (frame_len + HEADERS_LEN as u32) as u16,
        id: 0,
        flags_offset: DONT_FRAGMENT,
        ttl: OUTER_TTL,
        protocol: PROTO_UDP,
        src: fan.local_host,
        dst: remote,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&vxlan.port.to_be_bytes());
    out.extend_from_slice(&((frame_len + 16) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x08, 0, 0, 0]);
    out.extend_from_slice(&vxlan.vni.to_be_bytes()[1..]);
    out.push(0);
    out
}

/// An encapsulated frame on its way: to the resolved next hop's MAC from
/// the device's, or (unresolved) to the kernel's neighbour queue. (A GSO
/// frame gets here only as ARP, which is put behind the headers whole.)
pub fn sent(mut out: Vec<u8>, next_hop: Option<([u8; 6], [u8; 6])>, ctx: RunContext) -> Prediction {
    let bytes = out.len() as u64;
    let mut counters = vec![("encapsulated", bytes)];
    if ctx.gso_size & 0xffff != 0 {
        counters.push(("encapsulated_gso", bytes));
    }
    match next_hop {
        Some((next_hop_mac, device_mac)) => {
            out[0..6].copy_from_slice(&next_hop_mac);
            out[6..12].copy_from_slice(&device_mac);
        }
        None => counters.push(("encapsulated_neigh_pending", bytes)),
    }
    Prediction {
        verdict: TC_ACT_REDIRECT,
        frame: out,
        counters,
        fate: Fate::Encapsulated,
        learned: None,
    }
}
