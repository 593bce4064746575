//! Two simulated hosts on a veth underlay in 198.18.0.0/16, one container
//! each, with fan-xdp's programs attached: ping and verified 100 MB TCP
//! transfers both ways, with and without TSO, in TC and XDP decap modes.

use std::net::Ipv4Addr;

use fan_common::{
    StatReason,
    ipv4::{IP_DF, IPPROTO_IPIP, OUTER_TTL, checksum},
};
use fan_tests::{
    privileged,
    topology::{Fleet, Host},
    traffic::{Capture, ping, tcp_transfer},
};
use fan_userspace::dataplane::{Dataplane, DecapMode, Stats};

/// 100 MB per transfer; `FAN_TEST_BULK_MB` lowers it in the emulated VM,
/// where the CPU is many times slower (the 100 MB runs happen on this kernel).
fn bulk() -> u64 {
    std::env::var("FAN_TEST_BULK_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        * 1024
        * 1024
}

fn stats(dataplane: &Dataplane) -> Stats {
    dataplane.stats().expect("reading counters")
}

fn container(host: &Host) -> (&fan_tests::netns::Netns, Ipv4Addr) {
    let c = &host.containers[0];
    (&c.ns, c.addr)
}

/// Sends `bulk()` bytes from host `from`'s container to host `to`'s container and
/// checks the encapsulation and decapsulation counters account for it.
fn bulk_transfer(fleet: &Fleet, planes: &[Dataplane], from: usize, to: usize, expect_gso: bool) {
    let (client, _) = container(&fleet.hosts[from]);
    let (server, addr) = container(&fleet.hosts[to]);
    let (enc_before, dec_before) = (stats(&planes[from]), stats(&planes[to]));
    let started = std::time::Instant::now();
    let bulk = bulk();
    let moved = tcp_transfer(server, client, addr, bulk).expect("transfer over the fan");
    assert_eq!(moved, bulk);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "host {} -> host {}: {bulk} bytes in {seconds:.2} s ({:.2} Gbit/s)",
        from + 1,
        to + 1,
        bulk as f64 * 8.0 / seconds / 1e9
    );
    let enc = stats(&planes[from]).since(&enc_before);
    let dec = stats(&planes[to]).since(&dec_before);
    let encapsulated = enc.get(StatReason::Encapsulated);
    assert!(
        encapsulated.bytes >= bulk,
        "encapsulated {} bytes for {bulk} sent",
        encapsulated.bytes
    );
    let gso = enc.get(StatReason::EncapsulatedGso).packets;
    if expect_gso {
        assert!(gso > 0, "TSO on, yet no GSO packet was encapsulated");
    } else {
        assert_eq!(
            gso, 0,
            "TSO off on the sender, yet GSO packets were encapsulated"
        );
    }
    assert!(
        dec.get(StatReason::Decapsulated).bytes >= bulk,
        "decapsulated {:?}",
        dec
    );
    for reason in StatReason::ALL
        .iter()
        .filter(|r| r.name().starts_with("drop_"))
    {
        assert_eq!(
            enc.get(*reason).packets,
            0,
            "sender dropped {}",
            reason.name()
        );
        assert_eq!(
            dec.get(*reason).packets,
            0,
            "receiver dropped {}",
            reason.name()
        );
    }
}

fn set_tso(ns: &fan_tests::netns::Netns, iface: &str, on: bool) {
    let state = if on { "on" } else { "off" };
    ns.run("ethtool", &["-K", iface, "tso", state, "gso", state])
        .expect("ethtool");
}

/// Checks that everything between the two underlay addresses in a capture is
/// IP-in-IP with fan-xdp's outer header, and returns how many such frames it saw.
fn assert_only_ipip(frames: &[Vec<u8>], a: Ipv4Addr, b: Ipv4Addr) -> usize {
    let mut ipip = 0;
    for frame in frames {
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            continue; // ARP and the like
        }
        let ip = &frame[14..];
        let (src, dst) = (
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        );
        if !((src == a && dst == b) || (src == b && dst == a)) {
            continue;
        }
        assert_eq!(
            ip[9],
            IPPROTO_IPIP,
            "non-IP-in-IP packet between underlay hosts: {:02x?}",
            &ip[..20]
        );
        assert_eq!(ip[0], 0x45, "outer header has options");
        assert_eq!(ip[8], OUTER_TTL);
        assert_eq!(
            u16::from_be_bytes([ip[6], ip[7]]) & IP_DF,
            IP_DF,
            "outer DF not set"
        );
        let words: Vec<u16> = ip[..20]
            .chunks(2)
            .map(|w| u16::from_ne_bytes([w[0], w[1]]))
            .collect();
        assert_eq!(checksum(&words), 0, "outer checksum invalid");
        // The inner source must live in the outer source's slice.
        let inner_src = Ipv4Addr::new(ip[32], ip[33], ip[34], ip[35]);
        assert_eq!(
            inner_src.octets()[2],
            src.octets()[3],
            "inner {inner_src} not from {src}'s slice"
        );
        ipip += 1;
    }
    ipip
}

fn fan_works_end_to_end(mode: DecapMode) {
    let fleet = Fleet::plumbed_by_hand(2, 1).expect("building the fleet");
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, a1) = container(h1);
    let (c2, a2) = container(h2);

    // Without fan-xdp, nothing crosses: there is no IP-in-IP on this kernel.
    assert!(
        !ping(c1, a2, 1).unwrap(),
        "containers reached each other without the fan"
    );

    let planes = [
        h1.attach(mode).expect("attach h1"),
        h2.attach(mode).expect("attach h2"),
    ];

    let capture_path = std::env::temp_dir().join(format!("{}-underlay.pcap", h2.ns.name()));
    let capture = Capture::start(&h2.ns, "eth0", capture_path).expect("capture");
    assert!(ping(c1, a2, 3).unwrap(), "container 1 -> container 2");
    assert!(ping(c2, a1, 3).unwrap(), "container 2 -> container 1");
    // Traffic the hosts originate takes the host device and carries the
    // gateway address as source, which the receivers' anti-spoofing accepts.
    assert!(ping(&h1.ns, a2, 3).unwrap(), "host 1 -> container 2");
    assert!(ping(&h2.ns, a1, 3).unwrap(), "host 2 -> container 1");
    assert_eq!(
        tcp_transfer(c2, &h1.ns, a2, 8 << 20).unwrap(),
        8 << 20,
        "host 1 -> container 2 TCP"
    );
    bulk_transfer(&fleet, &planes, 0, 1, true);
    let frames = capture.finish().expect("reading the capture");
    let ipip = assert_only_ipip(&frames, h1.underlay_addr, h2.underlay_addr);
    assert!(ipip > 100, "only {ipip} IP-in-IP frames captured");

    // A TTL that would expire at the gateway goes to the stack, which answers.
    let out = c1
        .output(
            "ping",
            &["-n", "-c", "1", "-t", "1", "-W", "2", &a2.to_string()],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Time to live exceeded"),
        "no time exceeded: {text}"
    );
    assert!(stats(&planes[0]).get(StatReason::StackTtlExpired).packets >= 1);

    // A container whose link MTU exceeds the overlay MTU: what would not fit
    // the underlay goes to the stack, which answers "fragmentation needed"
    // with the overlay MTU, and TCP adapts.
    c1.ip(&["link", "set", "eth0", "mtu", "1500"]).unwrap();
    h1.ns.ip(&["link", "set", "veth1", "mtu", "1500"]).unwrap();
    let out = c1
        .output(
            "ping",
            &[
                "-n",
                "-c",
                "1",
                "-M",
                "do",
                "-s",
                "1472",
                "-W",
                "2",
                &a2.to_string(),
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtu = 1480"),
        "no fragmentation needed: {text}"
    );
    assert!(stats(&planes[0]).get(StatReason::StackTooBig).packets >= 1);
    assert_eq!(
        tcp_transfer(c2, c1, a2, 16 << 20).unwrap(),
        16 << 20,
        "TCP after PMTU discovery"
    );
    c1.ip(&["link", "set", "eth0", "mtu", "1480"]).unwrap();
    h1.ns.ip(&["link", "set", "veth1", "mtu", "1480"]).unwrap();

    // Both directions, TSO on (GSO packets are encapsulated whole) ...
    bulk_transfer(&fleet, &planes, 1, 0, true);
    // ... TSO off in the sending container (every segment encapsulated) ...
    set_tso(c1, "eth0", false);
    set_tso(c2, "eth0", false);
    bulk_transfer(&fleet, &planes, 0, 1, false);
    bulk_transfer(&fleet, &planes, 1, 0, false);
    set_tso(c1, "eth0", true);
    set_tso(c2, "eth0", true);
    // ... and TSO off on the sending host's underlay NIC, so the kernel
    // segments the encapsulated GSO packets in software (IP-in-IP GSO).
    set_tso(&h1.ns, "eth0", false);
    set_tso(&h2.ns, "eth0", false);
    bulk_transfer(&fleet, &planes, 0, 1, true);
    bulk_transfer(&fleet, &planes, 1, 0, true);

    // Detached, the same traffic fails again.
    drop(planes);
    assert!(
        !ping(c1, a2, 2).unwrap(),
        "ping still works after detaching"
    );
    assert!(
        tcp_transfer(c2, c1, a2, 1 << 20).is_err(),
        "TCP still works after detaching"
    );
}

#[test]
fn fan_with_tc_decapsulation() {
    if !privileged() {
        return;
    }
    fan_works_end_to_end(DecapMode::Tc);
}

#[test]
fn fan_with_xdp_decapsulation() {
    if !privileged() {
        return;
    }
    fan_works_end_to_end(DecapMode::Xdp);
}
