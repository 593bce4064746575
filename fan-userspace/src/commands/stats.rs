//! `fan-xdp stats`: counters per outcome, summed over CPUs.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fan_common::StatReason;

use crate::{
    cli::{Global, StatsArgs},
    dataplane::{PinnedMaps, Stats},
    state::StateDir,
};

pub async fn run(args: &StatsArgs, global: &Global) -> Result<()> {
    let dir = StateDir::locate(global.pin_dir.as_deref())?;
    if !dir.exists() {
        bail!("nothing attached in this network namespace");
    }
    let maps = PinnedMaps::open(&dir)?;
    let _logs = if global.verbose {
        crate::dataplane::inspect::stream_ebpf_logs(&dir)
    } else {
        None
    };
    let mut previous: Option<(Stats, Instant)> = None;
    let mut printed = 0u64;
    loop {
        let stats = maps.stats()?;
        let now = Instant::now();
        let evicted = path_mtus_evicted(&maps, &stats)?;
        if args.prometheus {
            print!("{}", prometheus(&stats, evicted));
            return Ok(());
        }
        print(
            &stats,
            previous.as_ref().map(|(s, t)| (s, now - *t)),
            evicted,
            args.json,
        )?;
        printed += 1;
        if !args.watch || args.count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        previous = Some((stats, now));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Path MTU entries the LRU table pushed out: entries are only ever added
/// (expired ones stay until evicted), so this is those added less those held.
fn path_mtus_evicted(maps: &PinnedMaps, stats: &Stats) -> Result<u64> {
    let held = maps.path_mtus.keys().count() as u64;
    Ok(stats
        .get(StatReason::PmtuHostAdded)
        .packets
        .saturating_sub(held))
}

fn print(
    stats: &Stats,
    previous: Option<(&Stats, Duration)>,
    path_mtus_evicted: u64,
    json: bool,
) -> Result<()> {
    if json {
        let mut out = serde_json::Map::new();
        for &reason in StatReason::ALL {
            let c = stats.get(reason);
            out.insert(
                reason.name().into(),
                serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
            );
        }
        out.insert(
            "pmtu_evicted".into(),
            serde_json::json!({ "entries": path_mtus_evicted }),
        );
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    println!(
        "{:<32} {:>14} {:>18} {:>12}",
        "REASON", "PACKETS", "BYTES", "PACKETS/S"
    );
    for &reason in StatReason::ALL {
        let c = stats.get(reason);
        // A counter that went back (re-created maps) counts from zero again.
        let rate =
            previous.map(|(p, dt)| stats.since(p).get(reason).packets as f64 / dt.as_secs_f64());
        println!(
            "{:<32} {:>14} {:>18} {:>12}",
            reason.name(),
            c.packets,
            c.bytes,
            rate.map_or_else(|| "-".into(), |r| format!("{r:.0}"))
        );
    }
    println!("path MTU entries evicted from the full table: {path_mtus_evicted}");
    println!();
    Ok(())
}

/// The counters in Prometheus' text exposition format (version 0.0.4): one
/// packets and one bytes counter per outcome, labelled by its stable name.
pub fn prometheus(stats: &Stats, path_mtus_evicted: u64) -> String {
    let mut out = String::new();
    for (metric, what) in [("packets", "Packets"), ("bytes", "Bytes")] {
        out += &format!(
            "# HELP fan_xdp_{metric}_total {what} per outcome of fan-xdp's programs, summed over CPUs.\n"
        );
        out += &format!("# TYPE fan_xdp_{metric}_total counter\n");
        for &reason in StatReason::ALL {
            let c = stats.get(reason);
            let value = if metric == "packets" {
                c.packets
            } else {
                c.bytes
            };
            out += &format!(
                "fan_xdp_{metric}_total{{reason=\"{}\"}} {value}\n",
                reason.name()
            );
        }
    }
    out += "# HELP fan_xdp_path_mtu_evicted_total Path MTU entries evicted from the full table.\n";
    out += "# TYPE fan_xdp_path_mtu_evicted_total counter\n";
    out += &format!("fan_xdp_path_mtu_evicted_total {path_mtus_evicted}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fan_common::{Counter, StatReason};

    use crate::dataplane::Stats;

    #[test]
    fn prometheus_text_names_every_outcome_in_the_exposition_format() {
        let stats = Stats(BTreeMap::from([(
            StatReason::Encapsulated.name(),
            Counter {
                packets: 7,
                bytes: 700,
            },
        )]));
        let text = super::prometheus(&stats, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "# HELP fan_xdp_packets_total Packets per outcome of fan-xdp's programs, summed over CPUs.",
                "# TYPE fan_xdp_packets_total counter",
                "fan_xdp_packets_total{reason=\"encapsulated\"} 7",
            ]
        );
        assert!(lines.contains(&"fan_xdp_bytes_total{reason=\"encapsulated\"} 700"));
        assert_eq!(lines.last(), Some(&"fan_xdp_path_mtu_evicted_total 2"));
        let samples = lines.iter().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 2 * StatReason::ALL.len() + 1);
    }
}
