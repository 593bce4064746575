//! The container edge end to end (docs/security.md, "The container edge"):
//! frames written byte for byte from inside a container's namespace, with
//! the agent running and with it stopped, on every kernel (the port
//! programs are TCX links from 6.6, clsact filters before).
//!
//! Addresses as in the topology: host A is 198.18.0.1 (slice 250.0.1.0/24),
//! host B 198.18.0.2 (slice 250.0.2.0/24, gateway 250.0.2.1); B's
//! containers are 250.0.2.11 (the sender) and 250.0.2.12 (its sibling),
//! A's first container 250.0.1.11.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use fan_common::StatReason;
use fan_tests::{
    hex,
    lifecycle::{has_clsact, ingress_programs},
    netns::Netns,
    privileged,
    topology::{Fleet, Host},
    traffic::{mac_of, ping, send_frames, snmp_counter},
};
use fan_userspace::dataplane::ENCAP_PORT;

const SENT: usize = 3;

// Fixture checksums were computed independently of fan-xdp.
// IP-in-IP from the sender to A's underlay address (250.0.2.11 ->
// 198.18.0.1) carrying what A would take for B's fan traffic: an echo
// request to A's container from B's gateway address, and from the sibling.
const TUNNEL_FROM_GATEWAY: &str = "45000034 12344000 40046673 fa00020b c6120001
    45000020 12344000 4001319c fa000201 fa00010b
    0800e139 42420001 66616e21";
const TUNNEL_FROM_SIBLING: &str = "45000034 12344000 40046673 fa00020b c6120001
    45000020 12344000 40013191 fa00020c fa00010b
    0800e139 42420001 66616e21";
// The sender's own tunnel to 203.0.113.9, outside every underlay.
const TUNNEL_ELSEWHERE: &str = "45000034 12344000 4004f07c fa00020b cb007109
    45000020 12344000 40010994 0a090909 0a010203
    0800e139 42420001 66616e21";
// An echo request to the gateway, 250.0.2.11 -> 250.0.2.1.
const ECHO_TO_GATEWAY: &str = "45000020 12344000 4001309c fa00020b fa000201
    0800e139 42420001 66616e21";
// UDP 1234 -> 68 to the sibling: a DHCP client takes it as a server's reply.
const UDP_TO_SIBLINGS_CLIENT_PORT: &str = "45000020 12344000 40113081 fa00020b fa00020c
    04d20044 000c0000 66616e21";
// A router advertisement from fe80::bbb to ff02::1: default router for
// 1800 s, prefix 2001:db8:1::/64 on-link and for autoconfiguration.
const ROUTER_ADVERTISEMENT: &str = "60000000 00303aff
    fe800000 00000000 00000000 00000bbb ff020000 00000000 00000000 00000001
    8600f01d 40000708 00000000 00000000
    030440c0 00278d00 00093a80 00000000 20010db8 00010000 00000000 00000000";

/// An Ethernet frame from `src` to `dst` of `ethertype` (with any VLAN
/// tags before it) carrying `payload` (hex).
fn frame(dst: [u8; 6], src: [u8; 6], ethertype: &str, payload: &str) -> Vec<u8> {
    let mut frame = dst.to_vec();
    frame.extend(src);
    frame.extend(hex(ethertype));
    frame.extend(hex(payload));
    frame
}

/// A gratuitous ARP reply of hardware type `hardware` from `mac` claiming `addr`.
fn arp_claim(hardware: u16, mac: [u8; 6], addr: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0xff; 6];
    arp.extend(mac);
    arp.extend([0x08, 0x06]);
    arp.extend(hardware.to_be_bytes());
    arp.extend(hex("0800 06 04 0002"));
    arp.extend(mac);
    arp.extend(addr);
    arp.extend([0xff; 6]);
    arp.extend(addr);
    arp
}

/// A packet socket on `iface` in `ns`, opened before anything is sent:
/// what arrives there queues until [`Listener::frames`] reads it.
struct Listener(OwnedFd);

impl Listener {
    fn open(ns: &Netns, iface: &str) -> Self {
        let iface = std::ffi::CString::new(iface).unwrap();
        let fd = ns
            .enter(move || {
                // SAFETY: a valid NUL-terminated string for the call.
                let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
                assert_ne!(index, 0, "no interface {iface:?}");
                let all = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket creation.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                        i32::from(all),
                    )
                };
                assert!(fd >= 0, "{}", std::io::Error::last_os_error());
                // SAFETY: we own the descriptor just created.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = all;
                addr.sll_ifindex = index as i32;
                // SAFETY: the address is valid for the call's duration.
                let bound = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(bound, 0, "{}", std::io::Error::last_os_error());
                fd
            })
            .unwrap();
        Self(fd)
    }

    /// The frames received (not sent) so far, waiting `settle` for late ones.
    fn frames(&self, settle: Duration) -> Vec<Vec<u8>> {
        std::thread::sleep(settle);
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 2048];
        for _ in 0..10_000 {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer and address are valid for the call's duration.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                break;
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    }

    /// How many received frames are IPv4 with `src`..`dst` at bytes 12..20
    /// of the IPv4 header and protocol `protocol`.
    fn count_ipv4(&self, protocol: u8, src: [u8; 4], dst: [u8; 4]) -> usize {
        self.frames(Duration::from_millis(500))
            .iter()
            .filter(|f| {
                f.len() >= 34
                    && f[12..14] == [0x08, 0x00]
                    && f[23] == protocol
                    && f[26..30] == src
                    && f[30..34] == dst
            })
            .count()
    }
}

/// Waits (bounded) until `reason` on `host` counted `want` packets more
/// than `before`, and asserts it counted exactly that many.
#[track_caller]
fn assert_counted(host: &Host, reason: StatReason, before: u64, want: usize, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut delta = 0;
    while Instant::now() < deadline {
        delta = host.counter(reason).unwrap() - before;
        if delta >= want as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(delta, want as u64, "{state}: {reason:?}");
}

const SENDER: [u8; 4] = [250, 0, 2, 11];
const SIBLING: [u8; 4] = [250, 0, 2, 12];
const GATEWAY: [u8; 4] = [250, 0, 2, 1];
const A_CONTAINER: [u8; 4] = [250, 0, 1, 11];

/// Every case of the container edge from B's first container; `agent`
/// says whether B's agent runs (and so the port programs), which changes
/// only what a container sends a sibling straight over the bridge.
fn the_edge_holds(fleet: &Fleet, agent: bool) {
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (sender, sibling) = (&b.containers[0], &b.containers[1]);
    let gateway_mac = mac_of(&b.ns, &b.bridge).unwrap();
    let sender_mac = mac_of(&sender.ns, "eth0").unwrap();
    let sibling_mac = mac_of(&sibling.ns, "eth0").unwrap();
    let to_gateway = |ethertype: &str, payload: &str| {
        vec![frame(gateway_mac, sender_mac, ethertype, payload); SENT]
    };
    let state = if agent {
        "with the agent"
    } else {
        "without the agent"
    };

    // (a) Tunnels to A's underlay address: A's container receives nothing.
    let at_a = Listener::open(&a.containers[0].ns, "eth0");
    let before = b.counter(StatReason::DropTunnelToUnderlay).unwrap();
    for tunnel in [TUNNEL_FROM_GATEWAY, TUNNEL_FROM_SIBLING] {
        send_frames(&sender.ns, "eth0", &to_gateway("0800", tunnel)).unwrap();
    }
    assert_counted(b, StatReason::DropTunnelToUnderlay, before, 2 * SENT, state);
    for inner_src in [GATEWAY, SIBLING] {
        assert_eq!(
            at_a.count_ipv4(1, inner_src, A_CONTAINER),
            0,
            "{state}: A's container received a tunnelled packet from {inner_src:?}"
        );
    }

    // The counter-case: a tunnel outside every underlay still leaves B's
    // underlay (routed to A here, which stands for a router).
    let on_the_wire = Listener::open(&fleet.switch, "sw-h2");
    send_frames(&sender.ns, "eth0", &to_gateway("0800", TUNNEL_ELSEWHERE)).unwrap();
    let left: usize = on_the_wire
        .frames(Duration::from_millis(500))
        .iter()
        .filter(|f| f.len() >= 34 && f[23] == 4 && f[30..34] == [203, 0, 113, 9])
        .count();
    assert_eq!(
        left, SENT,
        "{state}: the container's own tunnel did not leave"
    );

    // (b) ARP of hardware type 6 claiming the sibling's address: the host
    // keeps the sibling's MAC for it.
    assert!(ping(&b.ns, sibling.addr, 1).unwrap());
    let before = b.counter(StatReason::DropArpNotEthernetIpv4).unwrap();
    let claim = arp_claim(6, sender_mac, SIBLING);
    send_frames(&sender.ns, "eth0", &vec![claim; SENT]).unwrap();
    assert_counted(b, StatReason::DropArpNotEthernetIpv4, before, SENT, state);
    let neighbour =
        b.ns.ip(&["neigh", "show", &sibling.addr.to_string(), "dev", &b.bridge])
            .unwrap();
    let sibling_mac_text = sibling_mac.map(|o| format!("{o:02x}")).join(":");
    assert!(
        neighbour.contains(&sibling_mac_text),
        "{state}: the host's neighbour entry for the sibling changed: {neighbour}"
    );

    // (c) VLAN 0 tagged once (the veth moves the tag into the packet's
    // metadata before TC) and twice, around an echo request to the
    // gateway: the host never answers.
    let echoes = snmp_counter(&b.ns, "Icmp", "InEchos").unwrap();
    let before = b.counter(StatReason::DropVlanTagged).unwrap();
    send_frames(
        &sender.ns,
        "eth0",
        &to_gateway("8100 0000 0800", ECHO_TO_GATEWAY),
    )
    .unwrap();
    send_frames(
        &sender.ns,
        "eth0",
        &to_gateway("8100 0000 8100 0000 0800", ECHO_TO_GATEWAY),
    )
    .unwrap();
    assert_counted(b, StatReason::DropVlanTagged, before, 2 * SENT, state);
    assert_eq!(
        snmp_counter(&b.ns, "Icmp", "InEchos").unwrap(),
        echoes,
        "{state}: the host answered a tagged echo request"
    );

    // (d) UDP to the sibling's DHCP client port, through the host (to the
    // gateway's MAC) and straight over the bridge (to the sibling's).
    let at_sibling = Listener::open(&sibling.ns, "eth0");
    let before = b.counter(StatReason::DropDhcpServerReply).unwrap();
    send_frames(
        &sender.ns,
        "eth0",
        &to_gateway("0800", UDP_TO_SIBLINGS_CLIENT_PORT),
    )
    .unwrap();
    let straight = frame(sibling_mac, sender_mac, "0800", UDP_TO_SIBLINGS_CLIENT_PORT);
    send_frames(&sender.ns, "eth0", &vec![straight; SENT]).unwrap();
    // The port drops both; the bridge's program sees only what the host routes.
    let dropped = if agent { 2 * SENT } else { SENT };
    assert_counted(b, StatReason::DropDhcpServerReply, before, dropped, state);
    // Without port programs, what crosses the bridge straight is the
    // bridge's to carry, unchecked (docs/security.md).
    let received = at_sibling.count_ipv4(17, SENDER, SIBLING);
    let expected = if agent { 0 } else { SENT };
    assert_eq!(
        received, expected,
        "{state}: the sibling received {received} of the UDP datagrams to its client port"
    );

    // (e) A router advertisement: the host learns no route or address, even
    // with the bridge set to take advertisements.
    let before = b.counter(StatReason::DropNotIpv4OrArp).unwrap();
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let advertisement = frame(all_nodes, sender_mac, "86dd", ROUTER_ADVERTISEMENT);
    send_frames(&sender.ns, "eth0", &[advertisement]).unwrap();
    assert_counted(b, StatReason::DropNotIpv4OrArp, before, 1, state);
    std::thread::sleep(Duration::from_millis(300));
    for family in ["route", "addr"] {
        let learned = b.ns.ip(&["-6", family, "show", "dev", &b.bridge]).unwrap();
        assert!(
            !learned.contains("2001:db8:1") && !learned.contains("proto ra"),
            "{state}: the host took the advertisement: {learned}"
        );
    }
}

/// B's first port (`veth1`) runs the port program, once, or nothing.
fn port_runs_the_program(b: &Host, runs: bool) {
    let programs = ingress_programs(b, "veth1");
    let expected: &[&str] = if runs { &[ENCAP_PORT] } else { &[] };
    assert_eq!(programs, expected, "veth1's ingress");
}

#[test]
fn a_container_speaks_only_for_its_own_address_with_the_agent_and_without() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&["--no-agent"]).unwrap();
    let fleet = fleet.with_containers(2).unwrap();
    let b = &fleet.hosts[1];
    // To show the programs' drop alone keeps advertisements out, the
    // bridge is set to take them (attach sets accept_ra 0).
    b.ns.sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", b.bridge), "0")
        .unwrap();
    b.ns.sysctl(&format!("net.ipv6.conf.{}.accept_ra", b.bridge), "2")
        .unwrap();
    // A route for the counter-case's tunnel outside the underlay.
    b.ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.0.1"])
        .unwrap();
    // Without the agent: the bridge's program alone.
    port_runs_the_program(b, false);
    the_edge_holds(&fleet, false);

    let daemon = b.fan_xdp_run().unwrap();
    b.wait_for_run_ready(Duration::from_secs(20)).unwrap();
    port_runs_the_program(b, true);
    the_edge_holds(&fleet, true);

    // Killed, the agent leaves a clsact filter behind (before 6.6; a TCX
    // link goes with it): the next agent takes it over in place, and at its
    // stop removes it, and the qdisc it added.
    daemon.kill().unwrap();
    let daemon = b.fan_xdp_run().unwrap();
    b.wait_for_run_ready(Duration::from_secs(20)).unwrap();
    port_runs_the_program(b, true);
    daemon.stop().unwrap();
    port_runs_the_program(b, false);
    assert!(
        !has_clsact(b, "veth1"),
        "the agent left the clsact qdisc it added on veth1"
    );
    the_edge_holds(&fleet, false);
    fleet.detach_all().unwrap();
}
