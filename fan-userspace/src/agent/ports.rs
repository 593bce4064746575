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
//! Before Linux 6.6 (no TCX) a port's program is a filter on the port's
//! clsact qdisc, which outlives the process: the agent removes its filters
//! when it lets a port go and when it stops (and the qdiscs it added for
//! them, recorded in the run directory), and a restarted agent takes over
//! the filters a killed one left, marked as fan-xdp's by their name (the
//! program's), priority and handle, replacing their program in place.
//!
//! With `--steer-flows` the ports' RPS masks are changed too, and put back
//! when a port is let go. What they were is kept in the run directory
//! (`rps.json`) while they are changed, so that the agent after one killed
//! before it could put them back restores the ports' own masks, not the
//! killed agent's.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::programs::{
    LinkOrder, ProgramInfo, SchedClassifier, TcAttachType,
    tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions},
};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{ENCAP_PORT, add_clsact_filter, replace_clsact_program, tcx_supported},
    host::Net,
    state::{
        StateDir,
        rundir::{RunDir, write_private_atomically},
    },
};

/// What the agent does at the ports, and where it keeps what it must be
/// able to undo after a kill.
pub struct AtPorts {
    /// `--steer-flows`.
    pub steer_flows: bool,
    /// Where the RPS masks the ports had are recorded while they are changed.
    pub rps_record: PathBuf,
    /// Where the ports' clsact qdiscs fan-xdp added are recorded (before 6.6).
    pub clsact_record: PathBuf,
}

impl AtPorts {
    pub fn new(steer_flows: bool, run: &RunDir) -> Self {
        Self {
            steer_flows,
            rps_record: run.path.join("rps.json"),
            clsact_record: run.path.join("port-clsact"),
        }
    }
}

/// One port's RPS masks before `--steer-flows` changed them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RpsBefore {
    ifindex: u32,
    port: String,
    /// Each receive queue's `rps_cpus` file and its mask.
    queues: Vec<(PathBuf, String)>,
}

/// A port filter's priority before Linux 6.6: after the kernel's default
/// (49152), so that, as with TCX, a filter someone else put there decides
/// first. With its handle it marks the filter as fan-xdp's.
pub const PORT_FILTER_PRIORITY: u16 = 0xfa00;
pub const PORT_FILTER_HANDLE: u32 = 0xfa;

pub struct PortEncap {
    program: SchedClassifier,
    /// The pinned program's id when it was opened: another id means a newer
    /// version was attached, and the ports must follow it.
    program_id: u32,
    links: HashMap<u32, Port>,
    /// With `--steer-flows`: the RPS mask to give every port.
    steer: Option<String>,
    /// Before Linux 6.6: the ports' clsact qdiscs fan-xdp added.
    clsact: Option<ClsactQdiscs>,
    rps_record: PathBuf,
    /// Ports a killed agent steered, not taken up again yet, by index.
    inherited: HashMap<u32, RpsBefore>,
}

struct Port {
    name: String,
    hook: PortHook,
    /// RPS masks this replaced, to put back when the port is let go.
    rps_before: RpsBefore,
}

/// How the program hangs on a port.
enum PortHook {
    Tcx(SchedClassifierLinkId),
    /// A filter at [`PORT_FILTER_PRIORITY`] and [`PORT_FILTER_HANDLE`].
    Clsact,
}

/// The clsact qdiscs fan-xdp added to ports (by index, with the port's
/// name), kept in a file of the run directory so that a restarted agent
/// removes the ones a killed agent added, and no other.
struct ClsactQdiscs {
    record: PathBuf,
    added: HashMap<u32, String>,
    /// Ports of the record not yet taken over or let go since the start.
    unsettled: bool,
}

impl ClsactQdiscs {
    fn load(record: &Path) -> Self {
        let record = record.to_path_buf();
        let added = std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (index, name) = line.split_once(' ')?;
                Some((index.parse().ok()?, name.to_string()))
            })
            .collect::<HashMap<_, _>>();
        let unsettled = !added.is_empty();
        Self {
            record,
            added,
            unsettled,
        }
    }

    fn save(&self) {
        let text: String = self
            .added
            .iter()
            .map(|(index, name)| format!("{index} {name}\n"))
            .collect();
        if let Err(e) = write_private_atomically(&self.record, text.as_bytes()) {
            warn!("recording the ports' clsact qdiscs: {e:#}");
        }
    }
}

impl Drop for PortEncap {
    fn drop(&mut self) {
        self.let_every_port_go();
    }
}

impl PortEncap {
    /// The program `attach` pinned in `dir`, ready to attach to ports (as
    /// TCX links, or before Linux 6.6 as clsact filters).
    pub fn open(dir: &StateDir, at: &AtPorts) -> Result<Option<Self>> {
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
            clsact: (!tcx_supported()).then(|| ClsactQdiscs::load(&at.clsact_record)),
            inherited: inherit(&at.rps_record),
            rps_record: at.rps_record.clone(),
        }))
    }

    /// After a new program version was attached: with clsact filters, moves
    /// each port's filter to it in place (no moment without the port's
    /// guards) and returns true; with TCX links, false (the caller lets the
    /// ports go and attaches them anew).
    pub fn follow_upgrade(&mut self, dir: &StateDir) -> Result<bool> {
        if self.clsact.is_none() {
            return Ok(false);
        }
        let pin = dir.program(ENCAP_PORT);
        let mut program = SchedClassifier::from_pin(&pin)
            .with_context(|| format!("opening {}", pin.display()))?;
        for port in self.links.values() {
            // A port gone meanwhile: the next sync lets it go.
            if let Err(e) = replace_clsact_program(
                &mut program,
                &port.name,
                TcAttachType::Ingress,
                PORT_FILTER_PRIORITY,
                PORT_FILTER_HANDLE,
            ) {
                debug!("upgrading the filter of port {}: {e:#}", port.name);
            }
        }
        self.program_id = program.info()?.id();
        self.program = program;
        Ok(true)
    }

    /// Lets every port go, and with clsact filters also removes the qdiscs
    /// fan-xdp added (when nothing else hangs on them): the agent's stop.
    pub async fn release(mut self, net: &Net) {
        self.let_every_port_go();
        self.remove_own_qdiscs(net, &HashSet::new()).await;
    }

    /// Takes the program off every port (TCX links close with their
    /// descriptors; clsact filters are removed) and puts back the RPS masks
    /// it changed, a killed agent's record included.
    fn let_every_port_go(&mut self) {
        for (_, port) in self.links.drain() {
            if let PortHook::Clsact = port.hook {
                remove_port_filter(&port.name);
            }
            restore_rps(&port.rps_before);
        }
        for (_, before) in self.inherited.drain() {
            restore_rps(&before);
        }
        let _ = std::fs::remove_file(&self.rps_record);
    }

    /// Removes the clsact qdiscs fan-xdp added to ports it no longer runs on,
    /// the first time after a start with the filter a killed agent left on
    /// such a port.
    pub async fn tidy(&mut self, net: &Net) {
        let keep: HashSet<u32> = self.links.keys().copied().collect();
        self.remove_own_qdiscs(net, &keep).await;
    }

    async fn remove_own_qdiscs(&mut self, net: &Net, keep: &HashSet<u32>) {
        let Some(qdiscs) = &mut self.clsact else {
            return;
        };
        if !qdiscs.unsettled && qdiscs.added.keys().all(|index| keep.contains(index)) {
            return;
        }
        let gone: Vec<(u32, String)> = qdiscs
            .added
            .iter()
            .filter(|(index, _)| !keep.contains(index))
            .map(|(index, name)| (*index, name.clone()))
            .collect();
        for (index, name) in gone {
            // The same device still, by name and index: a killed agent's
            // filter goes first, then the qdisc if nothing else hangs on it.
            if net.index_of(&name).await.is_ok_and(|now| now == index) {
                remove_port_filter(&name);
                match net.has_tc_filters(index).await {
                    Ok(false) => {
                        if let Err(e) = net.del_clsact(index).await {
                            warn!("removing the clsact qdisc of {name}: {e:#}");
                        }
                    }
                    Ok(true) => info!("{name}: leaving its clsact qdisc to its other filters"),
                    Err(e) => warn!("listing the filters of {name}: {e:#}"),
                }
            }
            qdiscs.added.remove(&index);
        }
        qdiscs.unsettled = false;
        qdiscs.save();
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
        let inherited = !self.inherited.is_empty();
        for index in &gone {
            if let Some(port) = self.links.remove(index) {
                match port.hook {
                    // A deleted device took the link with it; this only closes our fd.
                    PortHook::Tcx(link) => drop(self.program.detach(link)),
                    // Its qdisc goes at the next tidy, if fan-xdp added it.
                    PortHook::Clsact => remove_port_filter(&port.name),
                }
                restore_rps(&port.rps_before);
            }
        }
        let mut added = 0;
        for (index, name) in ports {
            if self.links.contains_key(index) {
                continue;
            }
            match self.hang(*index, name) {
                Ok(hook) => {
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
                    let name = name.clone();
                    self.links.insert(
                        *index,
                        Port {
                            name,
                            hook,
                            rps_before,
                        },
                    );
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
        if added + gone.len() > 0 || inherited {
            self.record_rps();
        }
        if added + gone.len() > 0 {
            info!(
                "encapsulating at {} port(s): {added} added, {} removed",
                self.links.len(),
                gone.len()
            );
        }
        Ok((added, gone.len()))
    }

    pub fn ports(&self) -> usize {
        self.links.len()
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

    /// Runs the program on port `index` (`name`), last in its chain: a
    /// program someone else put there (a policy, say) decides first, and
    /// its verdict stands.
    fn hang(&mut self, index: u32, name: &str) -> Result<PortHook> {
        let Some(qdiscs) = &mut self.clsact else {
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            let link = self
                .program
                .attach_with_options(name, TcAttachType::Ingress, options)?;
            return Ok(PortHook::Tcx(link));
        };
        // A filter of ours already there (a killed agent's, or an agent
        // before an upgrade) is taken over in place: no gap in the guards.
        let taken_over = replace_clsact_program(
            &mut self.program,
            name,
            TcAttachType::Ingress,
            PORT_FILTER_PRIORITY,
            PORT_FILTER_HANDLE,
        );
        if taken_over.is_err() {
            let options = NlOptions {
                priority: PORT_FILTER_PRIORITY,
                handle: PORT_FILTER_HANDLE.into(),
                ..Default::default()
            };
            if add_clsact_filter(&mut self.program, name, TcAttachType::Ingress, options)? {
                qdiscs.added.insert(index, name.to_string());
                qdiscs.save();
            }
        }
        Ok(PortHook::Clsact)
    }
}

/// Removes fan-xdp's port filters from `ports` (before Linux 6.6): detach's,
/// for a bridge whose fan goes while no agent may be there to let its ports
/// go (a filter would run the detached fan's program on). The qdiscs an
/// agent added stay in its record, for the next agent to remove.
pub fn remove_port_filters(ports: &[String]) {
    if tcx_supported() {
        return;
    }
    for port in ports {
        remove_port_filter(port);
    }
}

/// Removes fan-xdp's port filter (by the program's name) from the ingress
/// of `port`; a port or filter already gone is fine.
fn remove_port_filter(port: &str) {
    if let Err(e) = aya::programs::tc::qdisc_detach_program(port, TcAttachType::Ingress, ENCAP_PORT)
    {
        debug!("removing the filter of port {port}: {e}");
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
