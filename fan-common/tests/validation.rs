//! Every way a fan map or host can be refused, with its message.

use std::net::Ipv4Addr;

use fan_common::{
    FanError, FanMap,
    fan::{Role, validate_fans},
};

fn a(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

fn fan(overlay: &str, o: u8, underlay: &str, u: u8) -> FanMap {
    FanMap::new(a(overlay), o, a(underlay), u)
}

#[track_caller]
fn refused(map: FanMap, expected: FanError, message: &str) {
    let err = map.validate().unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(err.to_string(), message);
}

#[test]
fn prefix_length_out_of_range() {
    refused(
        fan("250.0.0.0", 33, "198.18.0.0", 16),
        FanError::PrefixLenOutOfRange { len: 33 },
        "prefix length /33 is out of range (0 to 32)",
    );
    refused(
        fan("250.0.0.0", 8, "198.18.0.0", 40),
        FanError::PrefixLenOutOfRange { len: 40 },
        "prefix length /40 is out of range (0 to 32)",
    );
}

#[test]
fn overlay_must_be_shorter_than_underlay() {
    refused(
        fan("250.0.0.0", 16, "198.18.0.0", 16),
        FanError::OverlayNotShorter {
            overlay_len: 16,
            underlay_len: 16,
        },
        "overlay prefix /16 must be shorter than underlay prefix /16",
    );
    refused(
        fan("250.0.0.0", 20, "198.0.0.0", 8),
        FanError::OverlayNotShorter {
            overlay_len: 20,
            underlay_len: 8,
        },
        "overlay prefix /20 must be shorter than underlay prefix /8",
    );
}

#[test]
fn underlay_must_leave_room_for_hosts() {
    refused(
        fan("250.0.0.0", 8, "198.18.0.0", 31),
        FanError::UnderlayTooLong { underlay_len: 31 },
        "underlay prefix /31 is too long: at most /30 leaves room for hosts",
    );
}

#[test]
fn slice_must_leave_room_for_containers() {
    // A /24 overlay over a /25 underlay gives /31 slices; over a /26, /30 slices.
    refused(
        fan("250.0.0.0", 24, "198.18.0.0", 25),
        FanError::SliceTooLong { slice_len: 31 },
        "prefix too long: each host's slice would be /31, at most /30 leaves room for containers",
    );
    assert!(fan("250.0.0.0", 24, "198.18.0.0", 26).validate().is_ok());
}

#[test]
fn no_host_bits_in_either_prefix() {
    refused(
        fan("250.0.0.1", 8, "198.18.0.0", 16),
        FanError::HostBitsSet {
            role: Role::Overlay,
            addr: a("250.0.0.1"),
            len: 8,
        },
        "overlay 250.0.0.1/8 has host bits set (did you mean 250.0.0.0/8?)",
    );
    refused(
        fan("250.0.0.0", 8, "198.18.0.1", 16),
        FanError::HostBitsSet {
            role: Role::Underlay,
            addr: a("198.18.0.1"),
            len: 16,
        },
        "underlay 198.18.0.1/16 has host bits set (did you mean 198.18.0.0/16?)",
    );
}

#[test]
fn reserved_overlays() {
    refused(
        fan("0.0.0.0", 8, "198.18.0.0", 16),
        FanError::OverlayReserved {
            overlay: 0,
            overlay_len: 8,
            reserved: 0,
            reserved_len: 8,
        },
        "overlay 0.0.0.0/8 is in the reserved range 0.0.0.0/8",
    );
    refused(
        fan("127.0.0.0", 8, "198.18.0.0", 16),
        FanError::OverlayReserved {
            overlay: a("127.0.0.0"),
            overlay_len: 8,
            reserved: a("127.0.0.0"),
            reserved_len: 8,
        },
        "overlay 127.0.0.0/8 is in the reserved range 127.0.0.0/8",
    );
    refused(
        fan("239.0.0.0", 8, "198.18.0.0", 16),
        FanError::OverlayReserved {
            overlay: a("239.0.0.0"),
            overlay_len: 8,
            reserved: a("224.0.0.0"),
            reserved_len: 4,
        },
        "overlay 239.0.0.0/8 is in the reserved range 224.0.0.0/4",
    );
    // A short overlay that swallows a reserved range is refused too.
    refused(
        fan("96.0.0.0", 3, "198.18.0.0", 24),
        FanError::OverlayReserved {
            overlay: a("96.0.0.0"),
            overlay_len: 3,
            reserved: a("127.0.0.0"),
            reserved_len: 8,
        },
        "overlay 96.0.0.0/3 is in the reserved range 127.0.0.0/8",
    );
    // An overlay holding the limited broadcast address would make
    // 255.255.255.255 a valid inner destination.
    refused(
        fan("255.0.0.0", 8, "198.18.0.0", 16),
        FanError::OverlayReserved {
            overlay: a("255.0.0.0"),
            overlay_len: 8,
            reserved: a("255.255.255.255"),
            reserved_len: 32,
        },
        "overlay 255.0.0.0/8 is in the reserved range 255.255.255.255/32",
    );
    // 240/4 is the typical fan space and stays usable.
    assert!(fan("240.0.0.0", 5, "10.88.128.0", 20).validate().is_ok());
}

#[test]
fn overlay_must_not_overlap_its_underlay() {
    refused(
        fan("10.0.0.0", 8, "10.88.0.0", 16),
        FanError::OverlayOverlapsUnderlay {
            overlay: a("10.0.0.0"),
            overlay_len: 8,
            underlay: a("10.88.0.0"),
            underlay_len: 16,
        },
        "overlay 10.0.0.0/8 overlaps underlay 10.88.0.0/16: it would capture the hosts' own traffic",
    );
}

#[test]
fn overlays_on_one_host_must_not_overlap() {
    let first = fan("250.0.0.0", 8, "198.18.0.0", 16);
    let second = fan("250.1.0.0", 16, "198.19.0.0", 24);
    let err = validate_fans(&[first, second]).unwrap_err();
    assert_eq!(
        err,
        FanError::OverlaysOverlap {
            first: a("250.0.0.0"),
            first_len: 8,
            second: a("250.1.0.0"),
            second_len: 16
        }
    );
    assert_eq!(
        err.to_string(),
        "overlays 250.0.0.0/8 and 250.1.0.0/16 overlap"
    );
    let disjoint = fan("251.0.0.0", 8, "198.19.0.0", 24);
    assert!(validate_fans(&[first, disjoint]).is_ok());
    // Each map is validated on its own too.
    let bad = fan("127.0.0.0", 8, "198.18.0.0", 16);
    assert!(matches!(
        validate_fans(&[first, bad]),
        Err(FanError::OverlayReserved { .. })
    ));
}

#[test]
fn host_must_be_a_real_underlay_host() {
    let map = fan("250.0.0.0", 8, "198.18.0.0", 16);
    let err = map.validate_host(a("198.19.0.1")).unwrap_err();
    assert_eq!(
        err,
        FanError::HostOutsideUnderlay {
            host: a("198.19.0.1"),
            underlay: a("198.18.0.0"),
            underlay_len: 16
        }
    );
    assert_eq!(
        err.to_string(),
        "host address 198.19.0.1 is not in underlay 198.18.0.0/16"
    );
    for reserved in ["198.18.0.0", "198.18.255.255"] {
        let err = map.validate_host(a(reserved)).unwrap_err();
        assert_eq!(err, FanError::ReservedHost { host: a(reserved) });
        assert_eq!(
            err.to_string(),
            format!(
                "host address {reserved} is the underlay's network or broadcast address and names no host"
            )
        );
    }
    assert!(map.validate_host(a("198.18.0.1")).is_ok());
}
