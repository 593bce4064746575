//! `cargo xtask bench`: fan-xdp against plain routing and the kernel's
//! tunnels, side by side on the same namespaces, runs interleaved path by
//! path, reported as medians with spread and as ratios to plain routing.
//! Also the per-packet cost of each program, and how it scales with the
//! number of overlays and of hosts. `--quick` is a short smoke run.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{TestRun, TestRunOptions};
use fan_common::{FanEntry, FanMap, StatReason};
use fan_tests::{
    chart::{Chart, Panel, Row, RowKind},
    hex,
    measure::{self, PINNED_CPU as CPU, Spread, median},
    netns::Netns,
    paths::{Active, Path, bench_fleet, kernel_has_ipip},
    topology::{self, Fleet},
    traffic::{iperf3, iperf3_tcp, tcp_rr, udp_pps},
};
use fan_userspace::dataplane::{DECAP_TC, Dataplane, ENCAP_FORWARD};

/// A container (02:..:aa) to its gateway: 250.0.1.10 -> 250.0.2.20, ICMP echo.
const ENCAP_IN: &str = "020000000001 0200000000aa 0800 45000020 12344000 4001318a fa00010a fa000214 0800e139 42420001 66616e21";
/// From 198.18.0.2 to us: outer proto 4 | inner 250.0.2.20 -> 250.0.1.10.
const DECAP_IN: &str = "020000000011 020000000022 0800 45000034 00004000 4004ae9e c6120002 c6120001 45000020 12344000 4001318a fa000214 fa00010a 0800e139 42420001 66616e21";
/// Plain ICMP between underlay hosts: the pass-through case.
const UNDERLAY_PING: &str = "020000000011 020000000022 0800 45000020 12344000 40019c81 c6120002 c6120001 0800e139 42420001 66616e21";

struct Config {
    runs: usize,
    seconds: u32,
    test_runs: u32,
    big_fleet: u8,
}

/// Every path's samples, by the path's name.
type Samples = BTreeMap<String, (Path, Vec<Sample>)>;

#[derive(Default, Clone)]
struct Sample {
    /// One stream with client, server and all their softirq work on [`CPU`].
    tcp1: f64,
    /// One stream, the scheduler free to use both CPUs, and its retransmits.
    tcp1_free: f64,
    retransmits_free: f64,
    tcp4: f64,
    udp_kpps: f64,
    rr_tps: f64,
    rr_p50: f64,
    rr_p99: f64,
    /// ns per invocation of (encapsulation, decapsulation) during the 1-stream run.
    bpf_ns: Option<(f64, f64)>,
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench builds network namespaces and loads BPF programs: run it as root");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = if quick {
        Config {
            runs: 1,
            seconds: 2,
            test_runs: 2_000,
            big_fleet: 8,
        }
    } else {
        Config {
            runs: 5,
            seconds: 10,
            test_runs: 20_000,
            big_fleet: 32,
        }
    };
    let mut report = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    writeln!(
        report,
        "# fan-xdp bench\n\nKernel {kernel}, {cpus} CPUs, {} run(s) of {} s per path{}.\n",
        cfg.runs,
        cfg.seconds,
        if quick {
            " (--quick: a smoke run, not a measurement)"
        } else {
            ""
        }
    )?;

    let (samples, loopback_rr) = paths(&cfg)?;
    let table = path_table(&samples, loopback_rr);
    println!("{table}");
    report += &table;

    let costs = per_packet(&cfg)?;
    println!("{costs}");
    report += &costs;

    let scaling = fleet_scaling(&cfg)?;
    println!("{scaling}");
    report += &scaling;

    let verdicts = targets(&samples);
    println!("{verdicts}");
    report += &verdicts;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.md"), &report)?;
    fan_tests::chart::register_font()?;
    chart(&samples, cfg.runs, quick).write_png(&dir.join("throughput.png"))?;
    println!(
        "Written: {0}/report.md and {0}/throughput.png",
        dir.canonicalize()?.display()
    );
    Ok(())
}

/// kernel.bpf_stats_enabled on while it lives, restored afterwards. It is a
/// machine-wide switch (not network state): it makes the kernel count each
/// program's run time and runs, at the price of two clock reads per run
/// (2% of a request/response transaction here), so it is on only for the
/// run whose program time is reported.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<Self> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path).unwrap_or_else(|_| "0".into());
        std::fs::write(path, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Total (run time ns, runs) of every loaded program whose name starts with
/// `prefix` (the kernel keeps 15 bytes of a name: `fan_encap_forwa`).
fn program_time(prefix: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with(prefix)))
        .fold((0, 0), |(t, c), p| {
            (t + p.run_time().as_nanos() as u64, c + p.run_count())
        })
}

/// The samples of every path, and the request/response rate of the client
/// container over its own loopback (median of one per run): the floor of
/// what the system calls, scheduling and TCP cost without any path.
fn paths(cfg: &Config) -> Result<(Samples, f64)> {
    let fleet = bench_fleet(2, 1)?;
    let mut paths = vec![
        Path::Routing,
        Path::RoutingSteered,
        Path::Vxlan,
        Path::FanXdp,
        Path::FanTc,
        Path::FanTcSteered,
        Path::FanTcStack,
        Path::FanAttachOnly,
    ];
    let ipip = kernel_has_ipip(&fleet.hosts[0].ns);
    if ipip {
        paths.insert(3, Path::KernelIpip);
    }
    let mut samples: Samples = BTreeMap::new();
    if !ipip {
        samples.insert(Path::KernelIpip.to_string(), (Path::KernelIpip, Vec::new()));
    }
    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    let mut loopback = Vec::new();
    for run in 0..cfg.runs {
        let localhost = Ipv4Addr::LOCALHOST;
        loopback.push(
            tcp_rr(
                &client.ns,
                &client.ns,
                localhost,
                cfg.seconds.min(5),
                Some(CPU),
            )?
            .0,
        );
        for &path in &paths {
            eprintln!("run {}/{}: {path}", run + 1, cfg.runs);
            let sample = measure::on_path(&fleet, path, &client.ns, server.addr, || {
                measure(cfg, &fleet, path, &client.ns, &server.ns, server.addr)
            })?;
            samples
                .entry(path.to_string())
                .or_insert((path, Vec::new()))
                .1
                .push(sample);
        }
    }
    Ok((samples, median(&mut loopback)))
}

fn measure(
    cfg: &Config,
    fleet: &Fleet,
    path: Path,
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
) -> Result<Sample> {
    let fan = path.is_fan();
    let decap_prefix = if path == Path::FanXdp {
        "fan_decap_xdp"
    } else {
        "fan_decap_tc"
    };
    let stats = fan.then(BpfStats::enable).transpose()?;
    let before = (program_time("fan_encap_forw"), program_time(decap_prefix));
    let decapsulated_before = if fan {
        counter(&fleet.hosts[1], StatReason::Decapsulated)?
    } else {
        0
    };
    let (tcp1, _) = iperf3_tcp(server, client, addr, cfg.seconds, 1, Some(CPU))?;
    let after = (program_time("fan_encap_forw"), program_time(decap_prefix));
    drop(stats);
    let bpf_ns = fan.then(|| {
        let per = |b: (u64, u64), a: (u64, u64)| (a.0 - b.0) as f64 / (a.1 - b.1).max(1) as f64;
        (per(before.0, after.0), per(before.1, after.1))
    });
    if path == Path::FanXdp {
        // The XDP figures must be XDP's: attached in driver mode, and counting.
        let link = fleet.hosts[1]
            .ns
            .ip(&["-d", "link", "show", "dev", "eth0"])?;
        ensure!(
            link.contains("prog/xdp") && !link.contains("xdpgeneric"),
            "XDP not in driver mode: {link}"
        );
        ensure!(
            counter(&fleet.hosts[1], StatReason::Decapsulated)? > decapsulated_before,
            "XDP counters did not move"
        );
    }
    let (tcp1_free, retransmits_free) = iperf3_tcp(server, client, addr, cfg.seconds, 1, None)?;
    let (tcp4, _) = iperf3_tcp(server, client, addr, cfg.seconds, 4, Some(CPU))?;
    let udp_kpps = udp_pps(server, client, addr, cfg.seconds.min(5), 64)? / 1e3;
    let (rr_tps, rr_p50, rr_p99) = tcp_rr(server, client, addr, cfg.seconds.min(5), Some(CPU))?;
    Ok(Sample {
        tcp1,
        tcp1_free,
        retransmits_free: retransmits_free as f64,
        tcp4,
        udp_kpps,
        rr_tps,
        rr_p50,
        rr_p99,
        bpf_ns,
    })
}

fn counter(host: &topology::Host, reason: StatReason) -> Result<u64> {
    Ok(host.pinned_maps()?.stats()?.get(reason).packets)
}

/// "median (min-max)" of one field.
fn stat(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let spread = Spread::of(samples.iter().map(field));
    (spread.median, spread.min, spread.max)
}

fn routing(samples: &Samples) -> &[Sample] {
    &samples[&Path::Routing.to_string()].1
}

/// A column of the path table: its heading and the figure it shows.
type Column = (&'static str, fn(&Sample) -> f64);

fn path_table(samples: &Samples, loopback_rr: f64) -> String {
    let base = routing(samples);
    let fields: [Column; 5] = [
        ("TCP 1 stream, Gbit/s", |s| s.tcp1),
        ("TCP 4 streams, Gbit/s", |s| s.tcp4),
        ("TCP 1 stream, unpinned, Gbit/s", |s| s.tcp1_free),
        ("UDP 64 B, kpps received", |s| s.udp_kpps),
        ("TCP request/response, per s", |s| s.rr_tps),
    ];
    let mut out = String::from("## Paths (median, min-max; ratio to plain routing)\n\n| path |");
    for (name, _) in &fields {
        out += &format!(" {name} |");
    }
    out += " RR p50 / p99 µs | TCP retransmits (unpinned) | BPF ns per invocation (encap / decap) |\n|---|---|---|---|---|---|---|---|---|\n";
    for (name, s) in order(samples) {
        out += &format!("| {name} |");
        if s.is_empty() {
            out += " n/a (no ipip module) | | | | | | | |\n";
            continue;
        }
        for (_, f) in &fields {
            let (m, lo, hi) = stat(s, f);
            let (b, _, _) = stat(base, f);
            out += &format!(" {m:.2} ({lo:.2}-{hi:.2}) **{:.2}x** |", m / b);
        }
        let (p50, _, _) = stat(s, |x| x.rr_p50);
        let (p99, _, _) = stat(s, |x| x.rr_p99);
        out += &format!(" {p50:.0} / {p99:.0} |");
        out += &format!(" {:.0} |", stat(s, |x| x.retransmits_free).0);
        match s.iter().filter_map(|x| x.bpf_ns).map(|x| x.0).next() {
            Some(_) => {
                let (e, _, _) = stat(s, |x| x.bpf_ns.map_or(f64::NAN, |b| b.0));
                let (d, _, _) = stat(s, |x| x.bpf_ns.map_or(f64::NAN, |b| b.1));
                out += &format!(" {e:.0} / {d:.0} |\n");
            }
            None => out += " - |\n",
        }
    }
    out += &format!(
        "\nTCP and request/response run with client, server and so all the softirq work of the path on CPU {CPU}: \
         the figures measure what the path costs, not where the scheduler put the two ends. \
         The unpinned run shows the same path with both CPUs in use; a veth transmits on the CPU that sends, \
         so when the sender's process and its ACK-clocked softirq are on different CPUs one flow is reordered \
         (the retransmits, on every path). UDP runs unpinned: the sender's CPU carries the path.\n\
         BPF ns per invocation come from kernel.bpf_stats_enabled during the pinned 1-stream run; one invocation may carry a 64 KB GSO packet.\n"
    );
    // A transaction's time minus the same exchange over loopback: what the
    // path between the containers adds.
    let above = |s: &[Sample]| 1e6 / stat(s, |x| x.rr_tps).0 - 1e6 / loopback_rr;
    let fan = &samples[&Path::FanTc.to_string()].1;
    let (r, f) = (above(routing(samples)), above(fan));
    out += &format!(
        "\nRequest/response over the client container's loopback: {loopback_rr:.0} per s ({:.1} µs). \
         Above that, a transaction spends {r:.1} µs on the path with plain routing and {f:.1} µs with fan-xdp \
         (TC + direct delivery): {:.2}x less.\n",
        1e6 / loopback_rr,
        r / f
    );
    out
}

fn order(samples: &Samples) -> Vec<(String, &Vec<Sample>)> {
    let mut v: Vec<_> = samples
        .iter()
        .map(|(k, (p, s))| (*p as u8, k.clone(), s))
        .collect();
    v.sort_by_key(|(p, _, _)| *p);
    v.into_iter().map(|(_, k, s)| (k, s)).collect()
}

/// A namespace with an `eth0` veth and a loaded data plane configured as
/// host 198.18.0.1 with `extra` more overlays in the LPM trie.
fn cost_bed(extra: u32) -> Result<(Netns, Dataplane)> {
    let (ns, mut dp, ifindex) = topology::single_host_dataplane("cost")?;
    // The peer's neighbour entry resolved, as on a host that is talking to it:
    // encapsulation takes its everyday path (route lookup, MACs, redirect).
    ns.ip(&[
        "neigh",
        "add",
        "198.18.0.2",
        "lladdr",
        "02:00:00:00:00:22",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    for k in 0..extra {
        // 251.k.0.0/16 and up over 198.19.0.0/24: disjoint from 250/8 and each other.
        let overlay = u32::from_be_bytes([251 + (k / 256) as u8, (k % 256) as u8, 0, 0]);
        let map = FanMap::new(overlay, 16, u32::from_be_bytes([198, 19, 0, 0]), 24);
        dp.insert_fan(&FanEntry {
            map,
            local_host: u32::from_be_bytes([198, 19, 0, 1]),
            underlay_ifindex: ifindex,
            overlay_mtu: 1480,
        })?;
    }
    Ok((ns, dp))
}

/// Mean ns per run of a program over `n` single runs, each on a fresh copy of
/// `frame` (BPF_PROG_TEST_RUN copies data_in every call; repeat > 1 would
/// run later repetitions on the previous one's output). Returns the count of
/// `expect` as proof every run took the intended path.
fn cost(
    ns: &Netns,
    dp: &mut Dataplane,
    program: &str,
    frame: &[u8],
    n: u32,
    expect: Option<StatReason>,
) -> Result<f64> {
    let before = dp.stats()?;
    let mut total = Duration::ZERO;
    let mut out = vec![0u8; frame.len() + 64];
    ns.enter(|| -> Result<()> {
        for _ in 0..n {
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            };
            let result = match program {
                "xdp" => dp.xdp()?.test_run(opts)?,
                "xdp-pass" => dp.baseline_xdp()?.test_run(opts)?,
                name => dp.classifier(name)?.test_run(opts)?,
            };
            total += result.duration;
        }
        Ok(())
    })??;
    if let Some(reason) = expect {
        let counted = dp.stats()?.since(&before).get(reason).packets;
        ensure!(
            counted == n as u64,
            "{program}: {counted} of {n} runs counted {}",
            reason.name()
        );
    }
    Ok(total.as_nanos() as f64 / n as f64)
}

fn per_packet(cfg: &Config) -> Result<String> {
    let mut out = String::from(
        "\n## Per-packet cost (BPF_PROG_TEST_RUN, mean ns per run, each run on the original frame)\n\n| case | 1 overlay | 16 overlays | 256 overlays |\n|---|---|---|---|\n",
    );
    let cases: [(&str, &str, &str, Option<StatReason>); 6] = [
        (
            "encapsulation (TC)",
            ENCAP_FORWARD,
            ENCAP_IN,
            Some(StatReason::Encapsulated),
        ),
        (
            "decapsulation (TC)",
            DECAP_TC,
            DECAP_IN,
            Some(StatReason::Decapsulated),
        ),
        (
            "decapsulation (XDP)",
            "xdp",
            DECAP_IN,
            Some(StatReason::Decapsulated),
        ),
        (
            "pass-through, non-fan (TC)",
            DECAP_TC,
            UNDERLAY_PING,
            Some(StatReason::PassNotIpip),
        ),
        (
            "pass-through, non-fan (XDP)",
            "xdp",
            UNDERLAY_PING,
            Some(StatReason::PassNotIpip),
        ),
        ("baseline: XDP_PASS only", "xdp-pass", DECAP_IN, None),
    ];
    let mut rows: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for extra in [0, 15, 255] {
        let (ns, mut dp) = cost_bed(extra)?;
        for (i, (_, program, frame, expect)) in cases.iter().enumerate() {
            rows[i].push(cost(
                &ns,
                &mut dp,
                program,
                &hex(frame),
                cfg.test_runs,
                *expect,
            )?);
        }
    }
    for ((name, ..), row) in cases.iter().zip(&rows) {
        out += &format!(
            "| {name} | {:.0} | {:.0} | {:.0} |\n",
            row[0], row[1], row[2]
        );
    }
    let ratio = rows[2][0] / rows[5][0];
    out += &format!(
        "\nXDP decapsulation costs {ratio:.2}x the XDP_PASS-only program on the same frame.\n"
    );
    Ok(out)
}

/// Aggregate fan throughput with every host sending to the next at once.
fn fleet_scaling(cfg: &Config) -> Result<String> {
    let mut out = String::from(
        "\n## Fleet size (fan-xdp TC + direct delivery, every host sends to the next at once)\n\n| hosts | aggregate Gbit/s | per pair |\n|---|---|---|\n",
    );
    for hosts in [2u8, cfg.big_fleet] {
        eprintln!("fleet of {hosts}");
        let fleet = bench_fleet(hosts, 1)?;
        let active = Active::setup(&fleet, Path::FanTc)?;
        let n = fleet.hosts.len();
        for i in 0..n {
            let (from, to) = (
                &fleet.hosts[i].containers[0],
                &fleet.hosts[(i + 1) % n].containers[0],
            );
            fan_tests::traffic::ping(&from.ns, to.addr, 1)?;
        }
        std::thread::sleep(Duration::from_millis(1500));
        let total: f64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let (from, to) = (
                        &fleet.hosts[i].containers[0],
                        &fleet.hosts[(i + 1) % n].containers[0],
                    );
                    scope.spawn(move || iperf3(&to.ns, &from.ns, to.addr, cfg.seconds.min(5), 1))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("iperf3 thread"))
                .collect::<Result<Vec<f64>>>()
        })?
        .iter()
        .sum();
        out += &format!("| {hosts} | {total:.2} | {:.2} |\n", total / n as f64);
        active.teardown(&fleet)?;
    }
    out += "\nOn a 2-CPU machine the aggregate is bounded by the CPUs, not the fleet: flat means the per-packet work does not grow with the number of hosts.\n";
    Ok(out)
}

/// fan-xdp's targets as ratios to plain routing (docs/performance.md's).
const TCP_TARGET: f64 = 1.05;
const RR_TARGET: f64 = 1.2;

fn targets(samples: &Samples) -> String {
    let mut out = String::new();
    for (path, heading) in [
        (Path::FanTc, "fan-xdp TC + direct delivery"),
        (Path::FanAttachOnly, "fan-xdp, attach only"),
    ] {
        out += &targets_of(samples, path, heading);
    }
    // The user's one command must give what the daemon row gives.
    let ratio = |path: Path| stat(&samples[&path.to_string()].1, |s| s.tcp1).0;
    let attach_only = ratio(Path::FanAttachOnly) / ratio(Path::FanTc);
    out += &format!(
        "- attach only vs TC + direct delivery, TCP 1 stream: {attach_only:.3}x, {}\n",
        if (attach_only - 1.0).abs() <= 0.03 {
            "within 3%"
        } else {
            "NOT within 3%"
        }
    );
    out
}

fn targets_of(samples: &Samples, path: Path, heading: &str) -> String {
    let base = routing(samples);
    let fan = &samples[&path.to_string()].1;
    let vxlan = &samples[&Path::Vxlan.to_string()].1;
    let r = |s: &[Sample], f: fn(&Sample) -> f64| stat(s, f).0 / stat(base, f).0;
    let checks = [
        (
            "TCP 1 stream >= 1.05x routing",
            r(fan, |s| s.tcp1),
            TCP_TARGET,
        ),
        (
            "TCP 4 streams >= 1.05x routing",
            r(fan, |s| s.tcp4),
            TCP_TARGET,
        ),
        (
            "request/response >= 1.2x routing",
            r(fan, |s| s.rr_tps),
            RR_TARGET,
        ),
        (
            "TCP 1 stream >= 1.25x kernel VXLAN",
            stat(fan, |s| s.tcp1).0 / stat(vxlan, |s| s.tcp1).0,
            1.25,
        ),
    ];
    let mut out = format!("\n## Targets ({heading})\n\n");
    for (name, value, goal) in checks {
        out += &format!(
            "- {name}: {value:.2}x, {}\n",
            if value >= goal { "met" } else { "NOT met" }
        );
    }
    out
}

/// The path table's columns that the chart draws, with fan-xdp's target
/// for each as a ratio to plain routing.
const CHARTED: [(Column, Option<f64>); 4] = [
    (("TCP, 1 stream", |s| s.tcp1), Some(TCP_TARGET)),
    (("TCP, 4 streams", |s| s.tcp4), Some(TCP_TARGET)),
    (("UDP 64 B, packets/s", |s| s.udp_kpps), None),
    (
        ("TCP request/response, per s", |s| s.rr_tps),
        Some(RR_TARGET),
    ),
];

/// Every measured path (a path this kernel cannot run has no row) in
/// every charted column, as ratios to plain routing's median.
fn chart(samples: &Samples, runs: usize, quick: bool) -> Chart {
    let mut measured: Vec<(Path, &[Sample])> = samples
        .values()
        .filter(|(_, s)| !s.is_empty())
        .map(|(path, s)| (*path, s.as_slice()))
        .collect();
    measured.sort_by_key(|(path, _)| *path as u8);
    let base = routing(samples);
    let rows = measured
        .iter()
        .map(|(path, _)| Row {
            label: path.to_string(),
            kind: match path {
                Path::Routing => RowKind::Reference,
                p if p.is_fan() => RowKind::FanXdp,
                _ => RowKind::Other,
            },
        })
        .collect();
    let panels = CHARTED
        .iter()
        .map(|&((title, field), target)| {
            let reference = Spread::of(base.iter().map(field));
            Panel {
                title: title.to_string(),
                target,
                ratios: measured
                    .iter()
                    .map(|(_, s)| Spread::of(s.iter().map(field)).relative_to(&reference))
                    .collect(),
            }
        })
        .collect();
    Chart {
        heading: format!(
            "fan-xdp bench: every path as a ratio to plain routing, median of {runs} run(s) per path{}",
            if quick {
                " (--quick: a smoke run, not a measurement)"
            } else {
                ""
            }
        ),
        footnote: "Bar: the median (blue: fan-xdp; orange: the kernel's other ways). \
                   Whisker: the runs' min-max, over plain routing's median. \
                   Grey line: plain routing (1.00x). Dashed red: fan-xdp's target."
            .to_string(),
        rows,
        panels,
    }
}
