//! `cargo xtask demo`: a small Fan fleet in network namespaces. Three hosts
//! on one underlay segment, two containers each. `fan-xdp attach` runs on
//! every host (adopting the slice bridges) and `fan-xdp run` beside it;
//! every container pings every other; then plain routing between the slices
//! and fan-xdp are measured against each other the way the bench does, in
//! short. Everything is torn down at the end, also on failure.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use fan_tests::{
    measure::{self, PINNED_CPU, RUN_READY_LIMIT, Spread},
    netns::Netns,
    paths::{Path, bench_fleet},
    topology::{Fleet, OVERLAY, UNDERLAY},
    traffic::{iperf3_tcp, ping},
};

const HOSTS: u8 = 3;
const CONTAINERS: u8 = 2;
/// Interleaved runs per path, and their length: long enough for a median
/// of three, short enough for a demo.
const RUNS: usize = 3;
const SECONDS: u32 = 3;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces and loads BPF programs: run it as root");
    }
    let overlay = format!("{}/{}", OVERLAY.0, OVERLAY.1);
    println!(
        "Building {HOSTS} hosts with {CONTAINERS} containers each: underlay {}/{}, overlay {overlay}",
        UNDERLAY.0, UNDERLAY.1
    );
    // The bench's fleet: container links at the same MTU on every path, so
    // that the figures at the end compare with the bench's.
    let fleet = bench_fleet(HOSTS, CONTAINERS)?;

    println!("\n1. fan-xdp attach eth0 --overlay {overlay} on every host:");
    for host in &fleet.hosts {
        print!(
            "   {}",
            host.fan_xdp_ok(&["attach", "eth0", "--overlay", &overlay])?
        );
    }
    // Each attach started the host's agent, which takes over the ports.
    wait_until_daemons_ready(&fleet)?;
    println!("\n   fan-xdp show (on h1):");
    for line in fleet.hosts[0].fan_xdp_ok(&["show"])?.lines() {
        println!("   {line}");
    }

    println!("\n2. Every container pings every other:");
    let mut failures = 0;
    let all: Vec<_> = fleet
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter())
        .collect();
    for from in &all {
        let mut row = format!("   {:<12}", from.addr.to_string());
        for to in all.iter().filter(|t| t.addr != from.addr) {
            let ok = ping(&from.ns, to.addr, 1)?;
            failures += usize::from(!ok);
            row += &format!(
                " {}{}",
                to.addr.octets()[2..]
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join("."),
                if ok { "✓" } else { "✗" }
            );
        }
        println!("{row}");
    }

    println!("\n3. fan-xdp stats (on h1, non-zero):");
    for line in fleet.hosts[0].fan_xdp_ok(&["stats"])?.lines().skip(1) {
        if line.split_whitespace().nth(1).is_some_and(|p| p != "0") {
            println!("   {line}");
        }
    }

    // The bridges were made by hand and adopted: detach keeps them, with
    // the containers on them, for the comparison that follows.
    println!("\n4. fan-xdp detach eth0 on every host.");
    for host in &fleet.hosts {
        host.fan_xdp_ok(&["detach", "eth0"])?;
    }
    if failures > 0 {
        bail!("{failures} pings failed");
    }

    compare_throughput(&fleet)?;
    drop(fleet);
    println!(
        "\nDemo finished: every container reached every other over the fan; the namespaces are gone."
    );
    Ok(())
}

/// Waits until every host's `fan-xdp run` has taken over its container
/// ports, so that what `show` prints next is the running fan.
fn wait_until_daemons_ready(fleet: &Fleet) -> Result<()> {
    let mut slowest = std::time::Duration::ZERO;
    for host in &fleet.hosts {
        slowest = slowest.max(host.wait_for_run_ready(RUN_READY_LIMIT)?);
    }
    println!(
        "   fan-xdp run on every host: all container ports taken over (after {:.1} s)",
        slowest.as_secs_f64()
    );
    Ok(())
}

/// Plain routes between the slices against fan-xdp, measured as the bench
/// measures in short: iperf3 pinned, paths interleaved run by run, each
/// path's median and range, and the ratio of the medians with the range of
/// the fan's runs; said to be noise when the ranges overlap.
fn compare_throughput(fleet: &Fleet) -> Result<()> {
    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    println!(
        "\n5. Throughput {} -> {}, plain routes between the slices against fan-xdp (TC decap + direct delivery),\n   \
         the bench's method in short: iperf3 TCP, 1 stream, client and server pinned to CPU {PINNED_CPU},\n   \
         {RUNS} runs of {SECONDS} s per path, the paths interleaved run by run:",
        client.addr, server.addr
    );
    let paths = [Path::Routing, Path::FanTc];
    let mut runs: [Vec<f64>; 2] = Default::default();
    for run in 1..=RUNS {
        for (path, gbps) in paths.iter().zip(&mut runs) {
            let measured = throughput(fleet, *path, &client.ns, &server.ns, server.addr)?;
            println!("   run {run}/{RUNS}, {path}: {measured:.2} Gbit/s");
            gbps.push(measured);
        }
    }
    let [routing, fan] = runs.map(Spread::of);
    for (path, spread) in paths.iter().zip([routing, fan]) {
        println!(
            "   {:<36} median {:.2} Gbit/s (runs {:.2}-{:.2})",
            path.to_string(),
            spread.median,
            spread.min,
            spread.max
        );
    }
    let ratio = fan.relative_to(&routing);
    println!(
        "   fan-xdp / plain routing: {:.2}x, ratio of the medians (the fan's runs {:.2}x-{:.2}x of routing's median)",
        ratio.median, ratio.min, ratio.max
    );
    if fan.overlaps(&routing) {
        println!("   The two paths' runs overlap: these {RUNS} short runs cannot tell them apart.");
    }
    println!(
        "   A measurement to rely on (5 runs of 10 s, more paths, UDP, request/response): cargo xtask bench"
    );
    Ok(())
}

/// One pinned single-stream iperf3 run over `path`, set up and torn down around it.
fn throughput(
    fleet: &Fleet,
    path: Path,
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
) -> Result<f64> {
    measure::on_path(fleet, path, client, addr, || {
        iperf3_tcp(server, client, addr, SECONDS, 1, Some(PINNED_CPU)).map(|(gbps, _)| gbps)
    })
}
