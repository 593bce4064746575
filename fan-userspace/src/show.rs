//! `fan-xdp show`: the fans of this namespace, from the pinned state.

use anyhow::Result;

use crate::{
    cli::{Global, ShowArgs},
    loader::PinnedMaps,
    record::{Fan, load_fans},
    state::StateDir,
};

/// The fans attached in this namespace (none if nothing was ever attached).
pub fn attached(global: &Global) -> Result<(StateDir, Vec<Fan>)> {
    let dir = StateDir::locate(global.pin_dir.as_deref())?;
    let fans = if dir.exists() {
        load_fans(&PinnedMaps::open(&dir)?)?
    } else {
        Vec::new()
    };
    Ok((dir, fans))
}

pub fn run(args: &ShowArgs, global: &Global) -> Result<()> {
    let (_, fans) = attached(global)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fans)?);
        return Ok(());
    }
    if fans.is_empty() {
        println!("no fans attached in this network namespace");
        return Ok(());
    }
    println!(
        "{:<15} {:<26} {:<18} {:<18} {:<5} FLAGS",
        "BRIDGE", "UNDERLAY", "OVERLAY", "SLICE", "MODE"
    );
    for fan in &fans {
        let mut flags = vec![
            format!("mtu={}", fan.mtu),
            format!("host-reserve={}", fan.host_reserve),
        ];
        if fan.nat {
            flags.push("nat".into());
        }
        if !fan.complete {
            flags.push("INCOMPLETE".into());
        }
        println!(
            "{:<15} {:<26} {:<18} {:<18} {:<5} {}",
            fan.bridge,
            format!("{} {}/{}", fan.iface, fan.host, fan.underlay.prefix()),
            fan.overlay.to_string(),
            fan.slice.to_string(),
            fan.mode,
            flags.join(",")
        );
    }
    for fan in fans.iter().filter(|f| f.complete) {
        println!(
            "{}: decapsulation {} ({})",
            fan.iface, fan.mode, fan.mode_reason
        );
    }
    Ok(())
}
