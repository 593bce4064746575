//! Reading and writing the bytes of Ethernet and IPv4 headers, and the
//! Internet checksum, written again from the RFCs rather than taken from
//! fan-common: the model must not share the code it checks.

pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const IPV4_MIN_LEN: usize = 20;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A big-endian 16-bit field at `at`.
pub fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// A big-endian 32-bit field at `at`.
pub fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub fn put16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

pub fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// The Ethernet type of a frame, if it has a whole Ethernet header.
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    (frame.len() >= ETH_LEN).then(|| be16(frame, 12))
}

/// One's complement sum of `bytes` as big-endian 16-bit words (RFC 1071),
/// folded to 16 bits. An odd trailing byte is padded with zero.
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let word = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            u16::from_be_bytes([pair[0], 0])
        };
        sum += u64::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether an IPv4 header (options included) carries a correct checksum:
/// the sum over the whole header, checksum word included, is all ones.
pub fn header_checksum_ok(header: &[u8]) -> bool {
    ones_complement_sum(header) == 0xffff
}

/// The checksum word for `header`, computed with its checksum field as zero.
pub fn header_checksum(header: &[u8]) -> u16 {
    let mut copy = header.to_vec();
    copy[10] = 0;
    copy[11] = 0;
    !ones_complement_sum(&copy)
}

/// A checksum updated for one 16-bit word changing from `old` to `new`, as
/// a router does it (RFC 1624, equation 3: HC' = ~(~HC + ~m + m')). It keeps
/// an already wrong checksum wrong by the same amount, which is what a
/// router owes a packet it did not verify.
pub fn checksum_after_word_change(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A view of an IPv4 header that is present in full (options included),
/// with version 4 and IHL of at least 5. Offsets are into the frame.
#[derive(Clone, Copy)]
pub struct Ipv4View<'a> {
    frame: &'a [u8],
    at: usize,
}

impl<'a> Ipv4View<'a> {
    /// The header at `at`, or `None` if it is cut short or not a valid IPv4 header.
    pub fn parse(frame: &'a [u8], at: usize) -> Option<Self> {
        if frame.len() < at + IPV4_MIN_LEN {
            return None;
        }
        let version = frame[at] >> 4;
        let header_len = usize::from(frame[at] & 0x0f) * 4;
        if version != 4 || header_len < IPV4_MIN_LEN || frame.len() < at + header_len {
            return None;
        }
        Some(Self { frame, at })
    }

    pub fn offset(&self) -> usize {
        self.at
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.frame[self.at] & 0x0f) * 4
    }

    pub fn bytes(&self) -> &'a [u8] {
        &self.frame[self.at..self.at + self.header_len()]
    }

    pub fn tos(&self) -> u8 {
        self.frame[self.at + 1]
    }

    pub fn ecn(&self) -> u8 {
        self.tos() & 0b11
    }

    pub fn total_len(&self) -> u16 {
        be16(self.frame, self.at + 2)
    }

    /// More Fragments set, or a non-zero fragment offset.
    pub fn is_fragment(&self) -> bool {
        let flags_offset = be16(self.frame, self.at + 6);
        flags_offset & 0x2000 != 0 || flags_offset & 0x1fff != 0
    }

    pub fn ttl(&self) -> u8 {
        self.frame[self.at + 8]
    }

    pub fn protocol(&self) -> u8 {
        self.frame[self.at + 9]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.frame, self.at + 10)
    }

    pub fn src(&self) -> u32 {
        be32(self.frame, self.at + 12)
    }

    pub fn dst(&self) -> u32 {
        be32(self.frame, self.at + 16)
    }

    pub fn checksum_ok(&self) -> bool {
        header_checksum_ok(self.bytes())
    }
}

/// Takes one from the TTL of the IPv4 header at `at` and updates its
/// checksum incrementally. The word changing is TTL and protocol.
pub fn decrement_ttl(frame: &mut [u8], at: usize) {
    let old = be16(frame, at + 8);
    frame[at + 8] -= 1;
    let new = be16(frame, at + 8);
    let check = checksum_after_word_change(be16(frame, at + 10), old, new);
    put16(frame, at + 10, check);
}

/// Sets the ECN field of the IPv4 header at `at` and updates its checksum
/// incrementally. The word changing is version/IHL and TOS.
pub fn set_ecn(frame: &mut [u8], at: usize, ecn: u8) {
    let old = be16(frame, at);
    frame[at + 1] = (frame[at + 1] & !0b11) | ecn;
    let new = be16(frame, at);
    let check = checksum_after_word_change(be16(frame, at + 10), old, new);
    put16(frame, at + 10, check);
}

/// A basic IPv4 header (no options) with its checksum.
pub struct Ipv4Fields {
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub flags_offset: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src: u32,
    pub dst: u32,
}

impl Ipv4Fields {
    pub fn to_bytes(&self) -> [u8; IPV4_MIN_LEN] {
        let mut h = [0u8; IPV4_MIN_LEN];
        h[0] = 0x45;
        h[1] = self.tos;
        put16(&mut h, 2, self.total_len);
        put16(&mut h, 4, self.id);
        put16(&mut h, 6, self.flags_offset);
        h[8] = self.ttl;
        h[9] = self.protocol;
        put32(&mut h, 12, self.src);
        put32(&mut h, 16, self.dst);
        let check = header_checksum(&h);
        put16(&mut h, 10, check);
        h
    }
}

/// The frame as lowercase hex, for reproducers and the corpus.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex with no separators.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of RFC 1071's usual worked example (a Wikipedia classic):
    /// 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
    const SAMPLE: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn checksum_of_a_known_header() {
        assert!(header_checksum_ok(&SAMPLE));
        assert_eq!(header_checksum(&SAMPLE), 0xb861);
    }

    #[test]
    fn incremental_update_matches_a_full_recompute() {
        let mut frame = SAMPLE.to_vec();
        decrement_ttl(&mut frame, 0);
        assert_eq!(frame[8], 0x3f);
        assert!(header_checksum_ok(&frame));
        set_ecn(&mut frame, 0, 0b11);
        assert!(header_checksum_ok(&frame));
    }
}
