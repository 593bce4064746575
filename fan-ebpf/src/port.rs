//! The container edge: what a container may send, one rule written once
//! (docs/security.md). `admit` is its stage, run first by the program on
//! a container's bridge port, and in its binding-free part by the slice
//! bridge's program, which runs without the agent and on every kernel.
//!
//! Everywhere: only IPv4 and ARP of Ethernet/IPv4, no VLAN tag, no source
//! (or ARP sender) that is a slice's gateway, network or broadcast address,
//! no ARP sender outside this host's slices but 0.0.0.0 (a probe) and, at
//! the bridge, a VXLAN fan's remote containers (through its overlay port), of the
//! DHCP pair only a client's messages, and no tunnel packet to an attached
//! fan's underlay. A port knows which container sent the frame and checks
//! besides that the source is that container's own address (bound to the
//! port, or before a binding exists one of this host's slices' container
//! addresses), 0.0.0.0 only for a DHCP client's messages.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use fan_common::{
    FanEntry, StatReason, WireAddr,
    ipv4::{ETH_HDR_LEN, ETH_P_IPV4, IP_OFFSET_MASK, IPPROTO_IPIP, IPPROTO_UDP},
    maps::Endpoint,
    vxlan::{UDP_HDR_LEN, VXLAN_HDR_LEN},
};

use crate::{
    maps::{FAN_ENDPOINTS, FAN_UNDERLAYS, fan_for},
    parse::{ArpIpv4Head, ETH_P_ARP, Ipv4Hdr, eth, ipv4, ptr_at},
    vxlan::fan_of_udp,
};

/// VLAN tags: 802.1Q, 802.1ad, and the pre-standard QinQ type.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ: u16 = 0x9100;
/// `skb->pkt_type` of a packet the host sent and loops back to itself.
const PACKET_LOOPBACK: u32 = 5;

/// The container behind the port, as the endpoint map binds it to the
/// frame's source: `None` before a binding exists, at the bridge, and for
/// what no container's address sent.
pub type Sender = Option<&'static Endpoint>;

/// Checks a frame a container sent, at its port (`at_port`) or at the
/// bridge: Ok to go on, with the sender the check found, or the reason it
/// is refused. What is neither refused nor fan traffic the caller leaves
/// to the stack, as before.
#[inline(always)]
pub fn admit(
    ctx: &TcContext,
    at_port: bool,
    start: usize,
    end: usize,
) -> Result<Sender, StatReason> {
    // SAFETY: reading a field of the program's own context.
    if unsafe { (*ctx.skb.skb).pkt_type } == PACKET_LOOPBACK {
        // The host's own multicast, looped back to it through the bridge's
        // receive path (and so through its ingress): no container sent it.
        return Ok(None);
    }
    // SAFETY: reading a field of the program's own context.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        // The kernel took the tag into the skb before TC: encapsulated and
        // redirected, the packet would carry it onto the underlay.
        return Err(StatReason::DropVlanTagged);
    }
    let Some(eth) = eth(start, end) else {
        return Err(StatReason::DropNotIpv4OrArp);
    };
    // SAFETY: bounds-checked by `eth`.
    match u16::from_be_bytes(unsafe { (*eth).ether_type }) {
        ETH_P_IPV4 => match ipv4(start, end, ETH_HDR_LEN) {
            // SAFETY: bounds-checked by `ipv4`.
            Some(ip) => admit_ipv4(ctx, at_port, unsafe { &*ip }, start, end),
            // Left to the stack, which refuses it.
            None => Ok(None),
        },
        // Even VLAN 0: the kernel strips a priority tag and takes the
        // inner packet, which nothing here would have checked.
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ => Err(StatReason::DropVlanTagged),
        ETH_P_ARP => admit_arp(ctx, at_port, start, end).map(|()| None),
        // The fan is IPv4 only. IPv6 among the rest: a router advertisement
        // would reach the host.
        _ => Err(StatReason::DropNotIpv4OrArp),
    }
}

#[inline(always)]
fn admit_ipv4(
    ctx: &TcContext,
    at_port: bool,
    ip: &Ipv4Hdr,
    start: usize,
    end: usize,
) -> Result<Sender, StatReason> {
    let src = ip.src_wire();
    let src_slice = slice_of_source(src)?;
    if carries_a_tunnel(ip, start, end) && is_in_an_underlay(ip.dst_wire()) {
        return Err(StatReason::DropTunnelToUnderlay);
    }
    let dhcp_client = dhcp_side(ip, start, end)?;
    if !at_port {
        return Ok(None);
    }
    if src.raw() == 0 {
        // A client without an address yet asks everyone, or the server it
        // knows (the slice gateway, renewing before it was bound).
        let to_server = ip.dst() == u32::MAX
            || fan_for(ip.dst_wire()).is_some_and(|fan| ip.dst() == fan.gateway());
        return if dhcp_client && to_server {
            Ok(None)
        } else {
            Err(StatReason::DropSourceOutsideSlice)
        };
    }
    port_source(ctx, src, src_slice)
}

/// A container's ARP: Ethernet/IPv4 only (Linux learns from IEEE 802's
/// hardware type 6 on Ethernet as well), whose sender is a container address
/// of this host's slices (at a port: the container's own), or 0.0.0.0 for a
/// probe (RFC 5227), which claims nothing.
#[inline(always)]
fn admit_arp(ctx: &TcContext, at_port: bool, start: usize, end: usize) -> Result<(), StatReason> {
    let Some(arp) = ptr_at::<ArpIpv4Head>(start, end, ETH_HDR_LEN) else {
        return Err(StatReason::DropArpNotEthernetIpv4);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let arp = unsafe { &*arp };
    if !arp.is_ethernet_ipv4() {
        return Err(StatReason::DropArpNotEthernetIpv4);
    }
    let sender = WireAddr::from_octets(arp.sender_ip);
    if sender.raw() == 0 {
        return Ok(());
    }
    let slice = slice_of_source(sender)?;
    if !at_port {
        // A VXLAN fan's remote containers reach the bridge through its
        // overlay port, their ARP checked by the receive policy.
        let remote_vxlan = || fan_for(sender).is_some_and(|fan| fan.is_vxlan());
        return match slice {
            Some(_) => Ok(()),
            None if remote_vxlan() => Ok(()),
            None => Err(StatReason::DropSourceOutsideSlice),
        };
    }
    port_source(ctx, sender, slice).map(|_| ())
}

/// The local slice `src` lies in, if any; refused if it is that slice's
/// gateway, network or broadcast address, none of which a container owns.
/// (The rest of the host reserve is not in the programs' maps.)
#[inline(always)]
fn slice_of_source(src: WireAddr) -> Result<Option<&'static FanEntry>, StatReason> {
    let Some(fan) = fan_for(src) else {
        return Ok(None);
    };
    let addr = src.to_host();
    if !fan.is_local(addr) {
        return Ok(None);
    }
    if addr == fan.gateway() || fan.map.is_slice_edge(fan.local_host, addr) {
        return Err(StatReason::DropSourceReserved);
    }
    Ok(Some(fan))
}

/// A port's source address (IPv4, or an ARP sender) `src`, in `slice`: an
/// address of this host's slices, and not bound to another port (a
/// sibling's). An address with no binding yet passes. The binding, if any,
/// is this port's container.
#[inline(always)]
fn port_source(
    ctx: &TcContext,
    src: WireAddr,
    slice: Option<&FanEntry>,
) -> Result<Sender, StatReason> {
    if slice.is_none() {
        return Err(StatReason::DropSourceOutsideSlice);
    }
    // SAFETY: reading a field of the program's own context.
    let port = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: a lookup with a key on our stack; the value stays valid for this run.
    match unsafe { FAN_ENDPOINTS.get(src) } {
        Some(endpoint) if endpoint.ifindex != port => Err(StatReason::DropSourceNotBound),
        sender => Ok(sender),
    }
}

/// IPv6-in-IPv4 (RFC 4213) and GRE, beside IP-in-IP.
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;

/// Whether the IPv4 packet `ip` (in `[start, end)`) carries another packet
/// that a receiving fan host could take for fan traffic once the host
/// masquerades it: IP-in-IP, IPv6-in-IPv4, GRE, or UDP whose port and
/// VXLAN header name a VXLAN fan.
#[inline(always)]
fn carries_a_tunnel(ip: &Ipv4Hdr, start: usize, end: usize) -> bool {
    match ip.protocol {
        IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE => true,
        IPPROTO_UDP if ip.frag_off() & IP_OFFSET_MASK == 0 => {
            fan_of_udp(start, end, ETH_HDR_LEN + ip.header_len()).is_some()
        }
        _ => false,
    }
}

/// Whether `addr` lies in the underlay of an attached fan.
#[inline(always)]
fn is_in_an_underlay(addr: WireAddr) -> bool {
    FAN_UNDERLAYS.get(Key::new(32, addr)).is_some()
}

/// Source and destination ports of a UDP header.
const UDP_PORTS_LEN: usize = 4;
/// A UDP header and the VXLAN header behind it: what the edge reads of a
/// container's UDP packet.
pub const UDP_TUNNEL_PEEK_LEN: usize = UDP_HDR_LEN + VXLAN_HDR_LEN;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// Of the DHCP pair a container sends only a client's messages (UDP 68 ->
/// 67): a server's side (from 67, or to 68, where clients take replies
/// from any port) would answer the slice's clients before fan-xdp's
/// dnsmasq, handing out addresses, routers and MTUs of its choosing.
/// Whether this is a client's message; refused if it is the server's side.
/// Only an unfragmented datagram or a first fragment carries the ports;
/// the rest are useless without it.
#[inline(always)]
fn dhcp_side(ip: &Ipv4Hdr, start: usize, end: usize) -> Result<bool, StatReason> {
    if ip.protocol != IPPROTO_UDP || ip.frag_off() & IP_OFFSET_MASK != 0 {
        return Ok(false);
    }
    let Some(ports) = ptr_at::<[u8; UDP_PORTS_LEN]>(start, end, ETH_HDR_LEN + ip.header_len())
    else {
        return Ok(false);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ports = unsafe { *ports };
    let (from, to) = (
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    );
    let client = from == DHCP_CLIENT_PORT && to == DHCP_SERVER_PORT;
    if !client && (from == DHCP_SERVER_PORT || from == DHCP_CLIENT_PORT || to == DHCP_CLIENT_PORT) {
        return Err(StatReason::DropDhcpServerReply);
    }
    Ok(client)
}
