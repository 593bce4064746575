//! Bounds-checked access to packet headers.
//!
//! Header structs are made of bytes only (alignment 1): packet data carries no
//! alignment promise, and the accessors spell out the byte order.

use core::mem;

use fan_common::{
    WireAddr,
    ipv4::{ETH_P_IPV4, IPV4_HDR_LEN, replace_word},
};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[inline(always)]
fn copy_mac(to: &mut [u8; 6], from: &[u8; 6]) {
    let (to_head, to_tail) = to.split_at_mut(4);
    let (from_head, from_tail) = from.split_at(4);
    let head = u32::from_ne_bytes([from_head[0], from_head[1], from_head[2], from_head[3]]);
    let tail = u16::from_ne_bytes([from_tail[0], from_tail[1]]);
    to_head.copy_from_slice(&head.to_ne_bytes());
    to_tail.copy_from_slice(&tail.to_ne_bytes());
}

impl EthHdr {
    /// Addresses the frame from `src` to `dst`, each MAC copied as a 4-
    /// and a 2-byte word: a plain copy from a map value into the packet
    /// compiles to a call of the BPF build's byte-at-a-time `memmove`.
    #[inline(always)]
    pub fn readdress(&mut self, dst: &[u8; 6], src: &[u8; 6]) {
        copy_mac(&mut self.dst, dst);
        copy_mac(&mut self.src, src);
    }

    /// The header as it lies on the wire, into `out` (14 bytes).
    #[inline(always)]
    pub fn write_to(&self, out: &mut [u8]) {
        let (dst, rest) = out.split_at_mut(6);
        let (src, ether_type) = rest.split_at_mut(6);
        dst.copy_from_slice(&self.dst);
        src.copy_from_slice(&self.src);
        ether_type.copy_from_slice(&self.ether_type);
    }

    #[inline(always)]
    pub fn is_ipv4(&self) -> bool {
        u16::from_be_bytes(self.ether_type) == ETH_P_IPV4
    }

    #[inline(always)]
    pub fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }

    /// Whether the destination is a group address (broadcast or multicast).
    #[inline(always)]
    pub fn dst_is_group(&self) -> bool {
        self.dst[0] & 1 != 0
    }
}

pub const ETH_P_ARP: u16 = 0x0806;
const ARP_HRD_ETHER: u16 = 1;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet's fields up to the sender's protocol address.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpIpv4Head {
    pub hardware_type: [u8; 2],
    pub protocol_type: [u8; 2],
    pub hardware_len: u8,
    pub protocol_len: u8,
    pub operation: [u8; 2],
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
}

impl ArpIpv4Head {
    /// Hardware type Ethernet, protocol IPv4, address lengths 6 and 4.
    #[inline(always)]
    pub fn is_ethernet_ipv4(&self) -> bool {
        u16::from_be_bytes(self.hardware_type) == ARP_HRD_ETHER
            && u16::from_be_bytes(self.protocol_type) == ETH_P_IPV4
            && self.hardware_len == 6
            && self.protocol_len == 4
    }

    #[inline(always)]
    pub fn operation(&self) -> u16 {
        u16::from_be_bytes(self.operation)
    }

    /// The sender's address in host byte order.
    #[inline(always)]
    pub fn sender(&self) -> u32 {
        u32::from_be_bytes(self.sender_ip)
    }
}

/// A whole Ethernet/IPv4 ARP packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpIpv4 {
    pub head: ArpIpv4Head,
    pub target_mac: [u8; 6],
    pub target_ip: [u8; 4],
}

/// Bytes of an Ethernet/IPv4 ARP packet.
pub const ARP_IPV4_LEN: usize = core::mem::size_of::<ArpIpv4>();

impl ArpIpv4 {
    /// An Ethernet/IPv4 request or reply: the only ARP the Fan's VXLAN carries.
    #[inline(always)]
    pub fn is_request_or_reply(&self) -> bool {
        self.head.is_ethernet_ipv4()
            && matches!(self.head.operation(), ARP_OP_REQUEST | ARP_OP_REPLY)
    }

    /// The target's address in host byte order.
    #[inline(always)]
    pub fn target(&self) -> u32 {
        u32::from_be_bytes(self.target_ip)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// Header length in bytes, from IHL.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }

    /// Version 4 with a header length of at least 20 bytes.
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.version_ihl >> 4 == 4 && self.header_len() >= IPV4_HDR_LEN
    }

    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }

    #[inline(always)]
    pub fn frag_off(&self) -> u16 {
        u16::from_be_bytes(self.frag_off)
    }

    /// Source address in host byte order.
    #[inline(always)]
    pub fn src(&self) -> u32 {
        u32::from_be_bytes(self.saddr)
    }

    /// Destination address in host byte order.
    #[inline(always)]
    pub fn dst(&self) -> u32 {
        u32::from_be_bytes(self.daddr)
    }

    /// Destination as the packet carries it: a map key.
    #[inline(always)]
    pub fn dst_wire(&self) -> WireAddr {
        WireAddr::from_octets(self.daddr)
    }

    /// Source as the packet carries it: a map key.
    #[inline(always)]
    pub fn src_wire(&self) -> WireAddr {
        WireAddr::from_octets(self.saddr)
    }

    /// Checksum as a raw word, for incremental updates.
    #[inline(always)]
    pub fn check_word(&self) -> u16 {
        u16::from_ne_bytes(self.check)
    }

    /// The raw word holding TTL and protocol.
    #[inline(always)]
    pub fn ttl_word(&self) -> u16 {
        u16::from_ne_bytes([self.ttl, self.protocol])
    }

    /// The raw word holding version/IHL and TOS.
    #[inline(always)]
    pub fn tos_word(&self) -> u16 {
        u16::from_ne_bytes([self.version_ihl, self.tos])
    }
}

impl Ipv4Hdr {
    /// Takes one from the TTL and patches the checksum, as a router does.
    /// Callers check `ttl > 1` first (TTL 1 is the stack's to answer).
    #[inline(always)]
    pub fn decrement_ttl(&mut self) {
        let old = self.ttl_word();
        self.ttl -= 1;
        self.check = replace_word(self.check_word(), old, self.ttl_word()).to_ne_bytes();
    }
}

/// A pointer to a `T` at `offset` from `start`, if it lies wholly before `end`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The Ethernet header of a frame.
#[inline(always)]
pub fn eth(start: usize, end: usize) -> Option<*mut EthHdr> {
    ptr_at(start, end, 0)
}

/// The IPv4 header at `offset`, if it is valid (version 4, IHL >= 5) and
/// present in full, options included. `None` means malformed or truncated.
#[inline(always)]
pub fn ipv4(start: usize, end: usize, offset: usize) -> Option<*mut Ipv4Hdr> {
    let ip: *mut Ipv4Hdr = ptr_at(start, end, offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let header = unsafe { &*ip };
    if !header.is_valid() || start + offset + header.header_len() > end {
        return None;
    }
    Some(ip)
}
