//! fan-xdp over time: cycles of attach, traffic and detach that must give
//! the system back as it was, programs replaced under a running transfer,
//! and an agent killed and restarted under one.
//!
//! BPF ids are machine-wide: these tests run one at a time
//! (`--test-threads=1`), and another process loading or freeing BPF objects
//! meanwhile makes the leak test fail (see docs/testing.md).

use std::time::{Duration, Instant};

use fan_common::StatReason;
use fan_tests::{
    lifecycle::{
        agent_pid, attached_pair, container, drops, env_or, fleet_as_found,
        forward_and_output_tags, program_runs, put_older_version, resets, running_tag, shape,
        wait_until_bridge_empty,
    },
    privileged,
    snapshot::assert_lifecycle_unchanged,
    topology::Host,
    traffic::{ping, snmp_counter, tcp_transfer, tcp_transfer_within},
};

const OVERLAY: &str = "250.0.0.0/8";

#[test]
fn attach_traffic_detach_cycles_give_everything_back() {
    if !privileged() {
        return;
    }
    let cycles = env_or("FAN_LIFECYCLE_CYCLES", 10);
    let (fleet, before) = fleet_as_found(2).unwrap();
    let started = Instant::now();
    for cycle in 1..=cycles {
        fleet.attach_all(&[]).unwrap();
        let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
        let (c1, c2) = (container(h1, 1, 1).unwrap(), container(h2, 1, 1).unwrap());
        assert!(
            h2.wait_for_direct(&c1.ns, c2.addr).unwrap(),
            "cycle {cycle}: no direct delivery"
        );
        let bytes = 8 << 20;
        assert_eq!(tcp_transfer(&c2.ns, &c1.ns, c2.addr, bytes).unwrap(), bytes);
        assert!(
            ping(&c2.ns, c1.addr, 2).unwrap(),
            "cycle {cycle}: no way back"
        );
        drop((c1, c2));
        for host in &fleet.hosts {
            wait_until_bridge_empty(host).unwrap();
        }
        fleet.detach_all().unwrap();
        for (host, before) in fleet.hosts.iter().zip(&before) {
            assert_lifecycle_unchanged(
                &host.ns,
                before,
                &format!("cycle {cycle} left something behind in {}", host.ns.name()),
            );
        }
    }
    println!(
        "{cycles} cycles of attach, traffic, detach on 2 hosts: {:.1} s, nothing left",
        started.elapsed().as_secs_f64()
    );
}

/// Bytes a transfer shaped to `rate_bytes` per second needs to outlast
/// `rounds` rounds of `round` each: three times that and 5 s (a loaded
/// machine slows the rounds more than the shaped transfer), within 80% of
/// the transfers' time limit.
/// Bytes at `rate_bytes` a second for a transfer of `span`, and its time
/// limit.
fn outlasting(rate_bytes: u64, span: Duration) -> (u64, Duration) {
    (
        (span.as_secs_f64() * rate_bytes as f64) as u64,
        span.mul_f64(1.5) + Duration::from_secs(30),
    )
}

#[test]
fn twenty_program_upgrades_under_a_transfer_lose_nothing() {
    use fan_userspace::dataplane::{Dataplane, ENCAP_OUTPUT};
    if !privileged() {
        return;
    }
    let rounds = env_or("FAN_UPGRADE_ROUNDS", 20) as u32;
    let fleet = attached_pair().unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    let dir = state_dir(h1);
    // The bridge's attachment: everything c1 sends to another host goes
    // through it. A TCX link, or before 6.6 a clsact filter the pinned
    // program marks.
    let pin = dir.path.join(format!("link_{}_encap", h1.bridge));
    assert!(pin.exists(), "no pin at {}", pin.display());
    let path = if fan_userspace::dataplane::tcx_supported() {
        "TCX"
    } else {
        "clsact"
    };

    // Another version: the output hook's program, which encapsulates the
    // same way but has another tag, put in place as an older fan-xdp would
    // have left it; attach must replace it with the forward program. It
    // uses h1's pinned maps, as an older version's would: with maps of its
    // own it would know no fan and pass everything to the stack.
    let mut other = Dataplane::load_pinned(&dir).unwrap();
    let (forward_tag, output_tag) = forward_and_output_tags(&mut other).unwrap();
    let output = other.classifier(ENCAP_OUTPUT).unwrap();
    let mut upgrade = || -> Duration {
        put_older_version(h1, &h1.bridge, &pin, output).unwrap();
        assert_eq!(
            running_tag(h1, &h1.bridge, &pin).unwrap(),
            output_tag,
            "the older version is not in place"
        );
        let started = Instant::now();
        let out = h1
            .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
            .unwrap();
        let took = started.elapsed();
        assert!(
            out.contains("attached: 250.0.0.0/8"),
            "the upgrade changed nothing: {out}"
        );
        assert_eq!(
            running_tag(h1, &h1.bridge, &pin).unwrap(),
            forward_tag,
            "the bridge does not run the new program"
        );
        took
    };
    let round = upgrade();

    let rate_mbit = env_or("FAN_UPGRADE_MBIT", 100);
    shape(c1, &format!("{rate_mbit}mbit")).unwrap();
    // Room for rounds five times slower than the first: the emulated
    // guest runs beside the host's suites, and its rounds vary that much.
    let span = (round * rounds).mul_f64(5.0) + Duration::from_secs(10);
    let (bytes, limit) = outlasting(rate_mbit * 1_000_000 / 8, span);
    let (drops_before, resets_before) = (
        drops(h1).unwrap() + drops(h2).unwrap(),
        resets(c1).unwrap() + resets(c2).unwrap(),
    );
    let retrans_before = snmp_counter(&c1.ns, "Tcp", "RetransSegs").unwrap();
    // A packet that meets the bridge with no program on it is routed by h1's
    // stack instead, to fan-host, whose program encapsulates it too: that
    // program's run count (the kernel's) is the gap, which TCP alone would
    // never show. Nothing else of c1's goes there: both versions on the
    // bridge send to the underlay.
    let _kernel_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let host_device_pin = dir.path.join("link_fan-host_encap");
    let host_device_runs = || program_runs(&host_device_pin).unwrap();
    let runs_before = host_device_runs();
    let mut slowest = Duration::ZERO;
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| tcp_transfer_within(&c2.ns, &c1.ns, c2.addr, bytes, limit));
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        for _ in 0..rounds {
            slowest = slowest.max(upgrade());
        }
        println!("{rounds} upgrades in {:?}", started.elapsed());
        assert!(
            !transfer.is_finished(),
            "the transfer ended before the last upgrade: nothing was tested"
        );
        assert_eq!(
            transfer.join().unwrap().unwrap(),
            bytes,
            "the transfer broke"
        );
    });
    let retransmitted = snmp_counter(&c1.ns, "Tcp", "RetransSegs").unwrap() - retrans_before;
    let without_program = host_device_runs() - runs_before;
    assert_eq!(
        resets(c1).unwrap() + resets(c2).unwrap(),
        resets_before,
        "a connection was reset"
    );
    assert_eq!(
        drops(h1).unwrap() + drops(h2).unwrap(),
        drops_before,
        "packets were dropped during the upgrades"
    );
    assert_eq!(
        without_program, 0,
        "{without_program} packets met the bridge without a program during {rounds} upgrades ({path})"
    );
    println!(
        "{rounds} upgrades ({path}) under a {} MB transfer: slowest attach {slowest:?}, \
         0 drops, 0 resets, 0 packets without a program, {retransmitted} segments retransmitted",
        bytes >> 20
    );
    drop(other);
    fleet.detach_all().unwrap();
}

/// Polls `host`'s direct-delivery counter while traffic runs until it has
/// grown by more than `by` packets; how long that took, or None after `limit`.
fn direct_grows(host: &Host, by: u64, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let from = host.counter(StatReason::DecapsulatedDirect).unwrap();
    while started.elapsed() < limit {
        if host.counter(StatReason::DecapsulatedDirect).unwrap() > from + by {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn twenty_agent_kills_and_restarts_under_a_transfer_lose_nothing() {
    if !privileged() {
        return;
    }
    let rounds = 20u32;
    let heartbeat = Duration::from_nanos(fan_common::maps::AGENT_HEARTBEAT_TIMEOUT_NS);
    // Every fifth round waits out the killed agent's heartbeat first, so
    // that direct delivery has really stopped and must come back.
    let expired_every = 5;
    let fleet = attached_pair().unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    let restart = || -> Duration {
        let started = Instant::now();
        h2.fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
            .unwrap();
        started.elapsed()
    };
    let kill = || {
        let pid = agent_pid(h2).unwrap() as i32;
        // SAFETY: signalling the agent by the pid its status names; it runs
        // in this test's namespace.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    };
    kill();
    let round = restart() + Duration::from_millis(600);

    let rate = 100_000_000 / 8;
    shape(c1, "100mbit").unwrap();
    let waits = (rounds / expired_every) * (heartbeat + Duration::from_secs(1));
    // On this kernel only: three times the rounds, within the transfer's
    // usual time limit.
    let span = ((round * rounds + waits).mul_f64(3.0) + Duration::from_secs(5))
        .min(fan_tests::traffic::TIME_LIMIT.mul_f64(0.8));
    let (bytes, _) = outlasting(rate, span);
    let resets_before = resets(c1).unwrap() + resets(c2).unwrap();
    let mut back = Vec::new();
    let mut slowest_attach = Duration::ZERO;
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| tcp_transfer(&c2.ns, &c1.ns, c2.addr, bytes));
        std::thread::sleep(Duration::from_millis(500));
        for i in 1..=rounds {
            kill();
            if i % expired_every == 0 {
                std::thread::sleep(heartbeat + Duration::from_millis(300));
                assert!(
                    direct_grows(h2, 0, Duration::from_millis(300)).is_none(),
                    "round {i}: direct delivery on a dead agent's map"
                );
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            // Timed from the end of the restart (attach returns once the new
            // agent is ready): how long attach itself takes on a loaded
            // machine is not the fast path's to answer for, and is printed.
            slowest_attach = slowest_attach.max(restart());
            let restarted = Instant::now();
            // Many packets, not one stray: the transfer's own.
            let grew = direct_grows(h2, 100, heartbeat);
            let took = restarted.elapsed();
            assert!(
                grew.is_some() && took <= heartbeat,
                "round {i}: direct delivery not back within {heartbeat:?} of the restart ({took:?})"
            );
            back.push((i % expired_every == 0, took));
        }
        assert!(
            !transfer.is_finished(),
            "the transfer ended before the last restart: nothing was tested"
        );
        assert_eq!(
            transfer.join().unwrap().unwrap(),
            bytes,
            "the transfer broke"
        );
    });
    assert_eq!(
        resets(c1).unwrap() + resets(c2).unwrap(),
        resets_before,
        "a connection was reset"
    );
    let slowest = |expired: bool| {
        back.iter()
            .filter(|(e, _)| *e == expired)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    };
    println!(
        "{rounds} agent kills under a {} MB transfer, 0 resets; restarts (attach) took at most \
         {slowest_attach:?}; direct delivery back within {:?} of a restart (slowest), {:?} after \
         an expired heartbeat",
        bytes >> 20,
        slowest(false),
        slowest(true)
    );
    fleet.detach_all().unwrap();
}

/// State pinned by fan-xdp of map layout 2 (no event ring, no event
/// settings, no per-fan counters; every fan's record says v2) is taken over by attach in place:
/// no detach, the maps it lacked created, the programs replaced (they could
/// not know the new maps), the counters carried over, traffic kept.
#[test]
fn an_older_map_layout_is_migrated_in_place() {
    use fan_userspace::dataplane::{EVENT_SETTINGS_MAP, EVENTS_MAP, PinnedMaps, STATS_BY_FAN_MAP};
    if !privileged() {
        return;
    }
    let fleet = attached_pair().unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    let dir = state_dir(h1);
    // What layout 2 left: the same maps less the two, records saying v2.
    for map in [EVENTS_MAP, EVENT_SETTINGS_MAP, STATS_BY_FAN_MAP] {
        std::fs::remove_file(dir.map(map)).unwrap();
    }
    PinnedMaps::open(&dir).unwrap().relabel_layout(2).unwrap();
    let encapsulated = h1.counter(StatReason::Encapsulated).unwrap();
    let program =
        fan_userspace::dataplane::pinned_program_id(&dir.program("fan_encap_forward")).unwrap();
    let out = h1
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    assert!(out.contains("attached: 250.0.0.0/8"), "{out}");
    for map in [EVENTS_MAP, EVENT_SETTINGS_MAP, STATS_BY_FAN_MAP] {
        assert!(dir.map(map).exists(), "{map} was not created");
    }
    let fans = fan_userspace::state::record::load_fans(&PinnedMaps::open(&dir).unwrap()).unwrap();
    assert!(
        fans.iter()
            .all(|f| f.meta.layout_version == fan_common::maps::MAP_LAYOUT_VERSION),
        "a record still says layout v2"
    );
    assert_ne!(
        fan_userspace::dataplane::pinned_program_id(&dir.program("fan_encap_forward")).unwrap(),
        program,
        "the programs that cannot know the new maps were kept"
    );
    assert!(
        h1.counter(StatReason::Encapsulated).unwrap() >= encapsulated,
        "the counters started over"
    );
    assert!(
        ping(&c1.ns, c2.addr, 2).unwrap(),
        "traffic lost by the migration"
    );
    assert!(h1.counter(StatReason::Encapsulated).unwrap() >= encapsulated + 2);
    // The per-fan counters count from the migration on.
    let fan: serde_json::Value = serde_json::from_str(
        &h1.fan_xdp_ok(&["stats", "--json", "--fan", OVERLAY])
            .unwrap(),
    )
    .unwrap();
    assert!(
        fan["encapsulated"]["packets"].as_u64().unwrap() >= 2,
        "{fan}"
    );
    // The new ring reaches a monitor: the programs write to it.
    let monitor = fan_tests::monitor::Monitor::start(h1, &[]).unwrap();
    assert!(!ping(&h1.ns, "250.0.0.5".parse().unwrap(), 1).unwrap());
    let events = monitor.events(1, Duration::from_secs(5));
    assert_eq!(
        events.first().map(|e| e["reason"].clone()),
        Some("drop_reserved_host".into()),
        "{events:?}"
    );
    drop(monitor);
    fleet.detach_all().unwrap();
}

/// Where `host`'s fan-xdp pins its state.
/// Counters pinned by an older fan-xdp that knew fewer reasons (a totals
/// map one slot short, per-fan counters sized for it) are carried over by
/// attach, slot for slot, into maps of this version's size; the new slot
/// counts from then on.
#[test]
fn counters_pinned_with_fewer_reasons_are_carried_over() {
    use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
    use fan_common::{Counter, FanStatKey, stats::MAX_FAN_STATS};
    use fan_userspace::dataplane::{STATS_BY_FAN_MAP, STATS_MAP};
    if !privileged() {
        return;
    }
    let fleet = attached_pair().unwrap();
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    let (c1, c2) = (&h1.containers[0], &h2.containers[0]);
    let dir = state_dir(h1);
    let cpus = aya::util::nr_cpus().unwrap();
    let on_first_cpu = |packets| {
        let mut values = vec![Counter::default(); cpus];
        values[0] = Counter {
            packets,
            bytes: packets * 100,
        };
        PerCpuValues::try_from(values).unwrap()
    };
    // What the older version left: one reason fewer.
    let older_slots = StatReason::COUNT - 1;
    let mut totals = PerCpuArray::<MapData, Counter>::create(older_slots, 0).unwrap();
    totals
        .set(StatReason::Encapsulated as u32, on_first_cpu(1000), 0)
        .unwrap();
    totals.set(older_slots - 1, on_first_cpu(3), 0).unwrap();
    let mut by_fan = PerCpuHashMap::<MapData, FanStatKey, Counter>::create(
        MAX_FAN_STATS - fan_common::maps::MAX_FANS,
        0,
    )
    .unwrap();
    let key = FanStatKey {
        overlay: u32::from(std::net::Ipv4Addr::new(250, 0, 0, 0)),
        reason: StatReason::Encapsulated as u32,
    };
    by_fan.insert(key, on_first_cpu(7), 0).unwrap();
    for name in [STATS_MAP, STATS_BY_FAN_MAP] {
        std::fs::remove_file(dir.map(name)).unwrap();
    }
    totals.pin(dir.map(STATS_MAP)).unwrap();
    by_fan.pin(dir.map(STATS_BY_FAN_MAP)).unwrap();
    // An older version's agent goes with it (a new eBPF object is a new
    // version); here the same build, so it is stopped by hand.
    let run = h1
        .ns
        .enter(|| fan_userspace::state::rundir::RunDir::locate(None))
        .unwrap()
        .unwrap();
    fan_userspace::agent::stop(&run).unwrap();

    let out = h1
        .fan_xdp_ok(&["attach", "eth0", "--overlay", OVERLAY])
        .unwrap();
    assert!(out.contains("attached: 250.0.0.0/8"), "{out}");
    let slots = |name: &str| {
        aya::maps::MapInfo::from_pin(dir.map(name))
            .unwrap()
            .max_entries()
    };
    assert_eq!(slots(STATS_MAP), StatReason::COUNT);
    assert_eq!(slots(STATS_BY_FAN_MAP), MAX_FAN_STATS);
    let stats = h1.pinned_maps().unwrap().stats().unwrap();
    assert_eq!(stats.get(StatReason::Encapsulated).packets, 1000);
    assert_eq!(
        stats.get(StatReason::ALL[older_slots as usize - 1]),
        Counter {
            packets: 3,
            bytes: 300
        }
    );
    let fan: serde_json::Value = serde_json::from_str(
        &h1.fan_xdp_ok(&["stats", "--json", "--fan", OVERLAY])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(fan["encapsulated"]["packets"], 7, "{fan}");

    // The programs count into the new maps, the new slot too.
    assert!(h2.wait_for_direct(&c1.ns, c2.addr).unwrap());
    let stats = h1.pinned_maps().unwrap().stats().unwrap();
    assert!(stats.get(StatReason::Encapsulated).packets > 1000);
    // The new agent's port programs (TCX only): what c1 sends its gateway
    // they pass.
    if fan_userspace::dataplane::tcx_supported() {
        let deadline = Instant::now() + Duration::from_secs(15);
        while h1.counter(StatReason::PortPassed).unwrap() == 0 {
            assert!(
                Instant::now() < deadline,
                "the port programs do not count into the new map"
            );
            assert!(ping(&c1.ns, h1.gateway, 1).unwrap());
        }
    }
    fleet.detach_all().unwrap();
}

fn state_dir(host: &Host) -> fan_userspace::state::StateDir {
    host.ns
        .enter(|| fan_userspace::state::StateDir::locate(None))
        .unwrap()
        .unwrap()
}
