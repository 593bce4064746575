use super::*;

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
        peer_index: Some(2),
    }
}

#[test]
fn one_event_changes_what_it_is_about() {
    let mut observed = Observed {
        bridges: vec![Bridge {
            index: 3,
            slice: "250.0.28.0/24".parse().unwrap(),
            gateway: "250.0.28.1".parse().unwrap(),
            gateway_mac: [2, 0, 0, 0, 0, 1],
            refresh_idle: Duration::from_secs(100),
            ports: HashMap::new(),
            fdb: HashMap::new(),
            ends: HashMap::new(),
        }],
        unread: BTreeSet::new(),
    };
    let addr: Ipv4Addr = "250.0.28.7".parse().unwrap();
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
    assert_eq!(observed.unread, BTreeSet::from([9]), "the new port's end");
    observed.unread.clear();
    // What a container answers in ARP is no news.
    let neighbour = Change::Neighbour {
        ifindex: 3,
        address: addr,
        mac: Some(mac),
    };
    assert_eq!(observed.apply(&neighbour), Effect::None);
    // A MAC new on the port: its end is read again; the same entry again is not news.
    let learned = Change::Fdb {
        bridge: 3,
        entry: fdb,
        gone: false,
    };
    assert_eq!(observed.apply(&learned), Effect::Changed);
    assert_eq!(observed.unread, BTreeSet::from([9]));
    observed.unread.clear();
    observed.apply(&learned);
    assert!(observed.unread.is_empty());
    // The end as read (read_ends needs the kernel).
    let end = ContainerEnd {
        mac,
        addresses: vec![addr],
    };
    observed.bridges[0].ends.insert(9, end.clone());
    let slices = observed.slices();
    assert_eq!(slices.ends[&9], end);
    assert!(slices.reserved.contains(&"250.0.28.1".parse().unwrap()));
    assert_eq!(slices.ports, vec![(9, "veth9".to_string())]);
    // The port goes down: no delivery, but encapsulation stays.
    let down = Device {
        oper_up: false,
        ..veth(9, 3)
    };
    observed.apply(&Change::Device(down));
    assert!(observed.slices().ends.is_empty());
    assert_eq!(observed.slices().ports.len(), 1);
    // It comes back up, then is deleted, and its end with it.
    observed.apply(&Change::Device(veth(9, 3)));
    assert_eq!(observed.slices().ends.len(), 1);
    assert_eq!(observed.apply(&Change::LinkGone(9)), Effect::Changed);
    assert!(observed.bridges[0].ends.is_empty() && observed.slices().ports.is_empty());
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
