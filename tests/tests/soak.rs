//! The soak: 3 hosts, containers on each, TCP flows between every pair of
//! long-lived containers on different hosts and a UDP stream to every
//! container, while containers leave and new ones take their addresses on
//! other ports. At the end: every flow delivered every byte once (content
//! checked), no container got a packet for an address it did not own, the
//! agents' memory and descriptors stayed flat, and the final detach left
//! the hosts as they were. Meanwhile the hosts change under the agents as
//! real ones do: an nftables DNAT rule (a Service's, as kube-proxy writes
//! it) comes and goes, turning the bypass off and on, and a host's
//! underlay address flaps; no flow may break for it.
//!
//! `cargo xtask test` runs a short one; `cargo xtask soak --minutes M` the
//! long one (FAN_SOAK_SECONDS, FAN_SOAK_CONTAINERS set its size).

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use fan_tests::{
    lifecycle::{
        Footprint, agent_pid, assert_runs_add_up, container, env_or, fleet_as_found,
        wait_until_bridge_empty,
    },
    privileged,
    snapshot::assert_lifecycle_unchanged,
    topology::{Container, Host},
    traffic::{listen_in, mac_of, send_frames, tcp_transfer_over},
};

/// Bytes of each TCP flow; a flow is one connection, content checked.
const FLOW_BYTES: u64 = 256 << 10;
/// The UDP port the streams send to (nothing listens: the watch counts them).
const UDP_PORT: u16 = 9999;
/// How much an agent's resident memory may grow from warm-up to the end.
const AGENT_RSS_GROWTH_KIB: u64 = 8 << 10;

/// Puts an nft watch on `c`'s eth0 ingress (the netdev hook sees every
/// frame the port delivers): `foreign` counts IPv4 unicast packets sent to
/// the container's MAC for any address but its own, which its stack would
/// take in (a misdelivery), and records their destinations in `strays`;
/// `flooded` counts those with another MAC, which the bridge floods to
/// every port while it does not know where a MAC is (after a container
/// left, until the neighbour entries move on) and the stack drops unseen;
/// `stream` the UDP stream's datagrams for the container. Multicast and
/// broadcast reach every port by design and are not counted.
fn watch(c: &Container) {
    let rules = format!(
        "table netdev watch {{
            counter foreign {{}}
            counter stream {{}}
            counter flooded {{}}
            set strays {{ type ipv4_addr; size 4096; flags dynamic; }}
            chain in {{
                type filter hook ingress device eth0 priority 0;
                ether daddr {mac} ip daddr != {{ {addr}, {broadcast}, 255.255.255.255, 224.0.0.0/4 }} counter name foreign add @strays {{ ip daddr }}
                ether daddr != {mac} ip daddr != {{ {addr}, {broadcast}, 255.255.255.255, 224.0.0.0/4 }} counter name flooded
                meta protocol ip ip daddr {addr} udp dport {UDP_PORT} counter name stream
            }}
        }}",
        addr = c.addr,
        broadcast = slice_broadcast(c.addr),
        mac = mac_of(&c.ns, "eth0")
            .unwrap()
            .map(|b| format!("{b:02x}"))
            .join(":")
    );
    let mut child =
        c.ns.command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft refused the watch");
}

/// Packets the watch's counter `name` of `c` has counted.
fn watched(c: &Container, name: &str) -> u64 {
    let out =
        c.ns.run("nft", &["list", "counter", "netdev", "watch", name])
            .unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").unwrap();
    words[at + 1].parse().unwrap()
}

/// The broadcast address of the slice `addr` lies in.
fn slice_broadcast(addr: Ipv4Addr) -> Ipv4Addr {
    let host_bits = 32 - u32::from(fan_tests::topology::fan_map().slice_len());
    Ipv4Addr::from(u32::from(addr) | ((1u32 << host_bits) - 1))
}

/// The destinations of the packets `c`'s watch counted as foreign.
fn strays(c: &Container) -> String {
    let out =
        c.ns.run("nft", &["list", "set", "netdev", "watch", "strays"])
            .unwrap();
    let elements = out.split("elements = {").nth(1).unwrap_or("");
    elements
        .split('}')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Service's DNAT rule, as kube-proxy adds one, in a table of its own
/// in `host`, for a second, then the table removed. Returns whether the
/// agent turned the bypass off while the rule was there and back on after
/// (each within a second).
fn dnat_on_and_off(host: &Host, backend: Ipv4Addr) -> bool {
    let rules = format!(
        "table ip soak_service {{ chain prerouting {{ type nat hook prerouting priority dstnat; \
         ip daddr 10.96.0.10 tcp dport 80 dnat to {backend}:8080; }}; }}"
    );
    let run = host
        .ns
        .enter(|| fan_userspace::state::rundir::RunDir::locate(None))
        .unwrap()
        .unwrap();
    let bypass_becomes = |on: bool| {
        let since = Instant::now();
        while since.elapsed() < Duration::from_secs(1) {
            if fan_userspace::agent::status(&run).is_some_and(|s| s.bypass == on) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    let mut child = host
        .ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "nft refused the DNAT rule");
    let off = bypass_becomes(false);
    host.ns
        .run("nft", &["delete", "table", "ip", "soak_service"])
        .unwrap();
    off && bypass_becomes(true)
}

/// `host`'s underlay address gone for half a second, then back.
fn flap(host: &Host) {
    let own = format!("{}/16", host.underlay_addr);
    host.ns.ip(&["addr", "del", &own, "dev", "eth0"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    host.ns.ip(&["addr", "add", &own, "dev", "eth0"]).unwrap();
}

/// Proves the watch sees a misdelivery: a frame for another address,
/// written onto the container's port from the host side, is counted.
fn watch_sees_a_stray(host: &Host, c: &Container, port: &str) {
    let mut frame = mac_of(&c.ns, "eth0").unwrap().to_vec();
    frame.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    // An IPv4/UDP header for 250.0.9.99 (no checksum needed: the ingress
    // hook counts before the stack looks).
    frame.extend([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend(host.gateway.octets());
    frame.extend([250, 0, 9, 99, 0x30, 0x39, 0x27, 0x0f, 0, 8, 0, 0]);
    let before = watched(c, "foreign");
    send_frames(&host.ns, port, &[frame]).unwrap();
    assert_eq!(watched(c, "foreign"), before + 1, "the watch misses strays");
}

/// A container of the soak: its address index, port and the container.
struct Slot {
    index: u8,
    port: u8,
    c: Container,
}

#[test]
fn soak_with_flows_and_containers_coming_and_going() {
    if !privileged() {
        return;
    }
    let seconds = env_or("FAN_SOAK_SECONDS", 30);
    let per_host = env_or("FAN_SOAK_CONTAINERS", 4).clamp(2, 40) as u8;
    let stable_per_host = per_host / 2;
    let churn_every = Duration::from_millis(env_or("FAN_SOAK_CHURN_MS", 1500));
    let (fleet, before) = fleet_as_found(3).unwrap();
    // The kernel counts the programs' runs from their load on, for the
    // counters to add up to (dropped before the final snapshot: a descriptor).
    let kernel_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    fleet.attach_all(&[]).unwrap();
    let plug = |host: &Host, port: u8, index: u8| {
        let c = container(host, port, index).unwrap();
        watch(&c);
        Slot { index, port, c }
    };
    let stable: Vec<Vec<Slot>> = fleet
        .hosts
        .iter()
        .map(|h| (1..=stable_per_host).map(|i| plug(h, i, i)).collect())
        .collect();
    let mut churning: Vec<Vec<Slot>> = fleet
        .hosts
        .iter()
        .map(|h| {
            (stable_per_host + 1..=per_host)
                .map(|i| plug(h, i, i))
                .collect()
        })
        .collect();
    watch_sees_a_stray(&fleet.hosts[0], &stable[0][0].c, "veth1");

    // Every long-lived container to every other on another host.
    let mut pairs = Vec::new();
    for (a, from) in stable.iter().enumerate() {
        for (b, to) in stable.iter().enumerate() {
            if a != b {
                for s in from {
                    for d in to {
                        pairs.push((&s.c, &d.c));
                    }
                }
            }
        }
    }
    let agents: Vec<u32> = fleet.hosts.iter().map(|h| agent_pid(h).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (flows, bytes, datagrams) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let churned = AtomicU64::new(0);
    let (dnat_rules, flaps) = (AtomicU64::new(0), AtomicU64::new(0));
    let disturb_every = Duration::from_millis(env_or("FAN_SOAK_DISTURB_MS", 2000));
    let mut warm = Vec::new();
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for (k, (client, server)) in pairs.iter().enumerate() {
            let (flows, bytes) = (&flows, &bytes);
            workers.push(scope.spawn(move || {
                // A port of its own for each pair, bound once: its flows
                // follow one another on one listener.
                let port = 10_000 + k as u16;
                let at = (server.addr, port).into();
                let listener = listen_in(&server.ns, at).unwrap();
                while Instant::now() < deadline {
                    let n = tcp_transfer_over(&listener, &client.ns, at, FLOW_BYTES)
                        .unwrap_or_else(|e| {
                            panic!("flow {} -> {}:{port}: {e:#}", client.addr, server.addr)
                        });
                    flows.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        // A UDP stream from each host's first container to every container
        // of the other hosts, churning ones included: at most 200 a second.
        for (a, from) in stable.iter().enumerate() {
            let targets: Vec<Ipv4Addr> = fleet
                .hosts
                .iter()
                .enumerate()
                .filter(|(b, _)| *b != a)
                .flat_map(|(_, h)| {
                    (1..=per_host).map(|i| Ipv4Addr::from(u32::from(h.slice) + 10 + i as u32))
                })
                .collect();
            let socket = from[0]
                .c
                .ns
                .enter(|| UdpSocket::bind((from[0].c.addr, 0)))
                .unwrap()
                .unwrap();
            let datagrams = &datagrams;
            workers.push(scope.spawn(move || {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    for t in &targets {
                        seq += 1;
                        // Unanswered datagrams may come back as refusals: ignored.
                        let _ = socket.send_to(&seq.to_be_bytes(), (*t, UDP_PORT));
                        datagrams.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis((5 * targets.len() as u64).max(5)));
                }
            }));
        }
        // The hosts change under the agents, round the hosts: a DNAT rule
        // of a table of its own added (the bypass goes off) and removed
        // (back on); the underlay address gone for half a second (a flap:
        // the fan stays).
        {
            let (fleet, stable) = (&fleet, &stable);
            let (dnat_rules, flaps) = (&dnat_rules, &flaps);
            workers.push(scope.spawn(move || {
                let mut turn = 0usize;
                while Instant::now() + disturb_every < deadline {
                    std::thread::sleep(disturb_every);
                    let h = turn % fleet.hosts.len();
                    let host = &fleet.hosts[h];
                    if turn.is_multiple_of(2) {
                        assert!(
                            dnat_on_and_off(host, stable[h][0].c.addr),
                            "the bypass did not follow a DNAT rule in {} within 1 s",
                            host.ns.name()
                        );
                        dnat_rules.fetch_add(1, Ordering::Relaxed);
                    } else {
                        flap(host);
                        flaps.fetch_add(1, Ordering::Relaxed);
                    }
                    turn += 1;
                }
            }));
        }
        // Containers leave and new ones take their addresses on other ports,
        // one every `churn_every`, round the hosts.
        let mut next_port = vec![per_host + 1; fleet.hosts.len()];
        let mut turn = 0usize;
        std::thread::sleep(Duration::from_secs(2));
        warm = agents.iter().map(|p| Footprint::of(*p).unwrap()).collect();
        while Instant::now() + churn_every < deadline {
            std::thread::sleep(churn_every);
            let h = turn % fleet.hosts.len();
            let host = &fleet.hosts[h];
            let slots = &mut churning[h];
            if slots.is_empty() {
                break;
            }
            let at = (turn / fleet.hosts.len()) % slots.len();
            let old = slots.remove(at);
            assert_eq!(
                watched(&old.c, "foreign"),
                0,
                "{} (port veth{}) got packets for another address: {}",
                old.c.addr,
                old.port,
                strays(&old.c)
            );
            let index = old.index;
            drop(old);
            // Ports veth<per_host+1> up to veth250 in turn: a port name is
            // taken again only long after its container left.
            let port = next_port[h];
            next_port[h] = if port >= 250 { per_host + 1 } else { port + 1 };
            slots.push(plug(host, port, index));
            churned.fetch_add(1, Ordering::Relaxed);
            turn += 1;
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    let end: Vec<Footprint> = agents.iter().map(|p| Footprint::of(*p).unwrap()).collect();
    let runs: Vec<(u64, u64)> = fleet
        .hosts
        .iter()
        .map(|h| assert_runs_add_up(h).unwrap())
        .collect();
    drop(kernel_stats);
    // Less the one stray the watch was proven with.
    let mut misdelivered = 0;
    let mut udp_in = 0;
    let mut flooded = 0;
    for slot in stable.iter().chain(&churning).flatten() {
        let foreign = watched(&slot.c, "foreign");
        let proof = std::ptr::eq(slot, &stable[0][0]) && foreign == 1;
        if foreign > 0 && !proof {
            println!("{} got packets for {}", slot.c.addr, strays(&slot.c));
        }
        misdelivered += foreign;
        udp_in += watched(&slot.c, "stream");
        flooded += watched(&slot.c, "flooded");
    }
    misdelivered -= 1;
    let direct: u64 = fleet
        .hosts
        .iter()
        .map(|h| {
            h.counter(fan_common::StatReason::DecapsulatedDirect)
                .unwrap()
        })
        .sum();
    println!(
        "soak {seconds} s, 3 hosts x {per_host} containers: {} TCP flows ({} MiB, every byte \
         checked) over {} long-lived pairs, {} containers replaced, {} UDP datagrams sent, {udp_in} \
         received by their address's owner, {misdelivered} misdelivered to a container's MAC for another address, {flooded} frames \
         for others flooded by the bridges, {direct} packets delivered directly, {} DNAT rules added and removed, {} address \
         flaps, 0 flows broken; the hosts' program runs \
         (the kernel's count) {:?}, each equal to its outcomes counted; agents' RSS {:?} -> {:?} KiB, fds {:?} -> {:?}",
        flows.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) >> 20,
        pairs.len(),
        churned.load(Ordering::Relaxed),
        datagrams.load(Ordering::Relaxed),
        dnat_rules.load(Ordering::Relaxed),
        flaps.load(Ordering::Relaxed),
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        warm.iter().map(|f| f.rss_kib).collect::<Vec<_>>(),
        end.iter().map(|f| f.rss_kib).collect::<Vec<_>>(),
        warm.iter().map(|f| f.fds).collect::<Vec<_>>(),
        end.iter().map(|f| f.fds).collect::<Vec<_>>(),
    );
    assert_eq!(
        misdelivered, 0,
        "packets reached containers that did not own their address"
    );
    assert!(
        churned.load(Ordering::Relaxed) > 0,
        "no container was replaced"
    );
    assert!(
        dnat_rules.load(Ordering::Relaxed) > 0 && flaps.load(Ordering::Relaxed) > 0,
        "the hosts did not change under the agents"
    );
    for (w, e) in warm.iter().zip(&end) {
        assert!(
            e.rss_kib <= w.rss_kib + AGENT_RSS_GROWTH_KIB,
            "an agent's memory grew from {} to {} KiB",
            w.rss_kib,
            e.rss_kib
        );
        assert!(
            e.fds <= w.fds,
            "an agent's descriptors grew from {} to {}",
            w.fds,
            e.fds
        );
    }
    drop(stable);
    drop(churning);
    for host in &fleet.hosts {
        wait_until_bridge_empty(host).unwrap();
    }
    fleet.detach_all().unwrap();
    for (host, before) in fleet.hosts.iter().zip(&before) {
        assert_lifecycle_unchanged(&host.ns, before, "the soak left something behind");
    }
}
