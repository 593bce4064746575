//! `cargo xtask demo`: a small Fan fleet in network namespaces. Three hosts
//! on one underlay segment, two containers each. First the slices are joined
//! by plain routes (the physical limit of this machine); then `fan-xdp attach`
//! runs on every host (adopting the slice bridges), every container pings
//! every other, and the same iperf3 run goes over the fan. Everything is torn
//! down at the end, also on failure.

use anyhow::{Result, bail};
use fan_tests::{
    topology::{Fleet, OVERLAY, UNDERLAY, add_bridge},
    traffic::{iperf3, ping},
};

const HOSTS: u8 = 3;
const CONTAINERS: u8 = 2;
const SECONDS: u32 = 4;

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
    let fleet = Fleet::new(HOSTS)?;
    for host in &fleet.hosts {
        add_bridge(host)?;
    }
    let fleet = fleet.with_containers(CONTAINERS)?;
    let (client, server) = (&fleet.hosts[0].containers[0], &fleet.hosts[1].containers[0]);

    println!(
        "\n1. Plain routes between the slices (no encapsulation): iperf3 {} -> {}, {SECONDS} s",
        client.addr, server.addr
    );
    fleet.route_slices()?;
    let routed = iperf3(&server.ns, &client.ns, server.addr, SECONDS, 1)?;
    println!("   {routed:.2} Gbit/s");
    fleet.unroute_slices()?;

    println!("\n2. fan-xdp attach eth0 --overlay {overlay} on every host:");
    for host in &fleet.hosts {
        print!(
            "   {}",
            host.fan_xdp_ok(&["attach", "eth0", "--overlay", &overlay])?
        );
    }
    let daemons = fleet
        .hosts
        .iter()
        .map(|h| h.fan_xdp_run())
        .collect::<Result<Vec<_>>>()?;
    println!("\n   fan-xdp show (on h1):");
    for line in fleet.hosts[0].fan_xdp_ok(&["show"])?.lines() {
        println!("   {line}");
    }

    println!("\n3. Every container pings every other:");
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

    println!("\n4. The same iperf3 run over the fan:");
    let fan = iperf3(&server.ns, &client.ns, server.addr, SECONDS, 1)?;
    println!(
        "   {fan:.2} Gbit/s over the fan, {routed:.2} Gbit/s over plain routes: {:.2}x",
        fan / routed
    );

    println!("\n   fan-xdp stats (on h1, non-zero):");
    for line in fleet.hosts[0].fan_xdp_ok(&["stats"])?.lines().skip(1) {
        if line.split_whitespace().nth(1).is_some_and(|p| p != "0") {
            println!("   {line}");
        }
    }

    println!("\n5. fan-xdp detach eth0 on every host, and the namespaces go.");
    drop(daemons);
    for host in &fleet.hosts {
        host.fan_xdp_ok(&["detach", "eth0"])?;
    }
    drop(fleet);
    if failures > 0 {
        bail!("{failures} pings failed");
    }
    println!("Demo finished: every container reached every other over the fan.");
    Ok(())
}
