//! The `fan-xdp` command end to end, always run through `ip netns exec` in
//! the simulated hosts' namespaces, like an operator would.
//!
//! Over 400 lines: one test per behaviour of the command, each a scenario
//! end to end on a fleet of its own, with its few helpers beside it; what
//! the executables share is in `fan_tests::topology`. `cargo xtask test`
//! runs this executable on the 6.1 VM by its name and skips the host-only
//! tests by theirs (xtask's `USER_SIDE_ONLY`), so it stays one.

use std::net::Ipv4Addr;

use fan_tests::{
    netns::Netns,
    privileged,
    snapshot::{assert_netns_unchanged, assert_unchanged, netns_snapshot, snapshot},
    topology::{Fleet, Host, plug_container},
    traffic::{ping, tcp_transfer},
};

const OVERLAY: &str = "250.0.0.0/8";

fn attach_all(fleet: &Fleet, extra: &[&str]) {
    for host in &fleet.hosts {
        let mut args = vec!["attach", "eth0", "--overlay", OVERLAY];
        args.extend_from_slice(extra);
        let out = host.fan_xdp_ok(&args).expect("attach");
        assert!(out.contains("attached: 250.0.0.0/8"), "attach said: {out}");
    }
}

fn detach_all(fleet: &Fleet) {
    for host in &fleet.hosts {
        host.fan_xdp_ok(&["detach", "eth0"]).expect("detach");
    }
}

/// Every container pings every other container, on its own host and others.
fn assert_full_mesh(fleet: &Fleet) {
    let all: Vec<(&Netns, Ipv4Addr)> = fleet
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(|c| (&c.ns, c.addr)))
        .collect();
    for (from, from_addr) in &all {
        for (_, to) in &all {
            if from_addr != to {
                assert!(ping(from, *to, 1).unwrap(), "{from_addr} cannot reach {to}");
            }
        }
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn three_hosts_over_the_cli() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(3).unwrap();
    attach_all(&fleet, &[]);
    let fleet = fleet.with_containers(2).unwrap();
    assert_full_mesh(&fleet);

    // TCP between containers on different hosts, and from a host to a remote container.
    let (h1, h3) = (&fleet.hosts[0], &fleet.hosts[2]);
    let (c1, c3) = (&h1.containers[0], &h3.containers[1]);
    assert_eq!(
        tcp_transfer(&c3.ns, &c1.ns, c3.addr, 8 << 20).unwrap(),
        8 << 20
    );
    assert_eq!(
        tcp_transfer(&c1.ns, &c3.ns, c1.addr, 8 << 20).unwrap(),
        8 << 20
    );
    assert!(
        ping(&h1.ns, c3.addr, 2).unwrap(),
        "host 1 -> a container on host 3"
    );
    assert_eq!(
        tcp_transfer(&c3.ns, &h1.ns, c3.addr, 4 << 20).unwrap(),
        4 << 20
    );

    // A container reaches the outside through NAT: the "internet" sees the host's underlay address.
    let internet = Netns::new("internet").unwrap();
    fleet.switch.add_veth_to("sw-inet", &internet).unwrap();
    fleet
        .switch
        .ip(&["link", "set", "sw-inet", "master", "sw", "up"])
        .unwrap();
    internet
        .ip(&["addr", "add", "198.18.200.1/16", "dev", "eth0"])
        .unwrap();
    internet.ip(&["link", "set", "eth0", "up"]).unwrap();
    let outside = Ipv4Addr::new(198, 18, 200, 1);
    assert!(
        ping(&c1.ns, outside, 2).unwrap(),
        "container -> outside through NAT"
    );
    let listener = internet
        .enter(|| std::net::TcpListener::bind((outside, 8080)))
        .unwrap()
        .unwrap();
    let client = c1
        .ns
        .enter(|| std::net::TcpStream::connect((outside, 8080)))
        .unwrap()
        .unwrap();
    let (_conn, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(h1.underlay_addr),
        "not masqueraded"
    );
    drop(client);

    // show: the table, and JSON.
    let show = h1.fan_xdp_ok(&["show"]).unwrap();
    assert!(
        show.contains("fan-250-0-1") && show.contains("250.0.1.0/24") && show.contains(OVERLAY),
        "{show}"
    );
    assert!(
        show.contains("eth0 198.18.0.1/16") && show.contains("nat"),
        "{show}"
    );
    let shown = json(&h1.fan_xdp_ok(&["show", "--json"]).unwrap());
    let fan = &shown[0];
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert_eq!(fan["overlay"], "250.0.0.0/8");
    assert_eq!(fan["underlay"], "198.18.0.0/16");
    assert_eq!(fan["slice"], "250.0.1.0/24");
    assert_eq!(fan["gateway"], "250.0.1.1");
    assert_eq!(fan["bridge"], "fan-250-0-1");
    assert_eq!(fan["mode"], "tc", "auto picks TC on veth");
    assert_eq!(fan["mtu"], 1480);
    assert_eq!(fan["complete"], true);

    // stats: the traffic above shows up, in the table and in JSON.
    let stats = json(&h1.fan_xdp_ok(&["stats", "--json"]).unwrap());
    assert!(
        stats["encapsulated"]["bytes"].as_u64().unwrap() > 8 << 20,
        "{stats}"
    );
    assert!(
        stats["decapsulated"]["bytes"].as_u64().unwrap() > 1 << 20,
        "{stats}"
    );
    assert_eq!(stats["drop_spoofed_source"]["packets"], 0);
    let table = h1.fan_xdp_ok(&["stats"]).unwrap();
    assert!(
        table.lines().any(|l| l.starts_with("encapsulated ")),
        "{table}"
    );
    let watched = h1
        .fan_xdp_ok(&["stats", "--watch", "--count", "2"])
        .unwrap();
    assert_eq!(watched.matches("REASON").count(), 2, "{watched}");

    detach_all(&fleet);
}

#[test]
fn two_overlays_side_by_side() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    attach_all(&fleet, &[]);
    for host in &fleet.hosts {
        host.fan_xdp_ok(&["attach", "eth0", "--overlay", "240.0.0.0/8"])
            .unwrap();
    }
    let fleet = fleet.with_containers(1).unwrap();
    // A second container per host on the 240/8 bridges.
    let second: Vec<(Netns, Ipv4Addr)> = fleet
        .hosts
        .iter()
        .map(|h| {
            let i = h.underlay_addr.octets()[3];
            let addr = Ipv4Addr::new(240, 0, i, 20);
            let bridge = format!("fan-240-0-{i}");
            let gateway = Ipv4Addr::new(240, 0, i, 1);
            let ns = plug_container(&h.ns, &bridge, "vd", &format!("d{i}"), (addr, 24), gateway)
                .unwrap();
            (ns, addr)
        })
        .collect();
    let (c1, c2) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    assert!(ping(&c1.ns, c2.addr, 2).unwrap(), "250/8 fan");
    assert!(ping(&second[0].0, second[1].1, 2).unwrap(), "240/8 fan");
    let shown = json(&fleet.hosts[0].fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(shown.as_array().unwrap().len(), 2);
    // Counters per fan: each fan counts its own traffic, and only its own.
    let h1 = &fleet.hosts[0];
    let encapsulated = |fan: Option<&str>| {
        let mut args = vec!["stats", "--json"];
        args.extend(fan.map(|f| ["--fan", f]).into_iter().flatten());
        json(&h1.fan_xdp_ok(&args).unwrap())["encapsulated"]["packets"]
            .as_u64()
            .unwrap()
    };
    let (a, b) = (
        encapsulated(Some(OVERLAY)),
        encapsulated(Some("240.0.0.0/8")),
    );
    assert!(a >= 2 && b >= 2, "per-fan counts {a} and {b}");
    assert!(ping(&second[0].0, second[1].1, 3).unwrap());
    assert_eq!(
        encapsulated(Some(OVERLAY)),
        a,
        "the 250/8 fan counted the 240/8 fan's packets"
    );
    assert!(encapsulated(Some("240.0.0.0/8")) >= b + 3);
    assert!(
        encapsulated(None) >= a + b + 3,
        "the totals are not the fans' sum"
    );
    let prometheus = h1.fan_xdp_ok(&["stats", "--prometheus"]).unwrap();
    assert!(
        prometheus
            .contains("fan_xdp_fan_packets_total{overlay=\"240.0.0.0/8\",type=\"ipip\",reason=\"encapsulated\"}"),
        "{prometheus}"
    );

    for host in &fleet.hosts {
        let out = host
            .fan_xdp_ok(&["detach", "eth0", "--overlay", "240.0.0.0/8"])
            .unwrap();
        assert!(out.contains("detached: 240.0.0.0/8"), "{out}");
    }
    assert!(
        ping(&c1.ns, c2.addr, 2).unwrap(),
        "250/8 survives detaching 240/8"
    );
    assert!(
        !ping(&second[0].0, second[1].1, 1).unwrap(),
        "240/8 still works after its detach"
    );
    let shown = json(&fleet.hosts[0].fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert_eq!(shown[0]["overlay"], OVERLAY);
    let gone = fleet.hosts[0]
        .fan_xdp(&["stats", "--fan", "240.0.0.0/8"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&gone.stderr)
            .contains("no fan with overlay 240.0.0.0/8 is attached here"),
        "{gone:?}"
    );
    drop(second);
    detach_all(&fleet);
}

/// Fails the test unless the fan-xdp binary honours FAN_XDP_INJECT.
fn require_fault_injection(host: &Host) {
    let out = attach_injected(host, "fail:plan");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("injected failure after step plan"),
        "the fan-xdp binary ignores FAN_XDP_INJECT: build it with \
         `cargo build -p fan-userspace --bin fan-xdp --features fault-injection` \
         (cargo xtask test does)"
    );
}

/// `fan-xdp attach` with the test hook `FAN_XDP_INJECT=<inject>` set.
fn attach_injected(host: &Host, inject: &str) -> std::process::Output {
    host.fan_xdp_injected(&["attach", "eth0", "--overlay", OVERLAY], inject)
        .unwrap()
}

/// Nothing of fan-xdp's is left in `host` (and the machine's BPF objects are as in `before`).
fn assert_clean(host: &Host, before: &str) {
    assert_unchanged(&host.ns, before, "detach left something behind");
}

#[test]
fn attach_is_idempotent_and_detach_leaves_nothing() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    // Detach leaves forwarding on (whatever started after attach may rely on it).
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let before = snapshot(&host.ns).unwrap();
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let attached = snapshot(&host.ns).unwrap();
    let again = host
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    assert!(again.contains("already attached"), "{again}");
    assert_unchanged(&host.ns, &attached, "a repeated attach changed something");
    let out = host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert!(out.contains("detached"), "{out}");
    assert_clean(host, &before);
    let out = host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert!(out.contains("nothing to detach"), "{out}");
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert_clean(host, &before);
}

#[test]
fn every_error_is_named_and_leaves_the_host_as_it_was() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.ns
        .ip(&[
            "link", "add", "noaddr0", "type", "veth", "peer", "name", "noaddr1",
        ])
        .unwrap();
    let before = snapshot(&host.ns).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["attach", "nosuch0", "--overlay", OVERLAY],
            "no such interface: nosuch0",
        ),
        (
            &["attach", "noaddr0", "--overlay", OVERLAY],
            "noaddr0 has no IPv4 address",
        ),
        (
            &[
                "attach",
                "eth0",
                "--overlay",
                OVERLAY,
                "--underlay",
                "198.19.0.0/16",
            ],
            "overlay/underlay mismatch",
        ),
        (
            &["attach", "eth0", "--overlay", "250.0.0.0/15"],
            "prefix too long",
        ),
        (
            &["attach", "eth0", "--overlay", "127.0.0.0/8"],
            "reserved range 127.0.0.0/8",
        ),
        (
            &["attach", "eth0", "--overlay", "198.0.0.0/8"],
            "overlaps underlay",
        ),
        (&["attach", "eth0", "--overlay", "fd00::/8"], "IPv6"),
        (
            &["attach", "eth0", "--overlay", OVERLAY, "--mtu", "1490"],
            "--mtu 1490 does not fit",
        ),
        (
            &["attach", "eth0", "--overlay", OVERLAY, "--pin-dir", "/tmp"],
            "not on a bpffs",
        ),
    ];
    for (args, message) in cases {
        let out = host.fan_xdp(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
        assert_unchanged(
            &host.ns,
            &before,
            &format!("{args:?} left something behind"),
        );
    }

    // Not root.
    let binary = fan_tests::topology::fan_xdp_binary();
    let out = host
        .ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["attach", "eth0", "--overlay", OVERLAY])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing capability CAP_NET_ADMIN"),
        "{out:?}"
    );

    // A failure inside any step is rolled back completely.
    require_fault_injection(host);
    host.assert_every_step_rolls_back(&["attach", "eth0", "--overlay", OVERLAY], &before, snapshot);
}

#[test]
fn killed_at_every_step_then_attach_and_detach_recover() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    // Detach leaves forwarding on (whatever started after attach may rely on it).
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    require_fault_injection(host);
    let before = snapshot(&host.ns).unwrap();
    for step in fan_userspace::commands::attach::STEPS {
        let out = attach_injected(host, &format!("kill:{step}"));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "not killed at {step}"
        );
        host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
            .unwrap_or_else(|e| panic!("attach after a kill at {step}: {e}"));
        let shown = json(&host.fan_xdp_ok(&["show", "--json"]).unwrap());
        assert_eq!(
            shown[0]["complete"], true,
            "attach after a kill at {step} did not finish"
        );
        host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
        assert_unchanged(
            &host.ns,
            &before,
            &format!("kill at {step}, attach, detach left something"),
        );
    }
}

#[test]
fn a_foreign_xdp_program_is_left_in_place() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    // Someone else's XDP program on eth0 (any program will do: ours, loaded
    // outside fan-xdp's pinned state).
    let mut foreign = fan_userspace::dataplane::Dataplane::load().unwrap();
    host.ns
        .enter(|| foreign.attach_decap("eth0", fan_userspace::dataplane::DecapMode::Xdp))
        .unwrap()
        .unwrap();
    let before = snapshot(&host.ns).unwrap();
    let out = host
        .fan_xdp(&["attach", "eth0", "--overlay", OVERLAY, "--mode", "xdp"])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("already has XDP program") && stderr.contains("fan_decap_xdp"),
        "{stderr}"
    );
    assert!(stderr.contains("will not replace it"), "{stderr}");
    assert_unchanged(&host.ns, &before, "refusal changed the host");
    drop(foreign);
}

#[test]
fn state_is_per_namespace_and_stale_state_is_swept() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    h1.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let shown = json(&h2.fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(
        shown.as_array().unwrap().len(),
        0,
        "host 2 sees host 1's fan"
    );
    h2.fan_xdp_ok(&["attach", "eth0", "--overlay", "240.0.0.0/8"])
        .unwrap();
    let shown = json(&h1.fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(shown.as_array().unwrap().len(), 1);
    assert_eq!(shown[0]["overlay"], OVERLAY);

    // A namespace that dies with a fan attached leaves a directory behind,
    // which the next attach anywhere removes. (Only this test's directories
    // are looked at: other test runs may share the machine's bpffs.)
    let state = |host: &Host| {
        let cookie = host
            .ns
            .enter(fan_userspace::host::netns::current_cookie)
            .unwrap()
            .unwrap();
        std::path::PathBuf::from(format!("/sys/fs/bpf/fan-xdp/netns-{cookie}"))
    };
    assert!(state(h1).exists() && state(h2).exists());
    let doomed = Fleet::new(1).unwrap();
    doomed.hosts[0]
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let doomed_state = state(&doomed.hosts[0]);
    assert!(doomed_state.exists());
    // Its run directory (locks, bindings) goes too.
    let run_dir_of = |pinned: &std::path::Path| {
        std::path::Path::new("/run/fan-xdp").join(pinned.file_name().unwrap())
    };
    let doomed_run = run_dir_of(&doomed_state);
    assert!(doomed_run.join("agent.lock").exists());
    drop(doomed);
    wait_until_links_defunct(&doomed_state);
    h1.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    assert!(
        !doomed_state.exists(),
        "stale state of a deleted namespace was not swept"
    );
    assert!(
        !doomed_run.exists(),
        "the run directory of a deleted namespace was not swept"
    );
    assert!(
        run_dir_of(&state(h2)).exists(),
        "a live run directory swept"
    );
    assert!(state(h1).exists() && state(h2).exists(), "live state swept");
    h1.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    h2.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert!(!state(h1).exists() && !state(h2).exists());
}

/// A fan-xdp in a PID namespace of its own (a DaemonSet pod without
/// hostPID) sees only its own processes: a namespace that only some other
/// process holds would look gone to it. Its sweep must leave that
/// namespace's run directory alone.
#[test]
fn a_fan_xdp_in_its_own_pid_namespace_sweeps_nothing() {
    if !privileged() {
        return;
    }
    // A network namespace held by one process, with no name and no fan-xdp.
    let mut holder = std::process::Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .unwrap();
    let ns_path = format!("/proc/{}/ns/net", holder.id());
    let ours = fan_userspace::host::netns::current_cookie().unwrap();
    // Until `unshare` has made the namespace, /proc shows ours.
    let cookie = (0..500)
        .find_map(|_| {
            let cookie = fan_tests::netns::enter_path(std::path::Path::new(&ns_path), || {
                fan_userspace::host::netns::current_cookie().ok()
            })
            .ok()
            .flatten();
            let cookie = cookie.filter(|&cookie| cookie != ours);
            if cookie.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            cookie
        })
        .expect("the holder did not get a namespace of its own");
    let unattended = std::path::Path::new("/run/fan-xdp").join(format!("netns-{cookie}"));
    std::fs::create_dir_all(&unattended).unwrap();
    std::fs::write(unattended.join("bindings.json"), "[]").unwrap();

    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let binary = fan_tests::topology::fan_xdp_binary();
    let out = host
        .ns
        .output(
            "unshare",
            &[
                "--pid",
                "--fork",
                "--mount-proc",
                binary.to_str().unwrap(),
                "attach",
                "eth0",
                "--overlay",
                OVERLAY,
                "--no-agent",
            ],
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let kept = unattended.join("bindings.json").exists();
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::fs::remove_dir_all(&unattended);
    assert!(out.status.success(), "{stderr}");
    assert!(
        kept,
        "the run directory of a live namespace was swept by a fan-xdp that cannot see its holder: {stderr}"
    );
    assert!(stderr.contains("PID namespace of its own"), "{stderr}");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

/// A deleted namespace's devices go in the kernel's deferred work: waits
/// (at most ~5 s) until every link pinned in `dir` reports no device.
fn wait_until_links_defunct(dir: &std::path::Path) {
    let defunct = || {
        // Gone already: swept when the fleet was dropped.
        let Ok(entries) = std::fs::read_dir(dir) else {
            return true;
        };
        entries.flatten().all(|entry| {
            !entry.file_name().to_string_lossy().starts_with("link_")
                || matches!(
                    fan_userspace::dataplane::pinned_link_ifindex(&entry.path()),
                    Ok(Some(0)) | Err(_)
                )
        })
    };
    for _ in 0..50 {
        if defunct() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the links in {} outlived their namespace", dir.display());
}

#[test]
fn a_forward_drop_firewall_is_reported() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.ns
        .run("nft", &["add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }"])
        .unwrap();
    let out = host
        .fan_xdp(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("inet filter chain forward drops forwarded packets"),
        "{stderr}"
    );
    assert!(
        stderr.contains("oifname \"fan-250-0-1\" accept"),
        "{stderr}"
    );
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

#[test]
fn a_newer_program_replaces_the_running_one_without_a_gap() {
    use fan_tests::lifecycle::{forward_and_output_tags, put_older_version, running_tag};
    use fan_userspace::dataplane::{Dataplane, ENCAP_OUTPUT};
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    attach_all(&fleet, &[]);
    let fleet = fleet.with_containers(1).unwrap();
    let h1 = &fleet.hosts[0];
    let (c1, c2) = (&h1.containers[0], &fleet.hosts[1].containers[0]);
    let pin = std::fs::read_dir("/sys/fs/bpf/fan-xdp")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("link_fan-250-0-1_encap"))
        .find(|p| p.exists())
        .expect("host 1's bridge link pin");

    // Make host 1's bridge run another program, as an older fan-xdp would
    // have left it (the output-hook variant: it encapsulates too). On TCX
    // the link is updated; before 6.6 the clsact filter's program is
    // replaced and the pin marks it.
    // With host 1's pinned maps, as an older version's program would have.
    let dir = h1
        .ns
        .enter(|| fan_userspace::state::StateDir::locate(None))
        .unwrap()
        .unwrap();
    let mut other = Dataplane::load_pinned(&dir).unwrap();
    let (forward_tag, output_tag) = forward_and_output_tags(&mut other).unwrap();
    let output = other.classifier(ENCAP_OUTPUT).unwrap();
    put_older_version(h1, &h1.bridge, &pin, output).unwrap();
    assert_eq!(running_tag(h1, &h1.bridge, &pin).unwrap(), output_tag);

    // Upgrade while a ping stream runs: not one packet may be lost.
    let stream = c1
        .ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-i",
            "0.005",
            "-c",
            "400",
            "-W",
            "1",
            &c2.addr.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = h1
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    assert!(
        out.contains("attached: 250.0.0.0/8"),
        "the upgrade changed nothing: {out}"
    );
    let pinged = stream.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&pinged.stdout);
    assert!(
        summary.contains("400 packets transmitted, 400 received"),
        "{summary}"
    );
    // One program on the bridge, the new one (before 6.6: one filter, not
    // the old beside a new).
    assert_eq!(
        running_tag(h1, &h1.bridge, &pin).unwrap(),
        forward_tag,
        "the bridge does not run the new program"
    );
    drop(other);
    detach_all(&fleet);
}

/// Packets host `host` delivered straight into a container so far.
fn direct(host: &Host) -> u64 {
    counter(host, "decapsulated_direct")
}

/// Packets counter `name` of host `host` has counted so far.
fn counter(host: &Host, name: &str) -> u64 {
    let stats = json(&host.fan_xdp_ok(&["stats", "--json"]).unwrap());
    stats[name]["packets"].as_u64().unwrap()
}

/// Pings until direct delivery on `host` shows up (the daemon learns an
/// endpoint after the first exchange), or gives up after ~5 s.
fn wait_for_direct(from: &Netns, to: Ipv4Addr, host: &Host) -> bool {
    let start = direct(host);
    for _ in 0..25 {
        assert!(ping(from, to, 1).unwrap(), "{to} unreachable");
        if direct(host) > start + 1 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

#[test]
fn direct_delivery_follows_containers_and_never_misdelivers() {
    use fan_tests::topology::add_container_at;
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    // The test runs, kills and stops the agent itself.
    attach_all(&fleet, &["--no-agent"]);
    let mut fleet = fleet.with_containers(1).unwrap();
    let daemon = fleet.hosts[1].fan_xdp_run().unwrap();
    let c1 = fleet.hosts[0].containers.remove(0);
    let target = fleet.hosts[1].containers[0].addr;
    assert!(
        wait_for_direct(&c1.ns, target, &fleet.hosts[1]),
        "the daemon never enabled direct delivery"
    );
    let endpoints = |host: &Host| host.pinned_maps().unwrap().endpoints.iter().count();
    assert_eq!(endpoints(&fleet.hosts[1]), 1);

    // The container goes; a new one takes its address behind another veth.
    fleet.hosts[1].containers.clear();
    let replacement = add_container_at(&fleet.hosts[1], 7, target).unwrap();
    // Its first packets teach the host its MAC, as any container's would.
    assert!(
        ping(&replacement.ns, c1.addr, 2).unwrap(),
        "the new container cannot reach out"
    );
    assert!(
        ping(&c1.ns, target, 3).unwrap(),
        "traffic does not reach the new container"
    );
    assert!(
        wait_for_direct(&c1.ns, target, &fleet.hosts[1]),
        "direct delivery did not follow the new container"
    );
    let maps = fleet.hosts[1].pinned_maps().unwrap();
    let (_, endpoint) = maps.endpoints.iter().next().unwrap().unwrap();
    let veth7 = fleet.hosts[1]
        .ns
        .enter(|| fan_tests::topology::ifindex("veth7"))
        .unwrap()
        .unwrap();
    assert_eq!(
        endpoint.ifindex, veth7,
        "the endpoint still names the old veth"
    );

    // Killed, the daemon leaves its entries; a stale one must fall back to
    // the stack, never deliver elsewhere.
    daemon.kill().unwrap();
    drop(replacement);
    let again = add_container_at(&fleet.hosts[1], 8, target).unwrap();
    assert!(ping(&again.ns, c1.addr, 2).unwrap());
    assert!(
        ping(&c1.ns, target, 3).unwrap(),
        "a stale entry broke delivery"
    );

    // Stopped cleanly, it empties the map: everything takes the stack.
    let daemon = fleet.hosts[1].fan_xdp_run().unwrap();
    assert!(wait_for_direct(&c1.ns, target, &fleet.hosts[1]));
    daemon.stop().unwrap();
    assert_eq!(
        endpoints(&fleet.hosts[1]),
        0,
        "a stopped daemon left endpoints behind"
    );
    let before = direct(&fleet.hosts[1]);
    assert!(ping(&c1.ns, target, 3).unwrap());
    assert_eq!(
        direct(&fleet.hosts[1]),
        before,
        "direct delivery without the daemon"
    );
    drop(again);
    detach_all(&fleet);
}

#[test]
fn monitor_shows_each_drop_with_its_addresses_to_every_monitor() {
    use fan_tests::monitor::Monitor;
    use std::time::Duration;
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    fleet.attach_all(&[]).unwrap();
    // Two monitors at once: each gets every event (the agent reads the
    // ring and fans out; two ring readers would take each other's).
    let first = Monitor::start(h1, &[]).unwrap();
    let second = Monitor::start(h1, &["--count", "2"]).unwrap();
    // 250.0.0.5 maps to the underlay's network address: the host's own
    // echo requests are dropped at fan-host's egress.
    assert!(!ping(&h1.ns, "250.0.0.5".parse().unwrap(), 2).unwrap());
    for monitor in [&first, &second] {
        let events = monitor.events(2, Duration::from_secs(5));
        assert_eq!(events.len(), 2, "{events:?}");
        for event in &events {
            assert_eq!(event["kind"], "drop", "{event}");
            assert_eq!(event["reason"], "drop_reserved_host", "{event}");
            assert_eq!(event["program"], "fan_encap_output", "{event}");
            assert_eq!(event["device"], "fan-host", "{event}");
            assert_eq!(event["inner"]["dst"], "250.0.0.5", "{event}");
            assert_eq!(event["outer"], serde_json::Value::Null, "{event}");
            assert_eq!(event["protocol"], 1, "{event}");
        }
    }
    let mut second = second;
    assert!(
        second
            .wait(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "monitor --count 2 did not end after two events"
    );
    // Samples of passes only for a monitor that asks: h2's echo requests
    // to h1's underlay address are not IP-in-IP, passed to h1's stack.
    let passes = Monitor::start(h1, &["--passes"]).unwrap();
    assert!(ping(&h2.ns, h1.underlay_addr, 2).unwrap());
    // (ARP comes first, sampled as pass_not_ipv4.)
    let sampled = passes.events(6, Duration::from_secs(3));
    let sample = sampled
        .iter()
        .find(|e| e["reason"] == "pass_not_ipip")
        .unwrap_or_else(|| panic!("no sample of a passed echo request: {sampled:?}"));
    assert_eq!(sample["kind"], "pass", "{sample}");
    assert_eq!(sample["program"], "fan_decap_tc", "{sample}");
    assert_eq!(sample["device"], "eth0", "{sample}");
    assert_eq!(
        sample["outer"]["src"],
        h2.underlay_addr.to_string(),
        "{sample}"
    );
    assert_eq!(
        sample["outer"]["dst"],
        h1.underlay_addr.to_string(),
        "{sample}"
    );
    // (Its queue may still hold drops: ping retries what a drop refused.)
    let unasked = first.events(64, Duration::from_millis(500));
    assert!(
        unasked.iter().all(|e| e["kind"] == "drop"),
        "a monitor that did not ask for passes got one: {unasked:?}"
    );
    drop(passes);
    fleet.detach_all().unwrap();
    // Without an agent there is nothing to monitor, and it says why.
    let out = h1.fan_xdp(&["monitor"]).unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no fan-xdp run serves this network namespace"),
        "{said}"
    );
}

/// Frames the slice bridge of `host` has taken in for the host so far.
fn bridge_rx_packets(host: &Host) -> u64 {
    let out = host
        .ns
        .run(
            "cat",
            &[&format!(
                "/sys/class/net/{}/statistics/rx_packets",
                host.bridge
            )],
        )
        .unwrap();
    out.trim().parse().unwrap()
}

#[test]
fn a_daemon_after_a_killed_one_gives_the_ports_their_own_rps_masks_back() {
    if !privileged() || !fan_userspace::dataplane::tcx_supported() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    attach_all(&fleet, &["--no-agent"]);
    let fleet = fleet.with_containers(1).unwrap();
    let host = &fleet.hosts[0];
    let rps = || {
        host.ns
            .run("cat", &["/sys/class/net/veth1/queues/rx-0/rps_cpus"])
            .unwrap()
            .trim()
            .trim_start_matches(['0', ','])
            .to_string()
    };
    let own = rps();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let all_cpus = fan_userspace::agent::ports::rps_mask(&online).unwrap();
    let all_cpus = all_cpus.trim_start_matches(['0', ',']);
    assert_ne!(own, all_cpus, "the port starts steered");
    let steered = || {
        (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            rps() == all_cpus
        })
    };
    let first = host.fan_xdp_run_with(&["--steer-flows"]).unwrap();
    assert!(steered(), "--steer-flows did not steer the port");
    first.kill().unwrap();
    let second = host.fan_xdp_run_with(&["--steer-flows"]).unwrap();
    host.wait_for_run_ready(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(steered());
    second.stop().unwrap();
    assert_eq!(
        rps(),
        own,
        "the port kept the killed daemon's mask after the next one stopped"
    );
    fleet.detach_all().unwrap();
}

#[test]
fn the_daemon_encapsulates_at_container_ports_and_keeps_them_learned() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    attach_all(&fleet, &["--no-agent"]);
    let fleet = fleet.with_containers(1).unwrap();
    let (sender, receiver) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (local, remote) = (&sender.containers[0], &receiver.containers[0]);
    // Bridges forget an idle MAC after 5 s instead of 300: a short test can
    // then show that the daemon keeps a busy container's entry alive.
    sender
        .ns
        .ip(&[
            "link",
            "set",
            &sender.bridge,
            "type",
            "bridge",
            "ageing_time",
            "500",
        ])
        .unwrap();
    let daemons = [
        sender.fan_xdp_run_with(&["--steer-flows"]).unwrap(),
        receiver.fan_xdp_run().unwrap(),
    ];
    assert!(
        wait_for_direct(&remote.ns, local.addr, sender),
        "the daemon never enabled direct delivery"
    );
    // The port's RPS mask without leading zero words.
    let rps = || {
        sender
            .ns
            .run("cat", &["/sys/class/net/veth1/queues/rx-0/rps_cpus"])
            .unwrap()
            .trim()
            .trim_start_matches(['0', ','])
            .to_string()
    };
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let all_cpus = fan_userspace::agent::ports::rps_mask(&online).unwrap();
    let fast_path = |host: &Host| {
        let shown = json(&host.fan_xdp_ok(&["show", "--json"]).unwrap());
        shown[0]["fast_path"].clone()
    };
    let shown = fast_path(sender);
    assert_eq!(shown["ports"], 1, "{shown}");
    assert_eq!(shown["endpoints"], 1, "{shown}");
    // On every kernel: a TCX link, or before 6.6 a clsact filter.
    assert_eq!(shown["ports_encapsulating"], 1, "{shown}");
    assert_eq!(
        fan_tests::lifecycle::ingress_programs(sender, "veth1"),
        [fan_userspace::dataplane::ENCAP_PORT]
    );
    assert_eq!(
        rps(),
        all_cpus.trim_start_matches(['0', ',']),
        "--steer-flows did not steer the port"
    );

    // Frames from the container are encapsulated at its port: the bridge
    // does not see them (ARP may still cross it).
    let before = bridge_rx_packets(sender);
    assert!(ping(&local.ns, remote.addr, 20).unwrap());
    let crossed = bridge_rx_packets(sender) - before;
    assert!(
        crossed < 5,
        "{crossed} of 20 echo requests crossed the bridge"
    );

    // What the port passes (here: echo requests to the gateway) the bridge's
    // program counts once, as it would without the daemon.
    let before = counter(sender, "pass_local_slice");
    assert!(ping(&local.ns, sender.gateway, 5).unwrap());
    assert_eq!(counter(sender, "pass_local_slice") - before, 5);

    // The container's frames no longer teach the bridge where it is; the
    // daemon refreshes the entry, so after twice the ageing time direct
    // delivery still knows the container.
    assert!(
        ping(&remote.ns, local.addr, 50).unwrap(),
        "pings to the container were lost"
    );
    let fdb = sender
        .ns
        .run("bridge", &["fdb", "show", "br", &sender.bridge])
        .unwrap();
    let mac = local
        .ns
        .run("cat", &["/sys/class/net/eth0/address"])
        .unwrap();
    assert!(
        fdb.contains(mac.trim()),
        "the container's forwarding entry aged out: {fdb}"
    );
    let delivered = direct(sender);
    assert!(ping(&remote.ns, local.addr, 5).unwrap());
    assert!(
        direct(sender) >= delivered + 5,
        "direct delivery lost the container: {}\n{}",
        fast_path(sender),
        sender
            .ns
            .run("bridge", &["fdb", "show", "br", &sender.bridge])
            .unwrap_or_default()
    );

    // The port programs go with the daemon; the bridge's program takes over.
    let [daemon, other] = daemons;
    daemon.stop().unwrap();
    assert!(fan_tests::lifecycle::ingress_programs(sender, "veth1").is_empty());
    let shown = fast_path(sender);
    assert_eq!(shown["ports_encapsulating"], 0, "{shown}");
    let text = sender.fan_xdp_ok(&["show"]).unwrap();
    assert!(text.contains("(no agent runs)"), "{text}");
    assert_eq!(rps(), "", "the port's RPS mask was not restored");
    assert!(ping(&local.ns, remote.addr, 3).unwrap());
    drop(other);
    detach_all(&fleet);
}

/// An IPv4 sysctl of `host`'s namespace, e.g. `conf/eth0/rp_filter`.
fn sysctl(host: &Host, key: &str) -> String {
    host.ns
        .run("cat", &[&format!("/proc/sys/net/ipv4/{key}")])
        .unwrap()
        .trim()
        .to_string()
}

fn set_sysctl(host: &Host, key: &str, value: &str) {
    host.ns
        .sysctl(&format!("net.ipv4.{}", key.replace('/', ".")), value)
        .unwrap();
}

#[test]
fn rp_filter_is_loosened_on_the_underlay_only_and_forwarding_stays_on() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let attach = || {
        host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
            .unwrap()
    };
    let detach = || host.fan_xdp_ok(&["detach", "eth0"]).unwrap();

    // Strict through conf/all: only eth0 is loosened, every other
    // interface keeps strict filtering.
    set_sysctl(host, "ip_forward", "0");
    set_sysctl(host, "conf/all/rp_filter", "1");
    set_sysctl(host, "conf/eth0/rp_filter", "0");
    attach();
    assert_eq!(
        sysctl(host, "conf/all/rp_filter"),
        "1",
        "conf/all was changed"
    );
    assert_eq!(sysctl(host, "conf/eth0/rp_filter"), "2");
    assert_eq!(sysctl(host, "ip_forward"), "1");
    detach();
    assert_eq!(sysctl(host, "conf/eth0/rp_filter"), "0", "not restored");
    assert_eq!(sysctl(host, "conf/all/rp_filter"), "1");
    assert_eq!(
        sysctl(host, "ip_forward"),
        "1",
        "detach turned forwarding off under whoever relies on it now"
    );

    // Not strict: nothing to loosen, nothing written.
    set_sysctl(host, "conf/all/rp_filter", "0");
    attach();
    assert_eq!(sysctl(host, "conf/eth0/rp_filter"), "0");
    detach();

    // Strict on the device; changed by someone else after attach: their
    // value stays.
    set_sysctl(host, "conf/eth0/rp_filter", "1");
    attach();
    assert_eq!(sysctl(host, "conf/eth0/rp_filter"), "2");
    set_sysctl(host, "conf/eth0/rp_filter", "0");
    detach();
    assert_eq!(
        sysctl(host, "conf/eth0/rp_filter"),
        "0",
        "detach overwrote a value fan-xdp did not write"
    );
    // Unchanged since attach: restored.
    set_sysctl(host, "conf/eth0/rp_filter", "1");
    attach();
    detach();
    assert_eq!(sysctl(host, "conf/eth0/rp_filter"), "1");
}

/// Runs `script` with `sh` in a private mount namespace (`unshare -m`), so
/// that what it mounts vanishes with it. `$FAN_XDP` is the binary, `$IP`
/// iproute2's `ip` and `$NS` the namespace of `host`; returns what the script printed, whatever its exit.
fn in_private_mounts(host: &Host, script: &str) -> String {
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("FAN_XDP", fan_tests::topology::fan_xdp_binary())
        // By path: a busybox sh would run its own `ip` applet, which has no netns.
        .env("IP", in_path("ip"))
        .env("NS", host.ns.name())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first `program` on PATH.
fn in_path(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

#[test]
fn state_directories_others_could_change_are_refused() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let cookie = host
        .ns
        .enter(fan_userspace::host::netns::current_cookie)
        .unwrap()
        .unwrap();
    let mount_point = TempDir::new("bpffs");
    let pins = mount_point.0.clone();
    // Each case gets a fresh bpffs (mode 1777, as bpffs is by default) at
    // $PINS, prepared by `setup`, then an attach that must refuse it.
    let refused = |setup: &str, expected: &str| {
        let out = in_private_mounts(
            host,
            &format!(
                "PINS={pins}; mount -t bpf bpf $PINS && {setup} && \
                 $IP netns exec $NS $FAN_XDP --pin-dir $PINS attach eth0 --overlay {OVERLAY}; \
                 echo exit $?"
            ),
        );
        assert!(
            out.contains(expected) && out.contains("exit 1"),
            "{setup}: expected {expected:?} in {out}"
        );
        assert!(!out.contains("attached:"), "{setup}: {out}");
    };
    let ns_dir = format!("$PINS/fan-xdp/netns-{cookie}");
    refused(
        "ln -s /tmp $PINS/fan-xdp",
        &format!("{pins}/fan-xdp: it is a symbolic link"),
    );
    refused(
        "mkdir -m 0777 $PINS/fan-xdp",
        &format!("{pins}/fan-xdp: it is writable by group or others (mode 777)"),
    );
    refused(
        "mkdir -m 0700 $PINS/fan-xdp && chown 65534 $PINS/fan-xdp",
        &format!("{pins}/fan-xdp: it is owned by uid 65534, not root"),
    );
    refused(
        &format!(
            "mkdir -m 0700 $PINS/fan-xdp && mkdir $PINS/elsewhere && ln -s $PINS/elsewhere {ns_dir}"
        ),
        &format!("{pins}/fan-xdp/netns-{cookie}: it is a symbolic link"),
    );
    refused(
        &format!("mkdir -m 0700 $PINS/fan-xdp && mkdir -m 0770 {ns_dir}"),
        "is writable by group or others (mode 770)",
    );

    // What fan-xdp creates itself is root's alone, and so is a bpffs it mounts.
    let out = in_private_mounts(
        host,
        &format!(
            "PINS={pins}; mount -t bpf bpf $PINS && \
             $IP netns exec $NS $FAN_XDP --pin-dir $PINS attach eth0 --overlay {OVERLAY} && \
             stat -c 'dir %a %u' $PINS/fan-xdp {ns_dir} && \
             $IP netns exec $NS $FAN_XDP --pin-dir $PINS detach eth0 && \
             umount -l /sys/fs/bpf && \
             $IP netns exec $NS $FAN_XDP attach eth0 --overlay {OVERLAY} --no-agent >/dev/null && \
             stat -c 'mounted %a' /sys/fs/bpf && $IP netns exec $NS $FAN_XDP detach eth0"
        ),
    );
    assert_eq!(out.matches("dir 700 0").count(), 2, "{out}");
    // bpffs always sets the sticky bit on its root; the rest is the mode given.
    assert!(out.contains("mounted 1700"), "{out}");
}

/// An empty directory under /tmp for this test process, removed when dropped.
struct TempDir(String);

impl TempDir {
    fn new(label: &str) -> Self {
        let path = format!("/tmp/fxt{}-{label}", std::process::id());
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The overlay addresses the endpoint map of `host` delivers to directly.
fn endpoint_addrs(host: &Host) -> Vec<Ipv4Addr> {
    let maps = host.pinned_maps().unwrap();
    let mut addrs: Vec<Ipv4Addr> = maps
        .endpoints
        .keys()
        .map(|k| Ipv4Addr::from(k.unwrap()))
        .collect();
    addrs.sort();
    addrs
}

/// Polls the endpoint map of `host` until `wanted` holds (at most ~5 s: the
/// daemon under test resyncs every second and on every link event).
fn wait_for_endpoints(host: &Host, wanted: impl Fn(&[Ipv4Addr]) -> bool) -> Vec<Ipv4Addr> {
    let mut addrs = endpoint_addrs(host);
    for _ in 0..50 {
        if wanted(&addrs) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        addrs = endpoint_addrs(host);
    }
    addrs
}

/// Makes `host` know `addr` behind `port` for good: a permanent neighbour
/// entry on the slice bridge and a static forwarding entry, as a runtime
/// that programs them would. They survive the port going down, so only
/// fan-xdp's own check keeps the endpoint out of the map then.
fn pin_neighbour(host: &Host, addr: Ipv4Addr, mac: &str, port: &str) {
    host.ns
        .run(
            "bridge",
            &["fdb", "replace", mac, "dev", port, "master", "static"],
        )
        .unwrap();
    host.ns
        .ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            mac,
            "dev",
            &host.bridge,
            "nud",
            "permanent",
        ])
        .unwrap();
}

fn mac_of(ns: &Netns, iface: &str) -> String {
    ns.run("cat", &[&format!("/sys/class/net/{iface}/address")])
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn direct_delivery_only_to_ports_whose_peer_is_up_in_another_namespace() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    attach_all(&fleet, &["--no-agent"]);
    let fleet = fleet.with_containers(1).unwrap();
    let host = &fleet.hosts[0];
    let container = &host.containers[0];

    // A bridge port whose veth peer stays in the host's own namespace: no
    // container behind it, and bpf_redirect_peer into it would be dropped.
    let ns = &host.ns;
    ns.ip(&[
        "link",
        "add",
        "vlocal",
        "type",
        "veth",
        "peer",
        "name",
        "vlocal-peer",
    ])
    .unwrap();
    ns.ip(&["link", "set", "vlocal", "master", &host.bridge, "up"])
        .unwrap();
    ns.ip(&["link", "set", "vlocal-peer", "up"]).unwrap();
    // Pinned after the last port joined: a bridge may take a new port's MAC
    // as its own, and a changed address flushes even permanent neighbours.
    let local = Ipv4Addr::new(250, 0, 1, 50);
    pin_neighbour(host, local, &mac_of(ns, "vlocal-peer"), "vlocal");
    pin_neighbour(
        host,
        container.addr,
        &mac_of(&container.ns, "eth0"),
        "veth1",
    );

    host.fan_xdp_ok(&["run", "--once"]).unwrap();
    assert_eq!(
        endpoint_addrs(host),
        [container.addr],
        "only the container in its own namespace is an endpoint"
    );

    // The daemon takes the endpoint out when the container's link goes
    // down, and puts it back when it comes up.
    let daemon = host.fan_xdp_run().unwrap();
    container.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let addrs = wait_for_endpoints(host, |a| a.is_empty());
    assert!(addrs.is_empty(), "endpoints with the peer down: {addrs:?}");
    container.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    let addrs = wait_for_endpoints(host, |a| a == [container.addr]);
    assert_eq!(addrs, [container.addr], "the endpoint did not come back");
    daemon.stop().unwrap();
    detach_all(&fleet);
}

#[test]
fn detach_keeps_a_bridge_it_did_not_create_or_that_has_other_ports() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    // An operator's bridge with an address of its own, given to attach:
    // at the fan's MTU already, and at 1500, which the fan lowers to 1480
    // and detach puts back.
    for mtu in ["1480", "1500"] {
        host.ns
            .ip(&["link", "add", "mybr", "mtu", mtu, "type", "bridge"])
            .unwrap();
        host.ns
            .ip(&["addr", "add", "10.77.0.1/24", "dev", "mybr"])
            .unwrap();
        host.ns.ip(&["link", "set", "mybr", "up"]).unwrap();
        let before = netns_snapshot(&host.ns).unwrap();
        host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--bridge", "mybr"])
            .unwrap();
        let link = host.ns.ip(&["link", "show", "mybr"]).unwrap();
        assert!(link.contains("mtu 1480 "), "{link}");
        let addrs = host.ns.ip(&["-4", "addr", "show", "mybr"]).unwrap();
        assert!(addrs.contains("250.0.1.1/24"), "{addrs}");
        let out = host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
        let link = host.ns.ip(&["link", "show", "mybr"]).unwrap();
        assert!(
            link.contains(&format!("mtu {mtu} ")),
            "MTU {mtu} not restored: {link}"
        );
        assert_netns_unchanged(
            &host.ns,
            &before,
            &format!("detach did not leave the adopted bridge (MTU {mtu}) as it was"),
        );
        assert!(out.contains("kept: fan-xdp did not create it"), "{out}");
        host.ns.ip(&["link", "del", "mybr"]).unwrap();
    }
    let before = netns_snapshot(&host.ns).unwrap();

    // A bridge attach created, into which a runtime has plugged a
    // container since: it stays, without the fan's address.
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let container = plug_container(
        &host.ns,
        &host.bridge,
        "vrt",
        "runtime",
        (Ipv4Addr::new(250, 0, 1, 30), 24),
        host.gateway,
    )
    .unwrap();
    let out = host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert!(out.contains("kept: it still has ports (vrt)"), "{out}");
    let addrs = host
        .ns
        .ip(&["-4", "addr", "show", &host.bridge])
        .expect("the bridge with a runtime's port is gone");
    assert!(!addrs.contains("250.0.1.1"), "the gateway stayed: {addrs}");
    drop(container);
    // Nothing plugged in any more: a new attach adopts it as its own again
    // (it created it), and detach removes it.
    host.ns.ip(&["link", "del", &host.bridge]).unwrap();
    assert_netns_unchanged(&host.ns, &before, "leftovers besides the kept bridge");
}

/// Deletes host `i`'s underlay link (both ends of its veth to the switch)
/// and makes it again with the same name and address, as netplan or a
/// driver reload would: a new device with a new ifindex.
fn recreate_underlay(fleet: &Fleet, i: usize) {
    let host = &fleet.hosts[i];
    let port = format!("sw-h{}", i + 1);
    host.ns.ip(&["link", "del", "eth0"]).unwrap();
    fleet.switch.add_veth_to(&port, &host.ns).unwrap();
    fleet
        .switch
        .ip(&["link", "set", &port, "master", "sw", "up"])
        .unwrap();
    let addr = format!("{}/16", host.underlay_addr);
    host.ns.ip(&["addr", "add", &addr, "dev", "eth0"]).unwrap();
    host.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
}

#[test]
fn attach_again_after_the_underlay_was_recreated_brings_traffic_back() {
    if !privileged() {
        return;
    }
    for mode in ["tc", "xdp"] {
        let fleet = Fleet::new(2).unwrap();
        attach_all(&fleet, &["--mode", mode]);
        let fleet = fleet.with_containers(1).unwrap();
        let (c1, c2) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
        assert!(ping(&c1.ns, c2.addr, 2).unwrap(), "{mode}: before");
        recreate_underlay(&fleet, 0);
        let out = fleet.hosts[0]
            .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--mode", mode])
            .unwrap();
        assert!(out.contains("attached: 250.0.0.0/8"), "{mode}: {out}");
        assert!(
            ping(&c1.ns, c2.addr, 3).unwrap(),
            "{mode}: no traffic after attaching to the re-created underlay"
        );
        assert!(
            ping(&c2.ns, c1.addr, 3).unwrap(),
            "{mode}: no traffic into the host with the re-created underlay"
        );
        detach_all(&fleet);
    }
}

/// While alive, the namespace `ns` has no `ip netns` name and no process in
/// it: it is held only by a bind mount elsewhere, as a runtime may hold one.
/// Dropping this puts the name back.
struct Hidden<'a> {
    ns: &'a Netns,
    holder: String,
}

impl<'a> Hidden<'a> {
    fn new(ns: &'a Netns) -> Self {
        let holder = format!("/tmp/fxt{}-holds-{}", std::process::id(), ns.name());
        let name = format!("/run/netns/{}", ns.name());
        std::fs::write(&holder, "").unwrap();
        fan_tests::netns::run(std::process::Command::new("mount").args(["--bind", &name, &holder]))
            .unwrap();
        let hidden = Self { ns, holder };
        fan_tests::netns::run(std::process::Command::new("umount").arg(&name)).unwrap();
        std::fs::remove_file(&name).unwrap();
        hidden
    }
}

impl Drop for Hidden<'_> {
    fn drop(&mut self) {
        let name = format!("/run/netns/{}", self.ns.name());
        let _ = std::fs::write(&name, "");
        let _ = std::process::Command::new("mount")
            .args(["--bind", &self.holder, &name])
            .status();
        let _ = std::process::Command::new("umount")
            .arg(&self.holder)
            .status();
        let _ = std::fs::remove_file(&self.holder);
    }
}

/// What the sweep falls back on where pins cannot tell (clsact filters,
/// before 6.6): a namespace held by nothing but a bind mount outside
/// /run/netns (a runtime's way) still counts as live.
#[test]
fn a_namespace_held_only_by_a_bind_mount_elsewhere_counts_as_live() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("held").unwrap();
    let cookie = ns
        .enter(fan_userspace::host::netns::current_cookie)
        .unwrap()
        .unwrap();
    let _hidden = Hidden::new(&ns);
    assert!(
        fan_userspace::host::netns::live_cookies()
            .unwrap()
            .contains(&cookie),
        "a namespace held by a bind mount in /tmp was taken for gone"
    );
}

#[test]
fn a_namespace_held_only_by_a_bind_mount_is_not_swept() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    // Before 6.6, TC attachments are clsact filters, whose marker pins cannot
    // tell a live namespace from a dead one: only an XDP link can there.
    let mode = if fan_userspace::dataplane::tcx_supported() {
        "tc"
    } else {
        "xdp"
    };
    attach_all(&fleet, &["--mode", mode]);
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    assert!(ping(&c2.ns, c1.addr, 2).unwrap());
    let cookie = h1
        .ns
        .enter(fan_userspace::host::netns::current_cookie)
        .unwrap()
        .unwrap();
    let state = format!("/sys/fs/bpf/fan-xdp/netns-{cookie}");
    {
        let _hidden = Hidden::new(&h1.ns);
        // Any attach sweeps the state of namespaces that are gone.
        h2.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--mode", mode])
            .unwrap();
        assert!(
            std::path::Path::new(&state).exists(),
            "the state of a live namespace was swept"
        );
        assert!(
            ping(&c2.ns, c1.addr, 2).unwrap(),
            "the live namespace's data plane was detached"
        );
    }
    detach_all(&fleet);
}

#[test]
fn concurrent_attaches_of_overlapping_overlays_one_wins() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    require_fault_injection(host);
    let binary = fan_tests::topology::fan_xdp_binary();
    let attach = |overlay: &str, inject: &str| {
        host.ns
            .command(binary.to_str().unwrap())
            .args(["attach", "eth0", "--overlay", overlay])
            .env("FAN_XDP_INJECT", inject)
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The first holds still after planning, long enough for the second to
    // plan too if nothing stopped it.
    let first = attach(OVERLAY, "pause:plan");
    let second = attach("250.0.0.0/9", "");
    let outcomes: Vec<std::process::Output> = [first, second]
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let succeeded = outcomes.iter().filter(|o| o.status.success()).count();
    let report: Vec<String> = outcomes
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert_eq!(succeeded, 1, "both or neither attached: {report:?}");
    let loser = outcomes.iter().find(|o| !o.status.success()).unwrap();
    let why = String::from_utf8_lossy(&loser.stderr);
    assert!(
        why.contains("overlays 250.0.0.0/8 and 250.0.0.0/9 overlap")
            || why.contains("overlays 250.0.0.0/9 and 250.0.0.0/8 overlap"),
        "{why}"
    );
    let shown = json(&host.fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

#[test]
fn a_point_to_point_underlay_names_this_host_not_the_peer() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    // IFA_LOCAL 198.18.0.1, IFA_ADDRESS (the peer) 198.18.0.99.
    host.ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    host.ns
        .ip(&[
            "addr",
            "add",
            "198.18.0.1",
            "peer",
            "198.18.0.99/16",
            "dev",
            "eth0",
        ])
        .unwrap();
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let shown = json(&host.fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(shown[0]["host"], "198.18.0.1", "{shown}");
    assert_eq!(shown[0]["slice"], "250.0.1.0/24", "{shown}");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

#[test]
fn root_without_a_needed_capability_is_told_which() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let before = netns_snapshot(&host.ns).unwrap();
    let binary = fan_tests::topology::fan_xdp_binary();
    for (drop, missing) in [
        ("-net_admin", "missing capability CAP_NET_ADMIN"),
        (
            "-bpf,-sys_admin",
            "missing capability CAP_BPF (or CAP_SYS_ADMIN)",
        ),
    ] {
        // Still uid 0: only the capabilities are gone (a program root runs
        // gets its bounding set).
        let out = host
            .ns
            .output(
                "setpriv",
                &[
                    "--bounding-set",
                    drop,
                    binary.to_str().unwrap(),
                    "attach",
                    "eth0",
                    "--overlay",
                    OVERLAY,
                ],
            )
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "attached without {drop}");
        assert!(stderr.contains(missing), "without {drop}: {stderr}");
        assert_netns_unchanged(&host.ns, &before, "a refusal changed the host");
    }
}

/// `fan-xdp attach eth0 ARGS` with `FAN_XDP_INJECT=fail:<step>`; asserts
/// that it failed there.
fn attach_failing_at(host: &Host, args: &[&str], step: &str) {
    let binary = fan_tests::topology::fan_xdp_binary();
    let out = host
        .ns
        .command(binary.to_str().unwrap())
        .args(["attach", "eth0"])
        .args(args)
        .env("FAN_XDP_INJECT", format!("fail:{step}"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("injected failure after step {step}")),
        "{args:?} at {step}: {stderr}"
    );
}

#[test]
fn a_failed_reattach_puts_back_what_it_found() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    require_fault_injection(host);
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    // Found by the re-attach: the overlay route without its source (as an
    // older version or an operator left it), which attach replaces.
    host.ns
        .ip(&["route", "replace", OVERLAY, "dev", "fan-host"])
        .unwrap();
    let attached = netns_snapshot(&host.ns).unwrap();
    let entry = || {
        let maps = host.pinned_maps().unwrap();
        maps.config
            .get(&fan_userspace::dataplane::overlay_key(0xfa00_0000, 8), 0)
            .ok()
    };
    let entry_before = entry().expect("the fan entry");
    // Again, with another mode, failing after each step in turn: each
    // failure must leave exactly what was there (the masquerade rule, the
    // route, TC decapsulation, the fan entry).
    for step in fan_userspace::commands::attach::STEPS {
        attach_failing_at(host, &["--overlay", OVERLAY, "--mode", "xdp"], step);
        assert_netns_unchanged(
            &host.ns,
            &attached,
            &format!("a re-attach failing after {step} changed the host"),
        );
        assert_eq!(entry(), Some(entry_before), "fan entry after {step}");
    }
    // Succeeding, it decapsulates in the new mode only.
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--mode", "xdp"])
        .unwrap();
    let shown = json(&host.fan_xdp_ok(&["show", "--json"]).unwrap());
    assert_eq!(shown[0]["mode"], "xdp", "{shown}");
    let cookie = host
        .ns
        .enter(fan_userspace::host::netns::current_cookie)
        .unwrap()
        .unwrap();
    let dir = format!("/sys/fs/bpf/fan-xdp/netns-{cookie}");
    assert!(
        !std::path::Path::new(&format!("{dir}/link_eth0_decap-tc")).exists(),
        "TC decapsulation stayed beside XDP"
    );
    // Before 6.6 the pin was the clsact filter's marker, and removing the
    // decapsulation detached the filter with it (the 6.1 guest's busybox tc
    // cannot list filters to show it).
    if fan_userspace::dataplane::tcx_supported() {
        assert!(
            !fan_tests::lifecycle::ingress_programs(host, "eth0")
                .contains(&fan_userspace::dataplane::DECAP_TC.to_string()),
            "TC decapsulation is still in eth0's TCX chain"
        );
    }
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

#[test]
fn a_failed_attach_puts_back_an_adopted_bridge_and_the_shared_mtu() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    require_fault_injection(host);
    host.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    // Someone's bridge, down, MTU 1500, no address: attach would adopt it.
    // It was up once: a device's first up gives it its default qdisc, which
    // no later down takes away, so a never-up bridge could not be put back.
    host.ns
        .ip(&["link", "add", &host.bridge, "type", "bridge"])
        .unwrap();
    host.ns.ip(&["link", "set", &host.bridge, "up"]).unwrap();
    host.ns.ip(&["link", "set", &host.bridge, "down"]).unwrap();
    let before = netns_snapshot(&host.ns).unwrap();
    for step in fan_userspace::commands::attach::STEPS {
        attach_failing_at(host, &["--overlay", OVERLAY], step);
        assert_netns_unchanged(
            &host.ns,
            &before,
            &format!("an attach failing after {step} left the adopted bridge changed"),
        );
    }
    // A second fan with a smaller MTU lowers the shared host device's; a
    // failed attach of it puts the MTU back.
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let attached = netns_snapshot(&host.ns).unwrap();
    for step in ["host-device", "route", "config"] {
        attach_failing_at(host, &["--overlay", "240.0.0.0/8", "--mtu", "1400"], step);
        assert_netns_unchanged(
            &host.ns,
            &attached,
            &format!("a second fan failing after {step} changed the host"),
        );
    }
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

#[test]
fn only_the_main_tables_overlay_route_counts_and_an_odd_one_is_named() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    // Policy routing's business, not fan-xdp's.
    host.ns
        .ip(&["route", "add", OVERLAY, "dev", "eth0", "table", "100"])
        .unwrap();
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    // A blackhole in the main table is in the way, and said to be.
    host.ns
        .ip(&["route", "add", "blackhole", "240.0.0.0/8"])
        .unwrap();
    let out = host
        .fan_xdp(&["attach", "eth0", "--overlay", "240.0.0.0/8"])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attached over a blackhole route");
    assert!(
        stderr.contains("a route to 240.0.0.0/8 already exists (of type blackhole)"),
        "{stderr}"
    );
}

/// The id of the program the attachment pinned at `pin` runs: a link's, or
/// before 6.6 the clsact filter's (the pin is that program).
fn linked_program(pin: &std::path::Path) -> u32 {
    use aya::programs::links::{FdLink, PinnedLink};
    if !fan_userspace::dataplane::tcx_supported() {
        return aya::programs::ProgramInfo::from_pin(pin).unwrap().id();
    }
    FdLink::from(PinnedLink::from_pin(pin).unwrap())
        .info()
        .unwrap()
        .program_id()
}

#[test]
fn the_pinned_programs_are_the_ones_the_links_run() {
    use fan_userspace::dataplane::{DECAP_TC, ENCAP_FORWARD, ENCAP_OUTPUT};
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let cookie = host
        .ns
        .enter(fan_userspace::host::netns::current_cookie)
        .unwrap()
        .unwrap();
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/fan-xdp/netns-{cookie}"));
    let pinned = |name: &str| {
        aya::programs::ProgramInfo::from_pin(dir.join(format!("prog_{name}")))
            .unwrap()
            .id()
    };
    let check = |when: &str| {
        for (link, program) in [
            ("link_eth0_decap-tc", DECAP_TC),
            ("link_fan-250-0-1_encap", ENCAP_FORWARD),
            ("link_fan-host_encap", ENCAP_OUTPUT),
        ] {
            assert_eq!(
                linked_program(&dir.join(link)),
                pinned(program),
                "{when}: {link} runs another instance than prog_{program}"
            );
        }
    };
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    check("after the first attach");
    let port_program = pinned(fan_userspace::dataplane::ENCAP_PORT);
    // A second fan changes things, but not the programs' version.
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", "240.0.0.0/8"])
        .unwrap();
    check("after a second fan");
    assert_eq!(
        linked_program(&dir.join("link_fan-240-0-1_encap")),
        pinned(ENCAP_FORWARD),
        "the second fan's bridge runs a copy"
    );
    assert_eq!(
        pinned(fan_userspace::dataplane::ENCAP_PORT),
        port_program,
        "the port program was re-pinned: fan-xdp run would take it for a new version"
    );
    // `-v` is the command's own log: the programs are the same, so a
    // same-version attach with it keeps the pinned ones.
    let before = pinned(DECAP_TC);
    host.fan_xdp_ok(&["-v", "attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    assert_eq!(pinned(DECAP_TC), before, "attach -v replaced the programs");
    check("after attach -v");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

#[test]
fn masquerading_leaves_traffic_to_every_attached_overlay_alone() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(2).unwrap();
    // No agent: its port programs would encapsulate the fragments one by
    // one, and the stack path is what is tested here.
    attach_all(&fleet, &["--no-agent"]);
    // A second overlay: without NAT on host 1, with NAT on host 2.
    for (host, extra) in fleet.hosts.iter().zip([&["--no-nat"][..], &[]]) {
        let mut args = vec!["attach", "eth0", "--overlay", "240.0.0.0/8", "--no-agent"];
        args.extend_from_slice(extra);
        host.fan_xdp_ok(&args).unwrap();
    }
    let fleet = fleet.with_containers(1).unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let other = Ipv4Addr::new(240, 0, 2, 20);
    let d2 = plug_container(
        &h2.ns,
        "fan-240-0-2",
        "vd",
        "d2",
        (other, 24),
        Ipv4Addr::new(240, 0, 2, 1),
    )
    .unwrap();
    let c1 = &h1.containers[0];
    // Every attached overlay, NAT or not, is in the exceptions of every rule.
    let set = h1
        .ns
        .run("nft", &["list", "set", "ip", "fan-xdp", "overlays"])
        .unwrap();
    assert!(
        set.contains("240.0.0.0/8") && set.contains("250.0.0.0/8"),
        "{set}"
    );
    let chain = h1
        .ns
        .run("nft", &["list", "chain", "ip", "fan-xdp", "postrouting"])
        .unwrap();
    assert!(
        chain.contains("ip daddr != @overlays masquerade"),
        "{chain}"
    );
    // Echoes larger than the overlay MTU, reassembled by the bridge's
    // netfilter hooks (br_netfilter, loaded on this kernel), are not
    // encapsulated by the programs but handed to the stack (stack_too_big),
    // which fragments them and routes them out through fan-host, past the
    // masquerade rules: from the 250/8 slice to the 240/8 overlay they must
    // keep their source. (Without br_netfilter the fragments are
    // encapsulated one by one and never meet the rules.)
    let reassembled = h1
        .ns
        .run("cat", &["/proc/sys/net/bridge/bridge-nf-call-iptables"])
        .is_ok_and(|v| v.trim() == "1");
    let too_big = counter(h1, "stack_too_big");
    let out = c1
        .ns
        .output(
            "ping",
            &["-n", "-c", "2", "-W", "2", "-s", "2000", &other.to_string()],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "large pings to another fan's overlay were lost: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    if reassembled {
        assert!(
            counter(h1, "stack_too_big") >= too_big + 2,
            "the pings did not take the stack path"
        );
    }
    assert_eq!(
        counter(h1, "drop_source_not_local"),
        0,
        "masqueraded, then dropped"
    );
    drop(d2);
    // Detach takes each overlay out of the exceptions again.
    for host in &fleet.hosts {
        host.fan_xdp_ok(&["detach", "eth0", "--overlay", "240.0.0.0/8"])
            .unwrap();
    }
    let ruleset = h2
        .ns
        .run("nft", &["list", "table", "ip", "fan-xdp"])
        .unwrap();
    assert!(!ruleset.contains("240.0.0.0/8"), "{ruleset}");
    assert!(ruleset.contains("250.0.0.0/8"), "{ruleset}");
    detach_all(&fleet);
}

#[test]
fn detaching_the_fan_that_lowered_fan_host_raises_its_mtu_again() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let fan_host_mtu = || {
        host.ns
            .run("cat", &["/sys/class/net/fan-host/mtu"])
            .unwrap()
            .trim()
            .to_string()
    };
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--no-agent"])
        .unwrap();
    assert_eq!(fan_host_mtu(), "1480");
    host.fan_xdp_ok(&[
        "attach",
        "eth0",
        "--overlay",
        "240.0.0.0/8",
        "--mtu",
        "1400",
        "--no-agent",
    ])
    .unwrap();
    assert_eq!(
        fan_host_mtu(),
        "1400",
        "the shared host device is not at the smaller fan's MTU"
    );
    let out = host
        .fan_xdp_ok(&["detach", "eth0", "--overlay", "240.0.0.0/8"])
        .unwrap();
    assert_eq!(
        fan_host_mtu(),
        "1480",
        "fan-host stayed at the MTU of a fan that is gone: {out}"
    );
    assert!(out.contains("fan-host: MTU 1400 -> 1480"), "{out}");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

/// `attach` where the host's bpffs is not mounted (here: a private mount
/// namespace with /sys/fs/bpf unmounted, from which the commands run under
/// `ip netns exec`, as an operator's would): planning, and so a refused
/// attach, mounts nothing; an attach that goes ahead mounts it. (What
/// attach logs, such as the state it swept of namespaces that are gone,
/// depends on what ran before: only the mounts are compared.)
#[test]
fn planning_mounts_no_bpffs_and_a_refused_attach_leaves_none_mounted() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let bpffs_mounts = "grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts";
    let out = in_private_mounts(
        host,
        &format!(
            "umount /sys/fs/bpf || exit 9; \
             $IP netns exec $NS $FAN_XDP attach eth0 --overlay {OVERLAY} --mtu 9999 --no-agent 2>/dev/null; \
             echo refused=$?; {bpffs_mounts}; \
             $IP netns exec $NS $FAN_XDP attach eth0 --overlay {OVERLAY} --no-agent >/dev/null 2>&1 && {bpffs_mounts}; \
             $IP netns exec $NS $FAN_XDP detach eth0 >/dev/null 2>&1"
        ),
    );
    assert_eq!(
        out, "refused=1\n0\n1\n",
        "a refused attach mounted bpffs, or an attach did not"
    );
}

#[test]
fn doctor_names_what_breaks_a_fan_and_how_to_fix_it() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    let healthy = host.fan_xdp_ok(&["doctor"]).unwrap();
    assert_eq!(
        healthy,
        "ok: 1 fan(s) (250.0.0.0/8 ipip), nothing found that breaks them\n"
    );

    // Three things that break fans in the field.
    host.ns.sysctl("net.ipv4.conf.eth0.rp_filter", "1").unwrap();
    host.ns
        .ip(&[
            "link", "add", "big0", "mtu", "1500", "type", "veth", "peer", "name", "big1",
        ])
        .unwrap();
    host.ns
        .ip(&["link", "set", "big0", "master", &host.bridge])
        .unwrap();
    let run = host
        .ns
        .enter(|| fan_userspace::state::rundir::RunDir::locate(None))
        .unwrap()
        .unwrap();
    fan_userspace::agent::stop(&run).unwrap();
    let out = host.fan_xdp(&["doctor"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "doctor found nothing: {stdout}");
    for (problem, fix) in [
        (
            "problem: no agent serves this network namespace",
            "fix: start it",
        ),
        (
            "problem: strict reverse-path filtering on eth0",
            "fix: sysctl -w net.ipv4.conf.eth0.rp_filter=2",
        ),
        (
            "problem: big0 on fan-250-0-1 has MTU 1500 above the fan's 1480",
            "MTU 1480",
        ),
    ] {
        assert!(
            stdout.contains(problem) && stdout.contains(fix),
            "{problem} / {fix} missing in:\n{stdout}"
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problem(s) found"), "{stderr}");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
}

/// A bridge name dnsmasq's `--interface=` would misread (a comma makes a
/// list of two interfaces, a `*` a wildcard) is refused before anything
/// changes.
#[test]
fn bridge_names_dnsmasq_would_misread_are_refused() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    for name in ["br0,eth0", "fan*"] {
        let out = host
            .fan_xdp(&[
                "attach",
                "eth0",
                "--overlay",
                OVERLAY,
                "--bridge",
                name,
                "--no-agent",
            ])
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was taken");
        assert!(stderr.contains("dnsmasq"), "{name}: {stderr}");
        assert!(
            host.ns.ip(&["link", "show", name]).is_err(),
            "{name} was created"
        );
    }
}

/// The host takes no router advertisement from a slice bridge: a created
/// bridge gets accept_ra 0; an adopted one too, and detach puts back what
/// it had.
#[test]
fn slice_bridges_take_no_router_advertisements() {
    if !privileged() {
        return;
    }
    let fleet = Fleet::new(1).unwrap();
    let host = &fleet.hosts[0];
    let accept_ra = |bridge: &str| {
        let path = format!("/proc/sys/net/ipv6/conf/{bridge}/accept_ra");
        host.ns
            .enter(move || std::fs::read_to_string(path).unwrap())
            .unwrap()
            .trim()
            .to_string()
    };
    host.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY, "--no-agent"])
        .unwrap();
    assert_eq!(accept_ra(&host.bridge), "0");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();

    host.ns
        .ip(&["link", "add", "adopted0", "type", "bridge"])
        .unwrap();
    host.ns
        .sysctl("net.ipv6.conf.adopted0.accept_ra", "2")
        .unwrap();
    host.fan_xdp_ok(&[
        "attach",
        "eth0",
        "--overlay",
        OVERLAY,
        "--bridge",
        "adopted0",
        "--no-agent",
    ])
    .unwrap();
    assert_eq!(accept_ra("adopted0"), "0");
    host.fan_xdp_ok(&["detach", "eth0"]).unwrap();
    assert_eq!(accept_ra("adopted0"), "2", "detach did not put it back");
    host.ns.ip(&["link", "del", "adopted0"]).unwrap();
}
