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
    // The one fan asked for, by the name its counters go by.
    let fan = match args.fan {
        Some(overlay) => {
            let name = overlay.to_string();
            if !maps.has_stats_by_fan() {
                bail!(
                    "the pinned maps have no per-fan counters (written by an older fan-xdp): attach again to migrate them"
                );
            }
            match maps
                .stats_of_fans()?
                .into_iter()
                .find(|f| f.overlay == name)
            {
                Some(found) => Some((name, found.encap)),
                None => bail!("no fan with overlay {name} is attached here"),
            }
        }
        None => None,
    };
    let mut previous: Option<(Stats, Instant)> = None;
    let mut printed = 0u64;
    loop {
        let totals = maps.stats()?;
        let now = Instant::now();
        let evicted = maps.path_mtus_evicted(&totals)?;
        // The per-fan counters only where they are shown.
        let by_fan = if args.prometheus || fan.is_some() {
            maps.stats_of_fans()?
        } else {
            Vec::new()
        };
        if args.prometheus {
            let fans: Vec<_> = by_fan
                .into_iter()
                .filter(|f| fan.as_ref().is_none_or(|(name, _)| *name == f.overlay))
                .collect();
            print!("{}", totals.prometheus(evicted, &fans));
            return Ok(());
        }
        let stats = match &fan {
            Some((name, _)) => by_fan
                .into_iter()
                .find(|f| f.overlay == *name)
                .map(|f| f.stats)
                .unwrap_or_default(),
            None => totals,
        };
        print(
            &stats,
            fan.as_ref().map(|(_, encap)| *encap),
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

/// `encap`: the wire format of the one fan shown (None: the totals).
fn print(
    stats: &Stats,
    encap: Option<&str>,
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
        if let Some(encap) = encap {
            out.insert("type".into(), serde_json::json!(encap));
        }
        out.insert(
            "pmtu_evicted".into(),
            serde_json::json!({ "entries": path_mtus_evicted }),
        );
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    // As wide as the longest reason's name: the columns stay aligned.
    let width = StatReason::ALL
        .iter()
        .map(|reason| reason.name().len())
        .max()
        .unwrap_or(0);
    if let Some(encap) = encap {
        println!("type: {encap}");
    }
    println!(
        "{:<width$} {:>14} {:>18} {:>12}",
        "REASON", "PACKETS", "BYTES", "PACKETS/S"
    );
    for &reason in StatReason::ALL {
        let c = stats.get(reason);
        // A counter that went back (re-created maps) counts from zero again.
        let rate =
            previous.map(|(p, dt)| stats.since(p).get(reason).packets as f64 / dt.as_secs_f64());
        println!(
            "{:<width$} {:>14} {:>18} {:>12}",
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
