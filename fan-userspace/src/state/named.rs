//! The host addresses operators named with `fan-xdp up OVERLAY ADDR/LEN`:
//! such a fan is on that address and no other, as one whose line in the
//! configuration names it (the follower waits for the address rather than
//! move the fan). The configuration says it for its own lines; this record
//! in the run directory says it for `up` run by hand, until the fan is
//! detached.

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use ipnetwork::Ipv4Network;

use super::{
    record::attached,
    rundir::{RunDir, write_private_atomically},
};
use crate::cli::Global;

/// Named host addresses, by overlay.
pub type Named = HashMap<Ipv4Network, Ipv4Addr>;

const FILE: &str = "named-addresses.json";

/// What is recorded (nothing when no `up` named an address).
pub fn load(run_dir: &RunDir) -> Result<Named> {
    let path = run_dir.path.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Named::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Records that the fan of `overlay` is on `address` and no other.
pub fn name(run_dir: &RunDir, overlay: Ipv4Network, address: Ipv4Addr) -> Result<()> {
    let mut named = load(run_dir)?;
    if named.insert(overlay, address) == Some(address) {
        return Ok(());
    }
    store(run_dir, &named)
}

/// Forgets the fans no longer attached: called where an operator's word
/// detaches (`detach`, `down`, a line gone from the configuration), never
/// where the agent detaches to attach again.
pub fn forget_detached(global: &Global) -> Result<()> {
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    let (_, fans) = attached(global)?;
    let mut named = load(&run_dir)?;
    let before = named.len();
    named.retain(|overlay, _| fans.iter().any(|f| f.overlay == *overlay));
    if named.len() == before {
        return Ok(());
    }
    store(&run_dir, &named)
}

fn store(run_dir: &RunDir, named: &Named) -> Result<()> {
    let path = run_dir.path.join(FILE);
    if named.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    write_private_atomically(&path, &serde_json::to_vec_pretty(named)?)
}
