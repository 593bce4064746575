//! Path MTU through the fan, end to end: fan hosts on one /16 underlay
//! split into two segments joined by two routers, whose link between them
//! carries only 1400 bytes. Attached with the defaults (no `--mtu`).
//!
//! ```text
//! h1 198.18.1.1 --+                                          +-- h2 198.18.2.2
//!                 swA -- r1 ==(MTU 1400)== r2 -- swB
//! h3 198.18.1.3 --+   .1.254            .2.254
//! ```
//! Slices (overlay 250.0.0.0/8 over 198.18.0.0/16): h1 250.1.1.0/24, h2
//! 250.2.2.0/24, h3 250.1.3.0/24; one container each at .10.

use std::{net::Ipv4Addr, time::Duration};

use fan_common::StatReason;
use fan_tests::{
    hex,
    netns::Netns,
    privileged,
    topology::{fan_xdp_binary, plug_container},
    traffic::{mac_of, send_frames, tcp_transfer},
};
use fan_userspace::dataplane::Stats;

const OVERLAY: &str = "250.0.0.0/8";
const BULK: u64 = 20 << 20;
/// Every host's attach (the underlay spans both segments).
const ATTACH: [&str; 6] = [
    "attach",
    "eth0",
    "--overlay",
    OVERLAY,
    "--underlay",
    "198.18.0.0/16",
];

struct Host {
    ns: Netns,
    container: Netns,
    addr: Ipv4Addr,
}

impl Host {
    fn fan_xdp(&self, args: &[&str]) -> String {
        let out = self
            .ns
            .command(fan_xdp_binary().to_str().unwrap())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fan-xdp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stats(&self) -> Stats {
        let dir = self
            .ns
            .enter(|| fan_userspace::state::StateDir::locate(None))
            .unwrap()
            .unwrap();
        fan_userspace::dataplane::PinnedMaps::open(&dir)
            .unwrap()
            .stats()
            .unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command(fan_xdp_binary().to_str().unwrap())
            .args(["detach", "eth0"])
            .output();
    }
}

/// The whole topology; field order is drop order (hosts before the wires).
struct Net {
    hosts: Vec<Host>,
    _routers: [Netns; 2],
    _switches: [Netns; 2],
}

fn bridge_ns(label: &str) -> Netns {
    let ns = Netns::new(label).unwrap();
    ns.ip(&["link", "add", "sw", "type", "bridge"]).unwrap();
    ns.ip(&["link", "set", "sw", "up"]).unwrap();
    for family in ["iptables", "ip6tables", "arptables"] {
        let _ = ns.sysctl(&format!("net.bridge.bridge-nf-call-{family}"), "0");
    }
    ns
}

/// A namespace whose `eth0` is plugged into `switch` with `addr`.
fn on_switch(switch: &Netns, label: &str, addr: &str) -> Netns {
    let ns = Netns::new(label).unwrap();
    let port = format!("sw-{label}");
    switch.add_veth_to(&port, &ns).unwrap();
    switch
        .ip(&["link", "set", &port, "master", "sw", "up"])
        .unwrap();
    ns.ip(&["addr", "add", addr, "dev", "eth0"]).unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns
}

fn build() -> Net {
    build_with(&[])
}

/// [`build`], every attach with `extra` options.
fn build_with(extra: &[&str]) -> Net {
    let (sw_a, sw_b) = (bridge_ns("swA"), bridge_ns("swB"));
    let r1 = on_switch(&sw_a, "r1", "198.18.1.254/24");
    let r2 = on_switch(&sw_b, "r2", "198.18.2.254/24");
    r1.ip(&[
        "link",
        "add",
        "mid",
        "mtu",
        "1400",
        "type",
        "veth",
        "peer",
        "name",
        "mid",
        "netns",
        r2.name(),
    ])
    .unwrap();
    r2.ip(&["link", "set", "mid", "mtu", "1400"]).unwrap();
    for (router, addr, far, via) in [
        (&r1, "198.19.255.1/30", "198.18.2.0/24", "198.19.255.2"),
        (&r2, "198.19.255.2/30", "198.18.1.0/24", "198.19.255.1"),
    ] {
        router.ip(&["addr", "add", addr, "dev", "mid"]).unwrap();
        router.ip(&["link", "set", "mid", "up"]).unwrap();
        router.ip(&["route", "add", far, "via", via]).unwrap();
        router.sysctl("net.ipv4.ip_forward", "1").unwrap();
    }
    let mut hosts = Vec::new();
    for (switch, label, addr, router, slice) in [
        (&sw_a, "h1", "198.18.1.1/24", "198.18.1.254", "250.1.1"),
        (&sw_b, "h2", "198.18.2.2/24", "198.18.2.254", "250.2.2"),
        (&sw_a, "h3", "198.18.1.3/24", "198.18.1.254", "250.1.3"),
    ] {
        let ns = on_switch(switch, label, addr);
        ns.ip(&["route", "add", "198.18.0.0/16", "via", router])
            .unwrap();
        let mut host = Host {
            container: Netns::new("placeholder").unwrap(),
            ns,
            addr: format!("{slice}.10").parse().unwrap(),
        };
        host.fan_xdp(&[&ATTACH[..], extra].concat());
        let bridge = format!("fan-{}", slice.replace('.', "-"));
        let gateway = format!("{slice}.1").parse().unwrap();
        host.container = plug_container(
            &host.ns,
            &bridge,
            "c0",
            &format!("c{label}"),
            (host.addr, 24),
            gateway,
        )
        .unwrap();
        hosts.push(host);
    }
    Net {
        hosts,
        _routers: [r1, r2],
        _switches: [sw_a, sw_b],
    }
}

/// The path MTU `ip route get` reports in `ns` towards `to`, if any.
fn route_mtu(ns: &Netns, to: Ipv4Addr) -> Option<u32> {
    let out = ns.ip(&["route", "get", &to.to_string()]).unwrap();
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word == "mtu" {
            return words.next().and_then(|m| m.parse().ok());
        }
    }
    None
}

/// Whether a ping with DF and `size` bytes of payload from `ns` gets an answer.
fn ping_df(ns: &Netns, to: Ipv4Addr, size: u32) -> bool {
    ns.output(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &to.to_string(),
        ],
    )
    .unwrap()
    .status
    .success()
}

/// Waits (bounded) until `f` holds.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..50 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn a_narrower_hop_on_the_underlay_needs_no_mtu_option() {
    if !privileged() {
        return;
    }
    let net = build();
    let [h1, h2, h3] = &net.hosts[..] else {
        unreachable!()
    };
    // Bulk TCP from h1's container over the narrow path: the router's
    // "fragmentation needed" teaches h1, h1 answers the container, TCP adapts.
    assert_eq!(
        tcp_transfer(&h2.container, &h1.container, h2.addr, BULK).unwrap(),
        BULK,
        "the transfer over the narrower path stalled"
    );
    assert!(h1.stats().get(StatReason::PmtuLearned).packets >= 1);
    assert!(h1.stats().get(StatReason::PmtuAnswered).packets >= 1);
    assert_eq!(route_mtu(&h1.container, h2.addr), Some(1380));
    let shown: serde_json::Value = serde_json::from_str(&h1.fan_xdp(&["show", "--json"])).unwrap();
    assert_eq!(shown[0]["path_mtus"][0]["host"], "198.18.2.2", "{shown}");
    assert_eq!(shown[0]["path_mtus"][0]["mtu"], 1400, "{shown}");
    // A third host over the 1500-byte segment keeps the full MTU.
    assert_eq!(
        tcp_transfer(&h3.container, &h1.container, h3.addr, BULK).unwrap(),
        BULK
    );
    assert_eq!(route_mtu(&h1.container, h3.addr), None);

    // UDP with DF at the edge sizes: 1352 + 28 = 1380 fits, 1353 does not.
    assert!(ping_df(&h1.container, h2.addr, 1352), "1380 bytes with DF");
    assert!(
        !ping_df(&h1.container, h2.addr, 1353),
        "1381 bytes with DF got through"
    );
    // The same with segmentation in software: TSO and GSO off in the sender.
    h1.container
        .run("ethtool", &["-K", "eth0", "tso", "off", "gso", "off"])
        .unwrap();
    assert_eq!(
        tcp_transfer(&h2.container, &h1.container, h2.addr, BULK).unwrap(),
        BULK
    );

    // The host's own sockets: the agent attach started gives the remote
    // slice a route with the path's MTU.
    assert!(
        eventually(|| {
            let routes = h1.ns.ip(&["route", "show", "250.2.2.0/24"]).unwrap();
            routes.contains("mtu 1380")
        }),
        "no route with the path MTU: {}",
        h1.ns.ip(&["route"]).unwrap()
    );
    assert!(ping_df(&h1.ns, h2.addr, 1352));
    assert!(!ping_df(&h1.ns, h2.addr, 1353));
    // The other way over the narrow path, with DF: h2 learns it too (TCP
    // from h2's container would not teach it: h1's container, knowing the
    // path, advertises an MSS that fits), and keeps its route.
    for _ in 0..2 {
        assert!(
            !ping_df(&h2.container, h1.addr, 1452),
            "1480 bytes with DF got through"
        );
    }
    assert!(
        eventually(|| {
            let routes = h2.ns.ip(&["route", "show", "250.1.1.0/24"]).unwrap();
            routes.contains("mtu 1380")
        }),
        "h2 has no route with the path MTU"
    );
    // Without DF, the stack fragments to the route's MTU before the
    // fragments are encapsulated: 2000-byte echoes go through both ways,
    // also from a container that has forgotten the path MTU (so its
    // 1480-byte fragments are the host's to fragment again).
    h1.container.ip(&["route", "flush", "cache"]).unwrap();
    assert_eq!(route_mtu(&h1.container, h2.addr), None);
    let fragmented = h1
        .container
        .output(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                "2",
                "-W",
                "2",
                "-M",
                "dont",
                "-s",
                "2000",
                &h2.addr.to_string(),
            ],
        )
        .unwrap();
    assert!(
        fragmented.status.success(),
        "fragmentable echoes: {}",
        String::from_utf8_lossy(&fragmented.stdout)
    );
    // Which counter says so depends on bridge netfilter: with it, the
    // bridge reassembles the fragments before its program sees the datagram.
    let stack = h1.stats();
    let to_the_stack: u64 = [
        StatReason::StackTooBig,
        StatReason::StackTooBigForPath,
        StatReason::StackFragmentForPath,
    ]
    .into_iter()
    .map(|reason| stack.get(reason).packets)
    .sum();
    assert!(to_the_stack >= 1, "the fragments did not take the stack");
    assert_eq!(
        tcp_transfer(&h2.container, &h1.ns, h2.addr, BULK).unwrap(),
        BULK,
        "the host's own transfer"
    );
}

/// With no agent to give the remote slice's route the path MTU, the host's
/// own DF packets too big for the path are answered as its stack would
/// answer them for a tunnel: it learns the MTU for that destination and
/// sends what fits, where they were dropped without a word before.
#[test]
fn the_hosts_own_packets_too_big_for_the_path_are_answered() {
    if !privileged() {
        return;
    }
    let net = build_with(&["--no-agent"]);
    let [h1, h2, _] = &net.hosts[..] else {
        unreachable!()
    };
    // h1 learns the narrower path from the router (a container's transfer).
    assert_eq!(
        tcp_transfer(&h2.container, &h1.container, h2.addr, BULK).unwrap(),
        BULK
    );
    assert!(h1.stats().get(StatReason::PmtuLearned).packets >= 1);
    assert!(
        !h1.ns
            .ip(&["route", "show", "250.2.2.0/24"])
            .unwrap()
            .contains("mtu"),
        "without an agent nothing gives the slice's route the path MTU"
    );
    let answered = h1.stats().get(StatReason::PmtuAnswered).packets;
    // Too big for the path: answered, and the host's stack learns 1380.
    assert!(
        !ping_df(&h1.ns, h2.addr, 1400),
        "1428 bytes with DF got through"
    );
    assert_eq!(
        h1.stats().get(StatReason::PmtuAnswered).packets,
        answered + 1,
        "the host's packet was not answered"
    );
    assert_eq!(route_mtu(&h1.ns, h2.addr), Some(1380));
    assert!(ping_df(&h1.ns, h2.addr, 1352), "1380 bytes with DF");
    // TCP from the host adapts at once.
    assert_eq!(
        tcp_transfer(&h2.container, &h1.ns, h2.addr, BULK).unwrap(),
        BULK,
        "the host's own transfer"
    );
}

/// A VXLAN fan over the same narrower hop: the programs learn the path MTU
/// from the router's message quoting their VXLAN, the agent gives the remote
/// slice's route (through the bridge) the path's MTU less 50, the host
/// answers its routed containers from that route, and TCP adapts.
#[test]
fn a_narrower_hop_under_a_vxlan_fan_is_learned_and_followed() {
    if !privileged() {
        return;
    }
    let net = build_with(&["--type", "vxlan"]);
    let [h1, h2, _] = &net.hosts[..] else {
        unreachable!()
    };
    // The first transfer may stall until the route is in place: bounded
    // retries, each a full transfer.
    let moved = (0..3).any(|_| {
        tcp_transfer(&h2.container, &h1.container, h2.addr, BULK).is_ok_and(|n| n == BULK)
    });
    assert!(moved, "no transfer over the narrower path completed");
    assert!(h1.stats().get(StatReason::PmtuLearned).packets >= 1);
    assert!(
        eventually(|| {
            let routes = h1.ns.ip(&["route", "show", "250.2.2.0/24"]).unwrap();
            routes.contains("mtu 1350")
        }),
        "no route with the path MTU less 50: {}",
        h1.ns.ip(&["route"]).unwrap()
    );
    assert_eq!(route_mtu(&h1.container, h2.addr), Some(1350));
    assert!(ping_df(&h1.container, h2.addr, 1322), "1350 bytes with DF");
    assert!(
        !ping_df(&h1.container, h2.addr, 1323),
        "1351 bytes with DF got through"
    );
}

#[test]
fn a_container_cannot_teach_its_host_a_path_mtu() {
    if !privileged() {
        return;
    }
    let net = build();
    let h1 = &net.hosts[0];
    // From h1's container to h1's underlay address: "fragmentation needed",
    // MTU 600, about an outer packet of h1's to h3 (198.18.1.3).
    // Checksums computed independently.
    const FORGED: &str = "45000038 00000000 4001b8a6 fa01010a c6120101
        03045da7 00000258 450005dc 00004000 4004a6f5
        c6120101 c6120103 450005c8 12344000";
    let mut frame = mac_of(&h1.ns, "fan-250-1-1").unwrap().to_vec();
    frame.extend(mac_of(&h1.container, "eth0").unwrap());
    frame.extend([0x08, 0x00]);
    frame.extend(hex(FORGED));
    let before = h1.stats();
    send_frames(&h1.container, "eth0", &vec![frame; 3]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = h1.stats();
    assert_eq!(
        after.get(StatReason::PmtuLearned),
        before.get(StatReason::PmtuLearned)
    );
    let shown: serde_json::Value = serde_json::from_str(&h1.fan_xdp(&["show", "--json"])).unwrap();
    assert_eq!(shown[0]["path_mtus"], serde_json::json!([]), "{shown}");
}

#[test]
fn a_restarted_agent_removes_the_path_mtu_routes_its_killed_predecessor_left() {
    if !privileged() {
        return;
    }
    let net = build();
    let [h1, h2, _] = &net.hosts[..] else {
        unreachable!()
    };
    // h2 learns the narrow path (as in the first test) and its agent routes it.
    for _ in 0..2 {
        assert!(!ping_df(&h2.container, h1.addr, 1452));
    }
    let routed = || {
        h2.ns
            .ip(&["route", "show", "250.1.1.0/24"])
            .unwrap()
            .contains("mtu 1380")
    };
    assert!(eventually(routed), "h2 has no route with the path MTU");
    let shown: serde_json::Value = serde_json::from_str(&h2.fan_xdp(&["show", "--json"])).unwrap();
    let pid = shown[0]["agent"]["pid"].as_i64().expect("an agent") as i32;
    // SAFETY: signalling the agent by the pid its status names; it runs in
    // this test's namespace.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // While no agent runs, the path MTU expires (here: is forgotten at once).
    h2.ns
        .enter(|| {
            let dir = fan_userspace::state::StateDir::locate(None)?;
            let mut maps = fan_userspace::dataplane::PinnedMaps::open(&dir)?;
            let hosts: Vec<_> = maps.path_mtus.keys().collect::<Result<_, _>>()?;
            for host in hosts {
                maps.path_mtus.remove(&host)?;
            }
            anyhow::Ok(())
        })
        .unwrap()
        .unwrap();
    // The agent back (attach restarts it): the route it did not install
    // itself is its all the same, and goes.
    h2.fan_xdp(&ATTACH);
    let gone = eventually(|| !routed());
    let log = h2.ns.enter(|| {
        let run = fan_userspace::state::rundir::RunDir::locate(None).unwrap();
        std::fs::read_to_string(run.path.join("agent.log")).unwrap_or_default()
    });
    assert!(
        gone,
        "the killed agent's route outlived its path MTU: {} {log:?}",
        h2.ns.ip(&["route"]).unwrap()
    );
}
