//! IPv4 header facts and the Internet checksum, as both sides need them.
//!
//! Checksums work on 16-bit words as they sit in memory: the one's complement
//! sum is byte-order independent (RFC 1071), so callers pass raw words read
//! from the packet and store the result back unchanged.

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// The outer TTL: the underlay is a network of its own, not a hop of the overlay.
pub const OUTER_TTL: u8 = 64;
/// Don't Fragment, as a host-order `frag_off` value.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// The two ECN bits of the TOS byte (RFC 3168).
pub const ECN_MASK: u8 = 0b11;
pub const ECN_NOT_ECT: u8 = 0b00;
pub const ECN_CE: u8 = 0b11;

/// Folds a 32-bit one's complement accumulator into the 16-bit checksum.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Checksum of a header given as raw 16-bit words, with the checksum word zero.
#[inline(always)]
pub fn checksum(words: &[u16]) -> u16 {
    let mut sum = 0u32;
    for word in words {
        sum += *word as u32;
    }
    fold(sum)
}

/// Updates checksum `check` after one word changed from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn replace_word(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    fold(sum)
}

/// Whether a host-order `frag_off` value marks a fragment (MF set or offset > 0).
#[inline(always)]
pub const fn is_fragment(frag_off: u16) -> bool {
    frag_off & (IP_MF | IP_OFFSET_MASK) != 0
}

/// The ECN codepoint an inner header carries after decapsulation (RFC 6040,
/// normal mode), or `None` when the packet must be dropped (outer CE over a
/// Not-ECT inner packet). Only CE is propagated: ECT(0)/ECT(1) on the outer
/// header never overwrite the inner codepoint.
#[inline(always)]
pub const fn decap_ecn(outer: u8, inner: u8) -> Option<u8> {
    let outer = outer & ECN_MASK;
    let inner = inner & ECN_MASK;
    if outer != ECN_CE {
        Some(inner)
    } else if inner == ECN_NOT_ECT {
        None
    } else {
        Some(ECN_CE)
    }
}

/// The outer IP-in-IP header fan-xdp puts in front of an inner packet of
/// `inner_len` bytes: TOS (DSCP and ECN) copied from the inner header, ID 0
/// with DF always set (outer fragments cannot be decapsulated, RFC 6864 allows
/// ID 0 on atomic datagrams), TTL 64, protocol 4. Addresses in host order.
#[inline(always)]
pub fn outer_header(src: u32, dst: u32, tos: u8, inner_len: u16) -> [u8; IPV4_HDR_LEN] {
    let total = (inner_len as u32 + IPV4_HDR_LEN as u32) as u16;
    ipv4_header(src, dst, tos, total, IP_DF, IPPROTO_IPIP)
}

/// A 20-byte IPv4 header with ID 0 and TTL 64, its checksum folded in.
#[inline(always)]
pub(crate) fn ipv4_header(
    src: u32,
    dst: u32,
    tos: u8,
    total: u16,
    frag_off: u16,
    protocol: u8,
) -> [u8; IPV4_HDR_LEN] {
    let (s, d, t, f) = (
        src.to_be_bytes(),
        dst.to_be_bytes(),
        total.to_be_bytes(),
        frag_off.to_be_bytes(),
    );
    let mut h = [
        0x45, tos, t[0], t[1], 0, 0, f[0], f[1], OUTER_TTL, protocol, 0, 0, s[0], s[1], s[2], s[3],
        d[0], d[1], d[2], d[3],
    ];
    let mut sum = 0u32;
    let mut i = 0;
    while i < IPV4_HDR_LEN {
        sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    let c = fold(sum).to_ne_bytes();
    h[10] = c[0];
    h[11] = c[1];
    h
}

pub const IPPROTO_ICMP: u8 = 1;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_HDR_LEN: usize = 8;
/// The TOS of ICMP errors: the original's, with precedence "internetwork
/// control" (as the kernel's icmp_send sets it).
pub const ICMP_ERROR_TOS: u8 = 0xc0;

/// Whether an ICMP message of `icmp_type` is an error (never answered with another).
#[inline(always)]
pub const fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// The IPv4 header of an ICMP error from `src` to `dst` (host order) whose
/// ICMP part (header and quote) is `icmp_len` bytes: TTL 64, no DF, ID 0.
#[inline(always)]
pub fn icmp_error_ip_header(src: u32, dst: u32, icmp_len: u16) -> [u8; IPV4_HDR_LEN] {
    let total = (icmp_len as u32 + IPV4_HDR_LEN as u32) as u16;
    ipv4_header(src, dst, ICMP_ERROR_TOS, total, 0, IPPROTO_ICMP)
}

/// The ICMP "fragmentation needed" header announcing next-hop MTU `mtu`,
/// its checksum completed with `quote_sum`: the one's complement sum of the
/// quoted bytes as raw 16-bit words.
#[inline(always)]
pub fn icmp_frag_needed_header(mtu: u16, quote_sum: u32) -> [u8; ICMP_HDR_LEN] {
    let m = mtu.to_be_bytes();
    let mut h = [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, m[0], m[1]];
    let mut sum = quote_sum;
    let mut i = 0;
    while i < ICMP_HDR_LEN {
        sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    // Fold the carries of a long quote before the final fold.
    sum = (sum & 0xffff) + (sum >> 16);
    let c = fold(sum).to_ne_bytes();
    h[2] = c[0];
    h[3] = c[1];
    h
}
