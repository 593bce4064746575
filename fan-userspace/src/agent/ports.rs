//! Encapsulation at the slice bridge's ports, run by `fan-xdp run`.
//!
//! `attach` puts the encapsulating program at the slice bridge's ingress,
//! which every container frame for the host reaches after the bridge has
//! handled it. The same code at the TC ingress of each container's veth (the
//! bridge port, `fan_encap_port`, which leaves counting what it passes to the
//! bridge's program) sees the frame first and skips the bridge altogether:
//! no bridge hooks, no forwarding database lookup, no second pass through the
//! receive path. The ports come and go with containers, so the long-running
//! mode attaches them as they join and lets them go with the daemon: its
//! TCX links close when it exits, and the bridge's program is always there
//! behind them, so traffic is encapsulated either way.
//!
//! With `--steer-flows` the ports' RPS masks are changed too, and put back
//! when a port is let go. What they were is kept in the run directory
//! (`rps.json`) while they are changed, so that the agent after one killed
//! before it could put them back restores the ports' own masks, not the
//! killed agent's.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::programs::{
    LinkOrder, ProgramInfo, SchedClassifier, TcAttachType,
    tc::{SchedClassifierLinkId, TcAttachOptions},
};
use log::{debug, info, warn};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{ENCAP_PORT, tcx_supported},
    state::{StateDir, rundir::write_private_atomically},
};

/// What the agent does at the ports.
pub struct AtPorts {
    /// `--steer-flows`.
    pub steer_flows: bool,
    /// Where the RPS masks the ports had are recorded while they are changed.
    pub rps_record: PathBuf,
}

/// One port's RPS masks before `--steer-flows` changed them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RpsBefore {
    ifindex: u32,
    port: String,
    /// Each receive queue's `rps_cpus` file and its mask.
    queues: Vec<(PathBuf, String)>,
}

pub struct PortEncap {
    program: SchedClassifier,
    /// The pinned program's id when it was opened: another id means a newer
    /// version was attached, and the ports must follow it.
    program_id: u32,
    links: HashMap<u32, Port>,
    /// With `--steer-flows`: the RPS mask to give every port.
    steer: Option<String>,
    rps_record: PathBuf,
    /// Ports a killed agent steered, not taken up again yet, by index.
    inherited: HashMap<u32, RpsBefore>,
}

struct Port {
    link: SchedClassifierLinkId,
    /// RPS masks this replaced, to put back when the port is let go.
    rps_before: RpsBefore,
}

impl Drop for PortEncap {
    fn drop(&mut self) {
        for (_, port) in self.links.drain() {
            restore_rps(&port.rps_before);
        }
        for (_, before) in self.inherited.drain() {
            restore_rps(&before);
        }
        let _ = std::fs::remove_file(&self.rps_record);
    }
}

impl PortEncap {
    /// The program `attach` pinned in `dir`, ready to attach to ports; None
    /// on kernels without TCX, where a filter would outlive the daemon.
    pub fn open(dir: &StateDir, at: &AtPorts) -> Result<Option<Self>> {
        if !tcx_supported() {
            return Ok(None);
        }
        let pin = dir.program(ENCAP_PORT);
        let program = SchedClassifier::from_pin(&pin).with_context(|| {
            format!(
                "opening {} (pinned by `fan-xdp attach`; after an upgrade, attach again)",
                pin.display()
            )
        })?;
        let program_id = program.info()?.id();
        let steer = if at.steer_flows {
            let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
                .context("reading the online CPUs")?;
            Some(rps_mask(&online)?)
        } else {
            None
        };
        Ok(Some(Self {
            program,
            program_id,
            links: HashMap::new(),
            steer,
            inherited: inherit(&at.rps_record),
            rps_record: at.rps_record.clone(),
        }))
    }

    /// Whether the program pinned in `dir` is still the one this runs.
    pub fn is_current(&self, dir: &StateDir) -> bool {
        ProgramInfo::from_pin(dir.program(ENCAP_PORT))
            .is_ok_and(|info| info.id() == self.program_id)
    }

    /// Runs the program on exactly `ports` (index, name). Returns (added, removed).
    pub fn sync(&mut self, ports: &[(u32, String)]) -> Result<(usize, usize)> {
        let wanted: std::collections::HashSet<u32> = ports.iter().map(|(i, _)| *i).collect();
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|index| !wanted.contains(index))
            .copied()
            .collect();
        for index in &gone {
            if let Some(port) = self.links.remove(index) {
                // A deleted device took the link with it; this only closes our fd.
                let _ = self.program.detach(port.link);
                restore_rps(&port.rps_before);
            }
        }
        let inherited = !self.inherited.is_empty();
        let mut added = 0;
        for (index, name) in ports {
            if self.links.contains_key(index) {
                continue;
            }
            // Last in the port's chain: a program someone else put there
            // (a policy, say) decides first, and its verdict stands.
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            match self
                .program
                .attach_with_options(name, TcAttachType::Ingress, options)
            {
                Ok(link) => {
                    let mut rps_before = match &self.steer {
                        Some(mask) => steer(*index, name, mask),
                        None => RpsBefore::default(),
                    };
                    // Steered by a killed agent: its own masks are the recorded ones.
                    if let Some(inherited) = self.inherited.remove(index)
                        && inherited.port == *name
                    {
                        if self.steer.is_some() {
                            rps_before = inherited;
                        } else {
                            restore_rps(&inherited);
                        }
                    }
                    self.links.insert(*index, Port { link, rps_before });
                    added += 1;
                }
                // The port may have gone since it was listed; the next sync settles it.
                Err(e) => debug!("encapsulation at port {name}: {e}"),
            }
        }
        // What a killed agent steered and is no port of ours now goes back.
        for (_, before) in self.inherited.drain() {
            restore_rps(&before);
        }
        if added + gone.len() > 0 {
            info!(
                "encapsulating at {} port(s): {added} added, {} removed",
                self.links.len(),
                gone.len()
            );
        }
        if added + gone.len() > 0 || inherited {
            self.record_rps();
        }
        Ok((added, gone.len()))
    }

    /// Records the masks the steered ports had (nothing when none is).
    fn record_rps(&self) {
        let steered: Vec<&RpsBefore> = self
            .links
            .values()
            .map(|p| &p.rps_before)
            .filter(|b| !b.queues.is_empty())
            .collect();
        let written = if steered.is_empty() {
            match std::fs::remove_file(&self.rps_record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        } else {
            serde_json::to_vec(&steered)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| write_private_atomically(&self.rps_record, &bytes))
        };
        if let Err(e) = written {
            warn!("recording the ports' RPS masks: {e:#}");
        }
    }

    pub fn ports(&self) -> usize {
        self.links.len()
    }
}

/// Sets `mask` on every receive queue of `port`; returns what was there.
fn steer(ifindex: u32, port: &str, mask: &str) -> RpsBefore {
    let mut before = RpsBefore {
        ifindex,
        port: port.to_string(),
        queues: Vec::new(),
    };
    let Ok(queues) = std::fs::read_dir(format!("/sys/class/net/{port}/queues")) else {
        return before;
    };
    for queue in queues.flatten() {
        if !queue.file_name().to_string_lossy().starts_with("rx-") {
            continue;
        }
        let path = queue.path().join("rps_cpus");
        let Ok(old) = std::fs::read_to_string(&path) else {
            continue;
        };
        match std::fs::write(&path, mask) {
            Ok(()) => before.queues.push((path, old.trim().to_string())),
            Err(e) => warn!("steering flows on {port}: {e}"),
        }
    }
    before
}

/// Puts the masks back, if the port is still the device they were read from.
fn restore_rps(before: &RpsBefore) {
    let index = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", before.port));
    // Gone with its device, or the name is another device's now.
    if index.ok().and_then(|i| i.trim().parse::<u32>().ok()) != Some(before.ifindex) {
        return;
    }
    for (path, mask) in &before.queues {
        let _ = std::fs::write(path, mask);
    }
}

/// The masks a killed agent recorded, by port index.
fn inherit(record: &Path) -> HashMap<u32, RpsBefore> {
    let Ok(bytes) = std::fs::read(record) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<Vec<RpsBefore>>(&bytes) {
        Ok(list) => {
            if !list.is_empty() {
                info!(
                    "{} port(s) still steered by a previous agent: their own RPS masks are recorded",
                    list.len()
                );
            }
            list.into_iter().map(|b| (b.ifindex, b)).collect()
        }
        Err(e) => {
            warn!("{} is unreadable ({e}): ignored", record.display());
            HashMap::new()
        }
    }
}

/// The RPS mask (comma-separated 32-bit hex words, most significant first)
/// of the CPUs in a kernel CPU list such as `0-3,8`.
pub fn rps_mask(cpu_list: &str) -> Result<String> {
    let mut cpus = Vec::new();
    for part in cpu_list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>()?, b.parse::<usize>()?),
            None => (part.parse()?, part.parse()?),
        };
        anyhow::ensure!(first <= last, "bad CPU range {part}");
        cpus.extend(first..=last);
    }
    let words = cpus.iter().max().map_or(1, |max| max / 32 + 1);
    let mut mask = vec![0u32; words];
    for cpu in cpus {
        mask[cpu / 32] |= 1 << (cpu % 32);
    }
    Ok(mask
        .iter()
        .rev()
        .map(|w| format!("{w:08x}"))
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::rps_mask;

    #[test]
    fn rps_masks_from_cpu_lists() {
        assert_eq!(rps_mask("0-1\n").unwrap(), "00000003");
        assert_eq!(rps_mask("0").unwrap(), "00000001");
        assert_eq!(rps_mask("0-3,8").unwrap(), "0000010f");
        assert_eq!(rps_mask("0-31,33").unwrap(), "00000002,ffffffff");
        assert!(rps_mask("3-1").is_err());
        assert!(rps_mask("x").is_err());
    }
}
