//! Checksums and the outer header against hand-computed bytes.

use fan_common::ipv4::{checksum, decap_ecn, is_fragment, outer_header, replace_word};

fn words(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|c| u16::from_ne_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn outer_header_matches_hand_computed_bytes() {
    // 198.18.0.1 -> 198.18.0.2, TOS 0x00, inner 84 bytes (a ping): total 104 = 0x68.
    // Checksum: 4500+0068+0000+4000+4004+c612+0001+c612+0002 = 0x2_5193
    // -> 0x5195 -> !0x5195 = 0xae6a.
    let h = outer_header(0xc612_0001, 0xc612_0002, 0x00, 84);
    assert_eq!(
        h,
        [
            0x45, 0x00, 0x00, 0x68, 0x00, 0x00, 0x40, 0x00, 0x40, 0x04, 0xae, 0x6a, 0xc6, 0x12,
            0x00, 0x01, 0xc6, 0x12, 0x00, 0x02
        ]
    );
    // A valid header sums to zero.
    assert_eq!(checksum(&words(&h)), 0);
    // TOS copied, checksum follows.
    let h = outer_header(0xc612_0001, 0xc612_0002, 0xb9, 84);
    assert_eq!(h[1], 0xb9);
    assert_eq!(checksum(&words(&h)), 0);
}

#[test]
fn incremental_update_equals_recomputation() {
    let mut h = outer_header(0xac1e_001c, 0xac1e_001b, 0x02, 1400);
    let old = u16::from_ne_bytes([h[8], h[9]]);
    h[8] -= 1; // TTL 64 -> 63
    let new = u16::from_ne_bytes([h[8], h[9]]);
    let check = u16::from_ne_bytes([h[10], h[11]]);
    let updated = replace_word(check, old, new);
    h[10..12].copy_from_slice(&updated.to_ne_bytes());
    assert_eq!(checksum(&words(&h)), 0);
    h[10] = 0;
    h[11] = 0;
    assert_eq!(updated, checksum(&words(&h)));
}

#[test]
fn fragments() {
    assert!(!is_fragment(0x4000)); // DF only
    assert!(!is_fragment(0x0000));
    assert!(is_fragment(0x2000)); // MF, first fragment
    assert!(is_fragment(0x0001)); // offset 8, last fragment
}

#[test]
fn rfc6040_decapsulation_table() {
    // outer: Not-ECT, ECT(1), ECT(0), CE; inner likewise.
    assert_eq!(decap_ecn(0b00, 0b10), Some(0b10));
    assert_eq!(decap_ecn(0b10, 0b00), Some(0b00));
    assert_eq!(decap_ecn(0b01, 0b10), Some(0b10));
    assert_eq!(decap_ecn(0b11, 0b10), Some(0b11));
    assert_eq!(decap_ecn(0b11, 0b01), Some(0b11));
    assert_eq!(decap_ecn(0b11, 0b11), Some(0b11));
    assert_eq!(decap_ecn(0b11, 0b00), None);
    // DSCP bits are ignored.
    assert_eq!(decap_ecn(0xb8 | 0b11, 0xb8 | 0b10), Some(0b11));
}
