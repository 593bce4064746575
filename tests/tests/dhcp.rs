//! DHCP on the slice (`attach --dhcp`) and the address plan, as an operator
//! meets them: containers that take their addresses with busybox udhcpc
//! from the dnsmasq the agent supervises, on simulated hosts. Host kernel
//! only (the 6.1 VM has no dnsmasq).
//!
//! Over 400 lines on purpose: each test is one scenario end to end, whole in
//! itself so that a failure reads on its own; what they share is in
//! `fan_tests::dhcp` and the helpers at the top.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use fan_common::StatReason;
use fan_tests::{
    dhcp::{
        Leased, StateDir, fan_xdp, fan_xdp_output, finish_client, lease, pids_named,
        plug_dhcp_container, require_tools, start_client,
    },
    netns::Netns,
    privileged,
    topology::{Fleet, Host, OVERLAY_MTU},
    traffic::{arp_request, gratuitous_arp, mac_of, ping, send_frames, snmp_counter},
};
use fan_userspace::agent::bindings::format_mac;

const OVERLAY: &str = "250.0.0.0/8";

/// A state directory and a fleet of `hosts`, or None where privileged
/// tests skip (never under `CI=true`). The DHCP tools must be there.
fn bed(hosts: u8) -> Option<(StateDir, Fleet)> {
    if !privileged() {
        return None;
    }
    require_tools().unwrap();
    Some((StateDir::new().unwrap(), Fleet::new(hosts).unwrap()))
}

/// A dnsmasq of someone else's in `ns`, serving `range` on `iface`.
fn foreign_dnsmasq(
    ns: &Netns,
    iface: &str,
    range: &str,
    extra: &[&str],
    leases: &std::path::Path,
) -> std::process::Child {
    ns.command("dnsmasq")
        .args([
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--bind-dynamic",
            "--port=0",
        ])
        .arg(format!("--interface={iface}"))
        .arg(format!("--dhcp-range={range}"))
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn attach_dhcp(host: &Host, state: &StateDir, extra: &[&str]) -> String {
    let args = [
        &["attach", "eth0", "--overlay", OVERLAY, "--dhcp"][..],
        extra,
    ]
    .concat();
    fan_xdp(host, state, &args).unwrap()
}

/// `OVERLAY` and 240.0.0.0/8 attached with `--dhcp` on `host`'s eth0.
fn attach_two_dhcp_fans(host: &Host, state: &StateDir) {
    attach_dhcp(host, state, &[]);
    fan_xdp(
        host,
        state,
        &["attach", "eth0", "--overlay", "240.0.0.0/8", "--dhcp"],
    )
    .unwrap();
}

fn show(host: &Host, state: &StateDir, extra: &[&str]) -> serde_json::Value {
    let args = [&["show", "--json"][..], extra].concat();
    serde_json::from_str(&fan_xdp(host, state, &args).unwrap()).unwrap()
}

/// The DHCP container `j` of `host`, on port `dveth<j>`.
fn dhcp_container(host: &Host, j: u32) -> Netns {
    let i = host.underlay_addr.octets()[3];
    plug_dhcp_container(
        &host.ns,
        &host.bridge,
        &format!("dveth{j}"),
        &format!("d{i}-{j}"),
    )
    .unwrap()
}

fn in_default_dhcp_range(host: &Host, addr: Ipv4Addr) -> bool {
    let offset = u32::from(addr).wrapping_sub(u32::from(host.slice));
    (2..=127).contains(&offset)
}

/// Polls `f` every 100 ms for at most `limit`; whether it came true.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn dhcp_pid(host: &Host, state: &StateDir) -> Option<u64> {
    show(host, state, &[])[0]["dhcp"]["pid"].as_u64()
}

#[test]
fn containers_lease_from_the_dhcp_range_with_the_gateway_and_the_fan_mtu() {
    let Some((state, fleet)) = bed(2) else {
        return;
    };
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let said = attach_dhcp(h1, &state, &[]);
    assert!(said.contains("DHCP: dnsmasq (pid"), "{said}");
    attach_dhcp(h2, &state, &[]);
    let (a, b, peer) = (
        dhcp_container(h1, 1),
        dhcp_container(h1, 2),
        dhcp_container(h2, 1),
    );
    let (la, lb, lp) = (
        lease(&a).unwrap(),
        lease(&b).unwrap(),
        lease(&peer).unwrap(),
    );
    for (host, leased) in [(h1, &la), (h1, &lb), (h2, &lp)] {
        assert!(
            in_default_dhcp_range(host, leased.addr),
            "{leased:?} outside {}'s DHCP range",
            host.bridge
        );
        assert_eq!(leased.prefix, 24, "{leased:?}");
        assert_eq!(
            leased.router,
            Some(host.gateway),
            "{leased:?}: the router is the gateway"
        );
        assert_eq!(
            leased.mtu, OVERLAY_MTU,
            "{leased:?}: option 26 sets the fan's MTU"
        );
    }
    assert_ne!(la.addr, lb.addr);
    // Ports left at 1500 do not raise the bridge's MTU (nor the gateway's).
    let bridge = h1.ns.ip(&["link", "show", &h1.bridge]).unwrap();
    assert!(bridge.contains(&format!("mtu {OVERLAY_MTU} ")), "{bridge}");
    assert!(
        ping(&a, lp.addr, 2).unwrap(),
        "no ping across the fan from a leased address"
    );
    // show: the server, its leases, and each lease as a dhcp binding.
    let shown = show(h1, &state, &["--leases"]);
    let dhcp = &shown[0]["dhcp"];
    assert_eq!(dhcp["running"], true, "{shown}");
    assert_eq!(dhcp["leases"], 2, "{shown}");
    assert_eq!(dhcp["range"], "250.0.1.2-250.0.1.127", "{shown}");
    let mac_a = format_mac(mac_of(&a, "eth0").unwrap());
    let listed = shown[0]["leases"].as_array().unwrap();
    let row = listed
        .iter()
        .find(|l| l["address"] == la.addr.to_string())
        .unwrap();
    assert_eq!(row["mac"], mac_a, "{shown}");
    assert_eq!(row["port"], "dveth1", "{shown}");
    assert!(
        eventually(Duration::from_secs(5), || {
            show(h1, &state, &[])[0]["agent"]["bindings"]["dhcp"] == 2
        }),
        "the leases never became dhcp bindings: {}",
        show(h1, &state, &[])
    );
    let text = fan_xdp(h1, &state, &["show", "--leases"]).unwrap();
    assert!(
        text.contains("DHCP: running (dnsmasq pid") && text.contains("2 lease(s) in use of 126"),
        "{text}"
    );
    assert!(
        text.contains(&la.addr.to_string()) && text.contains("dveth1"),
        "{text}"
    );
    // One dnsmasq, configured on its command line only, bound to the bridge.
    let pids = pids_named(&h1.ns, "dnsmasq");
    assert_eq!(pids.len(), 1, "{pids:?}");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", pids[0]))
        .unwrap()
        .replace('\0', " ");
    for flag in [
        "--conf-file=/dev/null",
        "--interface=fan-250-0-1",
        "--port=0",
        "--no-ping",
        "--dhcp-lease-max=126",
        "--dhcp-authoritative",
        "--dhcp-option-force=26,1480",
        "--dhcp-option=option:router,250.0.1.1",
    ] {
        assert!(cmdline.contains(flag), "{flag} missing from {cmdline}");
    }
    for host in [h1, h2] {
        fan_xdp(host, &state, &["detach", "eth0"]).unwrap();
    }
}

#[test]
fn the_server_is_adopted_after_an_agent_restart_and_restarted_when_killed() {
    let Some((state, fleet)) = bed(1) else {
        return;
    };
    let h1 = &fleet.hosts[0];
    attach_dhcp(h1, &state, &[]);
    let c = dhcp_container(h1, 1);
    let first = lease(&c).unwrap();
    let server = dhcp_pid(h1, &state).unwrap();
    // The agent killed and started again (by attach, as an operator would):
    // the server it finds still running is adopted, not duplicated.
    let agent = show(h1, &state, &[])[0]["agent"]["pid"].as_u64().unwrap();
    // SAFETY: signalling the agent of our test namespace by its pid.
    unsafe { libc::kill(agent as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || pids_named(
        &h1.ns, "fan-xdp"
    )
    .is_empty()));
    attach_dhcp(h1, &state, &[]);
    assert_eq!(
        dhcp_pid(h1, &state),
        Some(server),
        "the restarted agent replaced the server"
    );
    assert_eq!(
        pids_named(&h1.ns, "dnsmasq"),
        vec![server as u32],
        "one server, the same"
    );
    assert_eq!(
        lease(&c).unwrap(),
        first,
        "the renewal after an agent restart moved the address"
    );
    // dnsmasq killed: the agent starts another, which keeps the leases.
    // SAFETY: signalling the dnsmasq of our test namespace by its pid.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(10), || dhcp_pid(h1, &state)
            .is_some_and(|p| p != server)),
        "dnsmasq was not restarted: {}",
        show(h1, &state, &[])
    );
    assert_eq!(pids_named(&h1.ns, "dnsmasq").len(), 1);
    assert_eq!(
        lease(&c).unwrap(),
        first,
        "the restarted server forgot the lease"
    );
    let other = dhcp_container(h1, 2);
    assert_ne!(
        lease(&other).unwrap().addr,
        first.addr,
        "a leased address handed out twice"
    );
    fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
}

/// The value of `--NAME=` in the command line of process `pid`.
fn flag_of(pid: u32, name: &str) -> String {
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let prefix = format!("--{name}=");
    cmdline
        .split('\0')
        .find_map(|arg| arg.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {cmdline:?}"))
        .to_string()
}

#[test]
fn a_server_left_with_another_command_line_is_replaced() {
    let Some((state, fleet)) = bed(1) else {
        return;
    };
    let h1 = &fleet.hosts[0];
    attach_dhcp(h1, &state, &[]);
    let ours = dhcp_pid(h1, &state).unwrap() as u32;
    let (pid_file, lease_file) = (flag_of(ours, "pid-file"), flag_of(ours, "dhcp-leasefile"));
    // While the agent is down, its server is replaced by one serving
    // another range under the same pid file (as a server of a slice that
    // moved meanwhile would be).
    let agent = show(h1, &state, &[])[0]["agent"]["pid"].as_u64().unwrap();
    for pid in [agent as i32, ours as i32] {
        // SAFETY: signalling processes of our test namespace by their pids.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(eventually(Duration::from_secs(5), || {
        pids_named(&h1.ns, "fan-xdp").is_empty() && pids_named(&h1.ns, "dnsmasq").is_empty()
    }));
    let mut stale = foreign_dnsmasq(
        &h1.ns,
        &h1.bridge,
        "250.0.1.100,250.0.1.110",
        &[&format!("--pid-file={pid_file}")],
        std::path::Path::new(&lease_file),
    );
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == stale.id().to_string())
    }));
    attach_dhcp(h1, &state, &[]);
    let stopped = eventually(Duration::from_secs(5), || {
        stale.try_wait().is_ok_and(|s| s.is_some())
    });
    if !stopped {
        let _ = stale.kill();
        let _ = stale.wait();
    }
    assert!(stopped, "the stale server was adopted, not stopped");
    let servers = pids_named(&h1.ns, "dnsmasq");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(servers[0], stale.id(), "the stale server was adopted");
    assert_eq!(
        flag_of(servers[0], "dhcp-range"),
        "250.0.1.2,250.0.1.127,255.255.255.0,1h"
    );
    fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
}

#[test]
fn detach_stops_the_server_and_nothing_that_is_not_fan_xdps() {
    let Some((state, fleet)) = bed(1) else {
        return;
    };
    let h1 = &fleet.hosts[0];
    // Someone else's dnsmasq in the same namespace, on its own interface
    // (a veth: this kernel has no dummy module).
    h1.ns
        .ip(&[
            "link", "add", "other0", "type", "veth", "peer", "name", "other1",
        ])
        .unwrap();
    h1.ns
        .ip(&["addr", "add", "10.9.0.1/24", "dev", "other0"])
        .unwrap();
    h1.ns.ip(&["link", "set", "other0", "up"]).unwrap();
    let foreign_leases = state.0.join("foreign.leases");
    let mut foreign = foreign_dnsmasq(
        &h1.ns,
        "other0",
        "10.9.0.10,10.9.0.20",
        &[],
        &foreign_leases,
    );
    attach_dhcp(h1, &state, &[]);
    let c = dhcp_container(h1, 1);
    lease(&c).unwrap();
    let ours = dhcp_pid(h1, &state).unwrap() as u32;
    let lease_file = show(h1, &state, &[])[0]["dhcp"]["lease_file"]
        .as_str()
        .unwrap()
        .to_string();
    let said = fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
    assert!(
        said.contains(&format!(
            "stopped the DHCP server of {OVERLAY} (dnsmasq pid {ours})"
        )),
        "{said}"
    );
    assert_eq!(
        pids_named(&h1.ns, "dnsmasq"),
        vec![foreign.id()],
        "detach stopped the wrong dnsmasq"
    );
    assert!(
        std::path::Path::new(&lease_file).exists(),
        "the leases went with detach"
    );
    assert!(pids_named(&h1.ns, "fan-xdp").is_empty());
    let _ = foreign.kill();
    let _ = foreign.wait();
}

#[test]
fn two_fans_serve_side_by_side_and_detach_stops_only_its_own() {
    let Some((state, fleet)) = bed(1) else {
        return;
    };
    let h1 = &fleet.hosts[0];
    attach_two_dhcp_fans(h1, &state);
    let (c250, c240) = (
        dhcp_container(h1, 1),
        plug_dhcp_container(&h1.ns, "fan-240-0-1", "dveth2", "d1-240").unwrap(),
    );
    let (l250, l240) = (lease(&c250).unwrap(), lease(&c240).unwrap());
    assert_eq!(l250.router, Some(h1.gateway), "{l250:?}");
    assert_eq!(l240.router, Some(Ipv4Addr::new(240, 0, 1, 1)), "{l240:?}");
    assert_eq!(l240.addr.octets()[..3], [240, 0, 1], "{l240:?}");
    assert_eq!(pids_named(&h1.ns, "dnsmasq").len(), 2);
    // One fan detached: its server goes, the agent does not start it again,
    // and the other fan's server stays.
    let kept = show(h1, &state, &[])
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["overlay"] == OVERLAY)
        .unwrap()["dhcp"]["pid"]
        .as_u64()
        .unwrap();
    fan_xdp(h1, &state, &["detach", "eth0", "--overlay", "240.0.0.0/8"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pids_named(&h1.ns, "dnsmasq"), vec![kept as u32]);
    assert_eq!(lease(&c250).unwrap(), l250);
    fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
}

#[test]
fn a_slow_dnsmasq_stop_does_not_lapse_the_heartbeat() {
    let Some((state, fleet)) = bed(1) else {
        return;
    };
    let h1 = &fleet.hosts[0];
    attach_two_dhcp_fans(h1, &state);
    // In place of attach's agent, one that waits four seconds for each
    // DHCP server it stops (the heartbeat's timeout is three), as for a
    // dnsmasq that ignores SIGTERM. It adopts both servers.
    let (key, value) = state.env();
    let (run, mut agent) = fan_tests::lifecycle::replace_agent(
        h1,
        &[
            (key, value.as_os_str()),
            ("FAN_XDP_INJECT", "delay:dhcp-stop:4000".as_ref()),
        ],
    )
    .unwrap();
    // One fan detached: the agent stops its server (slowly).
    fan_xdp(h1, &state, &["detach", "eth0", "--overlay", "240.0.0.0/8"]).unwrap();
    let oldest = fan_tests::lifecycle::oldest_beat(h1, Duration::from_secs(5)).unwrap();
    fan_userspace::agent::stop(&run).unwrap();
    let _ = agent.wait();
    fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
    assert!(
        oldest < Duration::from_millis(2500),
        "the heartbeat was {oldest:?} old while the agent stopped a DHCP server"
    );
}

#[test]
fn a_containers_own_dhcp_server_is_not_heard() {
    rogue_server_is_not_heard(&[]);
}

/// With the bypass off (netfilter could act) fan traffic takes the stack,
/// but the ports keep their checks: a rogue DHCP server is still not heard
/// and a container still cannot send from its sibling's leased address.
#[test]
fn with_the_bypass_off_the_ports_still_guard_dhcp_and_sources() {
    let Some((state, fleet, rogue, client, leased)) =
        rogue_server_is_not_heard(&["--bypass", "off"])
    else {
        return;
    };
    let h1 = &fleet.hosts[0];
    assert!(
        eventually(Duration::from_secs(5), || {
            show(h1, &state, &[])[0]["agent"]["bindings"]["dhcp"] == 1
        }),
        "the lease is not bound with the bypass off: {}",
        show(h1, &state, &[])
    );
    let shown = fan_xdp(h1, &state, &["show"]).unwrap();
    assert!(
        shown.contains(
            "no fast path (bypass off): source and DHCP checks at 2 of 2 container port(s)"
        ),
        "{shown}"
    );
    // The rogue takes its sibling's leased address and sends from it.
    rogue
        .ip(&["addr", "add", &format!("{}/32", leased.addr), "dev", "eth0"])
        .unwrap();
    let before = h1.counter(StatReason::DropSourceNotBound).unwrap();
    let out = rogue
        .command("ping")
        .args(["-c", "2", "-W", "1", "-I"])
        .arg(leased.addr.to_string())
        .arg(h1.gateway.to_string())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the gateway answered a spoofed source"
    );
    assert!(
        h1.counter(StatReason::DropSourceNotBound).unwrap() >= before + 2,
        "a sibling's source left its port with the bypass off"
    );
    // The owner itself still reaches the gateway through the stack.
    assert!(ping(&client, h1.gateway, 2).unwrap());
    fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
}

/// A rogue DHCP server in container 1 and a client in container 2 on a host
/// attached with `extra`: the client takes fan-xdp's lease. Returns the bed
/// (still attached unless `extra` is empty), the rogue, the client and its
/// lease, for more checks.
fn rogue_server_is_not_heard(extra: &[&str]) -> Option<(StateDir, Fleet, Netns, Netns, Leased)> {
    let (state, fleet) = bed(1)?;
    let h1 = &fleet.hosts[0];
    attach_dhcp(h1, &state, extra);
    // The rogue answers on the slice first: it runs before the client asks,
    // with no probe, authoritative, offering its own router.
    let rogue = dhcp_container(h1, 1);
    rogue
        .ip(&["addr", "add", "250.0.1.250/24", "dev", "eth0"])
        .unwrap();
    let rogue_leases = state.0.join("rogue.leases");
    let mut server = foreign_dnsmasq(
        &rogue,
        "eth0",
        "250.0.1.200,250.0.1.210",
        &[
            "--no-ping",
            "--dhcp-authoritative",
            "--dhcp-option=3,250.0.1.250",
        ],
        &rogue_leases,
    );
    let client = dhcp_container(h1, 2);
    h1.wait_for_run_ready(Duration::from_secs(10)).unwrap();
    let before = h1.counter(StatReason::DropDhcpServerReply).unwrap();
    let leased = lease(&client).unwrap();
    assert!(
        in_default_dhcp_range(h1, leased.addr),
        "took the rogue's offer: {leased:?}"
    );
    assert_eq!(
        leased.router,
        Some(h1.gateway),
        "took the rogue's router: {leased:?}"
    );
    assert!(
        h1.counter(StatReason::DropDhcpServerReply).unwrap() > before,
        "the rogue's offers were not dropped at its port"
    );
    let _ = server.kill();
    let _ = server.wait();
    if extra.is_empty() {
        fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
    }
    Some((state, fleet, rogue, client, leased))
}

/// Both hosts attached with DHCP; an owner and a rogue on `h2` and a client
/// on `h1`, each with its lease, and both of `h2`'s leases bound.
fn owner_rogue_and_client(h1: &Host, h2: &Host, state: &StateDir) -> [(Netns, Leased); 3] {
    attach_dhcp(h1, state, &[]);
    attach_dhcp(h2, state, &[]);
    let leased = [(h2, 1), (h2, 2), (h1, 1)].map(|(host, j)| {
        let ns = dhcp_container(host, j);
        let lease = lease(&ns).unwrap();
        (ns, lease)
    });
    assert!(eventually(Duration::from_secs(5), || {
        show(h2, state, &[])[0]["agent"]["bindings"]["dhcp"] == 2
    }));
    leased
}

#[test]
fn a_leased_address_stays_with_its_container_against_arp() {
    let Some((state, fleet)) = bed(2) else {
        return;
    };
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let [(owner, lo), (rogue, _), (client, _)] = owner_rogue_and_client(h1, h2, &state);
    // Bound before any traffic: the very first packets go straight in.
    let direct = h2.counter(StatReason::DecapsulatedDirect).unwrap();
    assert!(ping(&client, lo.addr, 2).unwrap());
    assert!(
        h2.counter(StatReason::DecapsulatedDirect).unwrap() >= direct + 2,
        "a lease gave no direct delivery"
    );
    // The rogue claims the owner's address with its own MAC.
    let arp = gratuitous_arp(mac_of(&rogue, "eth0").unwrap(), lo.addr);
    std::thread::sleep(Duration::from_millis(1200));
    send_frames(&rogue, "eth0", &vec![arp; 3]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (owner_echoes, rogue_echoes) = (
        snmp_counter(&owner, "Icmp", "InEchos").unwrap(),
        snmp_counter(&rogue, "Icmp", "InEchos").unwrap(),
    );
    assert!(
        ping(&client, lo.addr, 3).unwrap(),
        "the owner lost its traffic"
    );
    assert_eq!(
        snmp_counter(&owner, "Icmp", "InEchos").unwrap(),
        owner_echoes + 3
    );
    assert_eq!(
        snmp_counter(&rogue, "Icmp", "InEchos").unwrap(),
        rogue_echoes,
        "the rogue got its sibling's traffic"
    );
    for host in [h1, h2] {
        fan_xdp(host, &state, &["detach", "eth0"]).unwrap();
    }
}

#[test]
fn a_leased_address_stays_with_its_container_against_a_forged_mac() {
    let Some((state, fleet)) = bed(2) else {
        return;
    };
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let [(owner, lo), (rogue, _), (client, lc)] = owner_rogue_and_client(h1, h2, &state);
    assert!(ping(&client, lo.addr, 2).unwrap());
    // The rogue sends frames with the owner's MAC as their source (ARP
    // probes, which claim no address): the bridge now has that MAC on the
    // rogue's port.
    let owner_mac = mac_of(&owner, "eth0").unwrap();
    let probe = arp_request(owner_mac, (owner_mac, Ipv4Addr::UNSPECIFIED), h2.gateway);
    send_frames(&rogue, "eth0", &vec![probe; 3]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let owner_echoes = snmp_counter(&owner, "Icmp", "InEchos").unwrap();
    let direct = h2.counter(StatReason::DecapsulatedDirect).unwrap();
    assert!(
        ping(&client, lo.addr, 3).unwrap(),
        "the owner lost its traffic"
    );
    assert_eq!(
        snmp_counter(&owner, "Icmp", "InEchos").unwrap(),
        owner_echoes + 3,
        "the owner's traffic went elsewhere"
    );
    assert!(h2.counter(StatReason::DecapsulatedDirect).unwrap() >= direct + 3);
    assert!(
        ping(&owner, lc.addr, 3).unwrap(),
        "the owner can no longer send"
    );
    for host in [h1, h2] {
        fan_xdp(host, &state, &["detach", "eth0"]).unwrap();
    }
}

#[test]
fn forty_dhcp_containers_per_host_reach_a_peer_on_the_other() {
    if !privileged() {
        return;
    }
    require_tools().unwrap();
    const PER_HOST: u32 = 40;
    let state = StateDir::new().unwrap();
    let fleet = Fleet::new(2).unwrap();
    for host in &fleet.hosts {
        attach_dhcp(host, &state, &[]);
    }
    let mut containers: Vec<(usize, Netns)> = Vec::new();
    for (i, host) in fleet.hosts.iter().enumerate() {
        for j in 1..=PER_HOST {
            containers.push((i, dhcp_container(host, j)));
        }
    }
    // All clients at once, as containers starting together would.
    let clients: Vec<_> = containers
        .iter()
        .map(|(_, ns)| start_client(ns).unwrap())
        .collect();
    let leases: Vec<Leased> = containers
        .iter()
        .zip(clients)
        .map(|((_, ns), client)| finish_client(ns, client).unwrap())
        .collect();
    let mut addrs: Vec<Ipv4Addr> = leases.iter().map(|l| l.addr).collect();
    for ((i, _), leased) in containers.iter().zip(&leases) {
        let host = &fleet.hosts[*i];
        assert!(in_default_dhcp_range(host, leased.addr), "{leased:?}");
        assert_eq!(leased.router, Some(host.gateway));
        assert_eq!(leased.mtu, OVERLAY_MTU);
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(
        addrs.len(),
        2 * PER_HOST as usize,
        "an address was leased twice"
    );
    // Each reaches a fixed peer on the other host (the other's first).
    let peers = [leases[PER_HOST as usize].addr, leases[0].addr];
    for ((i, ns), leased) in containers.iter().zip(&leases) {
        assert!(
            ping(ns, peers[*i], 1).unwrap(),
            "{} cannot reach {}",
            leased.addr,
            peers[*i]
        );
    }
    for host in &fleet.hosts {
        assert!(
            eventually(Duration::from_secs(5), || {
                show(host, &state, &[])[0]["agent"]["bindings"]["dhcp"] == PER_HOST
            }),
            "{}",
            show(host, &state, &[])
        );
        fan_xdp(host, &state, &["detach", "eth0"]).unwrap();
    }
}

#[test]
fn the_address_plan_is_set_per_fan_and_bad_plans_change_nothing() {
    let Some((state, fleet)) = bed(1) else {
        return;
    };
    let h1 = &fleet.hosts[0];
    let refused = |args: &[&str], says: &str| {
        let out = fan_xdp_output(
            h1,
            &state,
            &[&["attach", "eth0", "--overlay", OVERLAY][..], args].concat(),
        )
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            show(h1, &state, &[]),
            serde_json::json!([]),
            "{args:?} left a fan behind"
        );
        assert!(
            h1.ns.ip(&["link", "show", "fan-250-0-1"]).is_err(),
            "{args:?} left the bridge behind"
        );
    };
    refused(&["--dhcp", "--no-agent"], "--dhcp needs the agent");
    refused(
        &["--dhcp-range", "250.0.1.2-250.0.1.200"],
        "the DHCP range and the Docker range overlap",
    );
    refused(
        &["--cni-range", "250.0.1.192-250.0.1.255"],
        "the CNI range reaches outside the slice",
    );
    refused(
        &[
            "--host-reserve",
            "9",
            "--dhcp-range",
            "250.0.1.5-250.0.1.50",
        ],
        "the host reserve and the DHCP range overlap",
    );
    refused(
        &["--docker-cidr", "250.0.1.130/26"],
        "not one aligned prefix",
    );
    // dnsmasq missing: named by its package, and nothing attached.
    let out = h1
        .ns
        .command(fan_tests::topology::fan_xdp_binary().to_str().unwrap())
        .args(["attach", "eth0", "--overlay", OVERLAY, "--dhcp"])
        .env(state.env().0, state.env().1)
        .env("FAN_XDP_DNSMASQ", "/nonexistent/dnsmasq")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--dhcp needs dnsmasq"),
        "{stderr}"
    );
    assert_eq!(show(h1, &state, &[]), serde_json::json!([]));
    // A plan of one's own: kept with the fan, shown, served.
    let plan = [
        "--host-reserve",
        "9",
        "--dhcp-range",
        "250.0.1.10-250.0.1.63",
        "--cni-range",
        "250.0.1.128-250.0.1.254",
        "--docker-cidr",
        "250.0.1.64/26",
    ];
    attach_dhcp(h1, &state, &plan);
    let shown = show(h1, &state, &[]);
    assert_eq!(
        shown[0]["plan"],
        serde_json::json!({
            "gateway": "250.0.1.1", "reserve": "250.0.1.1-250.0.1.9", "dhcp": "250.0.1.10-250.0.1.63",
            "docker": "250.0.1.64/26", "cni": "250.0.1.128-250.0.1.254"
        }),
        "{shown}"
    );
    assert_eq!(
        shown[0]["docker_opts"],
        "DOCKER_OPTS=\"-b fan-250-0-1 --mtu=1480 --fixed-cidr=250.0.1.64/26 --iptables=false --ip6tables=false --ip-masq=false\"",
    );
    let text = fan_xdp(h1, &state, &["show"]).unwrap();
    assert!(text.contains("address plan: host reserve 250.0.1.1-250.0.1.9 (gateway 250.0.1.1), DHCP 250.0.1.10-250.0.1.63, Docker 250.0.1.64/26, CNI 250.0.1.128-250.0.1.254"), "{text}");
    let c = dhcp_container(h1, 1);
    let leased = lease(&c).unwrap();
    let offset = u32::from(leased.addr) - u32::from(h1.slice);
    assert!(
        (10..=63).contains(&offset),
        "{leased:?} outside the DHCP range given"
    );
    // The same again changes nothing; another plan is refused.
    let again = attach_dhcp(h1, &state, &plan);
    assert!(again.contains("already attached"), "{again}");
    let out = fan_xdp_output(
        h1,
        &state,
        &[
            "attach",
            "eth0",
            "--overlay",
            OVERLAY,
            "--dhcp",
            "--host-reserve",
            "9",
        ],
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("another address plan or DHCP setting"));
    fan_xdp(h1, &state, &["detach", "eth0"]).unwrap();
}

/// The slice follows its underlay address (the agent re-attaches the fan)
/// and the DHCP server moves with it: the old slice's dnsmasq stops, one
/// serves the new slice bridge with the new slice's range, and a container
/// there leases from it and reaches the other host.
#[test]
fn the_dhcp_server_moves_with_the_slice() {
    let Some((state, fleet)) = bed(2) else {
        return;
    };
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    attach_dhcp(h1, &state, &[]);
    attach_dhcp(h2, &state, &[]);
    let peer = dhcp_container(h1, 1);
    let peer_lease = lease(&peer).unwrap();
    let old = dhcp_pid(h2, &state).expect("no dnsmasq on h2") as u32;
    assert_eq!(flag_of(old, "interface"), "fan-250-0-2");
    // As a DHCP client moves a host's address: the new one first, with
    // secondaries promoted (systemd's default) so the old one's removal
    // keeps it.
    for scope in ["all", "eth0"] {
        h2.ns
            .sysctl(&format!("net.ipv4.conf.{scope}.promote_secondaries"), "1")
            .unwrap();
    }
    h2.ns
        .ip(&["addr", "add", "198.18.0.9/16", "dev", "eth0"])
        .unwrap();
    h2.ns
        .ip(&["addr", "del", "198.18.0.2/16", "dev", "eth0"])
        .unwrap();
    let moved_to = |shown: &serde_json::Value| {
        shown[0]["bridge"] == "fan-250-0-9"
            && shown[0]["dhcp"]["pid"]
                .as_u64()
                .is_some_and(|pid| pid != u64::from(old))
    };
    assert!(
        eventually(Duration::from_secs(10), || moved_to(&show(h2, &state, &[]))),
        "the DHCP server did not move with the slice: {}",
        show(h2, &state, &[])
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{old}")).exists(),
        "the old slice's dnsmasq still runs"
    );
    let new = dhcp_pid(h2, &state).unwrap() as u32;
    assert_eq!(flag_of(new, "interface"), "fan-250-0-9");
    assert!(
        flag_of(new, "dhcp-range").starts_with("250.0.9.2,250.0.9.127"),
        "{}",
        flag_of(new, "dhcp-range")
    );
    let moved = plug_dhcp_container(&h2.ns, "fan-250-0-9", "dveth9", "d9-1").unwrap();
    let leased = lease(&moved).unwrap();
    let offset = u32::from(leased.addr).wrapping_sub(u32::from(Ipv4Addr::new(250, 0, 9, 0)));
    assert!((2..=127).contains(&offset), "{leased:?}");
    assert_eq!(
        leased.router,
        Some(Ipv4Addr::new(250, 0, 9, 1)),
        "{leased:?}"
    );
    assert_eq!(leased.mtu, OVERLAY_MTU, "{leased:?}");
    assert!(
        ping(&moved, peer_lease.addr, 3).unwrap(),
        "a container of the moved slice does not reach the other host"
    );
    assert!(ping(&peer, leased.addr, 2).unwrap());
    for host in [h1, h2] {
        fan_xdp(host, &state, &["detach", "eth0"]).unwrap();
    }
}
