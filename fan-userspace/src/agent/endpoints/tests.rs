use super::*;

fn endpoint(ifindex: u32, last: u8) -> Endpoint {
    Endpoint {
        ifindex,
        mac: [2, 0, 0, 0, 0, last],
        gateway_mac: [2, 0, 0, 0, 0, 1],
    }
}

fn veth(index: u32, controller: u32) -> Device {
    Device {
        index,
        name: format!("veth{index}"),
        mtu: 1480,
        kind: Some("veth".into()),
        xdp_prog_id: None,
        noarp: false,
        up: true,
        mac: Some([2, 0, 0, 0, 1, index as u8]),
        controller: Some(controller),
        ageing: None,
        oper_up: true,
        peer_netns_id: Some(1),
    }
}

#[test]
fn one_event_changes_what_it_is_about() {
    let mut observed = Observed {
        bridges: vec![Bridge {
            index: 3,
            slice: "250.0.28.0/24".parse().unwrap(),
            gateway_mac: [2, 0, 0, 0, 0, 1],
            refresh_idle: Duration::from_secs(100),
            ports: HashMap::new(),
            fdb: HashMap::new(),
            neighbours: HashMap::new(),
        }],
    };
    let addr: Ipv4Addr = "250.0.28.7".parse().unwrap();
    let key = WireAddr::from(addr);
    let mac = [2, 0, 0, 0, 0, 7];
    let fdb = FdbEntry {
        mac,
        port: 9,
        idle: Duration::ZERO,
        permanent: false,
    };
    assert_eq!(observed.apply(&Change::Device(veth(9, 3))), Effect::Changed);
    assert_eq!(
        observed.apply(&Change::Device(veth(10, 4))),
        Effect::None,
        "another bridge's port"
    );
    let neighbour = Change::Neighbour {
        ifindex: 3,
        address: addr,
        mac: Some(mac),
    };
    assert_eq!(observed.apply(&neighbour), Effect::Changed);
    assert!(
        observed.slices().endpoints.is_empty(),
        "no forwarding entry yet"
    );
    assert_eq!(
        observed.apply(&Change::Fdb {
            bridge: 3,
            entry: fdb,
            gone: false
        }),
        Effect::Changed
    );
    let slices = observed.slices();
    assert_eq!(
        slices.endpoints[&key],
        Endpoint {
            ifindex: 9,
            mac,
            gateway_mac: [2, 0, 0, 0, 0, 1]
        }
    );
    assert_eq!(slices.ports, vec![(9, "veth9".to_string())]);
    // The port goes down: no delivery, but encapsulation stays.
    let down = Device {
        oper_up: false,
        ..veth(9, 3)
    };
    observed.apply(&Change::Device(down));
    assert!(observed.slices().endpoints.is_empty());
    assert_eq!(observed.slices().ports.len(), 1);
    // It comes back up, then is deleted.
    observed.apply(&Change::Device(veth(9, 3)));
    assert_eq!(observed.slices().endpoints.len(), 1);
    assert_eq!(observed.apply(&Change::LinkGone(9)), Effect::Changed);
    assert!(observed.slices().endpoints.is_empty() && observed.slices().ports.is_empty());
    assert_eq!(observed.apply(&Change::LinkGone(9)), Effect::None);
    // The bridge itself: only a new MAC or its going is news.
    let bridge = |mac| Device {
        kind: Some("bridge".into()),
        mac: Some(mac),
        controller: None,
        ..veth(3, 0)
    };
    assert_eq!(
        observed.apply(&Change::Device(bridge([2, 0, 0, 0, 0, 1]))),
        Effect::None
    );
    assert_eq!(
        observed.apply(&Change::Device(bridge([2, 0, 0, 0, 0, 2]))),
        Effect::ReadAgain
    );
    assert_eq!(observed.apply(&Change::LinkGone(3)), Effect::ReadAgain);
}

#[test]
fn a_binding_holds_while_its_port_can_deliver() {
    let (a, b, c) = (
        WireAddr::from_host(10),
        WireAddr::from_host(11),
        WireAddr::from_host(12),
    );
    let have = HashMap::from([
        (a, endpoint(5, 0xa)),
        (b, endpoint(6, 0xb)),
        (c, endpoint(7, 0xc)),
    ]);
    let slices = Slices {
        // a: another port answers for it; b: its neighbour entry is gone;
        // c: its port is gone, and a new port holds it.
        endpoints: HashMap::from([(a, endpoint(6, 0xb)), (c, endpoint(8, 0xd))]),
        deliverable: HashSet::from([5, 6, 8]),
        ..Slices::default()
    };
    let want = keep_bindings(&have, &slices);
    assert_eq!(want[&a], endpoint(5, 0xa), "moved by another port's ARP");
    assert_eq!(
        want[&b],
        endpoint(6, 0xb),
        "dropped with its neighbour entry"
    );
    assert_eq!(want[&c], endpoint(8, 0xd), "not released with its port");
    // On its own port a binding follows the container's MAC.
    let slices = Slices {
        endpoints: HashMap::from([(a, endpoint(5, 0xe))]),
        deliverable: HashSet::from([5]),
        ..Slices::default()
    };
    assert_eq!(keep_bindings(&have, &slices)[&a], endpoint(5, 0xe));
}
