use std::collections::{HashMap, HashSet};

use super::*;
use crate::host::ContainerEnd;

const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn addr(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn mac(last: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, last]
}

fn end(last: u8, addresses: &[&str]) -> ContainerEnd {
    ContainerEnd {
        mac: mac(last),
        addresses: addresses.iter().map(|a| addr(a)).collect(),
    }
}

/// Ports 5, 6 and 7, all deliverable; what each container end has.
fn slices(ends: &[(u32, ContainerEnd)]) -> Slices {
    Slices {
        ports: vec![
            (5, "veth-a".into()),
            (6, "veth-b".into()),
            (7, "veth-c".into()),
        ],
        deliverable: HashSet::from([5, 6, 7]),
        ends: ends.iter().cloned().collect(),
        gateways: vec![("250.0.28.0/24".parse().unwrap(), GATEWAY_MAC)],
        reserved: HashSet::from([addr("250.0.28.1"), addr("250.0.28.0"), addr("250.0.28.255")]),
        ..Slices::default()
    }
}

fn binding(address: &str, last: u8, port: Option<&str>, origin: Origin) -> Binding {
    Binding {
        address: addr(address),
        mac: super::super::bindings::format_mac(mac(last)),
        port: port.map(str::to_string),
        origin,
        owner: "c1".into(),
        pod: None,
    }
}

fn at(owned: &HashMap<WireAddr, Endpoint>, address: &str) -> Option<(u32, [u8; 6])> {
    owned
        .get(&WireAddr::from(addr(address)))
        .map(|e| (e.ifindex, e.mac))
}

#[test]
fn the_table_ranks_bindings_over_configuration_and_learning_never() {
    use PortFrom::*;
    use Standing::*;
    let binding = |origin| Source::Binding(origin);
    assert_eq!(rule(binding(Origin::Cni), true), (Authoritative, Named));
    assert_eq!(rule(binding(Origin::Static), true), (Authoritative, Named));
    assert_eq!(
        rule(binding(Origin::Static), false),
        (Authoritative, FixedAtFirstMatch)
    );
    assert_eq!(
        rule(binding(Origin::Dhcp), false),
        (Authoritative, FixedAtFirstMatch)
    );
    // A lease names no port; one that did would still not be trusted.
    assert_eq!(
        rule(binding(Origin::Dhcp), true),
        (Authoritative, FixedAtFirstMatch)
    );
    assert_eq!(rule(Source::Configured, false), (Configured, ContainerEnd));
    assert_eq!(rule(Source::Learned, false), (None, Never));
    assert_eq!(rule(binding(Origin::Learned), true), (None, Never));
    assert!(Authoritative > Configured && Configured > None);
}

#[test]
fn a_binding_goes_to_its_named_port_or_the_container_end_with_its_mac_and_address() {
    let mut table = Bindings::default();
    let s = slices(&[
        (6, end(0xb, &["250.0.28.8"])),
        (7, end(0xc, &["250.0.28.9"])),
    ]);
    table
        .bind(binding("250.0.28.7", 0xa, Some("veth-a"), Origin::Cni), &s)
        .unwrap();
    table
        .bind(binding("250.0.28.8", 0xb, None, Origin::Dhcp), &s)
        .unwrap();
    let (owned, counts) = owners(&mut table, &s);
    assert_eq!(at(&owned, "250.0.28.7"), Some((5, mac(0xa))));
    assert_eq!(at(&owned, "250.0.28.8"), Some((6, mac(0xb))));
    assert_eq!(at(&owned, "250.0.28.9"), Some((7, mac(0xc))), "configured");
    assert_eq!(
        owned[&WireAddr::from(addr("250.0.28.9"))].gateway_mac,
        GATEWAY_MAC
    );
    assert_eq!(
        counts,
        BTreeMap::from([
            ("cni".to_string(), 1),
            ("configured".to_string(), 1),
            ("dhcp".to_string(), 1)
        ])
    );
}

#[test]
fn a_lease_stays_at_the_port_it_was_fixed_at_when_its_mac_shows_up_elsewhere() {
    let mut table = Bindings::default();
    let lease = binding("250.0.28.8", 0xb, None, Origin::Dhcp);
    table.bind(lease.clone(), &slices(&[])).unwrap();
    // Leased, not yet configured: no port yet.
    let (owned, _) = owners(&mut table, &slices(&[(6, end(0xb, &[]))]));
    assert_eq!(at(&owned, "250.0.28.8"), None);
    let (owned, _) = owners(&mut table, &slices(&[(6, end(0xb, &["250.0.28.8"]))]));
    assert_eq!(at(&owned, "250.0.28.8"), Some((6, mac(0xb))));
    // Another container takes the MAC and the address: the lease stays.
    let cloned = slices(&[
        (6, end(0xb, &["250.0.28.8"])),
        (7, end(0xb, &["250.0.28.8"])),
    ]);
    let (owned, counts) = owners(&mut table, &cloned);
    assert_eq!(at(&owned, "250.0.28.8"), Some((6, mac(0xb))));
    assert_eq!(
        counts["configured"], 0,
        "a bound address is nobody's by configuration"
    );
    // Were it cloned before the lease found its port, neither would get it.
    let mut fresh = Bindings::default();
    fresh.bind(lease, &slices(&[])).unwrap();
    assert_eq!(at(&owners(&mut fresh, &cloned).0, "250.0.28.8"), None);
    // The port goes: the lease finds its container's new port.
    let moved = Slices {
        ports: vec![(7, "veth-c".into())],
        deliverable: HashSet::from([7]),
        ..slices(&[(7, end(0xb, &["250.0.28.8"]))])
    };
    assert_eq!(
        at(&owners(&mut table, &moved).0, "250.0.28.8"),
        Some((7, mac(0xb)))
    );
}

#[test]
fn a_configured_address_is_owned_by_its_only_port_and_never_when_bound_or_reserved() {
    let mut table = Bindings::default();
    let s = slices(&[
        (5, end(0xa, &["250.0.28.20", "250.0.28.1", "250.0.28.30"])),
        (6, end(0xb, &["250.0.28.20"])),
        (7, end(0xc, &["250.0.28.40"])),
    ]);
    // 250.0.28.40 is a lease of a container not on any port yet.
    table
        .bind(binding("250.0.28.40", 0xd, None, Origin::Dhcp), &s)
        .unwrap();
    let (owned, counts) = owners(&mut table, &s);
    assert_eq!(at(&owned, "250.0.28.30"), Some((5, mac(0xa))));
    assert_eq!(at(&owned, "250.0.28.20"), None, "configured on two ports");
    assert_eq!(at(&owned, "250.0.28.1"), None, "the gateway");
    assert_eq!(at(&owned, "250.0.28.40"), None, "leased to another");
    assert_eq!(counts["configured"], 1);
    // A port that cannot deliver owns nothing.
    let down = Slices {
        deliverable: HashSet::from([6, 7]),
        ..s
    };
    assert_eq!(at(&owners(&mut table, &down).0, "250.0.28.30"), None);
}
