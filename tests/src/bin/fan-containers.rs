//! `cargo xtask bench --containers`: hundreds of containers per host, as the
//! seed's posts ran them. Two hosts attached with `--dhcp`, each with N
//! container namespaces that take their addresses from the slice's dnsmasq
//! with busybox udhcpc, all at once. Reported: the time until all have
//! addresses, the agent's and dnsmasq's CPU time during the bring-up and at
//! idle, the bindings in the endpoint map, the agent's memory, and its CPU
//! per container with 250 and 500 per host against the same with 25 (the
//! goal: within 1.3 times). `FAN_BENCH_SIZES` (e.g. `25,250`) sets the
//! sizes; the first is the reference. Correctness is
//! checked on the way (every lease in the range, each container reaches a
//! fixed peer on the other host, every lease bound); the figures are
//! reported, not asserted.
//!
//! The underlay is a /24 (198.18.0.0/24), so each host's slice of
//! 250.0.0.0/8 is a /16 (250.<host>.0.0/16): its default DHCP range holds
//! 32,766 addresses, room for 250 and more.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use fan_tests::{
    dhcp::{StateDir, fan_xdp, finish_client, plug_dhcp_container, require_tools, start_client},
    netns::Netns,
    topology::{Fleet, Host},
    traffic::ping,
};
use fan_userspace::host::{
    arp_table::{ArpTable, GC_THRESH},
    naming::bridge_name,
};

const OVERLAY: &str = "250.0.0.0/8";
/// Containers per host, the first the reference of the others.
const SIZES: &str = "25,250,500";
const IDLE: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the containers bench builds network namespaces: run it as root");
    }
    require_tools()?;
    let mut report = String::from("# fan-xdp: hundreds of DHCP containers per host\n\n");
    writeln!(
        report,
        "2 hosts, containers plugged into each slice bridge, then every container's udhcpc started at once; CPU is the scheduler's count of each process's threads.\n"
    )?;
    writeln!(
        report,
        "| containers per host | all addresses after | agent CPU: plug / DHCP / idle {} s | dnsmasq CPU: bring-up / idle | dhcp bindings | endpoints | agent memory | agent CPU per container | against the first |",
        IDLE.as_secs()
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|")?;
    let sizes: Vec<u32> = std::env::var("FAN_BENCH_SIZES")
        .unwrap_or_else(|_| SIZES.to_string())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .context("FAN_BENCH_SIZES: numbers, comma-separated")
        })
        .collect::<Result<_>>()?;
    let mut reference = None;
    for n in sizes {
        let _room = ArpRoom::make(n)?;
        let full_before = ArpTable::read()?.fulls;
        // A size that fails (a client without a lease on a loaded
        // machine) is reported as such; the others still are.
        let run = run(n);
        let fulls = ArpTable::read()?.fulls - full_before;
        if fulls > 0 {
            println!("{n} per host: the kernel's ARP table was full {fulls} time(s)");
        }
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                println!("{n} per host: {e:#}");
                writeln!(report, "| {n} | failed: {e:#} |")?;
                continue;
            }
        };
        let per_container = run.agent_per_container();
        let against = per_container / *reference.get_or_insert(per_container);
        writeln!(
            report,
            "| {n} | {:.2} s | {:.2} / {:.2} / {:.3} s | {:.2} / {:.3} s | {} | {} | {} KiB | {:.2} ms | {against:.2}x |",
            run.bring_up.as_secs_f64(),
            run.agent_plug,
            run.agent_dhcp,
            run.agent_idle,
            run.dnsmasq_bring_up,
            run.dnsmasq_idle,
            run.bindings,
            run.endpoints,
            run.agent_rss_kib,
            per_container * 1000.0
        )?;
        println!("{n} per host: done");
    }
    writeln!(
        report,
        "\nFigures per host (the mean of the two hosts); agent memory is its resident set once every lease is bound."
    )?;
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("containers.md"), &report)?;
    println!("Written: {}/containers.md", dir.canonicalize()?.display());
    Ok(())
}

/// One run's figures, per host (means of the two hosts).
struct Run {
    containers: u32,
    bring_up: Duration,
    agent_plug: f64,
    agent_dhcp: f64,
    agent_idle: f64,
    dnsmasq_bring_up: f64,
    dnsmasq_idle: f64,
    bindings: u64,
    endpoints: u64,
    agent_rss_kib: u64,
}

impl Run {
    /// Agent CPU seconds per container, plugged and leased.
    fn agent_per_container(&self) -> f64 {
        (self.agent_plug + self.agent_dhcp) / f64::from(self.containers)
    }
}

fn run(n: u32) -> Result<Run> {
    let state = StateDir::new()?;
    let fleet = fleet()?;
    for host in &fleet.hosts {
        fan_xdp(
            host,
            &state,
            &["attach", "eth0", "--overlay", OVERLAY, "--dhcp"],
        )?;
    }
    let agents: Vec<u32> = fleet
        .hosts
        .iter()
        .map(|h| pid_of(h, &state, "agent"))
        .collect::<Result<_>>()?;
    let servers: Vec<u32> = fleet
        .hosts
        .iter()
        .map(|h| pid_of(h, &state, "dhcp"))
        .collect::<Result<_>>()?;
    let cpu = |pids: &[u32]| -> Result<f64> {
        Ok(pids
            .iter()
            .map(|&p| cpu_seconds(p))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .sum::<f64>()
            / pids.len() as f64)
    };

    let agent_start = cpu(&agents)?;
    let mut containers: Vec<(usize, Netns)> = Vec::new();
    for (i, host) in fleet.hosts.iter().enumerate() {
        for j in 1..=n {
            let label = format!("b{}-{j}", i + 1);
            containers.push((
                i,
                plug_dhcp_container(&host.ns, &host.bridge, &format!("bv{j}"), &label)?,
            ));
        }
    }
    // The agent takes over the new ports (their programs) as they come.
    settle(&fleet, &state, |shown| {
        shown["fast_path"]["ports_encapsulating"] == u64::from(n)
    })?;
    let agent_plugged = cpu(&agents)?;

    let dnsmasq_start = cpu(&servers)?;
    let started = Instant::now();
    let clients: Vec<_> = containers
        .iter()
        .map(|(_, ns)| start_client(ns))
        .collect::<Result<_>>()?;
    let mut leases = Vec::new();
    // A client that gave up (busybox udhcpc stops after three unanswered
    // requests, where a runtime's client keeps trying) starts again, once;
    // the time until all have addresses includes it.
    let mut again = 0;
    for ((_, ns), client) in containers.iter().zip(clients) {
        let leased = match finish_client(ns, client) {
            Ok(leased) => leased,
            Err(_) => {
                again += 1;
                finish_client(ns, start_client(ns)?)?
            }
        };
        leases.push(leased);
    }
    let bring_up = started.elapsed();
    if again > 0 {
        println!(
            "{n} per host: {again} client(s) of {} started again",
            containers.len()
        );
    }
    settle(&fleet, &state, |shown| {
        shown["agent"]["bindings"]["dhcp"] == u64::from(n)
    })?;
    let (agent_leased, dnsmasq_leased) = (cpu(&agents)?, cpu(&servers)?);
    let agent_rss_kib = agents
        .iter()
        .map(|&pid| fan_tests::lifecycle::Footprint::of(pid).map(|f| f.rss_kib))
        .sum::<Result<u64>>()?
        / agents.len() as u64;
    std::thread::sleep(IDLE);
    let (agent_idle, dnsmasq_idle) = (cpu(&agents)?, cpu(&servers)?);

    // Correctness: each in its host's range, each reaching a fixed peer.
    for ((i, _), leased) in containers.iter().zip(&leases) {
        let host = &fleet.hosts[*i];
        ensure!(
            leased.router == Some(host.gateway)
                && u32::from(leased.addr) >> 16 == u32::from(host.slice) >> 16,
            "{leased:?} is not a lease of {}",
            host.bridge
        );
    }
    let peers = [leases[n as usize].addr, leases[0].addr];
    for ((i, ns), leased) in containers.iter().zip(&leases) {
        // Once more if the first echo is lost (a loaded machine).
        if !(ping(ns, peers[*i], 1)? || ping(ns, peers[*i], 3)?) {
            bail!(
                "{} cannot reach {}\n{}",
                leased.addr,
                peers[*i],
                diagnosis(&fleet, &state, ns, &fleet.hosts[*i])
            );
        }
    }
    let mut bindings = 0;
    let mut endpoints = 0;
    for host in &fleet.hosts {
        let shown = show(host, &state)?;
        bindings += shown["agent"]["bindings"]["dhcp"].as_u64().unwrap_or(0);
        endpoints += shown["fast_path"]["endpoints"].as_u64().unwrap_or(0);
    }
    for host in &fleet.hosts {
        fan_xdp(host, &state, &["detach", "eth0"])?;
    }
    drop(containers);
    Ok(Run {
        containers: n,
        bring_up,
        agent_plug: agent_plugged - agent_start,
        agent_dhcp: agent_leased - agent_plugged,
        agent_idle: agent_idle - agent_leased,
        dnsmasq_bring_up: dnsmasq_leased - dnsmasq_start,
        dnsmasq_idle: dnsmasq_idle - dnsmasq_leased,
        bindings: bindings / 2,
        endpoints: endpoints / 2,
        agent_rss_kib,
    })
}

/// Two hosts on a /24 underlay, so each host's slice is a /16.
fn fleet() -> Result<Fleet> {
    let switch = Netns::new("csw")?;
    switch.ip(&["link", "add", "sw", "type", "bridge"])?;
    switch.ip(&["link", "set", "sw", "up"])?;
    let mut hosts = Vec::new();
    for i in 1..=2u8 {
        let ns = Netns::new(&format!("ch{i}"))?;
        let port = format!("sw-h{i}");
        switch.add_veth_to(&port, &ns)?;
        switch.ip(&["link", "set", &port, "master", "sw", "up"])?;
        ns.ip(&["addr", "add", &format!("198.18.0.{i}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let slice = Ipv4Addr::new(250, i, 0, 0);
        hosts.push(Host {
            ns,
            underlay_addr: Ipv4Addr::new(198, 18, 0, i),
            slice,
            gateway: Ipv4Addr::new(250, i, 0, 1),
            bridge: bridge_name(slice),
            containers: Vec::new(),
        });
    }
    Ok(Fleet { hosts, switch })
}

fn show(host: &Host, state: &StateDir) -> Result<serde_json::Value> {
    let shown: serde_json::Value =
        serde_json::from_str(&fan_xdp(host, state, &["show", "--json"])?)?;
    Ok(shown[0].clone())
}

/// Each bench host's containers hold an ARP entry for their gateway and the
/// host one for each container, in the kernel's one ARP table shared by
/// every namespace: two hosts of `n` need about 4n entries, and past
/// `net.ipv4.neigh.default.gc_thresh3` (1024 by default) the kernel makes
/// no new entry and so answers no ARP request (a container then cannot
/// reach its gateway). A real host of n containers needs 2n; its operator
/// raises the limit as `fan-xdp doctor` says. The bench raises gc_thresh2
/// and gc_thresh3 for a size that needs it, as `fan-bench` turns on BPF
/// statistics, and puts them back (held here as they were) when the size
/// is done.
struct ArpRoom(Option<[String; 2]>);

impl ArpRoom {
    fn make(n: u32) -> Result<Self> {
        let need = 4 * u64::from(n) + 256;
        let limit = ArpTable::read()?.limit;
        if limit >= need {
            return Ok(Self(None));
        }
        let read = |path: &str| -> Result<String> {
            Ok(std::fs::read_to_string(path)
                .with_context(|| format!("reading {path}"))?
                .trim()
                .to_string())
        };
        let before = [read(GC_THRESH[1])?, read(GC_THRESH[2])?];
        println!(
            "{n} per host: the bench needs about {need} ARP entries; raising net.ipv4.neigh.default.gc_thresh2/3 from {}/{limit} to {need}/{} for this size",
            before[0],
            2 * need
        );
        let room = Self(Some(before));
        std::fs::write(GC_THRESH[1], need.to_string()).context("raising gc_thresh2")?;
        std::fs::write(GC_THRESH[2], (2 * need).to_string()).context("raising gc_thresh3")?;
        Ok(room)
    }
}

impl Drop for ArpRoom {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            for (path, value) in GC_THRESH[1..].iter().zip(before) {
                if let Err(e) = std::fs::write(path, value) {
                    eprintln!("restoring {path} to {value}: {e}");
                }
            }
        }
    }
}

/// What tells why a container cannot reach its peer: its own view (address,
/// routes, neighbours), its host's bridge entry for its MAC and the binding
/// of its address, and each host's drop counters.
fn diagnosis(fleet: &Fleet, state: &StateDir, container: &Netns, host: &Host) -> String {
    let mut told = String::new();
    for (what, args) in [
        ("addresses", &["-br", "addr"][..]),
        ("routes", &["route"][..]),
        ("neighbours", &["neigh"][..]),
    ] {
        let out = container
            .output("ip", args)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        told += &format!(
            "container {what}:\n{}\n",
            out.unwrap_or_else(|e| e.to_string())
        );
    }
    if let Ok(shown) = show(host, state) {
        told += &format!("its host's show: {}\n", shown["agent"]);
    }
    for h in &fleet.hosts {
        let stats = fan_xdp(h, state, &["stats"]).unwrap_or_else(|e| e.to_string());
        told += &format!("{} stats:\n{stats}\n", h.ns.name());
    }
    told
}

/// The pid `show` reports for the agent (`what` = "agent") or the DHCP server ("dhcp").
fn pid_of(host: &Host, state: &StateDir, what: &str) -> Result<u32> {
    let shown = show(host, state)?;
    shown[what]["pid"]
        .as_u64()
        .map(|p| p as u32)
        .with_context(|| format!("no {what} pid in {shown}"))
}

/// Waits (60 s at most) until `done` holds for what every host's `show` says.
fn settle(
    fleet: &Fleet,
    state: &StateDir,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown: Vec<_> = fleet
            .hosts
            .iter()
            .map(|h| show(h, state))
            .collect::<Result<_>>()?;
        if shown.iter().all(&done) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the hosts did not settle within 60 s: {shown:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The CPU time of `pid`'s threads, in seconds: the scheduler's own
/// count (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds), not utime +
/// stime, whose 10 ms ticks made the 25-container figures a few ticks each.
/// A thread that exited between two readings takes its time with it: the
/// agent's threads live as long as it does (its short-lived ones read
/// control requests, which this bench hardly sends).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("process {pid} is gone"))?;
    let mut nanos = 0u64;
    for task in tasks {
        let path = task?.path().join("schedstat");
        // A thread that exits while listed is skipped.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ran: u64 = stat
            .split_whitespace()
            .next()
            .context("a schedstat line")?
            .parse()
            .with_context(|| format!("{}: {stat:?}", path.display()))?;
        nanos += ran;
    }
    Ok(nanos as f64 / 1e9)
}
