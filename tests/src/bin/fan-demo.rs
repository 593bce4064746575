//! `cargo xtask demo`: a small Fan fleet in network namespaces. Three hosts
//! on one underlay segment, two containers each, fan-xdp attached on every
//! host; every container pings every container on the other hosts, then one
//! bulk TCP transfer runs over the fan and, for comparison, over plain routes
//! between the slices. Everything is torn down at the end, also on failure.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use fan_common::StatReason;
use fan_tests::{
    topology::{Fleet, OVERLAY, UNDERLAY},
    traffic::{ping, tcp_transfer},
};
use fan_userspace::loader::{Dataplane, DecapMode};

const HOSTS: u8 = 3;
const CONTAINERS: u8 = 2;
const BULK: u64 = 1 << 30;

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces and loads BPF programs: run it as root");
    }
    println!("Building {HOSTS} hosts with {CONTAINERS} containers each, underlay {}/{}, overlay {}/{} ...",
        UNDERLAY.0, UNDERLAY.1, OVERLAY.0, OVERLAY.1);
    let fleet = Fleet::plumbed_by_hand(HOSTS, CONTAINERS)?;
    let planes: Vec<Dataplane> = fleet
        .hosts
        .iter()
        .map(|h| h.attach(DecapMode::Tc))
        .collect::<Result<_>>()
        .context("attaching fan-xdp")?;

    println!();
    println!("{:<8} {:<14} {:<16} {:<14} {:<12} {}", "host", "underlay", "slice", "bridge", "decap", "containers");
    for (i, host) in fleet.hosts.iter().enumerate() {
        let containers: Vec<String> = host.containers.iter().map(|c| c.addr.to_string()).collect();
        println!(
            "{:<8} {:<14} {:<16} {:<14} {:<12} {}",
            format!("h{}", i + 1),
            host.underlay_addr,
            format!("{}/24", host.slice),
            host.bridge,
            "tc",
            containers.join(", ")
        );
    }

    println!();
    println!("Ping between every pair of containers on different hosts:");
    let mut failures = 0;
    for (i, from_host) in fleet.hosts.iter().enumerate() {
        for from in &from_host.containers {
            let mut row = format!("  {:<12}", from.addr.to_string());
            for (j, to_host) in fleet.hosts.iter().enumerate() {
                if i == j {
                    continue;
                }
                for to in &to_host.containers {
                    let ok = ping(&from.ns, to.addr, 1)?;
                    failures += usize::from(!ok);
                    row += &format!("  {} {}", to.addr, if ok { "ok" } else { "FAILED" });
                }
            }
            println!("{row}");
        }
    }

    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);
    println!();
    println!("TCP, {} MiB from {} (h1) to {} (h2), every byte verified:", BULK >> 20, client.addr, server.addr);
    let fan = rate(|| tcp_transfer(&server.ns, &client.ns, server.addr, BULK))?;
    println!("  over the fan (IP-in-IP by fan-xdp):  {fan:6.2} Gbit/s");

    println!();
    println!("fan-xdp counters on h1:");
    for &reason in StatReason::ALL {
        let c = planes[0].stats()?.get(reason);
        if c.packets > 0 {
            println!("  {:<26} {:>10} packets {:>14} bytes", reason.name(), c.packets, c.bytes);
        }
    }

    // The same namespaces with fan-xdp detached and one plain route per remote
    // slice (host-gw style): the physical limit of this machine.
    drop(planes);
    for (i, host) in fleet.hosts.iter().enumerate() {
        for (j, other) in fleet.hosts.iter().enumerate() {
            if i != j {
                host.ns.ip(&["route", "add", &format!("{}/24", other.slice), "via", &other.underlay_addr.to_string()])?;
            }
        }
    }
    let routed = rate(|| tcp_transfer(&server.ns, &client.ns, server.addr, BULK))?;
    println!();
    println!("  plain routing, no encapsulation:     {routed:6.2} Gbit/s");
    println!("  fan / routing:                       {:6.2}x", fan / routed);
    println!();
    println!("Tearing down the namespaces.");
    drop(fleet);
    if failures > 0 {
        bail!("{failures} pings failed");
    }
    println!("Demo finished: every container reached every other over the fan.");
    Ok(())
}

fn rate(transfer: impl FnOnce() -> Result<u64>) -> Result<f64> {
    let started = Instant::now();
    let bytes = transfer()?;
    Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}
