use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn default_plan_of_a_24() {
    let plan = AddressPlan::default_for(ip("250.0.28.0"), 24, 1).unwrap();
    assert_eq!(plan.gateway, ip("250.0.28.1"));
    assert_eq!(
        plan.reserve,
        AddrRange::new(ip("250.0.28.1"), ip("250.0.28.1"))
    );
    assert_eq!(
        plan.dhcp,
        AddrRange::new(ip("250.0.28.2"), ip("250.0.28.127"))
    );
    assert_eq!(
        plan.docker,
        Cidr {
            base: ip("250.0.28.128"),
            len: 26
        }
    );
    assert_eq!(
        plan.cni,
        AddrRange::new(ip("250.0.28.192"), ip("250.0.28.254"))
    );
    assert_eq!(plan.dhcp.len(), 126);
    assert_eq!(plan.cni.len(), 63);
}

#[test]
fn default_plan_scales_to_a_16_and_down_to_a_28() {
    let plan = AddressPlan::default_for(ip("250.5.0.0"), 16, 10).unwrap();
    assert_eq!(
        plan.reserve,
        AddrRange::new(ip("250.5.0.1"), ip("250.5.0.10"))
    );
    assert_eq!(
        plan.dhcp,
        AddrRange::new(ip("250.5.0.11"), ip("250.5.127.255"))
    );
    assert_eq!(
        plan.docker,
        Cidr {
            base: ip("250.5.128.0"),
            len: 18
        }
    );
    assert_eq!(
        plan.cni,
        AddrRange::new(ip("250.5.192.0"), ip("250.5.255.254"))
    );

    let small = AddressPlan::default_for(ip("250.0.0.16"), 28, 1).unwrap();
    assert_eq!(
        small.dhcp,
        AddrRange::new(ip("250.0.0.18"), ip("250.0.0.23"))
    );
    assert_eq!(
        small.docker,
        Cidr {
            base: ip("250.0.0.24"),
            len: 30
        }
    );
    assert_eq!(
        small.cni,
        AddrRange::new(ip("250.0.0.28"), ip("250.0.0.30"))
    );
}

#[test]
fn refusals_name_the_problem() {
    assert_eq!(
        AddressPlan::default_for(ip("250.0.0.0"), 29, 1),
        Err(PlanError::SliceTooSmall { slice_len: 29 })
    );
    assert_eq!(
        AddressPlan::default_for(ip("250.0.28.0"), 24, 0),
        Err(PlanError::HostReserve {
            requested: 0,
            most: 126
        })
    );
    assert_eq!(
        AddressPlan::default_for(ip("250.0.28.0"), 24, 127),
        Err(PlanError::HostReserve {
            requested: 127,
            most: 126
        })
    );
    let base = AddressPlan::default_for(ip("250.0.28.0"), 24, 1).unwrap();
    let overlapping = AddressPlan {
        cni: AddrRange::new(ip("250.0.28.100"), ip("250.0.28.120")),
        ..base
    };
    assert_eq!(
        overlapping.validate(ip("250.0.28.0"), 24),
        Err(PlanError::Overlap {
            first: Part::Dhcp,
            second: Part::Cni
        })
    );
    let onto_broadcast = AddressPlan {
        cni: AddrRange::new(ip("250.0.28.192"), ip("250.0.28.255")),
        ..base
    };
    assert_eq!(
        onto_broadcast.validate(ip("250.0.28.0"), 24),
        Err(PlanError::OutsideSlice { part: Part::Cni })
    );
    let empty = AddressPlan {
        dhcp: AddrRange::new(ip("250.0.28.9"), ip("250.0.28.8")),
        ..base
    };
    assert_eq!(
        empty.validate(ip("250.0.28.0"), 24),
        Err(PlanError::Empty { part: Part::Dhcp })
    );
    let moved_reserve = AddressPlan {
        reserve: AddrRange::new(ip("250.0.28.2"), ip("250.0.28.2")),
        dhcp: AddrRange::new(ip("250.0.28.3"), ip("250.0.28.127")),
        ..base
    };
    assert_eq!(
        moved_reserve.validate(ip("250.0.28.0"), 24),
        Err(PlanError::ReserveNotAtGateway)
    );
}

#[test]
fn cidrs_are_aligned() {
    assert!(Cidr::new(ip("250.0.28.128"), 26).is_some());
    assert!(Cidr::new(ip("250.0.28.130"), 26).is_none());
    assert!(Cidr::new(ip("250.0.28.0"), 33).is_none());
    assert_eq!(
        Cidr::new(ip("250.0.28.128"), 26).unwrap().range(),
        AddrRange::new(ip("250.0.28.128"), ip("250.0.28.191"))
    );
}
