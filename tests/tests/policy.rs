//! The receive policy end to end, as a hostile host on the underlay tries
//! it: forged frames written byte for byte onto the wire between attached
//! hosts (see docs/security.md for what the policy promises).
//!
//! Addresses as in the topology: host `i` is 198.18.0.i and owns slice
//! 250.0.i.0/24; its container `j` is 250.0.i.(10+j).

use std::{net::Ipv4Addr, time::Duration};

use fan_common::StatReason;
use fan_tests::{
    hex, privileged,
    topology::{Fleet, Host},
    traffic::{mac_of, ping, send_frames, snmp_counter},
};
use fan_userspace::dataplane::{Dataplane, Stats};

const OVERLAY: &str = "250.0.0.0/8";
const FORGED: usize = 5;

// Fixture checksums were computed independently of fan-xdp.
// From h1, claiming to be h2 itself: outer 198.18.0.2 -> 198.18.0.2, inner
// 250.0.2.77 (h2's own slice) -> 250.0.2.11 (h2's container), ICMP echo.
const OWN_ADDRESS_AS_SOURCE: &str = "45000034 00004000 4004ae9d c6120002 c6120002
    45000020 12344000 40013050 fa00024d fa00020b
    0800e139 42420001 66616e21";
// From h1 with a genuine source, for a container on h3: outer 198.18.0.1 ->
// 198.18.0.2, inner 250.0.1.77 -> 250.0.3.11. h2 must not forward it.
const FOR_A_THIRD_HOST: &str = "45000034 00004000 4004ae9e c6120001 c6120002
    45000020 12344000 40013050 fa00014d fa00030b
    0800e139 42420001 66616e21";
// From h1's first container with its sibling's source: 250.0.1.12 -> 250.0.2.11.
const FROM_THE_SIBLING: &str = "45000020 12344000 40013191 fa00010c fa00020b
    0800e139 42420001 66616e21";

fn stats(host: &Host) -> Stats {
    host.pinned_maps().unwrap().stats().unwrap()
}

/// `count` copies of an Ethernet frame from `from`'s eth0 to `to`'s eth0
/// carrying the literal IPv4 packet `ip`.
fn frames_between(from: &Host, to: &Host, ip: &str, count: usize) -> Vec<Vec<u8>> {
    let mut frame = mac_of(&to.ns, "eth0").unwrap().to_vec();
    frame.extend(mac_of(&from.ns, "eth0").unwrap());
    frame.extend([0x08, 0x00]);
    frame.extend(hex(ip));
    vec![frame; count]
}

/// Waits (bounded) until `reason` on `host` has counted `want` more packets
/// than in `before`; returns the final difference.
fn wait_for_count(host: &Host, before: &Stats, reason: StatReason, want: u64) -> u64 {
    let mut delta = 0;
    for _ in 0..20 {
        delta = stats(host).get(reason).packets - before.get(reason).packets;
        if delta >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    delta
}

#[test]
fn a_peer_cannot_speak_for_this_host_or_use_it_as_a_relay() {
    if !privileged() {
        return;
    }
    for mode in ["tc", "xdp"] {
        let fleet = Fleet::new(3).unwrap();
        fleet.attach_all(&["--mode", mode]).unwrap();
        let fleet = fleet.with_containers(1).unwrap();
        let [h1, h2, _h3] = &fleet.hosts[..] else {
            unreachable!()
        };
        let container = &h2.containers[0];
        assert!(ping(&h1.containers[0].ns, container.addr, 1).unwrap());

        // 1. This host's own address as the outer source, with an inner
        // source of its own slice: nothing reaches the container.
        let echoes = snmp_counter(&container.ns, "Icmp", "InEchos").unwrap();
        let before = stats(h2);
        send_frames(
            &h1.ns,
            "eth0",
            &frames_between(h1, h2, OWN_ADDRESS_AS_SOURCE, FORGED),
        )
        .unwrap();
        assert_eq!(
            wait_for_count(h2, &before, StatReason::DropOuterSrcIsLocal, FORGED as u64),
            FORGED as u64,
            "{mode}: forged own-address packets not dropped by name"
        );
        assert_eq!(
            snmp_counter(&container.ns, "Icmp", "InEchos").unwrap(),
            echoes,
            "{mode}: the container received a packet forged with its host's address"
        );

        // 2. A genuine source, but an inner destination on a third host:
        // not decapsulated, so the host forwards nothing.
        let forwarded = snmp_counter(&h2.ns, "Ip", "ForwDatagrams").unwrap();
        let before = stats(h2);
        send_frames(
            &h1.ns,
            "eth0",
            &frames_between(h1, h2, FOR_A_THIRD_HOST, FORGED),
        )
        .unwrap();
        assert_eq!(
            wait_for_count(h2, &before, StatReason::DropInnerDstNotLocal, FORGED as u64),
            FORGED as u64,
            "{mode}: fan packets for another host not dropped by name"
        );
        assert_eq!(
            snmp_counter(&h2.ns, "Ip", "ForwDatagrams").unwrap(),
            forwarded,
            "{mode}: the host forwarded fan traffic meant for another host"
        );
        assert_eq!(
            stats(h2).get(StatReason::Decapsulated).packets,
            before.get(StatReason::Decapsulated).packets,
            "{mode}: a forged packet was decapsulated"
        );
        fleet.detach_all().unwrap();
    }
}

#[test]
fn decapsulated_traffic_continues_down_the_underlays_tcx_chain() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    // No agent: every decapsulated packet takes the stack path, the one that
    // continues down the chain (direct delivery ends it, as documented).
    fleet.attach_all(&["--no-agent"]).unwrap();
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    // A second TCX program after fan-xdp's on h2's underlay, standing for a
    // host firewall or another data plane: a separately loaded copy of the
    // bridge program. Its own (unpinned) maps hold no fan, so it counts every
    // IPv4 packet it sees as `pass_not_overlay`; on this underlay the only
    // such packets are the decapsulated ones.
    // The bridge's program refuses ARP whose sender is in none of its
    // slices (here it has none): the hosts' underlay neighbours are set
    // by hand, so that no ARP has to pass it.
    for (host, peer) in [(h1, h2), (h2, h1)] {
        let mac = peer
            .ns
            .run("cat", &["/sys/class/net/eth0/address"])
            .unwrap();
        let peer_addr = peer.underlay_addr.to_string();
        host.ns
            .ip(&[
                "neigh",
                "replace",
                &peer_addr,
                "lladdr",
                mac.trim(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .unwrap();
    }
    let mut probe = Dataplane::load().unwrap();
    h2.ns
        .enter(|| probe.attach_encap_forward("eth0"))
        .unwrap()
        .unwrap();
    let seen = |probe: &Dataplane| probe.stats().unwrap().get(StatReason::PassNotOverlay);
    let before = seen(&probe).packets;
    assert!(ping(&h1.containers[0].ns, h2.containers[0].addr, 3).unwrap());
    assert!(
        seen(&probe).packets >= before + 3,
        "the program after fan-xdp's never saw the decapsulated packets"
    );
    drop(probe);
    fleet.detach_all().unwrap();
}

#[test]
fn a_container_cannot_send_from_its_siblings_address() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&[]).unwrap();
    let fleet = fleet.with_containers(2).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    // Both containers speak, so the agent attach started learns their
    // bindings and attaches the port programs.
    let target = h2.containers[0].addr;
    let bound = |addr: Ipv4Addr| {
        let key = fan_common::WireAddr::from(addr);
        h1.pinned_maps().unwrap().endpoints.get(&key, 0).is_ok()
    };
    for _ in 0..50 {
        for c in &h1.containers {
            let _ = ping(&c.ns, target, 1);
        }
        if h1.containers.iter().all(|c| bound(c.addr)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        h1.containers.iter().all(|c| bound(c.addr)),
        "the daemon never bound both containers"
    );
    let (first, sibling) = (&h1.containers[0], &h1.containers[1]);
    assert_eq!(sibling.addr, Ipv4Addr::new(250, 0, 1, 12));
    // The first container sends with its sibling's source, to its gateway's MAC.
    let mut frame = mac_of(&h1.ns, &h1.bridge).unwrap().to_vec();
    frame.extend(mac_of(&first.ns, "eth0").unwrap());
    frame.extend([0x08, 0x00]);
    frame.extend(hex(FROM_THE_SIBLING));
    let before = stats(h1);
    send_frames(&first.ns, "eth0", &vec![frame; FORGED]).unwrap();
    assert_eq!(
        wait_for_count(h1, &before, StatReason::DropSourceNotBound, FORGED as u64),
        FORGED as u64,
        "packets with a sibling's source left the port"
    );
    assert_eq!(
        stats(h1).get(StatReason::Encapsulated).packets,
        before.get(StatReason::Encapsulated).packets,
        "a packet with a sibling's source was encapsulated"
    );
    fleet.detach_all().unwrap();
}

#[test]
fn a_drop_flood_is_not_an_event_flood() {
    use fan_tests::monitor::Monitor;
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let monitor = Monitor::start(host, &[]).unwrap();
    let before = stats(host);
    // 250.0.0.5 maps to the underlay's network address: every echo is a drop.
    let echoes = 300;
    host.ns
        .output(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                &echoes.to_string(),
                "-i",
                "0.002",
                "-W",
                "1",
                "250.0.0.5",
            ],
        )
        .unwrap();
    let since = |reason| stats(host).get(reason).packets - before.get(reason).packets;
    let dropped = since(StatReason::DropReservedHost);
    let suppressed = since(StatReason::EventsSuppressed);
    // Every drop is either sent (the monitor gets it, or is told it lost
    // it) or counted as suppressed; wait (bounded) for the sent ones.
    let events = monitor.events((dropped - suppressed) as usize, Duration::from_secs(10));
    let sent: u64 = events
        .iter()
        .map(|e| 1 + e["lost"].as_u64().unwrap_or(0))
        .sum();
    // ping sends again what the drop refused (ENOBUFS): more drops than echoes.
    assert!(dropped >= echoes, "{dropped} drops for {echoes} echoes");
    assert!(sent > 0, "no drop event at all");
    assert!(
        suppressed > 0,
        "{sent} events for {dropped} drops: no limit"
    );
    assert!(
        events.iter().all(|e| e["reason"] == "drop_reserved_host"),
        "{events:?}"
    );
    assert_eq!(
        sent + suppressed,
        dropped,
        "each drop is either sent ({sent}) or counted as suppressed ({suppressed})"
    );
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}
