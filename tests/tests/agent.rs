//! The host agent (`fan-xdp run`) as a user meets it: started by `attach`,
//! one per namespace, ready only when the fast path is in place, reloaded
//! and stopped through its socket, trusted by the programs only while it
//! beats, and gone after the last `detach`.
//!
//! Over 400 lines: each test is one scenario of the agent's life end to
//! end, on a fleet of its own, whole so that a failure reads on its own;
//! what the executables share is in `fan_tests` (topology, traffic,
//! lifecycle), and the few helpers left sit beside the tests that use them.

use std::{
    io::Read as _,
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use fan_common::StatReason;
use fan_tests::{
    netns::Netns,
    privileged,
    topology::{Fleet, Host, add_container_at, fan_xdp_binary},
    traffic::{arp_request, gratuitous_arp, mac_of, ping, send_frames, snmp_counter, tcp_transfer},
};
use fan_userspace::{
    agent::bindings::{self, Binding, Origin, format_mac},
    state::rundir::RunDir,
};

const OVERLAY: &str = "250.0.0.0/8";

fn show(host: &Host) -> serde_json::Value {
    serde_json::from_str(&host.fan_xdp_ok(&["show", "--json"]).unwrap()).unwrap()
}

/// The pids of fan-xdp processes in `ns`.
fn fan_xdp_pids(ns: &Netns) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "fan-xdp")
        })
        .collect()
}

fn agent_pid(host: &Host) -> u64 {
    fan_tests::lifecycle::agent_pid(host).unwrap().into()
}

#[test]
fn attach_alone_gives_the_fast_path_and_the_last_detach_stops_its_agent() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&[]).unwrap();
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    assert!(
        h2.wait_for_direct(&c1.ns, c2.addr).unwrap(),
        "attach alone never gave direct delivery"
    );
    let shown = show(h2);
    assert_eq!(shown[0]["agent"]["started_by_attach"], true, "{shown}");
    assert_eq!(shown[0]["agent"]["ready"], true, "{shown}");
    let text = h2.fan_xdp_ok(&["show"]).unwrap();
    assert!(
        text.contains("agent: fan-xdp run (pid") && !text.contains("no agent"),
        "{text}"
    );
    for host in &fleet.hosts {
        assert_eq!(fan_xdp_pids(&host.ns).len(), 1, "one agent per namespace");
    }
    fleet.detach_all().unwrap();
    for host in &fleet.hosts {
        assert_eq!(
            fan_xdp_pids(&host.ns),
            Vec::<u32>::new(),
            "a fan-xdp process outlived the last detach"
        );
    }
}

#[test]
fn a_second_agent_refuses_and_names_the_first() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&[]).unwrap();
    let host = &fleet.hosts[0];
    let first = agent_pid(host);
    let out = host.fan_xdp(&["run"]).unwrap();
    assert!(!out.status.success(), "a second agent started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {first}")), "{err}");
    // attach again leaves the agent that runs alone.
    fleet.attach_all(&[]).unwrap();
    assert_eq!(agent_pid(host), first);
    fleet.detach_all().unwrap();
}

#[test]
fn ready_is_announced_once_the_fast_path_is_in_place() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&["--no-agent"]).unwrap();
    let fleet = fleet.with_containers(1).unwrap();
    let host = &fleet.hosts[0];
    // The test is the service manager: it owns the notification socket.
    let dir = std::env::temp_dir().join(format!("fan-xdp-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let manager = UnixDatagram::bind(&dir).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut agent = host
        .ns
        .command(fan_xdp_binary().to_str().unwrap())
        .arg("run")
        .env("NOTIFY_SOCKET", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let Ok(n) = manager.recv(&mut buf) else { break };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        received.push(message.clone());
        if message == "READY=1" {
            break;
        }
    }
    assert_eq!(
        received.last().map(String::as_str),
        Some("READY=1"),
        "{received:?}"
    );
    // At READY=1 the container's port already runs the program.
    let shown = show(host);
    let fast = &shown[0]["fast_path"];
    assert_eq!(fast["ports"], 1, "{shown}");
    assert_eq!(fast["ports_encapsulating"], 1, "{shown}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let mut stopping = false;
    while let Ok(n) = manager.recv(&mut buf) {
        if &buf[..n] == b"STOPPING=1" {
            stopping = true;
            break;
        }
    }
    let status = agent.wait().unwrap();
    let mut err = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(stopping, "no STOPPING=1");
    assert!(status.success(), "{status}: {err}");
    // SIGTERM ends the fast path and leaves the fans attached.
    let shown = show(host);
    assert!(shown[0]["agent"].is_null(), "{shown}");
    assert_eq!(shown[0]["complete"], true, "{shown}");
    let _ = std::fs::remove_file(&dir);
    fleet.detach_all().unwrap();
}

#[test]
fn reload_returns_once_the_agent_has_resynced() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.hosts[0]
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    fleet.hosts[1]
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--no-agent"])
        .unwrap();
    let before = show(&fleet.hosts[0])[0]["agent"]["last_sync"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let out = fleet.hosts[0].fan_xdp_ok(&["reload"]).unwrap();
    assert_eq!(out.trim(), "reloaded");
    let after = show(&fleet.hosts[0])[0]["agent"]["last_sync"]
        .as_u64()
        .unwrap();
    assert!(after > before, "no sync on reload ({before} -> {after})");
    let out = fleet.hosts[1].fan_xdp(&["reload"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no fan-xdp run serves"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.detach_all().unwrap();
}

#[test]
fn a_killed_agent_is_not_trusted_and_a_transfer_outlives_it() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&[]).unwrap();
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    assert!(h2.wait_for_direct(&c1.ns, c2.addr).unwrap());
    // 100 MB at 200 Mbit/s: about four seconds, so the agent dies mid-way.
    c1.ns
        .run(
            "tc",
            &[
                "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "200mbit", "burst", "256kb",
                "latency", "50ms",
            ],
        )
        .unwrap();
    let bytes = 100u64 << 20;
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| tcp_transfer(&c2.ns, &c1.ns, c2.addr, bytes));
        std::thread::sleep(Duration::from_millis(1000));
        // SIGKILL: no chance to empty the endpoint map.
        let pid = agent_pid(h2) as i32;
        // SAFETY: signalling the agent by the pid its status names, in our test namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(500));
        fleet.attach_all(&[]).unwrap();
        assert!(
            !transfer.is_finished(),
            "the transfer ended before the agent was restarted: nothing was tested"
        );
        assert_eq!(
            transfer.join().unwrap().unwrap(),
            bytes,
            "the transfer did not survive the agent's restart"
        );
    });
    c1.ns
        .run("tc", &["qdisc", "del", "dev", "eth0", "root"])
        .unwrap();
    assert!(
        h2.wait_for_direct(&c1.ns, c2.addr).unwrap(),
        "no direct delivery after the restart"
    );

    // Killed again and not restarted: once the heartbeat is older than the
    // timeout, the endpoint map it left behind is no longer followed.
    let pid = agent_pid(h2) as i32;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_nanos(
        fan_common::maps::AGENT_HEARTBEAT_TIMEOUT_NS + 500_000_000,
    ));
    assert!(
        h2.pinned_maps().unwrap().endpoints.iter().count() > 0,
        "the killed agent's endpoints are still pinned"
    );
    let direct = h2.counter(StatReason::DecapsulatedDirect).unwrap();
    assert!(ping(&c1.ns, c2.addr, 3).unwrap(), "the stack path works");
    assert_eq!(
        h2.counter(StatReason::DecapsulatedDirect).unwrap(),
        direct,
        "direct delivery on a dead agent's map"
    );
    fleet.detach_all().unwrap();
}

#[test]
fn the_agent_outlives_the_shell_that_ran_attach() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    // As an operator types it: a shell runs `ip netns exec ... attach` and
    // exits. The agent reaches the host's bpffs through that shell's mount
    // namespace, which is gone once the shell is.
    for host in &fleet.hosts {
        let script = format!(
            "ip netns exec {} {} attach eth0 --overlay {OVERLAY}",
            host.ns.name(),
            fan_xdp_binary().display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Plugged after the shells exited: only an agent that can still reach
    // its maps learns these containers.
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    assert!(
        h2.wait_for_direct(&h1.containers[0].ns, h2.containers[0].addr)
            .unwrap(),
        "the agent lost its maps when the shell exited"
    );
    fleet.detach_all().unwrap();
}

/// Two attached hosts with two containers each: a client on the first, an
/// owner and a rogue sibling on the second.
fn two_hosts_with_two_containers() -> Fleet {
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&[]).unwrap();
    fleet.with_containers(2).unwrap()
}

#[test]
fn a_container_that_answers_arp_for_its_siblings_address_gets_none_of_its_traffic() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_with_two_containers();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (client, owner, rogue) = (&h1.containers[0], &h2.containers[0], &h2.containers[1]);
    assert!(h2.wait_for_direct(&client.ns, owner.addr).unwrap());
    // The rogue container claims its sibling's address (250.0.2.11) with
    // its own MAC, in gratuitous ARP replies, past the neighbour locktime.
    let arp = gratuitous_arp(mac_of(&rogue.ns, "eth0").unwrap(), owner.addr);
    std::thread::sleep(Duration::from_millis(1200));
    send_frames(&rogue.ns, "eth0", &vec![arp; 3]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (owner_echoes, rogue_echoes) = (
        snmp_counter(&owner.ns, "Icmp", "InEchos").unwrap(),
        snmp_counter(&rogue.ns, "Icmp", "InEchos").unwrap(),
    );
    let direct = h2.counter(StatReason::DecapsulatedDirect).unwrap();
    assert!(
        ping(&client.ns, owner.addr, 3).unwrap(),
        "the owner lost its traffic"
    );
    assert_eq!(
        snmp_counter(&owner.ns, "Icmp", "InEchos").unwrap(),
        owner_echoes + 3
    );
    assert_eq!(
        snmp_counter(&rogue.ns, "Icmp", "InEchos").unwrap(),
        rogue_echoes,
        "the rogue container got its sibling's traffic"
    );
    assert!(h2.counter(StatReason::DecapsulatedDirect).unwrap() >= direct + 3);
    fleet.detach_all().unwrap();
}

#[test]
fn a_container_cannot_take_the_address_its_runtime_hands_out_next() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_with_two_containers();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (client, owner, squatter) = (&h1.containers[0], &h2.containers[0], &h2.containers[1]);
    assert!(h2.wait_for_direct(&client.ns, owner.addr).unwrap());
    // The address a runtime like Docker hands out next, after .11 and .12.
    let next = std::net::Ipv4Addr::from(u32::from(h2.slice) + 13);
    // The squatter sends from it: ARP requests for the gateway, which teach
    // the host's neighbour table `next` at the squatter's MAC.
    let squatter_mac = mac_of(&squatter.ns, "eth0").unwrap();
    let claim = arp_request(squatter_mac, (squatter_mac, next), h2.gateway);
    send_frames(&squatter.ns, "eth0", &vec![claim.clone(); 3]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        delivers(h2, next),
        None,
        "an address nobody was given went to the port that claimed it"
    );
    // The runtime's container: its address set inside its namespace, as
    // Docker sets it, and no ARP sent.
    let given = add_container_at(h2, 3, next).unwrap();
    let given_mac = mac_of(&given.ns, "eth0").unwrap();
    assert!(
        ping(&given.ns, client.addr, 3).unwrap(),
        "the container given the address cannot send from it"
    );
    let squatter_echoes = snmp_counter(&squatter.ns, "Icmp", "InEchos").unwrap();
    assert!(
        h2.wait_for_direct(&client.ns, next).unwrap(),
        "the container given the address gets no direct delivery"
    );
    assert_eq!(delivers(h2, next), Some(given_mac));
    assert!(ping(&client.ns, next, 3).unwrap());
    assert_eq!(
        snmp_counter(&squatter.ns, "Icmp", "InEchos").unwrap(),
        squatter_echoes,
        "the squatter got traffic for the address"
    );
    // Now that the address is given, the squatter's claims are dropped.
    let refused = h2.counter(StatReason::DropSourceNotBound).unwrap();
    send_frames(&squatter.ns, "eth0", &vec![claim; 3]).unwrap();
    assert_eq!(
        h2.counter(StatReason::DropSourceNotBound).unwrap(),
        refused + 3
    );
    fleet.detach_all().unwrap();
}

/// A `static` binding as `fan-xdp bind` makes it, through the agent's
/// control socket as the CNI plugin and the DHCP leases do.
fn binding(address: std::net::Ipv4Addr, mac: [u8; 6], port: &str) -> Binding {
    Binding {
        address,
        mac: format_mac(mac),
        port: Some(port.to_string()),
        origin: Origin::Static,
        owner: "fan-xdp bind".into(),
        pod: None,
    }
}

fn run_dir(host: &Host) -> RunDir {
    host.ns.enter(|| RunDir::locate(None)).unwrap().unwrap()
}

fn delivers(host: &Host, address: std::net::Ipv4Addr) -> Option<[u8; 6]> {
    let maps = host.pinned_maps().unwrap();
    maps.endpoints
        .get(&fan_common::WireAddr::from(address), 0)
        .ok()
        .map(|e| e.mac)
}

#[test]
fn a_bound_address_is_delivered_before_any_arp_is_never_taken_over_and_outlives_the_agent() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_with_two_containers();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (client, owner, rogue) = (&h1.containers[0], &h2.containers[0], &h2.containers[1]);
    let run = run_dir(h2);
    // No packet has crossed yet, and no neighbour entry is needed: the
    // address configured in the container is delivered already.
    h2.ns.ip(&["neigh", "flush", "dev", &h2.bridge]).unwrap();
    let owner_mac = mac_of(&owner.ns, "eth0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while delivers(h2, owner.addr).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(delivers(h2, owner.addr), Some(owner_mac));
    let bound = h2
        .fan_xdp_ok(&[
            "bind",
            &owner.addr.to_string(),
            "--mac",
            &format_mac(owner_mac),
            "--port",
            "veth1",
        ])
        .unwrap();
    assert_eq!(bound, format!("{} bound to veth1\n", owner.addr));
    assert_eq!(
        delivers(h2, owner.addr),
        Some(owner_mac),
        "bind returned before the endpoint map held the address"
    );
    // The very first packet is delivered straight into the container.
    let direct = h2.counter(StatReason::DecapsulatedDirect).unwrap();
    assert!(ping(&client.ns, owner.addr, 1).unwrap());
    assert!(h2.counter(StatReason::DecapsulatedDirect).unwrap() > direct);

    // Another port cannot bind the address while its owner lives.
    let rogue_mac = mac_of(&rogue.ns, "eth0").unwrap();
    let refused = host_bind(h2, &binding(owner.addr, rogue_mac, "veth2")).unwrap_err();
    assert!(refused.contains("already bound to veth1"), "{refused}");
    assert_eq!(delivers(h2, owner.addr), Some(owner_mac));

    // A new agent keeps the table: the address is delivered with no ARP.
    fan_userspace::agent::stop(&run).unwrap();
    h2.ns.ip(&["neigh", "flush", "dev", &h2.bridge]).unwrap();
    let agent = h2.fan_xdp_run().unwrap();
    h2.wait_for_run_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(
        delivers(h2, owner.addr),
        Some(owner_mac),
        "the binding died with the agent"
    );
    let listed = bindings::list(&run).unwrap();
    assert_eq!(listed, vec![binding(owner.addr, owner_mac, "veth1")]);

    // Unbinding is for the origin that bound it, and idempotent.
    bindings::unbind(&run, owner.addr, Origin::Cni).unwrap();
    assert_eq!(bindings::list(&run).unwrap().len(), 1);
    bindings::unbind(&run, owner.addr, Origin::Static).unwrap();
    bindings::unbind(&run, owner.addr, Origin::Static).unwrap();
    assert!(bindings::list(&run).unwrap().is_empty());
    let shown = show(h2);
    assert_eq!(
        shown[0]["agent"]["bindings"]["static"],
        serde_json::Value::Null,
        "{shown}"
    );
    agent.stop().unwrap();
    fleet.detach_all().unwrap();
}

/// `bind` as a client in another process would call it, its refusal as text.
fn host_bind(host: &Host, b: &Binding) -> Result<(), String> {
    bindings::bind(&run_dir(host), b).map_err(|e| format!("{e:#}"))
}

/// CPU time the process `pid` has used, all its threads, in nanoseconds
/// (what utime + stime count, at the scheduler's resolution rather than
/// in clock ticks of 10 ms).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("schedstat")).unwrap();
            stat.split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// Plugs `n` veth ports into the host's slice bridge at once (their peers
/// in a namespace of their own) and returns the agent's CPU time per port
/// until it has its program on every one of them; then unplugs them all at
/// once (deleting the peers' namespace: deleting veths one by one takes
/// the kernel longer than the rest of the test) and waits until the agent
/// has let them go.
fn cpu_per_port_added(host: &Host, run: &RunDir, agent: u32, n: usize) -> f64 {
    let ports_now = || fan_userspace::agent::status(run).map_or(0, |s| s.ports as usize);
    let batch = |ns: &Netns, lines: String| {
        let file = std::env::temp_dir().join(format!("fan-cpu-{}.batch", ns.name()));
        std::fs::write(&file, lines).unwrap();
        ns.ip(&["-batch", file.to_str().unwrap()]).unwrap();
        std::fs::remove_file(file).unwrap();
    };
    let peers = Netns::new("cpu-peers").unwrap();
    // No IPv6 on the new links: each one's router solicitations and duplicate
    // address detection would be flooded to every port of the bridge, work
    // that grows with the ports and that the kernel charges to whichever
    // process it interrupts, the agent among them.
    for ns in [&host.ns, &peers] {
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            .unwrap();
    }
    let full_reads = || fan_userspace::agent::status(run).unwrap().full_reads;
    let reads_before = full_reads();
    let start = cpu_ns(agent);
    let mut add = String::new();
    for i in 0..n {
        add += &format!(
            "link add fp{i} type veth peer name fq{i} netns {}\n",
            peers.name()
        );
        add += &format!("link set fp{i} master {} up\n", host.bridge);
    }
    batch(&host.ns, add);
    batch(
        &peers,
        (0..n).map(|i| format!("link set fq{i} up\n")).collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ports_now() < n {
        assert!(
            Instant::now() < deadline,
            "the agent took {} of {n} ports",
            ports_now()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let per_port = (cpu_ns(agent) - start) as f64 / n as f64;
    assert_eq!(
        full_reads(),
        reads_before,
        "plugging {n} ports made the agent read everything again instead of taking each event in"
    );
    drop(peers);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ports_now() > 0 {
        assert!(
            Instant::now() < deadline,
            "the agent kept ports that are gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    per_port
}

#[test]
fn the_agents_cpu_per_port_added_does_not_grow_with_the_ports() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&["--no-agent"]).unwrap();
    let host = &fleet.hosts[0];
    let run = run_dir(host);
    // The periodic resync (a safety net reading everything) out of the way:
    // what is measured is what the events cost.
    let agent = host
        .fan_xdp_run_with(&["--resync-seconds", "3600"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while show(host)[0]["agent"]["ready"] != true {
        assert!(Instant::now() < deadline, "the agent never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Interleaved, so that whatever else the machine does weighs on both sizes.
    let (mut few, mut many) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        few.push(cpu_per_port_added(host, &run, agent.pid(), 50));
        many.push(cpu_per_port_added(host, &run, agent.pid(), 500));
    }
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[1]
    };
    let (few, many) = (median(few), median(many));
    eprintln!(
        "agent CPU per port added: {:.0} us with 50 ports, {:.0} us with 500 ({:.2}x)",
        few / 1e3,
        many / 1e3,
        many / few
    );
    assert!(
        many <= 1.5 * few,
        "the agent's CPU per port added grows with the ports: {:.0} us with 500 against {:.0} us with 50",
        many / 1e3,
        few / 1e3
    );
    agent.stop().unwrap();
    fleet.detach_all().unwrap();
}

#[test]
fn under_systemd_attach_starts_the_unit_and_an_older_agent_is_replaced() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let run = run_dir(host);
    // A stand-in for systemctl that records what it was asked and starts
    // the unit's ExecStart, which outlives it (it waits a moment, as the
    // agent finds the host's bpffs through its ancestors when it starts).
    let bin = tempfile_dir("fan-systemctl");
    let calls = bin.join("calls");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {calls}\n{fan_xdp} run </dev/null >/dev/null 2>&1 &\nsleep 1\n",
        calls = calls.display(),
        fan_xdp = fan_xdp_binary().display()
    );
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, script).unwrap();
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = host
        .ns
        .command(fan_xdp_binary().to_str().unwrap())
        .args(["attach", "eth0", "--overlay", OVERLAY])
        .env("INVOCATION_ID", "0123456789abcdef")
        .env("PATH", &path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "start fan-xdp.service\n"
    );
    let unit_agent = fan_userspace::agent::status(&run).expect("the unit's agent serves");
    assert!(
        unit_agent.ready && !unit_agent.started_by_attach,
        "{unit_agent:?}"
    );

    // An agent of an older release serves: an attach from this one replaces it.
    let (_, older) =
        fan_tests::lifecycle::replace_agent(host, &[("FAN_XDP_INJECT", "version:older".as_ref())])
            .unwrap();
    assert_eq!(
        fan_userspace::agent::status(&run).unwrap().version,
        "0.0.0+older"
    );
    let out = host
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let newer = fan_userspace::agent::status(&run).unwrap();
    assert_eq!(newer.version, fan_userspace::agent::version(), "{out}");
    assert_ne!(newer.pid, older.id(), "the older agent still serves");
    reap(older);
    fleet.detach_all().unwrap();
    let _ = std::fs::remove_dir_all(&bin);
}

/// A fresh directory of this test's own under the temporary directory.
fn tempfile_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits for a child that was asked to stop (bounded).
fn reap(mut child: std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pid {} did not stop", child.id());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP request to `addr` from inside `host`'s namespace; the whole
/// answer, or why there was none (nothing listening yet).
fn try_http(host: &Host, addr: &str, request: &str) -> std::io::Result<String> {
    let (addr, request) = (addr.to_string(), request.to_string());
    host.ns
        .enter(move || {
            use std::io::Write as _;
            let mut stream = std::net::TcpStream::connect(&addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request.as_bytes())?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })
        .unwrap()
}

/// One HTTP request to `addr` from inside `host`'s namespace; the whole answer.
fn http(host: &Host, addr: &str, request: &str) -> String {
    try_http(host, addr, request).unwrap()
}

#[test]
fn the_agent_serves_metrics_only_where_asked_and_only_get_metrics() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&["--no-agent"]).unwrap();
    let host = &fleet.hosts[0];
    let out = host.fan_xdp(&["run", "--metrics", "0.0.0.0:9469"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--metrics-any-address"),
        "{stderr}"
    );

    let agent = host
        .fan_xdp_run_with(&["--metrics", "127.0.0.1:9469"])
        .unwrap();
    // With no container port to take over, ready can be seen before the
    // agent listens: until then a scrape is refused.
    host.wait_for_run_ready(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let scraped = loop {
        let answer = try_http(
            host,
            "127.0.0.1:9469",
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        match answer {
            Ok(answer) if answer.starts_with("HTTP/1.1 200 OK") => break answer,
            _ if Instant::now() > deadline => break format!("{answer:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(scraped.starts_with("HTTP/1.1 200 OK\r\n"), "{scraped}");
    assert!(
        scraped.contains("\nfan_xdp_packets_total{reason=\"encapsulated\"} "),
        "{scraped}"
    );
    assert!(
        scraped.contains("# TYPE fan_xdp_bytes_total counter\n"),
        "{scraped}"
    );
    let other = http(host, "127.0.0.1:9469", "GET / HTTP/1.1\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404 Not Found"), "{other}");
    let post = http(host, "127.0.0.1:9469", "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed"),
        "{post}"
    );
    agent.stop().unwrap();
    fleet.detach_all().unwrap();
}

/// Control clients that connect and say nothing hold nobody up: the agent
/// reads each request off its loop (one second a read at most), so the
/// heartbeat that direct delivery follows stays fresh, and a request that
/// does come is answered meanwhile.
#[test]
fn silent_control_clients_do_not_stop_the_heartbeat() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&[]).unwrap();
    let host = &fleet.hosts[0];
    let socket = run_dir(host).path.join("agent.sock");
    // Six at once: read one after another on the loop, they held it six
    // seconds, twice the heartbeat's timeout.
    let silent: Vec<std::os::unix::net::UnixStream> = (0..6)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let oldest = fan_tests::lifecycle::oldest_beat(host, Duration::from_secs(5)).unwrap();
    let status = host.fan_xdp_ok(&["show"]).unwrap();
    drop(silent);
    assert!(
        oldest < Duration::from_millis(2500),
        "the heartbeat was {oldest:?} old while silent clients were connected"
    );
    assert!(status.contains("agent: fan-xdp run"), "{status}");
    fleet.detach_all().unwrap();
}

/// The heartbeat vouches for the endpoint map: when the map's keeper (the
/// delivery controller) hangs, the beat must stop, so that the programs
/// fall back to the stack instead of trusting a map nobody keeps.
#[test]
fn a_hung_endpoint_map_keeper_stops_the_heartbeat() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&[]).unwrap();
    let host = &fleet.hosts[0];
    // The keeper's full read, every 2 s, hangs for 12 s: from 2 s on the
    // keeper is stuck, so by 7 s the beat stops, and by 10 s it is too old.
    let (run, hung) = fan_tests::lifecycle::replace_agent_with(
        host,
        &["--resync-seconds", "2"],
        &[("FAN_XDP_INJECT", "delay:delivery:12000".as_ref())],
    )
    .unwrap();
    let oldest = fan_tests::lifecycle::oldest_beat(host, Duration::from_secs(11)).unwrap();
    let _ = fan_userspace::agent::stop(&run);
    let _ = hung_kill(hung);
    fleet.detach_all().unwrap();
    assert!(
        oldest > Duration::from_secs(3),
        "the heartbeat went on ({oldest:?} at the oldest) while the endpoint map's keeper hung"
    );
}

/// Kills an agent that may not answer a stop in time, and reaps it.
fn hung_kill(mut agent: std::process::Child) -> std::io::Result<()> {
    let _ = agent.kill();
    agent.wait().map(drop)
}

#[test]
fn a_slow_attach_of_the_agents_own_does_not_lapse_the_heartbeat() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    fleet.attach_all(&[]).unwrap();
    let host = &fleet.hosts[0];
    // An agent whose own attaches take four seconds (the heartbeat's
    // timeout is three): a slow kernel, a busy host.
    let (run, slow) = fan_tests::lifecycle::replace_agent(
        host,
        &[("FAN_XDP_INJECT", "delay:apply:4000".as_ref())],
    )
    .unwrap();
    // The slice bridge deleted by hand: the agent attaches again (slowly).
    host.ns.ip(&["link", "del", &host.bridge]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let answered = fan_userspace::agent::request(&run, "status", Duration::from_secs(1));
    let oldest = fan_tests::lifecycle::oldest_beat(host, Duration::from_secs(5)).unwrap();
    let repaired = host.ns.ip(&["link", "show", "dev", &host.bridge]).is_ok();
    fan_userspace::agent::stop(&run).unwrap();
    reap(slow);
    fleet.detach_all().unwrap();
    assert!(repaired, "the agent did not attach the fan again");
    assert!(
        oldest < Duration::from_millis(2500),
        "the heartbeat was {oldest:?} old while the agent attached again"
    );
    assert!(
        answered.is_ok(),
        "no status within 1 s while the agent attached again: {answered:?}"
    );
}
