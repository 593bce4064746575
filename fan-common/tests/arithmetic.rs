//! The reference vectors of `shared/fan-vectors.md` and a property test of the
//! arithmetic against an independent model (blocks counted by index, found by search).

use std::net::Ipv4Addr;

use fan_common::{FanMap, fan::prefix_mask};
use proptest::prelude::*;

fn addr(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

fn prefix(s: &str) -> (u32, u8) {
    let (a, l) = s.split_once('/').unwrap();
    (addr(a), l.parse().unwrap())
}

/// overlay, underlay host/len, host slice, an overlay destination, its underlay host.
const VECTORS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "250.0.0.0/8",
        "172.30.0.28/16",
        "250.0.28.0/24",
        "250.0.27.5",
        "172.30.0.27",
    ),
    (
        "99.0.0.0/8",
        "10.88.3.4/16",
        "99.3.4.0/24",
        "99.6.7.8",
        "10.88.6.7",
    ),
    (
        "99.0.0.0/8",
        "10.99.238.5/20",
        "99.224.80.0/20",
        "99.224.96.9",
        "10.99.238.6",
    ),
    (
        "33.0.0.0/8",
        "10.111.1.2/12",
        "33.240.16.32/28",
        "33.240.16.80",
        "10.111.1.5",
    ),
    (
        "240.0.0.0/5",
        "10.88.129.2/20",
        "240.129.0.0/17",
        "240.130.0.7",
        "10.88.129.4",
    ),
    (
        "100.64.0.0/10",
        "10.224.220.10/24",
        "100.66.128.0/18",
        "100.66.200.5",
        "10.224.220.11",
    ),
    (
        "250.0.0.0/8",
        "198.18.0.1/16",
        "250.0.1.0/24",
        "250.0.2.2",
        "198.18.0.2",
    ),
    (
        "240.0.0.0/8",
        "192.168.7.33/24",
        "240.33.0.0/16",
        "240.34.0.9",
        "192.168.7.34",
    ),
    (
        "10.0.0.0/16",
        "192.168.1.77/24",
        "10.0.77.0/24",
        "10.0.78.5",
        "192.168.1.78",
    ),
];

fn map_of(overlay: &str, host: &str) -> (FanMap, u32) {
    let (o, ol) = prefix(overlay);
    let (h, ul) = prefix(host);
    (FanMap::new(o, ol, h & prefix_mask(ul), ul), h)
}

#[test]
fn reference_vectors() {
    for &(overlay, host, slice, dst, outer) in VECTORS {
        let (map, host_addr) = map_of(overlay, host);
        let (slice_net, slice_len) = prefix(slice);
        map.validate()
            .unwrap_or_else(|e| panic!("{overlay} over {host}: {e}"));
        map.validate_host(host_addr).unwrap();
        assert_eq!(
            map.slice_len(),
            slice_len,
            "slice length of {host} in {overlay}"
        );
        assert_eq!(
            map.slice_of(host_addr),
            slice_net,
            "slice of {host} in {overlay}"
        );
        assert_eq!(
            map.host_of(addr(dst)),
            addr(outer),
            "underlay host of {dst}"
        );
        assert!(
            !map.slice_contains(host_addr, addr(dst)),
            "{dst} must be remote"
        );
        assert!(map.owns(addr(outer), addr(dst)));
        assert!(!map.owns(host_addr, addr(dst)), "{host} must not own {dst}");
        // An address inside the host's own slice maps back to the host itself.
        let own = slice_net | 1;
        assert!(map.slice_contains(host_addr, own));
        assert_eq!(map.host_of(own), host_addr);
    }
}

#[test]
fn reserved_host_parts_are_recognised() {
    let (map, _) = map_of("250.0.0.0/8", "198.18.0.1/16");
    assert!(map.is_reserved_host(addr("198.18.0.0")));
    assert!(map.is_reserved_host(addr("198.18.255.255")));
    assert!(!map.is_reserved_host(addr("198.18.0.1")));
    assert!(!map.is_reserved_host(addr("198.18.255.254")));
    // 250.0.0.x and 250.255.255.x name the network and broadcast addresses.
    assert!(map.is_reserved_host(map.host_of(addr("250.0.0.7"))));
    assert!(map.is_reserved_host(map.host_of(addr("250.255.255.7"))));
}

#[test]
fn slice_edges_and_the_gateway() {
    let (map, host) = map_of("250.0.0.0/8", "198.18.0.28/16");
    for (a, edge) in [
        ("250.0.28.0", true),
        ("250.0.28.255", true),
        ("250.0.28.1", false),
        ("250.0.28.254", false),
    ] {
        assert_eq!(map.is_slice_edge(host, addr(a)), edge, "{a}");
    }
    // A /16 slice: 10.5.0.0/16 of 10.0.0.0/8 over 198.18.0.0/24 host .5.
    let (map, host) = map_of("10.0.0.0/8", "198.18.0.5/24");
    assert!(map.is_slice_edge(host, addr("10.5.255.255")));
    assert!(!map.is_slice_edge(host, addr("10.5.0.255")));
    let entry = fan_common::FanEntry::ipip(map, host, 1, 1480);
    assert_eq!(entry.gateway(), addr("10.5.0.1"));
}

/// Every valid (overlay length, underlay length) pair.
fn valid_pairs() -> impl Strategy<Value = (u8, u8)> {
    (1u8..=29)
        .prop_flat_map(|o| (Just(o), (o + 1)..=30))
        .prop_filter("slice at most /30", |&(o, u)| o + (32 - u) <= 30)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Model: the overlay is cut into equal blocks in host order; host number
    /// `i` (its underlay host part) owns block `i`. Ownership found by division,
    /// not by the shifts and masks under test.
    #[test]
    fn owner_is_the_host_whose_block_contains_the_address(
        (o, u) in valid_pairs(),
        overlay_seed in any::<u32>(),
        underlay_seed in any::<u32>(),
        host_seed in any::<u64>(),
        offset_seed in any::<u64>(),
    ) {
        let overlay = overlay_seed & prefix_mask(o);
        let underlay = underlay_seed & prefix_mask(u);
        let map = FanMap::new(overlay, o, underlay, u);
        let hosts = 1u64 << (32 - u);
        let block = 1u64 << (32 - (o + 32 - u));
        let overlay_size = 1u64 << (32 - o);
        prop_assert_eq!(hosts * block, overlay_size);

        // A host's slice is its block.
        let index = host_seed % hosts;
        let host = (underlay as u64 + index) as u32;
        let start = (overlay as u64 + index * block) as u32;
        prop_assert_eq!(map.slice_of(host), start);

        // An address's owner is the block it falls in.
        let offset = offset_seed % overlay_size;
        let address = (overlay as u64 + offset) as u32;
        let owner_index = offset / block;
        let owner = (underlay as u64 + owner_index) as u32;
        prop_assert_eq!(map.host_of(address), owner);
        prop_assert!(map.owns(owner, address));
        prop_assert_eq!(map.slice_contains(host, address), owner_index == index);
        prop_assert_eq!(map.owns(host, address), owner_index == index);
    }
}

/// Exhaustive for small fans: every address of the overlay is in exactly one
/// enumerated host slice, and that host is the computed owner.
#[test]
fn small_fans_partition_the_overlay_exactly() {
    for (overlay, o, underlay, u) in [
        (addr("250.0.0.0"), 16u8, addr("198.18.0.0"), 24u8),
        (addr("250.0.0.0"), 20, addr("198.18.0.0"), 26),
        (addr("240.0.0.0"), 22, addr("192.168.7.0"), 28),
    ] {
        let map = FanMap::new(overlay, o, underlay, u);
        let hosts: Vec<u32> = (0..1u32 << (32 - u)).map(|i| underlay + i).collect();
        let slices: Vec<(u32, u32)> = hosts
            .iter()
            .map(|&h| {
                let start = map.slice_of(h);
                (start, start + (1 << (32 - map.slice_len())) - 1)
            })
            .collect();
        for offset in 0..1u32 << (32 - o) {
            let a = overlay + offset;
            let containing: Vec<u32> = slices
                .iter()
                .zip(&hosts)
                .filter(|((lo, hi), _)| (*lo..=*hi).contains(&a))
                .map(|(_, &h)| h)
                .collect();
            assert_eq!(
                containing,
                vec![map.host_of(a)],
                "address {}",
                Ipv4Addr::from(a)
            );
        }
    }
}
