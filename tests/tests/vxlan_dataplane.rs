//! Two simulated hosts on a veth underlay, each with a VXLAN fan plumbed by
//! hand as attach will make it (the slice bridge at `<slice>.1/8`, the
//! overlay port: a veth pair `fanA` on the bridge and `fanB` in the host,
//! MTU 1450 throughout) and the programs attached by the test: containers
//! with the /8 on-link (LXD's) and behind the gateway (fan-xdp's) reach
//! each other across hosts, ARP included, and TCP moves in bulk.

use std::net::Ipv4Addr;

use fan_common::{
    Encap, FanEntry, StatReason, WireAddr, maps::Endpoint, vxlan::VXLAN_DEFAULT_PORT,
};
use fan_tests::{
    netns::Netns,
    privileged,
    topology::{self, Fleet, Host, plug_container},
    traffic::{mac_of, ping, send_frames, tcp_transfer},
};
use fan_userspace::dataplane::{Dataplane, DecapMode, Stats, monotonic_ns};

const MTU: &str = "1450";

/// A host's VXLAN fan: the bridge and the overlay port, the programs, and
/// two containers, the first with the overlay on-link, the second routed.
struct VxlanHost {
    dataplane: Dataplane,
    on_link: (Netns, Ipv4Addr),
    routed: (Netns, Ipv4Addr),
}

fn plumb(host: &Host) -> VxlanHost {
    let ns = &host.ns;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns.sysctl(key, value).unwrap();
    }
    let bridge = host.bridge.as_str();
    let gateway = format!("{}/8", host.gateway);
    for args in [
        &["link", "add", bridge, "mtu", MTU, "type", "bridge"][..],
        &["addr", "add", &gateway, "dev", bridge],
        &["link", "set", bridge, "up"],
        &[
            "link", "add", "fanA", "mtu", MTU, "type", "veth", "peer", "name", "fanB", "mtu", MTU,
        ],
        &["link", "set", "fanA", "master", bridge, "up"],
        &["link", "set", "fanB", "up"],
    ] {
        ns.ip(args).unwrap();
    }
    let i = host.underlay_addr.octets()[3];
    let address = |j: u32| Ipv4Addr::from(u32::from(host.slice) + 10 + j);
    // Container `j` with the prefix length `len`: 8, the overlay on-link
    // (LXD's), or the slice's 24, everything else through the gateway.
    let container = |j: u32, len: u8| {
        let port = format!("veth{j}");
        let label = format!("vx{i}-{j}");
        let netns =
            plug_container(ns, bridge, &port, &label, (address(j), len), host.gateway).unwrap();
        netns.ip(&["link", "set", "eth0", "mtu", MTU]).unwrap();
        ns.ip(&["link", "set", &port, "mtu", MTU]).unwrap();
        (netns, address(j))
    };
    let (on_link, routed) = (container(1, 8), container(2, 24));
    let index = |name: &str| {
        let name = name.to_string();
        ns.enter(move || topology::ifindex(&name)).unwrap().unwrap()
    };
    let entry = FanEntry {
        encap: Encap::Vxlan as u8,
        vxlan_port: VXLAN_DEFAULT_PORT,
        vni: fan_common::vxlan::default_vni(u32::from(topology::OVERLAY.0)),
        overlay_port_ifindex: index("fanB"),
        bridge_ifindex: index(bridge),
        ..FanEntry::ipip(
            topology::fan_map(),
            u32::from(host.underlay_addr),
            index("eth0"),
            1450,
        )
    };
    let dataplane = ns
        .enter(|| -> anyhow::Result<Dataplane> {
            let mut dataplane = Dataplane::load()?;
            dataplane.insert_fan(&entry)?;
            dataplane.attach_decap("eth0", DecapMode::Tc)?;
            dataplane.attach_encap_forward(bridge)?;
            dataplane.attach_vxlan_out("fanB")?;
            Ok(dataplane)
        })
        .unwrap()
        .unwrap();
    VxlanHost {
        dataplane,
        on_link,
        routed,
    }
}

/// The fast path the agent keeps: the port program on both containers'
/// ports, the endpoint map naming them, a fresh heartbeat.
fn keep_endpoints(host: &Host, vxlan: &mut VxlanHost) {
    let ns = &host.ns;
    let gateway_mac = mac_of(ns, &host.bridge).unwrap();
    for (port, (container, addr)) in [("veth1", &vxlan.on_link), ("veth2", &vxlan.routed)] {
        let name = port.to_string();
        let ifindex = ns.enter(move || topology::ifindex(&name)).unwrap().unwrap();
        let endpoint = Endpoint {
            ifindex,
            mac: mac_of(container, "eth0").unwrap(),
            gateway_mac,
        };
        let dataplane = &mut vxlan.dataplane;
        ns.enter(|| -> anyhow::Result<()> {
            dataplane.insert_endpoint(WireAddr::from(*addr), &endpoint)?;
            dataplane.attach_encap_port(port)
        })
        .unwrap()
        .unwrap();
    }
    vxlan.dataplane.set_heartbeat(monotonic_ns()).unwrap();
}

/// Packets the overlay port `B` received (what the bridge sent it).
fn overlay_port_packets(host: &Host) -> u64 {
    let text = host
        .ns
        .run("cat", &["/sys/class/net/fanB/statistics/rx_packets"])
        .unwrap();
    text.trim().parse().unwrap()
}

fn stats(host: &VxlanHost) -> Stats {
    host.dataplane.stats().unwrap()
}

/// No drop counted on either host since `before`.
fn assert_no_drops(hosts: &[VxlanHost], before: &[Stats]) {
    for (host, before) in hosts.iter().zip(before) {
        let delta = stats(host).since(before);
        for reason in StatReason::ALL
            .iter()
            .filter(|r| r.name().starts_with("drop_"))
        {
            assert_eq!(delta.get(*reason).packets, 0, "dropped: {}", reason.name());
        }
    }
}

#[test]
fn containers_reach_each_other_over_vxlan_on_link_and_routed() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    let hosts: Vec<VxlanHost> = fleet.hosts.iter().map(plumb).collect();
    let before: Vec<Stats> = hosts.iter().map(stats).collect();
    let (h1, h2) = (&hosts[0], &hosts[1]);
    // Each pair: ARP across the hosts first (the on-link container asks for
    // the remote container itself; the host asks for the routed one's).
    for (from, to) in [
        (&h1.on_link, &h2.on_link),
        (&h2.on_link, &h1.on_link),
        (&h1.routed, &h2.routed),
        (&h1.routed, &h2.on_link),
        (&h2.routed, &h1.on_link),
    ] {
        let ok = ping(&from.0, to.1, 2).unwrap();
        assert!(
            ok,
            "{} -> {}: host 1 {:?}, host 2 {:?}",
            from.1,
            to.1,
            stats(h1).since(&before[0]),
            stats(h2).since(&before[1])
        );
    }
    // The hosts themselves: routed by the bridge's on-link /8.
    assert!(
        ping(&fleet.hosts[0].ns, h2.routed.1, 2).unwrap(),
        "host 1 -> {}",
        h2.routed.1
    );
    let (sent, received) = (stats(h1).since(&before[0]), stats(h2).since(&before[1]));
    assert!(sent.get(StatReason::Encapsulated).packets >= 12, "{sent:?}");
    assert!(
        received.get(StatReason::Decapsulated).packets >= 12,
        "{received:?}"
    );
    assert_no_drops(&hosts, &before);
    // A VLAN-tagged frame the bridge floods (to a MAC it does not know):
    // the overlay port's receive moves the tag beside the frame, where it
    // would go onto the underlay with the outer packet.
    let tagged = fan_tests::hex(
        "0a00000000ff 0a000000010b 8100 0005 0800
         45000020 12344000 40013192 fa00010b fa00020b
         0800e139 42420001 66616e21",
    );
    let vlan_before = stats(h1).get(StatReason::DropVlanTagged).packets;
    send_frames(&h1.on_link.0, "eth0", &[tagged]).unwrap();
    let waited = std::time::Instant::now();
    while stats(h1).get(StatReason::DropVlanTagged).packets == vlan_before
        && waited.elapsed() < std::time::Duration::from_secs(2)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let vlan_drops = stats(h1).get(StatReason::DropVlanTagged).packets - vlan_before;
    assert_eq!(vlan_drops, 1, "the tagged frame was not refused once");
    let before: Vec<Stats> = hosts.iter().map(stats).collect();
    // Bulk TCP both ways: GSO through the encapsulation, then without TSO.
    let bytes = 20 << 20;
    for (from, to, sender) in [(&h1.on_link, &h2.on_link, h1), (&h2.routed, &h1.routed, h2)] {
        let gso_before = stats(sender).get(StatReason::EncapsulatedGso).packets;
        assert_eq!(tcp_transfer(&to.0, &from.0, to.1, bytes).unwrap(), bytes);
        let gso = stats(sender).get(StatReason::EncapsulatedGso).packets - gso_before;
        assert!(
            gso > 0,
            "{} -> {}: no GSO packet encapsulated",
            from.1,
            to.1
        );
    }
    h1.on_link
        .0
        .run("ethtool", &["-K", "eth0", "tso", "off", "gso", "off"])
        .unwrap();
    assert_eq!(
        tcp_transfer(&h2.on_link.0, &h1.on_link.0, h2.on_link.1, bytes).unwrap(),
        bytes
    );
    assert_no_drops(&hosts, &before);
}

#[test]
fn the_fast_path_sends_from_the_ports_and_delivers_straight_into_containers() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    let mut hosts: Vec<VxlanHost> = fleet.hosts.iter().map(plumb).collect();
    for (host, vxlan) in fleet.hosts.iter().zip(&mut hosts) {
        keep_endpoints(host, vxlan);
    }
    let (h1, h2) = (&hosts[0], &hosts[1]);
    // ARP first, through the overlay ports (the ports leave ARP to the bridge).
    for (from, to) in [(&h1.on_link, &h2.on_link), (&h1.routed, &h2.routed)] {
        assert!(ping(&from.0, to.1, 1).unwrap(), "{} -> {}", from.1, to.1);
    }
    // The host routes one packet for the routed container before it has
    // the remote neighbour: from then on its ports have all they need.
    let before: Vec<Stats> = hosts.iter().map(stats).collect();
    let through_b: Vec<u64> = fleet.hosts.iter().map(overlay_port_packets).collect();
    let bytes = 20 << 20;
    for on_link in [true, false] {
        // The test stands in for the agent: a beat the programs trust for
        // 3 s, given again before each transfer (each takes about a second).
        for host in &mut hosts {
            host.dataplane.set_heartbeat(monotonic_ns()).unwrap();
        }
        let (h1, h2) = (&hosts[0], &hosts[1]);
        let (from, to) = if on_link {
            (&h1.on_link, &h2.on_link)
        } else {
            (&h1.routed, &h2.routed)
        };
        assert_eq!(tcp_transfer(&to.0, &from.0, to.1, bytes).unwrap(), bytes);
    }
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let (sent, received) = (stats(h1).since(&before[0]), stats(h2).since(&before[1]));
    assert!(
        sent.get(StatReason::Encapsulated).bytes >= 2 * bytes,
        "{sent:?}"
    );
    assert!(
        received.get(StatReason::DecapsulatedDirect).bytes >= 2 * bytes,
        "{received:?}"
    );
    // A handful of packets (ARP refreshes) may still take the bridge.
    for (host, before) in fleet.hosts.iter().zip(through_b) {
        let through = overlay_port_packets(host) - before;
        assert!(
            through < 20,
            "{through} packets went through {}'s overlay port: sent {sent:?}, received {received:?}",
            host.underlay_addr
        );
    }
    assert_no_drops(&hosts, &before);
}
