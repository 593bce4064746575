//! The fast path never breaks NAT or a firewall: where the host's netfilter
//! could act on forwarded fan traffic, the bypass is off by default and fan
//! traffic takes the stack, with the agent and without it, with bridge
//! netfilter on and off.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use fan_tests::{
    netns::Netns,
    privileged,
    topology::{Container, Fleet},
    traffic::ping,
};

/// Loads an nftables ruleset (nft's own syntax) into `ns`.
fn nft(ns: &Netns, ruleset: &str) {
    let path =
        std::env::temp_dir().join(format!("fan-xdp-nft-{}-{}", std::process::id(), ns.name()));
    std::fs::write(&path, ruleset).unwrap();
    ns.run("nft", &["-f", path.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&path);
}

/// One request and its answer over TCP: the server in `server` listens on
/// `listen`, the client in `client` connects to `connect` (a service
/// address a DNAT rule maps to `listen`). Bounded by a few seconds.
fn exchange(server: &Netns, listen: SocketAddr, client: &Netns, connect: SocketAddr) -> bool {
    let listener = server.enter(|| TcpListener::bind(listen)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::scope(|scope| {
        let served = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).ok()?;
                        stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                        let mut request = [0u8; 4];
                        stream.read_exact(&mut request).ok()?;
                        stream.write_all(b"pong").ok()?;
                        return Some(request);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            None
        });
        let answered = client
            .enter(|| -> Option<[u8; 4]> {
                let mut stream =
                    TcpStream::connect_timeout(&connect, Duration::from_secs(3)).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                stream.write_all(b"ping").ok()?;
                let mut answer = [0u8; 4];
                stream.read_exact(&mut answer).ok()?;
                Some(answer)
            })
            .unwrap();
        served.join().unwrap() == Some(*b"ping") && answered == Some(*b"pong")
    })
}

/// One exchange from `client` to the ClusterIP-like 10.96.0.10:80, which
/// a DNAT rule maps to port 8080 of `server`.
fn through_the_service(server: &Container, client: &Container) -> bool {
    exchange(
        &server.ns,
        SocketAddr::from((server.addr, 8080)),
        &client.ns,
        SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80)),
    )
}

#[test]
fn a_dnat_service_address_works_with_or_without_agent_and_bridge_netfilter() {
    if !privileged() {
        return;
    }
    for agent in [false, true] {
        for bridge_netfilter in ["0", "1"] {
            let case = format!("agent {agent}, bridge netfilter {bridge_netfilter}");
            let fleet = Fleet::new(2).unwrap();
            let h1 = &fleet.hosts[0];
            // A ClusterIP-like service on the client's host: 10.96.0.10:80 is
            // the server container's port 8080.
            nft(
                &h1.ns,
                "table ip svc {
                    chain prerouting {
                        type nat hook prerouting priority -100; policy accept;
                        ip daddr 10.96.0.10 tcp dport 80 dnat to 250.0.2.11:8080
                    }
                }",
            );
            let _ = h1
                .ns
                .sysctl("net.bridge.bridge-nf-call-iptables", bridge_netfilter);
            fleet
                .attach_all(if agent { &[] } else { &["--no-agent"] })
                .unwrap();
            let fleet = fleet.with_containers(1).unwrap();
            let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
            let (client, server) = (&h1.containers[0], &h2.containers[0]);
            let shown = h1.fan_xdp_ok(&["show"]).unwrap();
            assert!(
                shown.contains("bypass: off (ip svc chain prerouting rewrites addresses (NAT))"),
                "{case}: {shown}"
            );
            for attempt in 0..3 {
                assert!(
                    through_the_service(server, client),
                    "{case}: connection {attempt} to the service address failed"
                );
            }
            fleet.detach_all().unwrap();
        }
    }
}

#[test]
fn a_container_reaches_a_port_published_on_its_own_host() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    // As `docker run -p` publishes on the gateway: 250.0.1.1:8080 is the
    // remote container's port 80.
    nft(
        &fleet.hosts[0].ns,
        "table ip published {
            chain prerouting {
                type nat hook prerouting priority -100; policy accept;
                ip daddr 250.0.1.1 tcp dport 8080 dnat to 250.0.2.11:80
            }
        }",
    );
    fleet.attach_all(&[]).unwrap();
    let fleet = fleet.with_containers(1).unwrap();
    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    for attempt in 0..3 {
        assert!(
            exchange(
                &server.ns,
                SocketAddr::from((server.addr, 80)),
                &client.ns,
                SocketAddr::from((Ipv4Addr::new(250, 0, 1, 1), 8080)),
            ),
            "connection {attempt} to the published port failed"
        );
    }
    fleet.detach_all().unwrap();
}

#[test]
fn a_forward_rule_still_applies_by_default() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    nft(
        &fleet.hosts[1].ns,
        "table inet filter {
            chain forward {
                type filter hook forward priority 0; policy accept;
                ip saddr 250.0.1.11 drop
            }
        }",
    );
    fleet.attach_all(&[]).unwrap();
    let fleet = fleet.with_containers(2).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let target = h2.containers[0].addr;
    assert!(
        !ping(&h1.containers[0].ns, target, 3).unwrap(),
        "the forward rule was bypassed"
    );
    assert!(
        ping(&h1.containers[1].ns, target, 3).unwrap(),
        "traffic the rule allows is lost"
    );
    let shown = h2.fan_xdp_ok(&["show"]).unwrap();
    assert!(
        shown.contains("bypass: off (inet filter chain forward filters forwarded packets)")
            && shown.contains("--bypass on"),
        "{shown}"
    );
    // Forced on, the fast path skips the rule (as documented).
    fleet.detach_all().unwrap();
    fleet.attach_all(&["--bypass", "on"]).unwrap();
    let fast = h2.fan_xdp_ok(&["show"]).unwrap();
    assert!(
        fast.contains("bypass: on (the fast path skips netfilter: --bypass on)"),
        "{fast}"
    );
    fleet.detach_all().unwrap();
}

/// The probe's port on the server, which the rule under test rewrites to
/// [`PROBE_NATTED`]: where a datagram arrives tells the path it took (the
/// fast path skips NAT, the host's stack applies it).
const PROBE_PORT: u16 = 9000;
const PROBE_NATTED: u16 = 9001;

/// A stream of UDP datagrams from a client container to a server
/// container's [`PROBE_PORT`], one every 500 us (for at most 5 s), each
/// carrying its send time in nanoseconds since `base` (the monotonic clock,
/// which every namespace shares), received on both ports.
struct Probe {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<()>,
    receivers: [JoinHandle<Vec<u64>>; 2],
}

impl Probe {
    fn start(client: &Container, server: &Container, base: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let receivers = [PROBE_PORT, PROBE_NATTED].map(|port| {
            let socket = server
                .ns
                .enter(|| UdpSocket::bind((server.addr, port)))
                .unwrap()
                .unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut sent_at, mut buf) = (Vec::new(), [0u8; 8]);
                loop {
                    match socket.recv(&mut buf) {
                        Ok(8) => sent_at.push(u64::from_be_bytes(buf)),
                        Ok(_) => {}
                        // Drained: nothing for 200 ms once the sender stopped.
                        Err(_) if stop.load(Ordering::Relaxed) => return sent_at,
                        Err(_) => {}
                    }
                }
            })
        });
        let socket = client
            .ns
            .enter(|| UdpSocket::bind((client.addr, 0)))
            .unwrap()
            .unwrap();
        let to = SocketAddr::from((server.addr, PROBE_PORT));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(5) {
                    let now = base.elapsed().as_nanos() as u64;
                    let _ = socket.send_to(&now.to_be_bytes(), to);
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        };
        Self {
            stop,
            sender,
            receivers,
        }
    }

    /// Stops the stream; the send times received on each port.
    fn finish(self) -> [Vec<u64>; 2] {
        self.stop.store(true, Ordering::Relaxed);
        self.sender.join().unwrap();
        self.receivers.map(|r| r.join().unwrap())
    }
}

/// A NAT rule added after attach takes effect at once: kube-proxy adds one
/// for every new Service, and the agent turns the bypass off as nftables
/// announces the change, not on its next resync (10 s later, when every
/// connection to the new service in between failed). With bridge
/// netfilter on and off. A stream of datagrams through a second rule of
/// the same commit shows where the fast path ended: the time from the
/// commit to the first datagram the stack rewrote, and to the bypass map
/// saying off, are printed, not asserted (a measurement, not a test).
#[test]
fn a_nat_rule_added_after_attach_applies_within_a_moment() {
    if !privileged() {
        return;
    }
    for bridge_netfilter in ["0", "1"] {
        let case = format!("bridge netfilter {bridge_netfilter}");
        let fleet = Fleet::new(2).unwrap();
        let _ = fleet.hosts[0]
            .ns
            .sysctl("net.bridge.bridge-nf-call-iptables", bridge_netfilter);
        fleet.attach_all(&[]).unwrap();
        let fleet = fleet.with_containers(1).unwrap();
        let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
        let (client, server) = (&h1.containers[0], &h2.containers[0]);
        let shown = h1.fan_xdp_ok(&["show"]).unwrap();
        assert!(shown.contains("bypass: on"), "{case}: {shown}");
        let base = Instant::now();
        let probe = Probe::start(client, server, base);
        std::thread::sleep(Duration::from_millis(200));
        nft(
            &h1.ns,
            &format!(
                "table ip svc {{
                    chain prerouting {{
                        type nat hook prerouting priority -100; policy accept;
                        ip daddr 10.96.0.10 tcp dport 80 dnat to {server}:8080
                        ip daddr {server} udp dport {PROBE_PORT} dnat to {server}:{PROBE_NATTED}
                    }}
                }}",
                server = server.addr
            ),
        );
        let committed = Instant::now();
        let committed_at = committed.duration_since(base).as_nanos() as u64;
        // The bypass map, read by `fan-xdp show` (a few ms a read) for at
        // most a second: ten times the aim, and a tenth of the resync.
        let mut reaction = None;
        while committed.elapsed() < Duration::from_secs(1) {
            let shown = h1.fan_xdp_ok(&["show"]).unwrap();
            if shown.contains("bypass: off (ip svc chain prerouting rewrites addresses (NAT))") {
                reaction = Some(committed.elapsed());
                break;
            }
        }
        // Connections right away, long before the agent's next resync.
        for attempt in 0..3 {
            assert!(
                through_the_service(server, client),
                "{case}: connection {attempt} to the new service failed ({:.1} s after the rule)",
                committed.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(500).saturating_sub(committed.elapsed()));
        let [fast, natted] = probe.finish();
        let reaction = reaction.unwrap_or_else(|| {
            panic!("{case}: the bypass was still on a second after the rule's commit")
        });
        assert!(
            fast.iter().any(|&t| t < committed_at),
            "{case}: no probe datagram took the fast path before the rule"
        );
        let first_stack = *natted
            .iter()
            .min()
            .unwrap_or_else(|| panic!("{case}: no probe datagram took the stack after the rule"));
        // Once one took the stack, the bypass stays off: none sent 50 ms
        // later (in flight meanwhile) may skip NAT.
        let late = fast
            .iter()
            .filter(|&&t| t > first_stack + 50_000_000)
            .count();
        assert_eq!(
            late, 0,
            "{case}: datagrams skipped NAT after the stack had taken one"
        );
        let missed = fast.iter().filter(|&&t| t > committed_at).count();
        let ms = |ns: u64| ns as f64 / 1e6;
        println!(
            "{case}: from the rule's commit (nft returned) to the first datagram the stack rewrote: {:.1} ms ({missed} datagram(s) sent after the commit skipped NAT, one every 0.5 ms); to the bypass map reading off: {:.0} ms (as `fan-xdp show` read it, a few ms a read)",
            ms(first_stack.saturating_sub(committed_at)),
            reaction.as_secs_f64() * 1000.0
        );
        fleet.detach_all().unwrap();
    }
}
