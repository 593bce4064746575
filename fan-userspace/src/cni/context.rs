//! What the plugin needs of this host: the attached fan of the
//! configuration's overlay (from the pinned state), and the agent serving
//! the namespace (through its run directory). The plugin runs in the
//! host's network namespace (the runtime's), so both are that namespace's.
//! `FAN_XDP_PIN_DIR` and `FAN_XDP_RUN_DIR` move them as they do for `fan-xdp`.

use std::path::PathBuf;

use ipnetwork::Ipv4Network;

use super::error::{CniError, CniResult, TRY_AGAIN_LATER};
use crate::{
    agent::{
        self,
        bindings::{self, Binding},
    },
    dataplane::PinnedMaps,
    state::{
        StateDir,
        record::{Fan, load_fans},
        rundir::RunDir,
    },
};

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

/// The complete fan of `overlay` attached in this namespace, or why not.
pub fn attached_fan(overlay: Ipv4Network) -> Result<Fan, String> {
    let dir = StateDir::locate(env_path("FAN_XDP_PIN_DIR").as_deref())
        .map_err(|e| format!("fan-xdp's pinned state cannot be read ({e:#})"))?;
    if !dir.exists() {
        return Err(format!(
            "the fan {overlay} is not attached on this host (no fan is)"
        ));
    }
    let maps =
        PinnedMaps::open(&dir).map_err(|e| format!("opening fan-xdp's pinned maps: {e:#}"))?;
    let fans = load_fans(&maps).map_err(|e| format!("reading the attached fans: {e:#}"))?;
    match fans.into_iter().find(|f| f.overlay == overlay) {
        Some(fan) if fan.complete => Ok(fan),
        Some(_) => Err(format!("the attach of fan {overlay} is not complete")),
        None => Err(format!("the fan {overlay} is not attached on this host")),
    }
}

/// [`attached_fan`], refused with "try again later" (the fan may be attached soon).
pub fn require_fan(overlay: Ipv4Network) -> CniResult<Fan> {
    attached_fan(overlay).map_err(|why| {
        CniError::new(
            TRY_AGAIN_LATER,
            format!("{why}: run `fan-xdp attach IFACE --overlay {overlay}` first"),
        )
    })
}

/// The run directory of this namespace.
pub fn run_dir() -> Result<RunDir, String> {
    RunDir::locate(env_path("FAN_XDP_RUN_DIR").as_deref())
        .map_err(|e| format!("fan-xdp's run directory cannot be used ({e:#})"))
}

/// The agent's run directory if an agent serves this namespace, or why not.
pub fn agent() -> Result<RunDir, String> {
    let run = run_dir()?;
    match agent::running(&run) {
        Some(_) => Ok(run),
        None => Err(
            "no agent (fan-xdp run) serves this network namespace; `fan-xdp attach` starts one"
                .into(),
        ),
    }
}

/// [`agent`], refused with "try again later".
pub fn require_agent() -> CniResult<RunDir> {
    agent().map_err(|why| CniError::new(TRY_AGAIN_LATER, why))
}

/// The agent's bindings, or none when no agent runs.
pub fn bindings_if_any() -> Vec<Binding> {
    agent()
        .ok()
        .and_then(|run| bindings::list(&run).ok())
        .unwrap_or_default()
}
