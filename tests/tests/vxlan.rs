//! The Fan's VXLAN mode end to end: `fan-xdp attach --type vxlan` on two
//! simulated hosts, and a fan-xdp host beside a host whose kernel `vxlan`
//! device is configured as Ubuntu's Fan VXLAN (and LXD's `bridge.mode=fan`)
//! would be, with containers of both kinds: routed through the gateway
//! (fan-xdp's /24) and with the overlay's /8 on-link (LXD's). Also what
//! attach makes for a VXLAN fan, that each step's undo and detach take
//! exactly that back, and the options it refuses.

use std::net::Ipv4Addr;

use fan_common::vxlan::{SOURCE_PORT_MAX, SOURCE_PORT_MIN, VXLAN_FLAG_VNI};
use fan_tests::{
    lifecycle::ingress_programs,
    netns::Netns,
    privileged,
    snapshot::{assert_netns_unchanged, netns_snapshot},
    topology::{Fleet, Host, plug_container_with_mtu},
    traffic::{Capture, link_statistic, mac_of, ping, tcp_transfer, tcp_transfer_via},
};

const OVERLAY: &str = "250.0.0.0/8";
/// LXD's VNI for 250.0.0.0/8: the overlay's network address >> 8.
const VNI: u32 = 16_384_000;
const PORT: u16 = 8472;
/// The underlay's 1500 less VXLAN's 50.
const MTU: u32 = 1450;
const BULK: u64 = 20 * 1024 * 1024;
const ATTACH_VXLAN: [&str; 6] = ["attach", "eth0", "--overlay", OVERLAY, "--type", "vxlan"];

/// A container on a slice bridge: number `j` has address slice + 10 + j,
/// with prefix 24 (routed through the gateway, as fan-xdp's plan gives it)
/// or 8 (the overlay on-link, as LXD's DHCP gives it), and its default
/// route via the gateway either way.
struct Container {
    ns: Netns,
    addr: Ipv4Addr,
}

fn container(host: &Host, j: u8, len: u8) -> Container {
    let addr = Ipv4Addr::from(u32::from(host.slice) + 10 + u32::from(j));
    let i = host.underlay_addr.octets()[3];
    let ns = plug_container_with_mtu(
        &host.ns,
        &host.bridge,
        &format!("veth{j}"),
        &format!("vc{i}-{j}"),
        (addr, len),
        host.gateway,
        MTU,
    )
    .unwrap();
    Container { ns, addr }
}

/// `host` made a Fan VXLAN host by its kernel, as Ubuntu's fan patch and
/// LXD set one up, in a fan of two hosts whose other member is `peer`: a
/// vxlan device with the fan's VNI and port, a port of the slice bridge,
/// which holds `<slice>.1/8` (the overlay on-link), and an all-zeros FDB
/// entry to `peer` (what the Fan's arithmetic gives with two hosts). The
/// commands docs/containers.md shows.
fn kernel_vxlan_fan(host: &Host, peer: Ipv4Addr) {
    let ns = &host.ns;
    let (local, peer, mtu) = (
        host.underlay_addr.to_string(),
        peer.to_string(),
        MTU.to_string(),
    );
    let (vni, port) = (VNI.to_string(), PORT.to_string());
    let bridge = host.bridge.as_str();
    let gateway = format!("{}/8", host.gateway);
    for args in [
        &["link", "add", bridge, "mtu", &mtu, "type", "bridge"][..],
        &["addr", "add", &gateway, "dev", bridge],
        &["link", "set", bridge, "up"],
        &[
            "link",
            "add",
            "vx",
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "local",
            &local,
            "dev",
            "eth0",
            "nolearning",
        ],
        &["link", "set", "vx", "mtu", &mtu, "master", bridge, "up"],
    ] {
        ns.ip(args).unwrap();
    }
    ns.run(
        "bridge",
        &[
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx",
            "dst",
            &peer,
        ],
    )
    .unwrap();
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
}

fn show(host: &Host) -> serde_json::Value {
    serde_json::from_str(&host.fan_xdp_ok(&["show", "--json"]).unwrap()).unwrap()
}

fn stats(host: &Host) -> serde_json::Value {
    serde_json::from_str(&host.fan_xdp_ok(&["stats", "--json"]).unwrap()).unwrap()
}

/// The MAC `peer` learned for `addr` by ARP (from `ip neigh`), if any.
fn neighbour_mac(ns: &Netns, addr: Ipv4Addr) -> Option<[u8; 6]> {
    let text = ns.ip(&["neigh", "show", &addr.to_string()]).unwrap();
    let lladdr = text
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)?;
    let bytes: Vec<u8> = lladdr
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().ok()
}

/// What the VXLAN packets between underlay hosts `a` and `b` carried, each
/// header checked against RFC 7348 and the fan's settings; the frames sent
/// by each (a -> b, b -> a), and the inner ethertypes seen.
#[derive(Default, Debug)]
struct Wire {
    from_a: usize,
    from_b: usize,
    arp: usize,
    source_ports: std::collections::BTreeSet<u16>,
}

fn check_wire(frames: &[Vec<u8>], a: Ipv4Addr, b: Ipv4Addr, fan_xdp: Ipv4Addr) -> Wire {
    let mut wire = Wire::default();
    for frame in frames {
        // Ethernet 14, IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14.
        if frame.len() < 64 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
            continue;
        }
        let (ip, udp, vxlan, inner) =
            (&frame[14..34], &frame[34..42], &frame[42..50], &frame[50..]);
        if u16::from_be_bytes([udp[2], udp[3]]) != PORT {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        assert_eq!(ip[0], 0x45, "outer IPv4 with options from {src}");
        assert_eq!(vxlan[0], VXLAN_FLAG_VNI, "VXLAN flags from {src}");
        assert_eq!(vxlan[1..4], [0, 0, 0], "VXLAN reserved bytes from {src}");
        let vni = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
        assert_eq!(vni, VNI, "VNI from {src}");
        assert_eq!(vxlan[7], 0, "VXLAN's last reserved byte from {src}");
        let ethertype = [inner[12], inner[13]];
        assert!(
            ethertype == [0x08, 0x00] || ethertype == [0x08, 0x06],
            "{src} sent ethertype {ethertype:02x?} into the fan"
        );
        if src == fan_xdp {
            // fan-xdp's choices: DF, TTL 64, ID 0, UDP checksum 0, source
            // port from the flow's hash in the kernel's range.
            let flags = u16::from_be_bytes([ip[6], ip[7]]);
            assert_eq!(flags, 0x4000, "fan-xdp's outer DF and fragment offset");
            assert_eq!(ip[8], 64, "fan-xdp's outer TTL");
            // ID 0, which GSO counts up per segment: whole on ARP alone.
            if ethertype == [0x08, 0x06] {
                assert_eq!(ip[4..6], [0, 0], "fan-xdp's outer ID");
            }
            assert_eq!(udp[6..8], [0, 0], "fan-xdp's UDP checksum");
            let source = u16::from_be_bytes([udp[0], udp[1]]);
            assert!(
                (SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&source),
                "source port {source} outside the kernel's range"
            );
            wire.source_ports.insert(source);
        }
        wire.arp += usize::from(ethertype == [0x08, 0x06]);
        if (src, dst) == (a, b) {
            wire.from_a += 1;
        } else if (src, dst) == (b, a) {
            wire.from_b += 1;
        }
    }
    wire
}

/// Pings between the containers of each pair, both ways (and so ARP: for
/// the remote container itself where the /8 is on-link, for the gateway
/// otherwise).
fn exchange(pairs: &[(&Container, &Container)]) {
    for (one, other) in pairs {
        for (from, to) in [(one, other), (other, one)] {
            assert!(
                ping(&from.ns, to.addr, 2).unwrap(),
                "{} -> {}",
                from.addr,
                to.addr
            );
        }
    }
}

/// The containers of a test: on each host one routed through the gateway
/// (`r`, /24) and one with the overlay on-link (`l`, /8).
struct Pairs {
    r1: Container,
    l1: Container,
    r2: Container,
    l2: Container,
}

impl Pairs {
    fn plug(h1: &Host, h2: &Host) -> Self {
        Self {
            r1: container(h1, 1, 24),
            l1: container(h1, 2, 8),
            r2: container(h2, 1, 24),
            l2: container(h2, 2, 8),
        }
    }

    /// Pings between every container of one host and every one of the
    /// other, captured on `h2`'s underlay and checked header by header
    /// (`fan_xdp`: the fan-xdp host whose own choices are checked too);
    /// the on-link containers learned the remote ones' real MACs.
    fn exchange_checked(&self, h1: &Host, h2: &Host, fan_xdp: Ipv4Addr) -> Wire {
        let pcap = std::env::temp_dir().join(format!("{}.pcap", h2.ns.name()));
        let capture = Capture::start(&h2.ns, "eth0", pcap).unwrap();
        let Self { r1, l1, r2, l2 } = self;
        exchange(&[(r1, r2), (l1, l2), (r1, l2), (l1, r2)]);
        let wire = check_wire(
            &capture.finish().unwrap(),
            h1.underlay_addr,
            h2.underlay_addr,
            fan_xdp,
        );
        assert!(
            wire.from_a >= 16 && wire.from_b >= 16 && wire.arp >= 2,
            "captured {wire:?}"
        );
        assert_arp_across(l1, l2);
        assert_arp_across(l2, l1);
        assert_arp_across(l1, r2);
        wire
    }

    /// [`BULK`] bytes over TCP each way between the routed containers and
    /// between the on-link ones.
    fn transfer_both_ways(&self) {
        for (a, b) in [(&self.r1, &self.r2), (&self.l1, &self.l2)] {
            assert_eq!(
                tcp_transfer(&b.ns, &a.ns, b.addr, BULK).unwrap(),
                BULK,
                "{} -> {}",
                a.addr,
                b.addr
            );
            assert_eq!(
                tcp_transfer(&a.ns, &b.ns, a.addr, BULK).unwrap(),
                BULK,
                "{} -> {}",
                b.addr,
                a.addr
            );
        }
    }
}

/// The ARP answer an on-link container got for a remote container is the
/// remote container's own MAC: ARP went across the fan both ways.
fn assert_arp_across(on_link: &Container, remote: &Container) {
    let learned = neighbour_mac(&on_link.ns, remote.addr);
    let real = mac_of(&remote.ns, "eth0").unwrap();
    assert_eq!(
        learned,
        Some(real),
        "{} resolved {} to another MAC (not ARP across the fan)",
        on_link.addr,
        remote.addr
    );
}

#[test]
fn two_fan_xdp_vxlan_hosts_carry_ping_arp_and_tcp_both_ways() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&["--type", "vxlan"]).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    for host in [h1, h2] {
        let shown = show(host);
        assert_eq!(
            (
                &shown[0]["type"],
                &shown[0]["vni"],
                &shown[0]["port"],
                &shown[0]["mtu"]
            ),
            (
                &serde_json::json!("vxlan"),
                &serde_json::json!(VNI),
                &serde_json::json!(PORT),
                &serde_json::json!(MTU)
            ),
            "{shown}"
        );
        assert_eq!(shown[0]["mode"], "tc", "{shown}");
    }
    let pairs = Pairs::plug(h1, h2);
    for host in [h1, h2] {
        host.wait_for_run_ready(std::time::Duration::from_secs(10))
            .unwrap();
    }
    pairs.exchange_checked(h1, h2, h1.underlay_addr);
    pairs.transfer_both_ways();
    // GSO segmented in software: no TSO on the underlay devices.
    for host in [h1, h2] {
        host.ns
            .run("ethtool", &["-K", "eth0", "tso", "off"])
            .unwrap();
    }
    pairs.transfer_both_ways();

    // Four flows, four UDP source ports (the per-flow entropy IP-in-IP lacks).
    let pcap = std::env::temp_dir().join(format!("{}-4.pcap", h2.ns.name()));
    let capture = Capture::start(&h2.ns, "eth0", pcap).unwrap();
    std::thread::scope(|scope| {
        for port in 5301..5305 {
            let (server, client, addr) = (&pairs.l2.ns, &pairs.l1.ns, pairs.l2.addr);
            scope.spawn(move || {
                let target = std::net::SocketAddr::from((addr, port));
                let moved = tcp_transfer_via(server, target, client, target, 1 << 20).unwrap();
                assert_eq!(moved, 1 << 20);
            });
        }
    });
    let wire = check_wire(
        &capture.finish().unwrap(),
        h1.underlay_addr,
        h2.underlay_addr,
        h1.underlay_addr,
    );
    assert!(
        wire.source_ports.len() >= 4,
        "4 flows went out from {} source port(s): {:?}",
        wire.source_ports.len(),
        wire.source_ports
    );
    for host in [h1, h2] {
        let s = stats(host);
        assert_eq!(s["drop_spoofed_source"]["packets"], 0, "{s}");
    }
    drop(pairs);
    fleet.detach_all().unwrap();
}

#[test]
fn fan_xdp_and_a_kernel_vxlan_fan_host_interoperate() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    h1.fan_xdp_ok(&ATTACH_VXLAN).unwrap();
    kernel_vxlan_fan(h2, h1.underlay_addr);
    let pairs = Pairs::plug(h1, h2);
    h1.wait_for_run_ready(std::time::Duration::from_secs(10))
        .unwrap();
    pairs.exchange_checked(h1, h2, h1.underlay_addr);
    let vx = |which: &str| link_statistic(&h2.ns, "vx", which).unwrap();
    let (rx, tx) = (vx("rx_bytes"), vx("tx_bytes"));
    pairs.transfer_both_ways();
    assert!(
        vx("rx_bytes") - rx >= 2 * BULK,
        "the vxlan device did not receive the transfers"
    );
    assert!(
        vx("tx_bytes") - tx >= 2 * BULK,
        "the vxlan device did not send the transfers"
    );
    drop(pairs);
    h1.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

/// One host, forwarding on (detach leaves it on, by design: runtimes may
/// rely on it), and the snapshot of its namespace as found.
fn one_host() -> (Fleet, String) {
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let before = netns_snapshot(&host.ns).unwrap();
    (fleet, before)
}

/// The pieces attach makes for a VXLAN fan, and that detach removes them all.
#[test]
fn a_vxlan_fan_s_bridge_gateway_and_overlay_port_come_and_go_with_it() {
    if !privileged() {
        return;
    }
    let (fleet, before) = one_host();
    let host = &fleet.hosts[0];
    let out = host
        .fan_xdp_ok(&[&ATTACH_VXLAN[..], &["--no-agent"]].concat())
        .unwrap();
    assert!(out.contains("(VXLAN, VNI 16384000, port 8472)"), "{out}");
    let bridge = host.bridge.as_str();
    // The gateway with the overlay's prefix: the kernel routes the overlay to the bridge.
    let addrs = host.ns.ip(&["-4", "addr", "show", "dev", bridge]).unwrap();
    assert!(
        addrs.contains(&format!("inet {}/8 ", host.gateway)),
        "{addrs}"
    );
    let route = host.ns.ip(&["route", "show", OVERLAY]).unwrap();
    assert!(route.contains(&format!("dev {bridge}")), "{route}");
    // No fan-host: the overlay port carries the host's traffic too.
    assert!(host.ns.ip(&["link", "show", "fan-host"]).is_err());
    let (a, b) = ("fvx-fa000100a", "fvx-fa000100b");
    let port = host.ns.ip(&["-d", "link", "show", a]).unwrap();
    assert!(
        port.contains(&format!("master {bridge}")) && port.contains("mtu 1450"),
        "{port}"
    );
    let inner = host.ns.ip(&["-d", "link", "show", b]).unwrap();
    assert!(
        inner.contains("mtu 1450") && inner.contains("state UP"),
        "{inner}"
    );
    assert!(
        !host
            .ns
            .ip(&["addr", "show", "dev", b])
            .unwrap()
            .contains("inet")
    );
    let bridge_link = host.ns.ip(&["link", "show", bridge]).unwrap();
    assert!(bridge_link.contains("mtu 1450"), "{bridge_link}");
    // fan_vxlan_out at B's TC ingress.
    assert_eq!(ingress_programs(host, b), ["fan_vxlan_out"]);
    let shown = host.fan_xdp_ok(&["show"]).unwrap();
    assert!(
        shown.contains("type=vxlan")
            && shown.contains("vni=16384000")
            && shown.contains("port=8472"),
        "{shown}"
    );
    let prometheus = host.fan_xdp_ok(&["stats", "--prometheus"]).unwrap();
    assert!(
        prometheus.contains("fan_xdp_fan_info{overlay=\"250.0.0.0/8\",type=\"vxlan\"} 1"),
        "{prometheus}"
    );
    let stats = host.fan_xdp_ok(&["stats", "--fan", OVERLAY]).unwrap();
    assert!(stats.starts_with("type: vxlan\n"), "{stats}");
    let doctor = host.fan_xdp(&["doctor"]).unwrap();
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.starts_with("fan(s): 250.0.0.0/8 vxlan\n"),
        "{doctor}"
    );
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert_netns_unchanged(
        &host.ns,
        &before,
        "detach of a VXLAN fan left something behind",
    );
}

/// An attach that fails after any step leaves nothing of a VXLAN fan.
#[test]
fn a_vxlan_attach_failing_at_each_step_takes_back_what_it_did() {
    if !privileged() {
        return;
    }
    let (fleet, before) = one_host();
    let host = &fleet.hosts[0];
    host.assert_every_step_rolls_back(
        &[&ATTACH_VXLAN[..], &["--no-agent"]].concat(),
        &before,
        netns_snapshot,
    );
}

/// Bad VXLAN options are refused by name, and refused before anything changes.
#[test]
fn bad_vxlan_options_are_refused_and_change_nothing() {
    if !privileged() {
        return;
    }
    let (fleet, before) = one_host();
    let host = &fleet.hosts[0];
    let attach = ["attach", "eth0", "--overlay", OVERLAY];
    for (extra, says) in [
        (&["--type", "vxlan", "--vni", "16777216"][..], "24 bits"),
        (&["--type", "vxlan", "--port", "0"], "1 to 65535"),
        (&["--type", "vxlan", "--port", "65536"], "1 to 65535"),
        (&["--type", "gre"], "gre"),
        (&["--vni", "7"], "need --type vxlan"),
        (&["--port", "4789"], "need --type vxlan"),
        (
            &["--type", "vxlan", "--mode", "xdp"],
            "--mode xdp does not decapsulate VXLAN",
        ),
        (
            &["--type", "vxlan", "--mtu", "1460"],
            "after the 50-byte vxlan header",
        ),
    ] {
        let args = [&attach[..], extra].concat();
        let out = host.fan_xdp(&args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_netns_unchanged(&host.ns, &before, &format!("{args:?} changed something"));
    }
}

/// fanctl's spelling: `up ... type vxlan` and a configuration line with it
/// make the same fan as `attach --type vxlan`; `down` removes it.
#[test]
fn up_and_down_take_the_type_vni_and_port_words() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.fan_xdp_ok(&[
        "up",
        "--no-agent",
        OVERLAY,
        "eth0/16",
        "type",
        "vxlan",
        "vni",
        "42",
        "port",
        "4789",
    ])
    .unwrap();
    let shown = show(host);
    assert_eq!(
        (&shown[0]["type"], &shown[0]["vni"], &shown[0]["port"]),
        (
            &serde_json::json!("vxlan"),
            &serde_json::json!(42),
            &serde_json::json!(4789)
        ),
        "{shown}"
    );
    host.fan_xdp_ok(&["down", OVERLAY, "eth0/16"]).unwrap();
    assert_eq!(show(host), serde_json::json!([]));
}

/// The agent puts back a VXLAN fan's overlay port deleted under it.
#[test]
fn the_agent_repairs_a_deleted_overlay_port() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.fan_xdp_ok(&ATTACH_VXLAN).unwrap();
    let (a, b) = ("fvx-fa000100a", "fvx-fa000100b");
    host.ns.ip(&["link", "del", a]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let back = host.ns.ip(&["link", "show", a]).unwrap_or_default();
        if back.contains(&format!("master {}", host.bridge))
            && ingress_programs(host, b) == ["fan_vxlan_out"]
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the overlay port is not back: {back}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let entry = host.pinned_fan_entry().unwrap();
    let index = |name: &str| {
        host.ns
            .enter(|| fan_tests::topology::ifindex(name))
            .unwrap()
            .unwrap()
    };
    assert_eq!(entry.overlay_port_ifindex, index(b));
    assert_eq!(entry.bridge_ifindex, index(&host.bridge));
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

/// DHCP on a VXLAN fan: the lease's option 26 carries the fan's MTU (the
/// underlay's less 50), the router is the gateway, the netmask the slice's.
#[test]
fn dhcp_on_a_vxlan_fan_hands_out_its_mtu() {
    if !privileged() {
        return;
    }
    fan_tests::dhcp::require_tools().unwrap();
    let state = fan_tests::dhcp::StateDir::new().unwrap();
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let said =
        fan_tests::dhcp::fan_xdp(host, &state, &[&ATTACH_VXLAN[..], &["--dhcp"]].concat()).unwrap();
    assert!(said.contains("MTU 1450"), "{said}");
    let client =
        fan_tests::dhcp::plug_dhcp_container(&host.ns, &host.bridge, "dveth1", "vd1-1").unwrap();
    let leased = fan_tests::dhcp::lease(&client).unwrap();
    assert_eq!(
        (leased.prefix, leased.router, leased.mtu),
        (24, Some(host.gateway), MTU),
        "{leased:?}"
    );
    drop(client);
    fan_tests::dhcp::fan_xdp(host, &state, &["detach", "eth0"]).unwrap();
}

/// An IP-in-IP fan and a VXLAN fan on one host: `fan-host` is the IP-in-IP
/// fan's alone and goes with it; the VXLAN fan's pieces stay until it goes.
#[test]
fn an_ipip_fan_and_a_vxlan_fan_side_by_side() {
    if !privileged() {
        return;
    }
    let (fleet, before) = one_host();
    let host = &fleet.hosts[0];
    host.fan_xdp_ok(&[&ATTACH_VXLAN[..], &["--no-agent"]].concat())
        .unwrap();
    assert!(host.ns.ip(&["link", "show", "fan-host"]).is_err());
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", "240.0.0.0/8", "--no-agent"])
        .unwrap();
    let fan_host = host.ns.ip(&["link", "show", "fan-host"]).unwrap();
    assert!(
        fan_host.contains("mtu 1480"),
        "the IP-in-IP fan's MTU: {fan_host}"
    );
    let shown = show(host);
    let types: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ipip", "vxlan"], "{shown}");
    host.fan_xdp_ok(&["detach", "eth0", "--overlay", "240.0.0.0/8"])
        .unwrap();
    assert!(
        host.ns.ip(&["link", "show", "fan-host"]).is_err(),
        "fan-host outlived the last IP-in-IP fan"
    );
    assert!(host.ns.ip(&["link", "show", "fvx-fa000100a"]).is_ok());
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert_netns_unchanged(&host.ns, &before, "two fans left something behind");
}

/// An LXD 5.0 container on fan-xdp's VXLAN bridge, addressed by fan-xdp's
/// DHCP, reaches a container behind a kernel-VXLAN Fan host (an LXD host
/// not moved yet), and the other way: the end state of
/// docs/containers.md's move, on a stock kernel.
#[test]
fn an_lxd_container_on_a_vxlan_fan_reaches_one_behind_a_kernel_vxlan_host() {
    use fan_common::Encap;
    use fan_tests::runtimes::{Bed, LEASE_TIME, installed, lxd, wait_for_lease};
    if !privileged() || !installed("lxd", lxd::LXD) {
        return;
    }
    let mut bed = Bed::new_typed(2, Encap::Vxlan, &["--dhcp"], &lxd::leftovers()).unwrap();
    // Host 2 is not moved: its kernel's vxlan device is its fan.
    bed.fan_xdp(1, &["detach", "eth0"]).unwrap();
    let (h1, h2) = (&bed.fleet.hosts[0], &bed.fleet.hosts[1]);
    kernel_vxlan_fan(h2, h1.underlay_addr);
    let behind_kernel = container(h2, 1, 8);
    let mut daemon = lxd::Lxd::start(h1, "h1", &h1.bridge, MTU).unwrap();
    let c1 = daemon.launch("c1").unwrap();
    let lease = wait_for_lease(&c1.ns, LEASE_TIME).unwrap();
    assert_eq!(
        (lease.prefix, lease.mtu, lease.router),
        (24, MTU, Some(h1.gateway)),
        "the lease on {}",
        h1.slice_cidr()
    );
    assert!(
        ping(&c1.ns, behind_kernel.addr, 3).unwrap(),
        "the LXD container cannot reach the kernel-VXLAN host's container"
    );
    assert!(
        ping(&behind_kernel.ns, lease.addr, 3).unwrap(),
        "the kernel-VXLAN host's container cannot reach the LXD container"
    );
    let seen = daemon.address("c1").unwrap();
    assert!(
        seen.starts_with(&format!("{} (eth0)", lease.addr)),
        "{seen}"
    );
    drop((c1, behind_kernel));
    bed.runtimes.push(daemon);
}

/// The MTU of `dev` in `host`'s namespace.
fn link_mtu(host: &Host, dev: &str) -> Option<u32> {
    let link = host.ns.ip(&["link", "show", dev]).ok()?;
    let mut words = link.split_whitespace().skip_while(|w| *w != "mtu");
    words.nth(1)?.parse().ok()
}

/// The underlay's MTU lowered after attach and raised again: a VXLAN fan's
/// MTU follows it with VXLAN's 50 bytes of overhead (not IP-in-IP's 20), on
/// the fan, its bridge and both ends of its overlay port, and transfers go on.
#[test]
fn a_vxlan_fan_s_mtu_follows_the_underlay_less_50() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&["--type", "vxlan"]).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    // Routed through the gateway: a frame switched to the overlay port
    // above its MTU is dropped by the bridge, with no ICMP (as with the
    // kernel's fan device), so on-link containers need their MTU lowered.
    let (c1, c2) = (container(h1, 1, 24), container(h2, 1, 24));
    for (underlay, fan) in [(1400, 1350), (1500, 1450)] {
        for (i, host) in fleet.hosts.iter().enumerate() {
            let mtu = underlay.to_string();
            let port = format!("sw-h{}", i + 1);
            fleet
                .switch
                .ip(&["link", "set", &port, "mtu", &mtu])
                .unwrap();
            host.ns.ip(&["link", "set", "eth0", "mtu", &mtu]).unwrap();
        }
        for host in [h1, h2] {
            let third = host.slice.octets()[2];
            let (a, b) = (
                format!("fvx-fa00{third:02x}00a"),
                format!("fvx-fa00{third:02x}00b"),
            );
            let mtus = || {
                [
                    show(host)[0]["mtu"].as_u64().map(|m| m as u32),
                    link_mtu(host, &host.bridge),
                    link_mtu(host, &a),
                    link_mtu(host, &b),
                ]
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while mtus() != [Some(fan); 4] && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert_eq!(
                mtus(),
                [Some(fan); 4],
                "underlay MTU {underlay}: the fan, bridge and overlay port of {}",
                host.ns.name()
            );
        }
        for (server, client) in [(&c2, &c1), (&c1, &c2)] {
            // The containers keep their 1450: what no longer fits gets
            // "fragmentation needed" from their host and TCP adapts.
            let moved = tcp_transfer(&server.ns, &client.ns, server.addr, 8 << 20).unwrap();
            assert_eq!(moved, 8 << 20, "underlay MTU {underlay}");
        }
    }
    drop((c1, c2));
    fleet.detach_all().unwrap();
}

/// An adopted bridge with no address of its own set takes its ports'
/// smallest MAC: the overlay port must not change it (its containers would
/// keep sending to the gateway's old MAC once the port went again).
#[test]
fn the_overlay_port_leaves_an_adopted_bridge_s_mac_alone() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    fan_tests::topology::add_bridge(host).unwrap();
    // The container's port with the largest unicast MAC but one: the
    // bridge's MAC is that port's, and a port below it would take over.
    let c = container(host, 1, 24);
    host.ns
        .ip(&["link", "set", "veth1", "address", "fe:ff:ff:ff:ff:fe"])
        .unwrap();
    let bridge_mac = || mac_of(&host.ns, &host.bridge).unwrap();
    assert_eq!(bridge_mac(), [0xfe, 0xff, 0xff, 0xff, 0xff, 0xfe]);
    host.fan_xdp_ok(&[&ATTACH_VXLAN[..], &["--no-agent"]].concat())
        .unwrap();
    assert_eq!(bridge_mac(), [0xfe, 0xff, 0xff, 0xff, 0xff, 0xfe]);
    assert!(ping(&c.ns, host.gateway, 1).unwrap());
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert_eq!(bridge_mac(), [0xfe, 0xff, 0xff, 0xff, 0xff, 0xfe]);
}

/// doctor says when a VXLAN fan's gateway would send ICMP redirects (the
/// namespace's default), which tell containers routed through it to send
/// to remote containers directly, and is content once they are off.
#[test]
fn doctor_names_redirects_on_a_vxlan_fan_s_bridge() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.fan_xdp_ok(&ATTACH_VXLAN).unwrap();
    let out = host.fan_xdp(&["doctor"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("sends ICMP redirects on fan-250-0-1")
            && said.contains("net.ipv4.conf.fan-250-0-1.send_redirects=0"),
        "{said}"
    );
    for scope in ["all", "fan-250-0-1"] {
        host.ns
            .sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")
            .unwrap();
    }
    let healthy = host.fan_xdp_ok(&["doctor"]).unwrap();
    assert_eq!(
        healthy,
        "ok: 1 fan(s) (250.0.0.0/8 vxlan), nothing found that breaks them\n"
    );
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}
