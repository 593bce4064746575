//! `cargo xtask bench`: fan-xdp against plain routing and the kernel's
//! tunnels, side by side on the same namespaces, runs interleaved path by
//! path, reported as medians with spread and as ratios to plain routing.
//! Also the per-packet cost of each program, and how it scales with the
//! number of overlays and of hosts. `--quick` is a short smoke run;
//! `--paths fan-tc,fan-attach-only --runs 9` compares a few paths only,
//! `--tcp1-only` measures only their pinned 1-stream TCP, and `--rr-only`
//! only their pinned request/response (with the programs' time per run
//! taken during it: small packets, where a path's own work weighs most).
//!
//! Here the runs over the paths and the fleets; the per-packet cost is in
//! `cost`, the tables, the targets and the chart in `report`.

mod cost;
mod report;

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use fan_common::StatReason;
use fan_tests::{
    measure::{self, PINNED_CPU as CPU, median},
    netns::Netns,
    paths::{Active, Path, bench_fleet, kernel_has_ipip},
    topology::{self, Fleet},
    traffic::{Capture, iperf3, iperf3_tcp, tcp_rr, udp_pps},
};

use cost::per_packet;
use report::{attach_only_verdict, chart, path_table, targets};

struct Config {
    runs: usize,
    seconds: u32,
    test_runs: u32,
    big_fleet: u8,
    /// A smoke run: nothing it prints is a measurement.
    quick: bool,
    /// `--paths`: only these (with plain routing, every ratio's base), and
    /// only the path table and its targets.
    only: Option<Vec<Path>>,
    /// `--tcp1-only` or `--rr-only`: of each run, that figure alone, so
    /// many more runs fit the same time.
    only_figure: Option<Figure>,
}

/// The one figure a run measures when asked for one alone.
#[derive(Clone, Copy, PartialEq)]
enum Figure {
    /// Pinned 1-stream TCP (the attach-only check's).
    Tcp1,
    /// Pinned request/response, the programs timed during it.
    Rr,
}

impl Config {
    /// `--quick`, `--runs N`, `--paths KEY,KEY...` (keys: [`Path::key`]),
    /// `--tcp1-only`, `--rr-only`.
    fn from_args() -> Result<Self> {
        let mut args = std::env::args().skip(1);
        let mut cfg = Config {
            runs: 5,
            seconds: 10,
            test_runs: 20_000,
            big_fleet: 32,
            quick: false,
            only: None,
            only_figure: None,
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    cfg.runs = 1;
                    cfg.seconds = 2;
                    cfg.test_runs = 2_000;
                    cfg.big_fleet = 8;
                    cfg.quick = true;
                }
                "--runs" => {
                    let n = args.next().context("--runs needs a number")?;
                    cfg.runs = n
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .with_context(|| format!("--runs {n}: not a number of runs"))?;
                }
                "--paths" => {
                    let list = args.next().context("--paths needs a list")?;
                    let mut only = vec![Path::Routing];
                    for key in list.split(',') {
                        let Some(path) = Path::ALL.into_iter().find(|p| p.key() == key) else {
                            let keys: Vec<_> = Path::ALL.iter().map(|p| p.key()).collect();
                            bail!("--paths: no path {key:?} (paths: {})", keys.join(", "));
                        };
                        if !only.contains(&path) {
                            only.push(path);
                        }
                    }
                    cfg.only = Some(only);
                }
                "--tcp1-only" => cfg.only_figure = Some(Figure::Tcp1),
                "--rr-only" => cfg.only_figure = Some(Figure::Rr),
                other => bail!(
                    "unknown argument {other:?} (--quick, --runs N, --paths LIST, --tcp1-only, --rr-only)"
                ),
            }
        }
        Ok(cfg)
    }
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
    let cfg = Config::from_args()?;
    let quick = cfg.quick;
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

    if cfg.only.is_none() {
        let costs = per_packet(&cfg)?;
        println!("{costs}");
        report += &costs;

        let scaling = fleet_scaling(&cfg)?;
        println!("{scaling}");
        report += &scaling;
    }

    if samples.contains_key(&Path::FanVxlan.to_string()) {
        let ports = vxlan_source_ports()?;
        println!("{ports}");
        report += &ports;
    }

    let mut verdicts = targets(&samples);
    if cfg.only.is_none() && !quick {
        verdicts += &attach_only_pairs(&cfg)?;
    } else {
        verdicts += &attach_only_verdict(&samples);
    }
    println!("{verdicts}");
    report += &verdicts;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.md"), &report)?;
    if cfg.only_figure.is_some() {
        println!("Written: {}/report.md", dir.canonicalize()?.display());
        return Ok(());
    }
    fan_tests::chart::register_font()?;
    chart(&samples, cfg.runs, quick).write_png(&dir.join("throughput.png"))?;
    println!(
        "Written: {0}/report.md and {0}/throughput.png",
        dir.canonicalize()?.display()
    );
    Ok(())
}

/// How many UDP source ports 4 TCP streams over a VXLAN fan leave from
/// (frames captured on the receiving host's underlay for a second): the
/// per-flow entropy NICs and ECMP spread by, which IP-in-IP lacks.
fn vxlan_source_ports() -> Result<String> {
    let fleet = bench_fleet(2, 1)?;
    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    let ports = measure::on_path(&fleet, Path::FanVxlan, &client.ns, server.addr, || {
        let pcap = std::env::temp_dir().join("fan-bench-vxlan-ports.pcap");
        let port = fan_common::vxlan::VXLAN_DEFAULT_PORT.to_string();
        let filter = format!(
            "udp dst port {port} and src host {}",
            fleet.hosts[0].underlay_addr
        );
        let capture =
            Capture::start_with(&fleet.hosts[1].ns, "eth0", pcap, &["-c", "2000", &filter])?;
        iperf3_tcp(&server.ns, &client.ns, server.addr, 1, 4, None)?;
        let ports: std::collections::BTreeSet<u16> = capture
            .finish()?
            .iter()
            .filter(|f| f.len() >= 42)
            .map(|f| u16::from_be_bytes([f[34], f[35]]))
            .collect();
        Ok(ports)
    })?;
    let verdict = if ports.len() >= 4 {
        "each stream its own"
    } else {
        "NOT one each"
    };
    Ok(format!(
        "\nVXLAN fan, 4 TCP streams for 1 s: {} UDP source port(s) on the wire ({verdict}): {ports:?}\n",
        ports.len()
    ))
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
    let ipip = kernel_has_ipip(&fleet.hosts[0].ns);
    let paths: Vec<Path> = Path::ALL
        .into_iter()
        .filter(|p| cfg.only.as_ref().is_none_or(|only| only.contains(p)))
        .filter(|p| *p != Path::KernelIpip || ipip)
        .collect();
    let mut samples: Samples = BTreeMap::new();
    if !ipip && cfg.only.is_none() {
        samples.insert(Path::KernelIpip.to_string(), (Path::KernelIpip, Vec::new()));
    }
    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    let mut loopback = Vec::new();
    for run in 0..cfg.runs {
        if cfg.only_figure != Some(Figure::Tcp1) {
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
        }
        // Every other run in reverse: a path's neighbours, and a drift of
        // the machine over the run, weigh on every path alike (the attach
        // only row is compared with the daemon row run by run).
        let order: Vec<Path> = match run % 2 {
            0 => paths.clone(),
            _ => paths.iter().rev().copied().collect(),
        };
        for path in order {
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

/// Runs the pinned 1-stream TCP of each of the two rows a user's one
/// command must make equal, one after the other, [`ATTACH_ONLY_PAIRS`]
/// times: the table's 5 runs, each spread by 15% on this machine, cannot
/// tell 3% apart.
fn attach_only_pairs(cfg: &Config) -> Result<String> {
    let pairs = Config {
        runs: ATTACH_ONLY_PAIRS,
        seconds: cfg.seconds,
        test_runs: cfg.test_runs,
        big_fleet: cfg.big_fleet,
        quick: false,
        only: Some(vec![Path::FanTc, Path::FanAttachOnly]),
        only_figure: Some(Figure::Tcp1),
    };
    eprintln!("attach only against the daemon row, {ATTACH_ONLY_PAIRS} pairs");
    let (samples, _) = paths(&pairs)?;
    Ok(attach_only_verdict(&samples))
}

const ATTACH_ONLY_PAIRS: usize = 15;

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
    // With the agent, the container ports' program encapsulates (the
    // bridge's sees none of the flow).
    let encap_prefix = if path.runs_daemon() {
        "fan_encap_port"
    } else {
        "fan_encap_forw"
    };
    let decapsulated_before = if fan {
        counter(&fleet.hosts[1], StatReason::Decapsulated)?
    } else {
        0
    };
    // Request/response alone is measured without the programs' timing,
    // then timed on a short run of its own; otherwise the programs are
    // timed during the 1-stream run. The two clock reads per program run
    // are a tax only the fan paths would pay.
    let nothing = f64::NAN;
    let rr = match cfg.only_figure {
        Some(Figure::Rr) => Some(tcp_rr(server, client, addr, cfg.seconds, Some(CPU))?),
        _ => None,
    };
    let stats = fan.then(BpfStats::enable).transpose()?;
    let before = (program_time(encap_prefix), program_time(decap_prefix));
    let tcp1 = match rr {
        Some(_) => {
            tcp_rr(server, client, addr, cfg.seconds.min(3), Some(CPU))?;
            nothing
        }
        None => iperf3_tcp(server, client, addr, cfg.seconds, 1, Some(CPU))?.0,
    };
    let after = (program_time(encap_prefix), program_time(decap_prefix));
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
    if cfg.only_figure.is_some() {
        let (rr_tps, rr_p50, rr_p99) = rr.unwrap_or((nothing, nothing, nothing));
        return Ok(Sample {
            tcp1,
            tcp1_free: nothing,
            retransmits_free: nothing,
            tcp4: nothing,
            udp_kpps: nothing,
            rr_tps,
            rr_p50,
            rr_p99,
            bpf_ns,
        });
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
