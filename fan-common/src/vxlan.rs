//! The Fan's VXLAN wire format (RFC 7348, as Ubuntu's fan kernel patch and
//! LXD's `bridge.mode=fan` use it): an Ethernet frame behind outer IPv4,
//! UDP and VXLAN headers. The programs and the tests' fixtures build the
//! headers with these functions alone.

use crate::ipv4::{ETH_HDR_LEN, IP_DF, IPPROTO_UDP, IPV4_HDR_LEN, ipv4_header};

pub const UDP_HDR_LEN: usize = 8;
pub const VXLAN_HDR_LEN: usize = 8;
/// Outer IPv4, UDP and VXLAN headers: what goes in front of the inner frame.
pub const VXLAN_HEADERS_LEN: usize = IPV4_HDR_LEN + UDP_HDR_LEN + VXLAN_HDR_LEN;
/// What each underlay packet spends on VXLAN: the outer IPv4, UDP and VXLAN
/// headers and the inner Ethernet header.
pub const VXLAN_OVERHEAD: u32 = (VXLAN_HEADERS_LEN + ETH_HDR_LEN) as u32;
/// Linux's VXLAN port (what LXD's `dstport 0` selects), not IANA's 4789.
pub const VXLAN_DEFAULT_PORT: u16 = 8472;
/// The VXLAN flags byte with only the I bit: the VNI is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// The largest VNI (24 bits).
pub const VXLAN_VNI_MAX: u32 = (1 << 24) - 1;

/// The source ports the kernel hashes flows into (its default local port
/// range, `net.ipv4.ip_local_port_range`).
pub const SOURCE_PORT_MIN: u16 = 32768;
pub const SOURCE_PORT_MAX: u16 = 60999;

/// LXD's VNI for a fan: the overlay's network address shifted right by 8
/// (250.0.0.0/8 -> 16384000).
#[inline(always)]
pub const fn default_vni(overlay_network: u32) -> u32 {
    overlay_network >> 8
}

/// The UDP source port for an inner flow of hash `hash`, as the kernel's
/// `udp_flow_src_port` picks it: the hash folded (its upper half is what
/// scales) and scaled into the local port range, so that ECMP and RSS see
/// per-flow entropy.
#[inline(always)]
pub const fn vxlan_source_port(hash: u32) -> u16 {
    let hash = hash ^ (hash << 16);
    let span = (SOURCE_PORT_MAX - SOURCE_PORT_MIN) as u64;
    (((hash as u64 * span) >> 32) + SOURCE_PORT_MIN as u64) as u16
}

/// The UDP header in front of a VXLAN header and an inner frame of
/// `inner_frame_len` bytes (its Ethernet header included): checksum 0,
/// which RFC 7348 allows over IPv4 and Linux's vxlan sends by default.
#[inline(always)]
pub const fn udp_header(src_port: u16, dst_port: u16, inner_frame_len: u16) -> [u8; UDP_HDR_LEN] {
    let (s, d) = (src_port.to_be_bytes(), dst_port.to_be_bytes());
    let l = ((inner_frame_len as u32 + (UDP_HDR_LEN + VXLAN_HDR_LEN) as u32) as u16).to_be_bytes();
    [s[0], s[1], d[0], d[1], l[0], l[1], 0, 0]
}

/// The VXLAN header of network `vni`: the I flag, the VNI in bytes 4-6.
#[inline(always)]
pub const fn vxlan_header(vni: u32) -> [u8; VXLAN_HDR_LEN] {
    let v = vni.to_be_bytes();
    [VXLAN_FLAG_VNI, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The VNI of a VXLAN header, if its I flag is set.
#[inline(always)]
pub const fn header_vni(header: &[u8; VXLAN_HDR_LEN]) -> Option<u32> {
    if header[0] & VXLAN_FLAG_VNI == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, header[4], header[5], header[6]]))
}

/// The outer IPv4 header of a VXLAN packet carrying an inner frame of
/// `inner_frame_len` bytes: as IP-in-IP's (TOS copied from the inner IPv4
/// header, 0 for ARP; ID 0 with DF; TTL 64), protocol UDP. Addresses in
/// host order.
#[inline(always)]
pub fn outer_ipv4_header(src: u32, dst: u32, tos: u8, inner_frame_len: u16) -> [u8; IPV4_HDR_LEN] {
    let total = inner_frame_len as u32 + VXLAN_HEADERS_LEN as u32;
    ipv4_header(src, dst, tos, total as u16, IP_DF, IPPROTO_UDP)
}

/// What one VXLAN packet's outer headers say, besides the inner frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    /// Outer source and destination (host order): this host and the remote.
    pub src: u32,
    pub dst: u32,
    pub tos: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub vni: u32,
}

impl Outer {
    /// The outer IPv4, UDP and VXLAN headers, in wire order, in front of an
    /// inner frame of `inner_frame_len` bytes.
    #[inline(always)]
    pub fn headers(&self, inner_frame_len: u16) -> [u8; VXLAN_HEADERS_LEN] {
        let ip = outer_ipv4_header(self.src, self.dst, self.tos, inner_frame_len);
        let udp = udp_header(self.src_port, self.dst_port, inner_frame_len);
        let vxlan = vxlan_header(self.vni);
        let mut h = [0u8; VXLAN_HEADERS_LEN];
        let (ip_part, rest) = h.split_at_mut(IPV4_HDR_LEN);
        let (udp_part, vxlan_part) = rest.split_at_mut(UDP_HDR_LEN);
        ip_part.copy_from_slice(&ip);
        udp_part.copy_from_slice(&udp);
        vxlan_part.copy_from_slice(&vxlan);
        h
    }
}
