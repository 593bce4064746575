//! What a container may send, as the program at its bridge port checks
//! it: only from addresses bound to that port (an IPv4 source or an ARP
//! claim), and never a DHCP server's reply.

use aya_ebpf::programs::TcContext;
use fan_common::{
    WireAddr,
    ipv4::{ETH_HDR_LEN, ETH_P_IPV4, IP_OFFSET_MASK, IPPROTO_UDP},
};

use crate::{
    maps::{FAN_ENDPOINTS, fan_for},
    parse::{Ipv4Hdr, ptr_at},
};

/// The port program's check of a container's source address `src` (an
/// IPv4 source or an ARP sender): an address bound
/// to another port (a sibling's), or the slice gateway's, is not this
/// container's to send from. Addresses with no binding yet pass: the check
/// applies where a binding exists.
#[inline(always)]
pub fn source_bound_here(ctx: &TcContext, src: WireAddr) -> bool {
    // SAFETY: reading a field of the program's own context.
    let port = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: a lookup with a key on our stack; the value stays valid for this run.
    if let Some(endpoint) = unsafe { FAN_ENDPOINTS.get(src) } {
        return endpoint.ifindex == port;
    }
    match fan_for(src) {
        Some(fan) => src.to_host() != fan.gateway(),
        None => true,
    }
}

/// An Ethernet/IPv4 ARP packet's fields up to the sender's protocol address.
#[repr(C)]
struct ArpIpv4Head {
    hardware_type: [u8; 2],
    protocol_type: [u8; 2],
    hardware_len: u8,
    protocol_len: u8,
    operation: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
}

const ETH_P_ARP: u16 = 0x0806;
const ARP_HRD_ETHER: u16 = 1;

/// The sender address of an Ethernet/IPv4 ARP packet;
/// None for anything else.
#[inline(always)]
pub fn arp_sender(start: usize, end: usize) -> Option<WireAddr> {
    let eth = crate::parse::eth(start, end)?;
    // SAFETY: bounds-checked by `eth`.
    if u16::from_be_bytes(unsafe { (*eth).ether_type }) != ETH_P_ARP {
        return None;
    }
    let arp = ptr_at::<ArpIpv4Head>(start, end, ETH_HDR_LEN)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let arp = unsafe { &*arp };
    let ipv4_over_ethernet = u16::from_be_bytes(arp.hardware_type) == ARP_HRD_ETHER
        && u16::from_be_bytes(arp.protocol_type) == ETH_P_IPV4
        && arp.hardware_len == 6
        && arp.protocol_len == 4;
    ipv4_over_ethernet.then(|| WireAddr::from_octets(arp.sender_ip))
}

/// Source and destination ports of a UDP header.
pub const UDP_PORTS_LEN: usize = 4;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// Whether a frame a container sent is a DHCP server's reply (UDP 67 -> 68,
/// to any destination: offers are broadcast or unicast). A container's own
/// DHCP server would answer the slice's clients before fan-xdp's, handing
/// out addresses, routers and MTUs of its choosing. Only an unfragmented
/// datagram or a first fragment carries the ports; the rest are useless
/// without it.
#[inline(always)]
pub fn is_dhcp_server_reply(ip: &Ipv4Hdr, start: usize, end: usize) -> bool {
    if ip.protocol != IPPROTO_UDP || ip.frag_off() & IP_OFFSET_MASK != 0 {
        return false;
    }
    let Some(ports) = ptr_at::<[u8; UDP_PORTS_LEN]>(start, end, ETH_HDR_LEN + ip.header_len())
    else {
        return false;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ports = unsafe { *ports };
    u16::from_be_bytes([ports[0], ports[1]]) == DHCP_SERVER_PORT
        && u16::from_be_bytes([ports[2], ports[3]]) == DHCP_CLIENT_PORT
}
