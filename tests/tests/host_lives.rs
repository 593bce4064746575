//! A host that lives (issue 13): fans from fanctl's configuration file, the
//! `up`/`down` verbs, the agent following its underlay and slice bridge, a
//! reboot, and errors without backtraces. Host kernel only.
//!
//! Over 400 lines: each test builds its own fleet and the helpers that read
//! the agent's log and the host's state are shared by all of them; split,
//! they would be copied.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fan_tests::{
    netns::Netns,
    privileged,
    snapshot::netns_snapshot,
    topology::{Daemon, Fleet, Host, add_container_at, fan_xdp_binary},
    traffic::ping,
};

/// A directory for a test's configuration files and logs, removed when
/// dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fan-xdp-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` as a configuration root owns and only root may write.
fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn show(host: &Host) -> serde_json::Value {
    serde_json::from_str(&host.fan_xdp_ok(&["show", "--json"]).unwrap()).unwrap()
}

/// Polls `check` every 100 ms until it holds or `limit` passes; whether it held.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The slices of the complete fans `show` lists, by overlay (none while
/// show fails: a detach and attach under way).
fn slices(host: &Host) -> Vec<(String, String)> {
    let Some(shown) = try_show(host) else {
        return Vec::new();
    };
    shown
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["complete"] == true)
        .map(|f| {
            (
                f["overlay"].as_str().unwrap().to_string(),
                f["slice"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `show --json`, or None while it fails (an agent attaching meanwhile).
fn try_show(host: &Host) -> Option<serde_json::Value> {
    let out = host.fan_xdp(&["show", "--json"]).ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn agent_ready(host: &Host) -> bool {
    try_show(host).is_some_and(|s| s.get(0).is_some_and(|f| f["agent"]["ready"] == true))
}

/// The log of the agent `attach` started in `host` (in its run directory).
fn attach_agent_log(host: &Host) -> String {
    let run = host
        .ns
        .enter(|| fan_userspace::state::rundir::RunDir::locate(None))
        .unwrap()
        .unwrap();
    std::fs::read_to_string(run.path.join("agent.log")).unwrap_or_default()
}

/// A container of `host` at `addr` on `bridge`, port `veth<j>`.
fn container_on(host: &Host, bridge: &str, j: u8, addr: Ipv4Addr, len: u8) -> Netns {
    let gateway = Ipv4Addr::from(u32::from(addr) & !((1u32 << (32 - len)) - 1) | 1);
    fan_tests::topology::plug_container(
        &host.ns,
        bridge,
        &format!("veth{j}"),
        &format!("c-{j}"),
        (addr, len),
        gateway,
    )
    .unwrap()
}

#[test]
fn after_a_reboot_the_agent_brings_every_fan_back_from_the_file() {
    if !privileged() {
        return;
    }
    let dir = Scratch::new("reboot");
    let config = dir.join("fan");
    write_config(
        &config,
        "# as fanctl reads it\n250.0.0.0/8 eth0/16\n251.0.0.0/8 eth0/16 off\n",
    );
    let config_arg = config.to_str().unwrap();
    let boot = || {
        let fleet = Fleet::new(2).unwrap();
        let agents: Vec<Daemon> = fleet
            .hosts
            .iter()
            .map(|h| Daemon::start(&h.ns, &["--config", config_arg]).unwrap())
            .collect();
        for host in &fleet.hosts {
            assert!(
                within(Duration::from_secs(10), || agent_ready(host)),
                "the agent in {} brought up no fan from {config_arg}",
                host.ns.name()
            );
            assert_eq!(
                slices(host),
                vec![("250.0.0.0/8".to_string(), host.slice_cidr())],
                "the line marked off came up, or the fan did not"
            );
            assert_eq!(show(host)[0]["agent"]["started_by_attach"], false);
        }
        let fleet = fleet.with_containers(1).unwrap();
        let (c1, c2) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
        assert!(
            ping(&c1.ns, c2.addr, 2).unwrap(),
            "containers do not reach each other"
        );
        (fleet, agents)
    };
    let (fleet, agents) = boot();
    // The reboot: the agents die, the namespaces go, and with them their
    // pinned and /run state (nothing in /var/lib is touched).
    let state: Vec<(PathBuf, PathBuf)> = fleet
        .hosts
        .iter()
        .map(|h| {
            h.ns.enter(|| {
                (
                    fan_userspace::state::StateDir::locate(None).unwrap().path,
                    fan_userspace::state::rundir::RunDir::locate(None)
                        .unwrap()
                        .path,
                )
            })
            .unwrap()
        })
        .collect();
    for agent in agents {
        agent.kill().unwrap();
    }
    drop(fleet);
    for (pins, run) in &state {
        let _ = std::fs::remove_dir_all(pins);
        let _ = std::fs::remove_dir_all(run);
    }
    // The bare hosts again, the agent with the same file, and nothing else.
    let (fleet, agents) = boot();
    drop(agents);
    fleet.detach_all().unwrap();
}

/// Two hosts attached (their agents started by attach), one container each.
fn two_hosts_on_the_fan() -> Fleet {
    let fleet = Fleet::new(2).unwrap();
    fleet.attach_all(&[]).unwrap();
    fleet.with_containers(1).unwrap()
}

/// Everything of `slice` (e.g. "250.0.2.") left in `host`: addresses,
/// routes, NAT rules.
fn traces_of(host: &Host, slice: &str) -> Vec<String> {
    let mut found = Vec::new();
    for args in [&["addr", "show"][..], &["route", "show", "table", "all"]] {
        let text = host.ns.ip(args).unwrap();
        found.extend(
            text.lines()
                .filter(|l| l.contains(slice))
                .map(str::to_string),
        );
    }
    let nft = host.ns.run("nft", &["list", "ruleset"]).unwrap();
    found.extend(
        nft.lines()
            .filter(|l| l.contains(slice))
            .map(str::to_string),
    );
    found
}

#[test]
fn the_slice_follows_the_underlay_address_in_both_orders() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_on_the_fan();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let c1 = &h1.containers[0];
    // Without it, deleting the primary address deletes the secondaries in
    // its subnet too (the new one of the first order); systemd's sysctl
    // defaults turn it on, as does every DHCP client's address change.
    for scope in ["all", "eth0"] {
        h2.ns
            .sysctl(&format!("net.ipv4.conf.{scope}.promote_secondaries"), "1")
            .unwrap();
    }
    // The host has talked to its container: the log can name it.
    assert!(ping(&h2.ns, h2.containers[0].addr, 1).unwrap());
    // (new address, old address, whether the new one comes first)
    let moves = [
        (
            Ipv4Addr::new(198, 18, 0, 9),
            Ipv4Addr::new(198, 18, 0, 2),
            true,
        ),
        (
            Ipv4Addr::new(198, 18, 0, 5),
            Ipv4Addr::new(198, 18, 0, 9),
            false,
        ),
    ];
    for (step, (new, old, new_first)) in moves.into_iter().enumerate() {
        let (new_cidr, old_cidr) = (format!("{new}/16"), format!("{old}/16"));
        let old_slice = format!("250.0.{}.", old.octets()[3]);
        let new_slice = format!("250.0.{}.0/24", new.octets()[3]);
        let started = Instant::now();
        if new_first {
            h2.ns
                .ip(&["addr", "add", &new_cidr, "dev", "eth0"])
                .unwrap();
            h2.ns
                .ip(&["addr", "del", &old_cidr, "dev", "eth0"])
                .unwrap();
        } else {
            h2.ns
                .ip(&["addr", "del", &old_cidr, "dev", "eth0"])
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            h2.ns
                .ip(&["addr", "add", &new_cidr, "dev", "eth0"])
                .unwrap();
        }
        assert!(
            within(Duration::from_secs(5), || slices(h2)
                == vec![("250.0.0.0/8".to_string(), new_slice.clone())]),
            "move {step}: the slice did not follow {old} -> {new} within 5 s: {:?}; the agent's log:\n{}",
            slices(h2),
            attach_agent_log(h2)
        );
        eprintln!(
            "move {step}: slice {new_slice} after {:?}",
            started.elapsed()
        );
        assert_eq!(
            traces_of(h2, &old_slice),
            Vec::<String>::new(),
            "move {step}: the old slice's address, routes or NAT remain"
        );
        let entry = h2.pinned_fan_entry().unwrap();
        assert_eq!(
            Ipv4Addr::from(entry.local_host),
            new,
            "the fan entry kept the old address"
        );
        let bridge = show(h2)[0]["bridge"].as_str().unwrap().to_string();
        assert_eq!(bridge, format!("fan-250-0-{}", new.octets()[3]));
        let addr = Ipv4Addr::new(250, 0, new.octets()[3], 20);
        let moved = container_on(h2, &bridge, 20 + step as u8, addr, 24);
        assert!(
            ping(&moved, c1.addr, 3).unwrap(),
            "move {step}: a container on the new slice does not reach the other host"
        );
        assert!(
            ping(&c1.ns, addr, 2).unwrap(),
            "move {step}: the other host does not reach the new slice"
        );
        drop(moved);
    }
    let log = attach_agent_log(h2);
    assert!(
        log.contains("eth0 moved from 198.18.0.2 to 198.18.0.9: slice 250.0.2.0/24 on fan-250-0-2 is now 250.0.9.0/24 on fan-250-0-9; containers left on the old slice: 250.0.2.11"),
        "the agent's log does not name the move and the container left behind:\n{log}"
    );
    assert_eq!(
        log.matches("moved from").count(),
        2,
        "one line per move:\n{log}"
    );
    let printed: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("attached:") || l.starts_with("detached:"))
        .collect();
    assert_eq!(
        printed,
        Vec::<&str>::new(),
        "the agent's attach and detach printed besides its one line"
    );
    fleet.detach_all().unwrap();
}

#[test]
fn the_agent_follows_a_recreated_underlay_and_a_deleted_bridge() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_on_the_fan();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    assert!(ping(&c1.ns, c2.addr, 2).unwrap());
    let flows = || ping(&c1.ns, c2.addr, 1).unwrap_or(false);

    // Down and up: the same device, its programs stay.
    h2.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    h2.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    assert!(
        within(Duration::from_secs(5), flows),
        "no traffic after eth0 went down and up"
    );

    // Deleted and re-created under its name (a driver reload, netplan).
    h2.ns.ip(&["link", "del", "eth0"]).unwrap();
    fleet.switch.add_veth_to("sw-h2", &h2.ns).unwrap();
    fleet
        .switch
        .ip(&["link", "set", "sw-h2", "master", "sw", "up"])
        .unwrap();
    h2.ns
        .ip(&["addr", "add", "198.18.0.2/16", "dev", "eth0"])
        .unwrap();
    h2.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    let started = Instant::now();
    assert!(
        within(Duration::from_secs(5), flows),
        "no traffic within 5 s of eth0 being re-created, with no command"
    );
    eprintln!(
        "traffic again {:?} after eth0 was re-created",
        started.elapsed()
    );
    let log = attach_agent_log(h2);
    assert_eq!(
        log.matches("underlay eth0 was re-created").count(),
        1,
        "one line for the re-created underlay:\n{log}"
    );

    // The slice bridge deleted by hand: re-created, with its gateway.
    h2.ns.ip(&["link", "del", &h2.bridge]).unwrap();
    assert!(
        within(Duration::from_secs(5), || h2
            .ns
            .ip(&["addr", "show", "dev", &h2.bridge])
            .is_ok_and(|a| a.contains(&format!("{}/24", h2.gateway)))),
        "the slice bridge was not re-created within 5 s"
    );
    let c3 = add_container_at(h2, 3, Ipv4Addr::new(250, 0, 2, 33)).unwrap();
    assert!(
        ping(&c1.ns, c3.addr, 3).unwrap(),
        "no traffic to a container on the re-created bridge"
    );
    let log = attach_agent_log(h2);
    assert_eq!(
        log.matches("was deleted: attached again").count(),
        1,
        "{log}"
    );
    drop(c3);
    fleet.detach_all().unwrap();
}

/// A namespace's state with what differs between two creations of the same
/// thing left out: interface indexes, MAC addresses, bridge ids.
fn normalized(ns: &Netns) -> anyhow::Result<String> {
    Ok(netns_snapshot(ns)?
        .lines()
        .map(|line| {
            line.split(' ')
                .map(|word| {
                    let bare = word.trim_end_matches(':');
                    if !bare.is_empty()
                        && bare.chars().all(|c| c.is_ascii_digit())
                        && word.ends_with(':')
                    {
                        "N:".to_string()
                    } else if word.len() >= 17
                        && word
                            .chars()
                            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
                    {
                        "MAC".to_string()
                    } else if let Some((name, _)) = word.split_once("@if") {
                        format!("{name}@if")
                    } else {
                        word.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The attach that `250.0.0.0/8 eth0/16 host-reserve 4` stands for.
const ATTACH_250: [&str; 7] = [
    "attach",
    "eth0",
    "--overlay",
    "250.0.0.0/8",
    "--host-reserve",
    "4",
    "--no-agent",
];

#[test]
fn up_and_down_reach_the_same_state_as_attach_and_detach() {
    if !privileged() {
        return;
    }
    let dir = Scratch::new("verbs");
    let config = dir.join("fan");
    write_config(
        &config,
        "\
# two fans and one that is off
250.0.0.0/8 eth0/16 host-reserve 4
251.0.0.0/8 198.18.0.1/16 bridge fan251 mode tc no-nat   # fan-xdp's own keywords
252.0.0.0/8 default off
",
    );
    let config = config.to_str().unwrap();
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    // Forwarding stays on after detach, by design: bare with it on.
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let bare = normalized(&host.ns).unwrap();
    let same = |what: &str, expected: &str| {
        fan_tests::snapshot::assert_same(&host.ns, normalized, expected, what)
    };

    // One fan: fanctl's words against attach's.
    host.fan_xdp_ok(&ATTACH_250).unwrap();
    let attached = normalized(&host.ns).unwrap();
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    same("detach", &bare);
    host.fan_xdp_ok(&["up", "--no-agent", "eth0/16", "host-reserve", "4"])
        .unwrap();
    same("up eth0/16 host-reserve 4 against attach", &attached);
    host.fan_xdp_ok(&["down", "eth0/16"]).unwrap();
    same("down eth0/16 against detach", &bare);

    // The file: up -a against the two attaches its lines stand for.
    host.fan_xdp_ok(&ATTACH_250).unwrap();
    host.fan_xdp_ok(&[
        "attach",
        "eth0",
        "--overlay",
        "251.0.0.0/8",
        "--underlay",
        "198.18.0.0/16",
        "--bridge",
        "fan251",
        "--mode",
        "tc",
        "--no-nat",
        "--no-agent",
    ])
    .unwrap();
    let both = normalized(&host.ns).unwrap();
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    same("detach of both", &bare);
    host.fan_xdp_ok(&["up", "-a", "--no-agent", "--config", config])
        .unwrap();
    same("up -a against the attaches", &both);
    host.fan_xdp_ok(&["down", "-a", "--config", config])
        .unwrap();
    same("down -a", &bare);
    host.fan_xdp_ok(&["up", "-a", "--no-agent", "--config", config])
        .unwrap();
    host.fan_xdp_ok(&["down", "-e"]).unwrap();
    same("down -e", &bare);

    // A bad line anywhere: nothing of the file is applied.
    let bad = dir.join("bad");
    write_config(&bad, "250.0.0.0/8 eth0/16\n251.0.0.0/8 eth0/16 bridge\n");
    let out = host
        .fan_xdp(&["up", "-a", "--no-agent", "--config", bad.to_str().unwrap()])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}:2:21: \"bridge\": bridge needs a value",
            bad.display()
        )
    );
    same("a refused file", &bare);
    // `dhcp` is attach's --dhcp: refused without the agent, which supervises
    // the DHCP server, saying so, and nothing is left half-configured.
    let out = host
        .fan_xdp(&["up", "--no-agent", "eth0/16", "dhcp"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dhcp needs the agent"),
        "{out:?}"
    );
    same("up with dhcp", &bare);
    // `default`: the interface of the default route (a route with no
    // destination attribute), and its address's prefix.
    host.ns
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.18.0.254",
            "dev",
            "eth0",
        ])
        .unwrap();
    host.fan_xdp_ok(&["up", "--no-agent", "default", "host-reserve", "4"])
        .unwrap();
    let shown = show(host);
    assert_eq!(
        (
            &shown[0]["iface"],
            &shown[0]["underlay"],
            &shown[0]["host_reserve"]
        ),
        (&"eth0".into(), &"198.18.0.0/16".into(), &4.into()),
        "{shown}"
    );
    host.fan_xdp_ok(&["down", "default"]).unwrap();
    host.ns.ip(&["route", "del", "default"]).unwrap();
    same("up default, down default", &bare);
    // A line that fails on the host: the ones before it are taken back.
    write_config(&bad, "250.0.0.0/8 eth0/16\n251.0.0.0/8 eth0/16 mtu 1490\n");
    let out = host
        .fan_xdp(&["up", "-a", "--no-agent", "--config", bad.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--mtu 1490 does not fit"),
        "{out:?}"
    );
    same("a file whose second fan failed", &bare);
    drop(fleet);
}

#[test]
fn reload_applies_the_files_difference() {
    if !privileged() {
        return;
    }
    let dir = Scratch::new("reload");
    let (config, log) = (dir.join("fan"), dir.join("agent.log"));
    write_config(&config, "250.0.0.0/8 eth0/16\n");
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let agent =
        Daemon::start_logged(&host.ns, &["--config", config.to_str().unwrap()], &log).unwrap();
    assert!(within(Duration::from_secs(10), || agent_ready(host)));
    let reload = |text: &str| {
        write_config(&config, text);
        host.fan_xdp(&["reload"]).unwrap()
    };
    let overlays = || slices(host).into_iter().map(|(o, _)| o).collect::<Vec<_>>();

    let out = reload("250.0.0.0/8 eth0/16\n251.0.0.0/8 eth0/16 bridge fan251\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(overlays(), ["250.0.0.0/8", "251.0.0.0/8"], "added");
    let out = reload("250.0.0.0/8 eth0/16 host-reserve 8\n251.0.0.0/8 eth0/16 bridge fan251\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(show(host)[0]["host_reserve"], 8, "changed");
    let out = reload("250.0.0.0/8 eth0/16 host-reserve 8\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(overlays(), ["250.0.0.0/8"], "removed");
    assert!(
        host.ns.ip(&["link", "show", "fan251"]).is_err(),
        "the removed fan's bridge stayed"
    );

    // A bad file and a file others may write: refused, nothing changes.
    let out =
        reload("250.0.0.0/8 eth0/16 host-reserve 8\n# next\n251.0.0.0/8 eth0/16 brige fan251\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:21: \\\"brige\\\": unknown keyword",
            config.display()
        )) || stderr.contains(&format!(
            "{}:3:21: \"brige\": unknown keyword",
            config.display()
        )),
        "{stderr}"
    );
    write_config(&config, "250.0.0.0/8 eth0/16\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = host.fan_xdp(&["reload"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is writable by others (mode 666): refusing it"),
        "{out:?}"
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    let out = host.fan_xdp(&["reload"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is owned by uid 65534, not root: refusing it"),
        "{out:?}"
    );
    assert_eq!(overlays(), ["250.0.0.0/8"]);
    assert_eq!(
        show(host)[0]["host_reserve"],
        8,
        "a refused file changed a fan"
    );

    // Restarted after an edit (not a reboot): the fan the old file brought
    // up and the new one has not goes, the one attached by hand stays.
    std::os::unix::fs::chown(&config, Some(0), None).unwrap();
    let out = reload("250.0.0.0/8 eth0/16 host-reserve 8\n251.0.0.0/8 eth0/16 bridge fan251\n");
    assert!(out.status.success(), "{out:?}");
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", "252.0.0.0/8", "--no-agent"])
        .unwrap();
    drop(agent);
    write_config(&config, "250.0.0.0/8 eth0/16 host-reserve 8\n");
    let agent =
        Daemon::start_logged(&host.ns, &["--config", config.to_str().unwrap()], &log).unwrap();
    assert!(within(Duration::from_secs(10), || agent_ready(host)));
    assert_eq!(
        overlays(),
        ["250.0.0.0/8", "252.0.0.0/8"],
        "after the restart"
    );

    drop(agent);
    let log = std::fs::read_to_string(&log).unwrap();
    // 251 was added twice (the second time after the refused files) and
    // removed twice: by a reload, and at the restart.
    for (line, times) in [
        (":1: fan 250.0.0.0/8 over eth0/16: added: attached", 1),
        (":2: fan 251.0.0.0/8 over eth0/16: added: attached", 2),
        (":1: fan 250.0.0.0/8 over eth0/16: changed: attached", 1),
        (
            ":2: fan 251.0.0.0/8 over eth0/16: removed from the configuration: detached",
            2,
        ),
    ] {
        assert_eq!(
            log.matches(line).count(),
            times,
            "{line:?} {times} time(s) in the log:\n{log}"
        );
    }
    host.fan_xdp_ok(&["down", "-e"]).unwrap();
    drop(fleet);
}

#[test]
fn errors_print_no_backtrace_whatever_rust_backtrace_says() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("errors").unwrap();
    for args in [
        &["attach", "nosuch0", "--overlay", "250.0.0.0/8"][..],
        &["up", "eth0/16", "dchp"],
        &["up", "-a", "--config", "/nonexistent/fan"],
    ] {
        let out = ns
            .command(fan_xdp_binary().to_str().unwrap())
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("  0: "),
            "{args:?} printed a backtrace:\n{stderr}"
        );
    }
    let out = ns
        .command(fan_xdp_binary().to_str().unwrap())
        .args(["up", "-a", "--config", "/nonexistent/fan"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: reading /nonexistent/fan\n  caused by: No such file or directory (os error 2)\n"
    );
}

/// The underlay's MTU lowered after attach (a provider's path, a VPN) and
/// raised again: the fan's MTU follows it both ways, so containers'
/// transfers go on (TCP learns the lower MTU from the stack's
/// "fragmentation needed"); an MTU given with `--mtu` stays as given.
#[test]
fn the_fans_mtu_follows_the_underlays() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_on_the_fan();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    let set_underlay_mtu = |mtu: &str| {
        for (i, host) in fleet.hosts.iter().enumerate() {
            let port = format!("sw-h{}", i + 1);
            fleet
                .switch
                .ip(&["link", "set", &port, "mtu", mtu])
                .unwrap();
            host.ns.ip(&["link", "set", "eth0", "mtu", mtu]).unwrap();
        }
    };
    let fan_mtu = |host: &Host| show(host)[0]["mtu"].as_u64();
    let bridge_mtu = |host: &Host| {
        let link = host.ns.ip(&["link", "show", &host.bridge]).unwrap();
        link.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse::<u64>().ok())
    };
    for (underlay, fan) in [("1400", 1380), ("1500", 1480)] {
        set_underlay_mtu(underlay);
        for host in [h1, h2] {
            assert!(
                within(Duration::from_secs(5), || fan_mtu(host) == Some(fan)
                    && bridge_mtu(host) == Some(fan)),
                "underlay MTU {underlay}: the fan's MTU is {:?}, its bridge's {:?}, not {fan}",
                fan_mtu(host),
                bridge_mtu(host)
            );
        }
        for (server, client) in [(c2, c1), (c1, c2)] {
            let moved =
                fan_tests::traffic::tcp_transfer(&server.ns, &client.ns, server.addr, 20 << 20)
                    .unwrap_or_else(|e| {
                        panic!("underlay MTU {underlay}: a 20 MB transfer failed: {e:#}")
                    });
            assert_eq!(moved, 20 << 20, "underlay MTU {underlay}");
        }
    }
    // An MTU given stays as given while it fits, and the agent says when
    // it no longer does rather than changing it.
    fleet.detach_all().unwrap();
    h1.fan_xdp_ok(&[
        "attach",
        "eth0",
        "--overlay",
        "250.0.0.0/8",
        "--mtu",
        "1300",
    ])
    .unwrap();
    set_underlay_mtu("1400");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(fan_mtu(h1), Some(1300));
    set_underlay_mtu("1300");
    assert!(
        within(Duration::from_secs(5), || attach_agent_log(h1)
            .contains("too small for the fan's --mtu 1300")),
        "{}",
        attach_agent_log(h1)
    );
    assert_eq!(fan_mtu(h1), Some(1300));
    h1.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

/// An address flap renumbers nothing: the fan's address gone for a moment
/// while another of the underlay is there (a keepalived VIP, a secondary)
/// moves nothing; gone for longer, the fan moves, and it goes back to the
/// address it was attached with, where its containers are, once that is back.
#[test]
fn an_address_flap_keeps_the_slice_and_a_move_goes_back_home() {
    if !privileged() {
        return;
    }
    let fleet = two_hosts_on_the_fan();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    for scope in ["all", "eth0"] {
        h2.ns
            .sysctl(&format!("net.ipv4.conf.{scope}.promote_secondaries"), "1")
            .unwrap();
    }
    let home = vec![("250.0.0.0/8".to_string(), "250.0.2.0/24".to_string())];
    let vip = vec![("250.0.0.0/8".to_string(), "250.0.100.0/24".to_string())];
    h2.ns
        .ip(&["addr", "add", "198.18.0.100/16", "dev", "eth0"])
        .unwrap();
    // A flap of half a second.
    h2.ns
        .ip(&["addr", "del", "198.18.0.2/16", "dev", "eth0"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    h2.ns
        .ip(&["addr", "add", "198.18.0.2/16", "dev", "eth0"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        slices(h2),
        home,
        "a flap moved the fan:\n{}",
        attach_agent_log(h2)
    );
    assert!(
        ping(&c2.ns, c1.addr, 2).unwrap(),
        "the container lost the fan after a flap"
    );
    // Gone for longer: the fan moves to the address that is there...
    h2.ns
        .ip(&["addr", "del", "198.18.0.2/16", "dev", "eth0"])
        .unwrap();
    assert!(
        within(Duration::from_secs(8), || slices(h2) == vip),
        "the fan did not move: {:?}\n{}",
        slices(h2),
        attach_agent_log(h2)
    );
    // ...and back home once its own address is back.
    h2.ns
        .ip(&["addr", "add", "198.18.0.2/16", "dev", "eth0"])
        .unwrap();
    assert!(
        within(Duration::from_secs(8), || slices(h2) == home),
        "the fan did not go back: {:?}\n{}",
        slices(h2),
        attach_agent_log(h2)
    );
    assert!(
        within(Duration::from_secs(5), || ping(&c2.ns, c1.addr, 1).unwrap()),
        "the container on the home slice does not reach the other host again"
    );
    let log = attach_agent_log(h2);
    assert!(log.contains("198.18.0.2 is back on eth0 within"), "{log}");
    assert_eq!(log.matches("moved from").count(), 2, "{log}");
    fleet.detach_all().unwrap();
}

/// A keepalived VIP in the underlay, then `own` gone for longer than a
/// flap, then back: the fans as they were while it was gone.
fn away_for_long(host: &Host, own: &str) -> Vec<(String, String)> {
    for scope in ["all", "eth0"] {
        host.ns
            .sysctl(&format!("net.ipv4.conf.{scope}.promote_secondaries"), "1")
            .unwrap();
    }
    host.ns
        .ip(&["addr", "add", "198.18.0.100/16", "dev", "eth0"])
        .unwrap();
    host.ns.ip(&["addr", "del", own, "dev", "eth0"]).unwrap();
    std::thread::sleep(fan_userspace::agent::follow::MOVE_AFTER * 2);
    let while_gone = slices(host);
    host.ns.ip(&["addr", "add", own, "dev", "eth0"]).unwrap();
    host.ns
        .ip(&["addr", "del", "198.18.0.100/16", "dev", "eth0"])
        .unwrap();
    while_gone
}

#[test]
fn a_fan_whose_address_the_file_names_never_moves_to_another() {
    if !privileged() {
        return;
    }
    let dir = Scratch::new("named");
    let (config, log) = (dir.join("fan"), dir.join("agent.log"));
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let own = format!("{}/16", host.underlay_addr);
    write_config(&config, &format!("250.0.0.0/8 {own}\n"));
    let agent =
        Daemon::start_logged(&host.ns, &["--config", config.to_str().unwrap()], &log).unwrap();
    let home = vec![("250.0.0.0/8".to_string(), host.slice_cidr())];
    assert!(
        within(Duration::from_secs(10), || agent_ready(host)
            && slices(host) == home),
        "the agent brought up no fan from the file"
    );
    let while_gone = away_for_long(host, &own);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let back = within(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("eth0 is back as it was"))
    });
    drop(agent);
    fleet.detach_all().unwrap();
    assert_eq!(
        while_gone, home,
        "the fan left the address the file names:\n{said}"
    );
    assert!(
        said.contains(&format!("{} is named for this fan", host.underlay_addr)),
        "no word of the wait:\n{said}"
    );
    assert!(back, "the fan is not as it was once its address is back");
}

/// `up OVERLAY ADDR/LEN` by hand names the address as a line of the file
/// does: the fan waits for it instead of moving to a VIP; once `down`
/// detached it, the same fan brought up by interface follows again.
#[test]
fn a_fan_whose_address_up_names_never_moves_and_down_forgets_the_name() {
    if !privileged() {
        return;
    }
    let dir = Scratch::new("up-named");
    let (config, log) = (dir.join("fan"), dir.join("agent.log"));
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let own = format!("{}/16", host.underlay_addr);
    write_config(&config, "");
    let agent =
        Daemon::start_logged(&host.ns, &["--config", config.to_str().unwrap()], &log).unwrap();
    host.fan_xdp_ok(&["up", "250.0.0.0/8", &own]).unwrap();
    let home = vec![("250.0.0.0/8".to_string(), host.slice_cidr())];
    assert!(
        within(Duration::from_secs(10), || agent_ready(host)
            && slices(host) == home),
        "the agent does not serve the fan `up` attached"
    );
    let while_named = away_for_long(host, &own);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        while_named, home,
        "the fan left the address `up` named:\n{said}"
    );
    host.fan_xdp_ok(&["down", "250.0.0.0/8", &own]).unwrap();
    // By interface: no address named, so the follower may move it.
    host.fan_xdp_ok(&["up", "250.0.0.0/8", "eth0/16"]).unwrap();
    let while_unnamed = away_for_long(host, &own);
    drop(agent);
    fleet.detach_all().unwrap();
    assert!(
        said.contains(&format!("{} is named for this fan", host.underlay_addr)),
        "no word of the wait:\n{said}"
    );
    assert_eq!(
        while_unnamed,
        vec![("250.0.0.0/8".to_string(), "250.0.100.0/24".to_string())],
        "after down, a fan brought up by interface should follow the address it has"
    );
}
