//! DHCP on the slice: one dnsmasq per slice bridge, started and supervised
//! by the agent for each fan attached with `--dhcp`.
//!
//! dnsmasq (Debian's dnsmasq-base, what fanctl, LXD and libvirt run on their
//! bridges) is configured entirely on its command line, never from
//! /etc/dnsmasq.conf: bound to the slice bridge alone, no DNS, the plan's
//! DHCP range, the gateway as router, the fan's MTU as option 26 (forced:
//! udhcpc does not ask for it), `--no-ping` (each lease would wait about 3 s
//! for a probe: 250 containers would queue), as many leases as the range
//! holds (dnsmasq's default of 1000 is less than a /16 slice has), and
//! authoritative, so a client renewing an address this server does not know
//! is told at once. The leases live under the state directory
//! (`/var/lib/fan-xdp/<overlay>_<slice>/dnsmasq.leases`), so renewals after
//! an agent, dnsmasq or host restart keep their addresses.
//!
//! The command line is the server's identity: a dnsmasq whose
//! `/proc/<pid>/cmdline` is exactly the one wanted is adopted (an agent that
//! was killed and restarted finds its server still running: not duplicated),
//! one with our pid file but another command line (the slice moved, the
//! range changed) is stopped and replaced. Signals go through a pidfd taken
//! before the check, so a recycled pid is never signalled. The agent leaves
//! the servers running when it stops (the leases keep being renewed);
//! detach stops a fan's server ([`stop_recorded`]).

mod config;
pub(in crate::agent) mod controller;
mod leases;
mod process;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use fan_common::plan::AddressPlan;
use ipnetwork::Ipv4Network;
use log::{info, warn};
use serde::Serialize;

use config::is_executable;
pub use config::{Files, PACKAGE, SYSTEM_STATE_DIR, command_line, find_dnsmasq};
use leases::unix_now;
pub use leases::{Lease, read_leases};
use process::{cmdline, is_ours, recorded_pid, spawn, stop};

use crate::{
    agent::bindings::Binding,
    dataplane::PinnedMaps,
    state::{
        StateDir, create_private_dirs,
        record::{Fan, load_fans},
        rundir::RunDir,
        settings,
    },
};

/// A server that exits is started again, but not more often than this.
const RESTART_INTERVAL: Duration = Duration::from_secs(2);

/// One server the agent wants running.
struct Wanted {
    overlay: Ipv4Network,
    argv: Vec<String>,
    files: Files,
}

/// A server the agent started or adopted.
struct Running {
    argv: Vec<String>,
    pid: u32,
    /// Set when this agent started it (and so reaps it).
    child: Option<Child>,
    files: Files,
}

/// The agent's DHCP servers, by overlay.
#[derive(Default)]
pub struct Servers {
    running: BTreeMap<Ipv4Network, Running>,
    last_start: BTreeMap<Ipv4Network, Instant>,
    /// The lease files as last read, by overlay: (modified, leases).
    leases: BTreeMap<Ipv4Network, (SystemTime, Vec<Lease>)>,
}

impl Servers {
    /// Makes the running servers those the fans' settings ask for: starts,
    /// adopts, restarts and stops them. Call it holding `state.lock` (see
    /// [`RunDir::try_lock_state`]).
    pub fn supervise(&mut self, run: &RunDir, state_dir: Option<&Path>, fans: &[Fan]) {
        let mut wanted = BTreeMap::new();
        for fan in fans.iter().filter(|f| f.complete) {
            match want(run, state_dir, fan) {
                Ok(Some(w)) => {
                    wanted.insert(w.overlay, w);
                }
                Ok(None) => {}
                Err(e) => warn!("DHCP for {}: {e:#}", fan.overlay),
            }
        }
        let overlays: Vec<Ipv4Network> = self.running.keys().copied().collect();
        for overlay in overlays {
            let keep = wanted
                .get(&overlay)
                .is_some_and(|w| w.argv == self.running[&overlay].argv);
            let server = self.running.get_mut(&overlay).expect("listed above");
            if keep && alive(server) {
                continue;
            }
            let mut server = self.running.remove(&overlay).expect("listed above");
            if keep {
                warn!(
                    "dnsmasq for {overlay} (pid {}) exited: restarting it",
                    server.pid
                );
            } else {
                info!(
                    "stopping dnsmasq for {overlay} (pid {}): {}",
                    server.pid,
                    if wanted.contains_key(&overlay) {
                        "its slice or range changed"
                    } else {
                        "DHCP is off"
                    }
                );
                crate::agent::injected_delay("dhcp-stop");
                if let Err(e) = stop(server.pid, &server.argv, server.child.as_mut()) {
                    warn!("stopping dnsmasq for {overlay}: {e:#}");
                }
                // Reaped, also when detach stopped it first.
                if let Some(child) = &mut server.child {
                    let _ = child.try_wait();
                }
                let _ = fs::remove_file(&server.files.pid);
            }
        }
        for (overlay, want) in wanted {
            if self.running.contains_key(&overlay) {
                continue;
            }
            if self
                .last_start
                .get(&overlay)
                .is_some_and(|t| t.elapsed() < RESTART_INTERVAL)
            {
                continue;
            }
            match self.adopt_or_start(want) {
                Ok(server) => {
                    self.running.insert(overlay, server);
                }
                Err(e) => warn!("DHCP for {overlay}: {e:#}"),
            }
            self.last_start.insert(overlay, Instant::now());
        }
        self.leases
            .retain(|overlay, _| self.running.contains_key(overlay));
    }

    fn adopt_or_start(&mut self, want: Wanted) -> Result<Running> {
        if let Some(pid) = recorded_pid(&want.files.pid) {
            if cmdline(pid).as_deref() == Some(&want.argv[..]) {
                info!(
                    "adopted dnsmasq for {} (pid {pid}), still running",
                    want.overlay
                );
                return Ok(Running {
                    argv: want.argv,
                    pid,
                    child: None,
                    files: want.files,
                });
            }
            if is_ours(pid, &want.files.pid) {
                info!(
                    "replacing dnsmasq for {} (pid {pid}): its command line differs",
                    want.overlay
                );
                stop(pid, &cmdline(pid).unwrap_or_default(), None)?;
            }
        }
        let dir = want
            .files
            .leases
            .parent()
            .context("the lease file has no directory")?;
        let root = dir.parent().context("the lease directory has no parent")?;
        create_private_dirs(&[root, dir], "the DHCP lease directory")?;
        let child = spawn(&want.argv)?;
        info!(
            "started dnsmasq for {} (pid {}): {}",
            want.overlay,
            child.id(),
            want.argv[1..].join(" ")
        );
        Ok(Running {
            argv: want.argv,
            pid: child.id(),
            child: Some(child),
            files: want.files,
        })
    }

    /// The leases of every running server as bindings of origin `dhcp`
    /// (the agent finds each one's port by its MAC in the bridge's FDB).
    /// A lease file is read again only when it changed.
    pub fn bindings(&mut self) -> Vec<Binding> {
        let now = unix_now();
        let mut out = Vec::new();
        for (overlay, server) in &self.running {
            let modified = fs::metadata(&server.files.leases)
                .and_then(|m| m.modified())
                .ok();
            let cached = self
                .leases
                .get(overlay)
                .filter(|(t, _)| Some(*t) == modified);
            let leases = match (cached, modified) {
                (Some((_, leases)), _) => leases.clone(),
                (None, Some(time)) => {
                    let leases = read_leases(&server.files.leases).unwrap_or_default();
                    self.leases.insert(*overlay, (time, leases.clone()));
                    leases
                }
                (None, None) => Vec::new(),
            };
            out.extend(
                leases
                    .iter()
                    .filter(|l| l.expiry == 0 || l.expiry > now)
                    .map(Lease::binding),
            );
        }
        out
    }

    /// Each running server's overlay and pid, for the status.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.running
            .iter()
            .map(|(o, s)| (o.to_string(), s.pid))
            .collect()
    }
}

/// One round of the agent's supervision: the servers the fans' settings ask
/// for, and their leases, as bindings of origin `dhcp`. Skipped (None)
/// while attach or detach holds `state.lock` (detach stops a server, which
/// this must not start again meanwhile); the next round catches up. It may
/// take seconds (a server that ignores SIGTERM is waited for): the agent
/// runs it on a thread of its own ([`controller`]).
pub fn round(
    servers: &mut Servers,
    run: &RunDir,
    state_dir: Option<&Path>,
    dir: &StateDir,
) -> Option<Vec<Binding>> {
    let _lock = match run.try_lock_state() {
        Ok(Some(lock)) => lock,
        Ok(None) => return None,
        Err(e) => {
            warn!("DHCP supervision: {e:#}");
            return None;
        }
    };
    let fans = if dir.exists() {
        PinnedMaps::open(dir).and_then(|maps| load_fans(&maps))
    } else {
        Ok(Vec::new())
    };
    match fans {
        Ok(fans) => servers.supervise(run, state_dir, &fans),
        Err(e) => warn!("DHCP supervision: {e:#}"),
    }
    Some(servers.bindings())
}

/// What `fan` asks for, if it serves DHCP.
fn want(run: &RunDir, state_dir: Option<&Path>, fan: &Fan) -> Result<Option<Wanted>> {
    let settings = settings::load(run, fan.overlay)?;
    if !settings.dhcp {
        return Ok(None);
    }
    let dnsmasq = match &settings.dnsmasq {
        Some(path) => path.clone(),
        None => find_dnsmasq()?,
    };
    if !is_executable(&dnsmasq) {
        bail!("{} is gone: apt-get install {PACKAGE}", dnsmasq.display());
    }
    let plan = settings.plan(fan.slice, fan.host_reserve)?;
    let files = Files::of(run, state_dir, fan);
    Ok(Some(Wanted {
        overlay: fan.overlay,
        argv: command_line(&dnsmasq, fan, &plan, &files),
        files,
    }))
}

/// Whether a server is still running (reaping it if this agent started it).
fn alive(server: &mut Running) -> bool {
    if let Some(child) = &mut server.child
        && !matches!(child.try_wait(), Ok(None))
    {
        return false;
    }
    cmdline(server.pid).as_deref() == Some(&server.argv[..])
}

/// Stops `fan`'s server without the agent (detach): the process its pid
/// file names, if it is still ours. Returns its pid if one ran.
pub fn stop_recorded(run: &RunDir, state_dir: Option<&Path>, fan: &Fan) -> Result<Option<u32>> {
    let files = Files::of(run, state_dir, fan);
    let Some(pid) = recorded_pid(&files.pid) else {
        return Ok(None);
    };
    let running = is_ours(pid, &files.pid).then(|| cmdline(pid)).flatten();
    if let Some(argv) = &running {
        stop(pid, argv, None)?;
    }
    let _ = fs::remove_file(&files.pid);
    Ok(running.map(|_| pid))
}

/// A fan's server as `show` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub running: bool,
    pub pid: Option<u32>,
    /// Unexpired leases.
    pub leases: usize,
    pub range: String,
    /// Addresses in the range.
    pub size: u32,
    pub lease_file: PathBuf,
}

/// The state of `fan`'s server, read from its pid and lease files.
pub fn status(run: &RunDir, state_dir: Option<&Path>, fan: &Fan, plan: &AddressPlan) -> Status {
    let files = Files::of(run, state_dir, fan);
    let pid = recorded_pid(&files.pid).filter(|&pid| is_ours(pid, &files.pid));
    let now = unix_now();
    let leases = read_leases(&files.leases)
        .unwrap_or_default()
        .iter()
        .filter(|l| l.expiry == 0 || l.expiry > now)
        .count();
    Status {
        running: pid.is_some(),
        pid,
        leases,
        range: plan.dhcp.to_string(),
        size: plan.dhcp.len(),
        lease_file: files.leases,
    }
}
