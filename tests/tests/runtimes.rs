//! Real container runtimes on the fan, as the Fan's users ran them: Docker
//! pointed at the slice bridge (`-b fan-250-0-1 --mtu=1480
//! --iptables=false`), LXC and LXD containers on the slice bridge taking
//! their addresses from fan-xdp's DHCP. Docker and LXC run unchanged on a
//! VXLAN fan as well (the same scenarios, `attach --type vxlan`). Each
//! daemon runs inside the namespace of the simulated host it serves
//! (tests/src/runtimes). Host kernel only: the 6.1 VM has no runtimes.
//! docs/containers.md shows the same commands.
//!
//! Over 400 lines: each test is one runtime's scenario end to end, whole
//! so that a failure reads on its own; the daemons' setup is already in
//! `fan_tests::runtimes`, what is left are the tests and the few helpers
//! beside them.

use std::{net::Ipv4Addr, time::Duration};

use fan_common::{Encap, StatReason, vxlan::VXLAN_DEFAULT_PORT};
use fan_tests::{
    dhcp::Leased,
    netns::Netns,
    privileged,
    runtimes::{
        Bed, LEASE_TIME,
        docker::{self, DOCKERD, Dockerd},
        installed,
        lxc::{LXC_START, LxcHost},
        lxd::{self, LXD, Lxd},
        wait_for_lease,
    },
    topology::{Host, OVERLAY_MTU, add_container_at},
    traffic::{Capture, arp_request, mac_of, ping, send_frames, snmp_counter, tcp_transfer},
};

const MB: u64 = 1 << 20;

/// dockerd's options for host `i`'s fan: the `DOCKER_OPTS` line that
/// `fan-xdp show --json` gives, split as a shell would.
fn docker_options<R>(bed: &Bed<R>, i: usize) -> Vec<String> {
    let shown: serde_json::Value =
        serde_json::from_str(&bed.fan_xdp(i, &["show", "--json"]).unwrap()).unwrap();
    let line = shown[0]["docker_opts"]
        .as_str()
        .unwrap_or_else(|| panic!("no docker_opts in {shown}"));
    let opts = line
        .strip_prefix("DOCKER_OPTS=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not a DOCKER_OPTS line: {line}"));
    opts.split_whitespace().map(String::from).collect()
}

/// The address plan's Docker range of a /24 slice: its third quarter.
fn in_docker_range(host: &Host, addr: Ipv4Addr) -> bool {
    let offset = u32::from(addr) - u32::from(host.slice);
    (128..=191).contains(&offset)
}

/// Docker on both hosts of a fresh two-host fan of wire format `encap`,
/// with the image imported.
fn docker_bed(encap: Encap) -> Option<Bed<Dockerd>> {
    if !privileged() || !installed("docker.io", DOCKERD) {
        return None;
    }
    let mut bed = Bed::new_typed(2, encap, &[], &docker::leftovers()).unwrap();
    for i in 0..bed.fleet.hosts.len() {
        let options = docker_options(&bed, i);
        let dockerd =
            Dockerd::start(&bed.fleet.hosts[i], &format!("h{}", i + 1), &options).unwrap();
        dockerd.import_busybox().unwrap();
        bed.runtimes.push(dockerd);
    }
    Some(bed)
}

/// Whether busybox ping inside Docker container `name` reaches `to`.
fn docker_ping(dockerd: &Dockerd, name: &str, to: Ipv4Addr) -> bool {
    let out = dockerd
        .exec(name, &["ping", "-c", "3", "-W", "2", &to.to_string()])
        .unwrap();
    out.status.success()
}

/// Runtimes that are not told an MTU copy the bridge's (LXD's bridged nic,
/// LXC without `lxc.net.0.mtu`), so the slice bridge must keep the fan's
/// MTU also while no container is plugged in: the kernel lets a bridge
/// created with an MTU fall back to 1500 when its last port leaves.
#[test]
fn the_slice_bridge_keeps_the_fans_mtu_when_its_last_container_leaves() {
    if !privileged() {
        return;
    }
    let fleet = fan_tests::topology::Fleet::new(1).unwrap();
    fleet.attach_all(&["--no-agent"]).unwrap();
    let fleet = fleet.with_containers(1).unwrap();
    let host = &fleet.hosts[0];
    assert_eq!(bridge_mtu(host), "1480");
    host.ns.ip(&["link", "del", "veth1"]).unwrap();
    assert_eq!(bridge_ports(host), 0);
    assert_eq!(
        bridge_mtu(host),
        "1480",
        "the bridge lost the fan's MTU with its last port"
    );
    // A port with a larger MTU does not raise it either.
    host.ns
        .ip(&[
            "link", "add", "big0", "mtu", "1500", "type", "veth", "peer", "name", "big1",
        ])
        .unwrap();
    host.ns
        .ip(&["link", "set", "big0", "master", &host.bridge])
        .unwrap();
    assert_eq!(bridge_mtu(host), "1480");
    fleet.detach_all().unwrap();
}

/// The same when the fan's MTU is the 1500 a new bridge already has (a
/// 1520 underlay): the kernel ignores a request for the MTU a device has,
/// so that one would not be kept either.
#[test]
fn a_1500_slice_bridge_keeps_its_mtu_when_a_larger_port_joins() {
    if !privileged() {
        return;
    }
    let fleet = fan_tests::topology::Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.ns.ip(&["link", "set", "eth0", "mtu", "1520"]).unwrap();
    fleet.attach_all(&["--no-agent"]).unwrap();
    assert_eq!(bridge_mtu(host), "1500");
    host.ns
        .ip(&[
            "link", "add", "big0", "mtu", "9000", "type", "veth", "peer", "name", "big1",
        ])
        .unwrap();
    host.ns
        .ip(&["link", "set", "big0", "master", &host.bridge])
        .unwrap();
    assert_eq!(
        bridge_mtu(host),
        "1500",
        "a 9000 port raised the slice bridge's MTU"
    );
    fleet.detach_all().unwrap();
}

/// The prefix of the gateway address on the slice bridge, which Docker's
/// `-b` takes for its network's: the slice's on an IP-in-IP fan (routed
/// through the gateway), the overlay's on a VXLAN fan (on-link, as on
/// LXD's fan bridge).
fn gateway_prefix(encap: Encap) -> u8 {
    match encap {
        Encap::Ipip => 24,
        Encap::Vxlan => 8,
    }
}

/// The wire format of an underlay frame that carries a fan's packet: IPv4
/// protocol 4, or UDP to VXLAN's port.
fn wire_format(frame: &[u8]) -> Option<Encap> {
    const IPV4_START: usize = 14;
    if frame.len() < IPV4_START + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let udp_start = IPV4_START + usize::from(frame[IPV4_START] & 0x0f) * 4;
    let destination_port = frame.get(udp_start + 2..udp_start + 4);
    match frame[IPV4_START + 9] {
        4 => Some(Encap::Ipip),
        17 if destination_port == Some(&VXLAN_DEFAULT_PORT.to_be_bytes()[..]) => Some(Encap::Vxlan),
        _ => None,
    }
}

/// Runs `exchange` (pings between `host`'s containers and the other
/// host's, three each way) while `host`'s underlay is captured, and asserts
/// that the fan's packets in the capture all took wire format `encap`, at
/// least one for each echo and its reply.
fn carried_as<T>(encap: Encap, host: &Host, exchange: impl FnOnce() -> T) -> T {
    let pcap = std::env::temp_dir().join(format!("{}-runtime.pcap", host.ns.name()));
    let capture = Capture::start(&host.ns, "eth0", pcap).unwrap();
    let exchanged = exchange();
    let frames = capture.finish().unwrap();
    let formats: Vec<Encap> = frames.iter().filter_map(|f| wire_format(f)).collect();
    let carried = formats.iter().filter(|&&format| format == encap).count();
    assert!(
        carried >= 12 && carried == formats.len(),
        "{carried} of {} fan packets on {}'s underlay went {}: {formats:?}",
        formats.len(),
        host.ns.name(),
        encap.name()
    );
    exchanged
}

/// Docker on two hosts of a fan of wire format `encap`, started with the
/// options `fan-xdp show --json` gives: each container's address is in
/// Docker's range of its slice, with the prefix of the bridge's gateway
/// address, the fan's MTU and the gateway as default route; containers
/// ping across the hosts both ways (carried in the fan's format on the
/// underlay) and move 100 MB each way, which the sending hosts' counters
/// show was encapsulated.
fn docker_containers_ping_and_move_100_mb(encap: Encap) {
    let Some(bed) = docker_bed(encap) else { return };
    let (h1, h2) = (&bed.fleet.hosts[0], &bed.fleet.hosts[1]);
    let (d1, d2) = (&bed.runtimes[0], &bed.runtimes[1]);
    let c1 = d1.run("c1", &[]).unwrap();
    let c2 = d2.run("c2", &[]).unwrap();
    let c3 = d2.run("c3", &[]).unwrap();
    let mtu = format!(" mtu {} ", bed.fan_mtu());
    for (host, container) in [(h1, &c1), (h2, &c2), (h2, &c3)] {
        assert!(
            in_docker_range(host, container.addr),
            "{} got {}, outside {}'s Docker range",
            container.name,
            container.addr,
            host.slice_cidr()
        );
        let addr = container
            .ns
            .ip(&["-o", "-4", "addr", "show", "eth0"])
            .unwrap();
        let held = format!(" {}/{} ", container.addr, gateway_prefix(encap));
        assert!(addr.contains(&held), "{addr}");
        let link = container.ns.ip(&["-o", "link", "show", "eth0"]).unwrap();
        assert!(link.contains(&mtu), "{link}");
        let route = container.ns.ip(&["route", "show", "default"]).unwrap();
        assert!(
            route.starts_with(&format!("default via {} ", host.gateway)),
            "{route}"
        );
    }
    carried_as(encap, h2, || {
        assert!(
            docker_ping(d1, "c1", c2.addr),
            "c1 on h1 cannot ping c2 on h2"
        );
        assert!(
            docker_ping(d2, "c3", c1.addr),
            "c3 on h2 cannot ping c1 on h1"
        );
    });
    for (sending, server, client) in [(h1, &c2, &c1), (h2, &c1, &c2)] {
        let encapsulated = sending.counter(StatReason::Encapsulated).unwrap();
        let moved = tcp_transfer(&server.ns, &client.ns, server.addr, 100 * MB).unwrap();
        assert_eq!(moved, 100 * MB, "{} -> {}", client.name, server.name);
        // The bytes crossed the fan (not some other path between the
        // hosts): even as the largest GSO packets (65515 bytes inside)
        // 100 MB is 1601.
        let packets = sending.counter(StatReason::Encapsulated).unwrap() - encapsulated;
        assert!(
            packets >= 100 * MB / 65515,
            "only {packets} packets encapsulated for 100 MB from {}",
            client.name
        );
    }
    drop((c1, c2, c3));
    drop(bed);
}

#[test]
fn docker_containers_on_two_hosts_ping_and_move_100_mb_inside_dockers_range() {
    docker_containers_ping_and_move_100_mb(Encap::Ipip);
}

/// The same on a VXLAN fan, unchanged: the bridge holds `<slice>.1/8`, so
/// Docker's network is the overlay's /8 (on-link) with `--fixed-cidr`
/// keeping it to the slice's Docker range, and the MTU is 1450.
#[test]
fn docker_containers_on_two_vxlan_fan_hosts_ping_and_move_100_mb_inside_dockers_range() {
    docker_containers_ping_and_move_100_mb(Encap::Vxlan);
}

/// A container cannot take the address Docker hands out next: one that
/// claims the first addresses of Docker's range by ARP before Docker
/// starts a container gets nothing for them, and the Docker container
/// given one of them owns it (its runtime configured it): it reaches the
/// other host and is reached, delivered to directly, and the squatter's
/// later claims are dropped at its port.
#[test]
fn a_squatter_cannot_take_the_address_docker_hands_out_next() {
    let Some(bed) = docker_bed(Encap::Ipip) else {
        return;
    };
    let h2 = &bed.fleet.hosts[1];
    let (d1, d2) = (&bed.runtimes[0], &bed.runtimes[1]);
    let peer = d1.run("peer", &[]).unwrap();
    // A container of h2 outside Docker's range, plugged in by hand.
    let at = |offset: u32| Ipv4Addr::from(u32::from(h2.slice) + offset);
    let squatter = add_container_at(h2, 40, at(40)).unwrap();
    let mac = mac_of(&squatter.ns, "eth0").unwrap();
    let claimed: Vec<Ipv4Addr> = (128..=131).map(at).collect();
    let claims: Vec<Vec<u8>> = claimed
        .iter()
        .map(|address| arp_request(mac, (mac, *address), h2.gateway))
        .collect();
    send_frames(&squatter.ns, "eth0", &claims).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let given = d2.run("given", &[]).unwrap();
    assert!(
        claimed.contains(&given.addr),
        "Docker gave {}, none of the claimed {claimed:?}: the test shows nothing",
        given.addr
    );
    assert!(
        docker_ping(d2, "given", peer.addr),
        "the Docker container given {} cannot reach the other host",
        given.addr
    );
    assert!(
        h2.wait_for_direct(&peer.ns, given.addr).unwrap(),
        "no direct delivery to the Docker container given {}",
        given.addr
    );
    let squatter_echoes = snmp_counter(&squatter.ns, "Icmp", "InEchos").unwrap();
    assert!(ping(&peer.ns, given.addr, 3).unwrap());
    assert_eq!(
        snmp_counter(&squatter.ns, "Icmp", "InEchos").unwrap(),
        squatter_echoes,
        "the squatter got the Docker container's traffic"
    );
    let refused = h2.counter(StatReason::DropSourceNotBound).unwrap();
    let claim = arp_request(mac, (mac, given.addr), h2.gateway);
    send_frames(&squatter.ns, "eth0", &[claim]).unwrap();
    assert_eq!(
        h2.counter(StatReason::DropSourceNotBound).unwrap(),
        refused + 1,
        "the squatter's claim of the Docker container's address passed its port"
    );
    drop((peer, given, squatter));
    drop(bed);
}

/// The slice bridge's `ifindex N mtu M`, and its IPv4 addresses.
fn bridge_state(host: &Host) -> (String, String) {
    let link = host.ns.ip(&["-o", "link", "show", &host.bridge]).unwrap();
    let index = link.split(':').next().unwrap();
    let addrs = host
        .ns
        .ip(&["-o", "-4", "addr", "show", "dev", &host.bridge])
        .unwrap();
    let addrs: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    (
        format!("ifindex {index} mtu {}", bridge_mtu(host)),
        addrs.join(" "),
    )
}

fn bridge_mtu(host: &Host) -> String {
    let link = host.ns.ip(&["-o", "link", "show", &host.bridge]).unwrap();
    link.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap()
        .to_string()
}

/// The ports plugged into `host`'s slice bridge.
fn bridge_ports(host: &Host) -> usize {
    host.ns
        .ip(&["-o", "link", "show", "master", &host.bridge])
        .unwrap()
        .lines()
        .count()
}

#[test]
fn dockers_user_defined_network_adopts_the_fan_bridge_and_network_rm_leaves_it() {
    if !privileged() || !installed("docker.io", DOCKERD) {
        return;
    }
    let mut bed = Bed::new(2, &[], &docker::leftovers()).unwrap();
    let (h1, h2) = (&bed.fleet.hosts[0], &bed.fleet.hosts[1]);
    // A dockerd with no default bridge of its own (none on the fan's either).
    let plain = Dockerd::start(
        h1,
        "h1",
        &[
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]
        .map(String::from),
    )
    .unwrap();
    plain.import_busybox().unwrap();
    // The seed's dockerd, whose default network already is the fan bridge.
    let seeds = Dockerd::start(h2, "h2", &docker_options(&bed, 1)).unwrap();
    let before = bridge_state(h1);
    assert_eq!(before.1, "250.0.1.1/24", "{before:?}");
    let create = |dockerd: &Dockerd, host: &Host| {
        dockerd.docker_output(&[
            "network",
            "create",
            "-d",
            "bridge",
            "--subnet",
            &host.slice_cidr(),
            "--gateway",
            &host.gateway.to_string(),
            "--ip-range",
            &format!("{}/26", Ipv4Addr::from(u32::from(host.slice) + 128)),
            "-o",
            &format!("com.docker.network.bridge.name={}", host.bridge),
            "-o",
            "com.docker.network.driver.mtu=1480",
            "fan",
        ])
    };
    let created = create(&plain, h1).unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Adopted: the same device, its address and MTU untouched.
    assert_eq!(bridge_state(h1), before);
    let c1 = plain.run("c1", &["--network", "fan"]).unwrap();
    assert!(in_docker_range(h1, c1.addr), "{}", c1.addr);
    assert_eq!(bridge_ports(h1), 1, "c1 is not on {}", h1.bridge);
    let link = c1.ns.ip(&["-o", "link", "show", "eth0"]).unwrap();
    assert!(link.contains(" mtu 1480 "), "{link}");
    assert!(
        docker_ping(&plain, "c1", h2.gateway),
        "c1 on the user-defined network cannot reach h2 over the fan"
    );
    plain.docker(&["rm", "-f", "c1"]).unwrap();
    plain.docker(&["network", "rm", "fan"]).unwrap();
    // Docker removes only bridges it created: the fan's stays as it was.
    assert_eq!(bridge_state(h1), before);
    assert_eq!(bridge_ports(h1), 0);
    // On the seed's dockerd (-b) the same network is refused: the default
    // network holds the slice already.
    let refused = create(&seeds, h2).unwrap();
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("Pool overlaps with other one on this address space"),
        "{error}"
    );
    drop(c1);
    bed.runtimes.extend([plain, seeds]);
}

#[test]
fn detach_and_reattach_while_docker_runs_leave_its_containers_connected() {
    let Some(bed) = docker_bed(Encap::Ipip) else {
        return;
    };
    let h1 = &bed.fleet.hosts[0];
    let (d1, d2) = (&bed.runtimes[0], &bed.runtimes[1]);
    let c1 = d1.run("c1", &[]).unwrap();
    let c2 = d2.run("c2", &[]).unwrap();
    assert!(docker_ping(d1, "c1", c2.addr));
    let detached = bed.fan_xdp(0, &["detach", "eth0"]).unwrap();
    assert!(
        detached.contains(&format!("(bridge {}, kept: ", h1.bridge)),
        "{detached}"
    );
    assert_eq!(bridge_ports(h1), 1, "c1's port left {}", h1.bridge);
    bed.attach(0, &[]).unwrap();
    assert_eq!(bridge_state(h1).1, "250.0.1.1/24");
    assert_eq!(d1.address("c1").unwrap(), c1.addr);
    assert!(docker_ping(d1, "c1", c2.addr), "c1 lost h2 after re-attach");
    assert!(docker_ping(d2, "c2", c1.addr), "c2 lost c1 after re-attach");
    assert_eq!(
        tcp_transfer(&c2.ns, &c1.ns, c2.addr, 4 * MB).unwrap(),
        4 * MB
    );
}

/// The address plan's DHCP range of a /24 slice with the default host
/// reserve (the gateway alone): .2 to the end of the first half.
fn in_dhcp_range(host: &Host, addr: Ipv4Addr) -> bool {
    let offset = u32::from(addr) - u32::from(host.slice);
    (2..=127).contains(&offset)
}

/// Waits for the leases of one container on each of the two hosts, checks
/// each is what fan-xdp's DHCP gives on that host's slice (the plan's
/// range, prefix 24, the fan's MTU `mtu`, the gateway as router), and that
/// the two containers ping each other across the fan. Returns the leases.
fn leased_and_reaching(hosts: &[Host], containers: [&Netns; 2], mtu: u32) -> Vec<Leased> {
    let leases: Vec<Leased> = containers
        .iter()
        .map(|ns| wait_for_lease(ns, LEASE_TIME).unwrap())
        .collect();
    for (host, lease) in hosts.iter().zip(&leases) {
        assert!(
            in_dhcp_range(host, lease.addr),
            "leased {}, outside {}'s DHCP range",
            lease.addr,
            host.slice_cidr()
        );
        assert_eq!(
            (lease.prefix, lease.mtu, lease.router),
            (24, mtu, Some(host.gateway)),
            "the lease on {}",
            host.slice_cidr()
        );
    }
    assert!(
        ping(containers[0], leases[1].addr, 3).unwrap(),
        "h1's container cannot ping h2's"
    );
    assert!(
        ping(containers[1], leases[0].addr, 3).unwrap(),
        "h2's container cannot ping h1's"
    );
    leases
}

/// LXC containers on two hosts of a fan of wire format `encap` with DHCP,
/// each configured as for an IP-in-IP fan (`lxc.net.0.mtu = 1480`): each
/// takes a lease of its host's slice whose MTU is the fan's (on a VXLAN fan
/// DHCP's option 26 lowers the config's to 1450); they ping across the
/// hosts (carried in the fan's format on the underlay), the receiving host
/// delivers straight into its container, and 20 MB move each way.
fn lxc_containers_take_fan_dhcp_addresses_ping_and_transfer(encap: Encap) {
    if !privileged() || !installed("lxc", LXC_START) {
        return;
    }
    let mut bed = Bed::new_typed(2, encap, &["--dhcp"], &[]).unwrap();
    let mut containers = Vec::new();
    for (i, host) in bed.fleet.hosts.iter().enumerate() {
        let mut lxc = LxcHost::new(host, &format!("h{}", i + 1)).unwrap();
        containers.push(lxc.start("c1", &host.bridge, OVERLAY_MTU).unwrap());
        bed.runtimes.push(lxc);
    }
    let (c1, c2) = (&containers[0], &containers[1]);
    let h2 = &bed.fleet.hosts[1];
    let leases = carried_as(encap, h2, || {
        leased_and_reaching(&bed.fleet.hosts, [&c1.ns, &c2.ns], bed.fan_mtu())
    });
    // The lease is a binding: packets go straight into the container.
    assert!(
        h2.wait_for_direct(&c1.ns, leases[1].addr).unwrap(),
        "no direct delivery to h2's DHCP container"
    );
    for (server, client, addr) in [(c2, c1, leases[1].addr), (c1, c2, leases[0].addr)] {
        assert_eq!(
            tcp_transfer(&server.ns, &client.ns, addr, 20 * MB).unwrap(),
            20 * MB,
            "to {addr}"
        );
    }
    drop(containers);
}

#[test]
fn lxc_containers_on_two_hosts_take_fan_dhcp_addresses_ping_and_transfer() {
    lxc_containers_take_fan_dhcp_addresses_ping_and_transfer(Encap::Ipip);
}

#[test]
fn lxc_containers_on_two_vxlan_fan_hosts_take_fan_dhcp_addresses_ping_and_transfer() {
    lxc_containers_take_fan_dhcp_addresses_ping_and_transfer(Encap::Vxlan);
}

#[test]
fn lxd_containers_with_a_bridged_nic_take_fan_dhcp_addresses_and_ping_across() {
    if !privileged() || !installed("lxd", LXD) {
        return;
    }
    let mut bed = Bed::new(2, &["--dhcp"], &lxd::leftovers()).unwrap();
    let mut containers = Vec::new();
    for (i, host) in bed.fleet.hosts.iter().enumerate() {
        let mut lxd = Lxd::start(host, &format!("h{}", i + 1), &host.bridge, 1480).unwrap();
        containers.push(lxd.launch("c1").unwrap());
        bed.runtimes.push(lxd);
    }
    let leases = leased_and_reaching(
        &bed.fleet.hosts,
        [&containers[0].ns, &containers[1].ns],
        bed.fan_mtu(),
    );
    // LXD sees the address DHCP gave (it reads it from the container).
    let seen = bed.runtimes[0].address("c1").unwrap();
    assert!(
        seen.starts_with(&format!("{} (eth0)", leases[0].addr)),
        "{seen}"
    );
    drop(containers);
}
