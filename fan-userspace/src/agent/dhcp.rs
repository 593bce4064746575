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

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, fd::FromRawFd as _, fd::OwnedFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use fan_common::plan::AddressPlan;
use ipnetwork::Ipv4Network;
use log::{info, warn};
use serde::Serialize;

use crate::{
    agent::bindings::{Binding, Bindings, Origin},
    dataplane::PinnedMaps,
    state::{
        StateDir, create_private_dirs,
        record::{Fan, load_fans},
        rundir::RunDir,
        settings,
    },
};

/// Where leases are kept unless `--state-dir` says otherwise.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/fan-xdp";
/// The package that has dnsmasq, named in every error about it.
pub const PACKAGE: &str = "dnsmasq-base";
/// How long a lease lasts; clients renew at half of it.
const LEASE_TIME: &str = "1h";
/// A server that exits is started again, but not more often than this.
const RESTART_INTERVAL: Duration = Duration::from_secs(2);

/// dnsmasq on this host: `FAN_XDP_DNSMASQ` if set, else the first on PATH
/// (or in /usr/sbin, where Debian puts it). A clear error naming the package.
pub fn find_dnsmasq() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FAN_XDP_DNSMASQ") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "--dhcp needs dnsmasq: FAN_XDP_DNSMASQ names {}, which is not an executable",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("dnsmasq"))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow!("--dhcp needs dnsmasq, which is not installed: apt-get install {PACKAGE}")
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The files of one fan's server.
pub struct Files {
    pub pid: PathBuf,
    pub leases: PathBuf,
}

impl Files {
    /// The pid file in the run directory, the leases under the state
    /// directory keyed by overlay and slice (a moved slice starts afresh).
    pub fn of(run: &RunDir, state_dir: Option<&Path>, fan: &Fan) -> Self {
        let root = state_dir.unwrap_or(Path::new(SYSTEM_STATE_DIR));
        let key = |net: Ipv4Network| format!("{}-{}", net.network(), net.prefix());
        Self {
            pid: run.path.join(format!("dnsmasq-{}.pid", key(fan.overlay))),
            leases: root
                .join(format!("{}_{}", key(fan.overlay), key(fan.slice)))
                .join("dnsmasq.leases"),
        }
    }
}

/// dnsmasq's whole command line for `fan`'s slice.
pub fn command_line(dnsmasq: &Path, fan: &Fan, plan: &AddressPlan, files: &Files) -> Vec<String> {
    let range = plan.dhcp;
    vec![
        dnsmasq.display().to_string(),
        "--conf-file=/dev/null".into(),
        "--keep-in-foreground".into(),
        // Bound to the bridge alone (SO_BINDTODEVICE: one server per bridge
        // in a namespace); dynamic, which dnsmasq asks for, rather than
        // warning on every interface change.
        "--bind-dynamic".into(),
        format!("--interface={}", fan.bridge),
        "--except-interface=lo".into(),
        "--port=0".into(),
        format!(
            "--dhcp-range={},{},{},{LEASE_TIME}",
            range.first,
            range.last,
            fan.slice.mask()
        ),
        format!("--dhcp-option=option:router,{}", plan.gateway),
        format!("--dhcp-option-force=26,{}", fan.mtu),
        "--no-ping".into(),
        format!("--dhcp-lease-max={}", range.len()),
        "--dhcp-authoritative".into(),
        format!("--dhcp-leasefile={}", files.leases.display()),
        format!("--pid-file={}", files.pid.display()),
        "--log-facility=-".into(),
        "--quiet-dhcp".into(),
    ]
}

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
/// for, and their leases as bindings of origin `dhcp` in `bindings`. Skipped
/// while attach or detach holds `state.lock` (detach stops a server, which
/// this must not start again meanwhile); the next round catches up. Returns
/// whether the bindings changed (then the endpoint map needs a sync).
pub fn round(
    servers: &mut Servers,
    run: &RunDir,
    state_dir: Option<&Path>,
    dir: &StateDir,
    bindings: &mut Bindings,
) -> bool {
    let _lock = match run.try_lock_state() {
        Ok(Some(lock)) => lock,
        Ok(None) => return false,
        Err(e) => {
            warn!("DHCP supervision: {e:#}");
            return false;
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
    match bindings.replace_origin(Origin::Dhcp, servers.bindings()) {
        Ok(changed) => changed,
        Err(e) => {
            warn!("DHCP bindings: {e:#}");
            false
        }
    }
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

/// Starts dnsmasq in its own session (signals to the agent's group do not
/// reach it, and it outlives the agent), with no inherited descriptors but
/// stderr (the agent's log).
fn spawn(argv: &[String]) -> Result<Child> {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, close_range) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting {} (apt-get install {PACKAGE})", argv[0]))
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

/// The command line of `pid`, if it runs (a zombie's is empty: None).
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}

fn recorded_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether `pid` is a dnsmasq that writes `pid_file`: one of ours.
fn is_ours(pid: u32, pid_file: &Path) -> bool {
    let flag = format!("--pid-file={}", pid_file.display());
    cmdline(pid).is_some_and(|argv| {
        argv.first().is_some_and(|a| a.ends_with("dnsmasq")) && argv.contains(&flag)
    })
}

/// Stops `pid` if its command line is still `argv`: SIGTERM through a pidfd,
/// then SIGKILL after 3 s. Reaps `child` if given.
fn stop(pid: u32, argv: &[String], child: Option<&mut Child>) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0u32) };
    if fd < 0 {
        return Ok(()); // gone already
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Checked after the pidfd is held: the process it names cannot change.
    if cmdline(pid).as_deref() != Some(argv) {
        return Ok(());
    }
    let signal = |sig: libc::c_int| {
        // SAFETY: a pidfd we hold, a signal number, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<u8>(),
                0u32,
            )
        }
    };
    signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut child = child;
    loop {
        if let Some(child) = child.as_deref_mut()
            && !matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        if cmdline(pid).is_none() {
            return Ok(());
        }
        if Instant::now() > deadline {
            signal(libc::SIGKILL);
            if let Some(child) = child {
                let _ = child.wait();
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// One line of dnsmasq's lease file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Unix time the lease ends (0: never).
    pub expiry: u64,
    pub mac: String,
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
    pub client_id: Option<String>,
}

impl Lease {
    fn binding(&self) -> Binding {
        Binding {
            address: self.address,
            mac: self.mac.clone(),
            port: None,
            origin: Origin::Dhcp,
            owner: self.client_id.clone().unwrap_or_else(|| self.mac.clone()),
        }
    }
}

/// The leases in a dnsmasq lease file (`EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID`,
/// `*` for none); IPv6 and malformed lines are skipped. No file: no leases.
pub fn read_leases(path: &Path) -> Result<Vec<Lease>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(parse_leases(&text))
}

fn parse_leases(text: &str) -> Vec<Lease> {
    let named = |field: Option<&str>| field.filter(|f| *f != "*").map(str::to_string);
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let expiry = fields.next()?.parse().ok()?;
            let mac = fields.next()?.to_ascii_lowercase();
            let address = fields.next()?.parse().ok()?;
            Some(Lease {
                expiry,
                mac,
                address,
                hostname: named(fields.next()),
                client_id: named(fields.next()),
            })
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines_are_read_and_bad_ones_skipped() {
        let text = "1767225600 02:00:00:00:00:0A 250.0.28.7 c7 01:02:00:00:00:00:0a\n\
                    1767225601 02:00:00:00:00:0b 250.0.28.8 * *\n\
                    duid 00:01:00:01\n\
                    1767225602 02:00:00:00:00:0c not-an-address * *\n";
        let leases = parse_leases(text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].mac, "02:00:00:00:00:0a");
        assert_eq!(leases[0].hostname.as_deref(), Some("c7"));
        assert_eq!(leases[0].binding().owner, "01:02:00:00:00:00:0a");
        assert_eq!(leases[1].binding().owner, "02:00:00:00:00:0b");
        assert_eq!(leases[1].binding().origin, Origin::Dhcp);
        assert_eq!(leases[1].address, "250.0.28.8".parse::<Ipv4Addr>().unwrap());
    }
}
