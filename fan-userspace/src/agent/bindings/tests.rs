use std::collections::{HashMap, HashSet};

use super::*;
use crate::host::ContainerEnd;

fn slices() -> Slices {
    Slices {
        ports: vec![(5, "veth-a".into()), (6, "veth-b".into())],
        deliverable: HashSet::from([5, 6]),
        ends: HashMap::from([(
            6,
            ContainerEnd {
                mac: [2, 0, 0, 0, 0, 0xb],
                addresses: vec!["250.0.28.8".parse().unwrap()],
            },
        )]),
        gateways: vec![("250.0.28.0/24".parse().unwrap(), [2, 0, 0, 0, 0, 1])],
        ..Slices::default()
    }
}

fn binding(address: &str, mac: &str, port: Option<&str>, origin: Origin) -> Binding {
    Binding {
        address: address.parse().unwrap(),
        mac: mac.into(),
        port: port.map(str::to_string),
        origin,
        owner: "c1".into(),
        pod: None,
    }
}

/// 250.0.28.7 bound by the CNI plugin to veth-a.
fn owner_binding() -> Binding {
    binding(
        "250.0.28.7",
        "02:00:00:00:00:0a",
        Some("veth-a"),
        Origin::Cni,
    )
}

#[test]
fn a_live_binding_is_not_taken_over() {
    let mut table = Bindings::default();
    let s = slices();
    table.bind(owner_binding(), &s).unwrap();
    let err = table
        .bind(
            binding(
                "250.0.28.7",
                "02:00:00:00:00:0b",
                Some("veth-b"),
                Origin::Cni,
            ),
            &s,
        )
        .unwrap_err();
    assert!(err.to_string().contains("already bound to veth-a"), "{err}");
    // Once its port is gone, the address is free again.
    let gone = Slices {
        deliverable: HashSet::from([6]),
        ..slices()
    };
    table
        .bind(
            binding(
                "250.0.28.7",
                "02:00:00:00:00:0b",
                Some("veth-b"),
                Origin::Cni,
            ),
            &gone,
        )
        .unwrap();
    // Unbinding is for the origin that bound it, and idempotent.
    assert!(
        !table
            .unbind("250.0.28.7".parse().unwrap(), Origin::Dhcp)
            .unwrap()
    );
    assert!(
        table
            .unbind("250.0.28.7".parse().unwrap(), Origin::Cni)
            .unwrap()
    );
    assert!(
        !table
            .unbind("250.0.28.7".parse().unwrap(), Origin::Cni)
            .unwrap()
    );
}

#[test]
fn bad_bindings_are_refused_by_name() {
    let mut table = Bindings::default();
    let s = slices();
    let err = |b| table_err(&mut Bindings::default(), b, &s);
    assert!(
        err(binding(
            "250.0.29.7",
            "02:00:00:00:00:0a",
            None,
            Origin::Cni
        ))
        .contains("in no slice")
    );
    assert!(
        err(binding("250.0.28.7", "02:00:00:00:0a", None, Origin::Cni)).contains("six hex pairs")
    );
    assert!(
        err(binding(
            "250.0.28.7",
            "02:00:00:00:00:0a",
            Some("eth9"),
            Origin::Cni
        ))
        .contains("not a port")
    );
    assert!(
        err(binding(
            "250.0.28.7",
            "02:00:00:00:00:0a",
            None,
            Origin::Learned
        ))
        .contains("origin")
    );
    assert!(table.list().next().is_none());
    table
        .bind(
            binding("250.0.28.9", "02:00:00:00:00:0a", None, Origin::Static),
            &s,
        )
        .unwrap();
}

fn table_err(table: &mut Bindings, b: Binding, s: &Slices) -> String {
    table.bind(b, s).unwrap_err().to_string()
}

#[test]
fn replacing_an_origin_keeps_the_others() {
    let mut table = Bindings::default();
    let s = slices();
    table.bind(owner_binding(), &s).unwrap();
    let leases = vec![
        binding("250.0.28.7", "02:00:00:00:00:0c", None, Origin::Dhcp),
        binding("250.0.28.8", "02:00:00:00:00:0b", None, Origin::Dhcp),
    ];
    assert!(table.replace_origin(Origin::Dhcp, leases.clone()).unwrap());
    assert!(!table.replace_origin(Origin::Dhcp, leases).unwrap());
    let origins: Vec<_> = table
        .list()
        .map(|b| (b.address.to_string(), b.origin))
        .collect();
    assert_eq!(
        origins,
        [
            ("250.0.28.7".to_string(), Origin::Cni),
            ("250.0.28.8".to_string(), Origin::Dhcp)
        ]
    );
    assert!(table.replace_origin(Origin::Dhcp, vec![]).unwrap());
    assert_eq!(table.list().count(), 1);
}

#[test]
fn macs_round_trip() {
    assert_eq!(
        parse_mac("02:00:5e:10:00:ff").unwrap(),
        [2, 0, 0x5e, 0x10, 0, 0xff]
    );
    assert_eq!(format_mac([2, 0, 0x5e, 0x10, 0, 0xff]), "02:00:5e:10:00:ff");
    assert!(parse_mac("02:00:5e:10:00:ff:00").is_err());
    assert!(parse_mac("02-00-5e-10-00-ff").is_err());
}
