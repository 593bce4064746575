//! The host agent (`fan-xdp run`), as the rest of fan-xdp sees it: one per
//! network namespace, found through its run directory.
//!
//! - `agent.lock`, held for the agent's whole life (never deleted: see
//!   [`crate::state::rundir`]); it holds the agent's pid, so a second agent refuses
//!   and names the first.
//! - `agent.json`, its status (pid, version, since, last sync, bindings),
//!   rewritten after each sync; `show` reads it.
//! - `agent.sock`, its control socket: one JSON request per connection
//!   (`{"op":"status"}`, `{"op":"reload"}`, `{"op":"stop"}`, the binding
//!   ops of [`bindings`], and `{"op":"monitor"}`, answered with a stream of
//!   events: [`monitor`]), answered after the agent has acted; only root
//!   may ask (SO_PEERCRED).
//! - `agent.log`, where an agent that `attach` started writes (capped).
//!
//! `attach` starts an agent where none runs, `detach` of the last fan stops
//! one that attach started, and the agent is stopped through its socket,
//! never by a recorded pid (which may have been reused).

pub mod bindings;
pub mod config;
mod control;
mod delivery;
pub mod dhcp;
pub mod endpoints;
mod fans;
pub mod follow;
mod heartbeat;
pub mod known;
mod lifecycle;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod ownership;
pub mod pmtu;
pub mod ports;
mod ruleset;
pub mod run;
mod stoppable;
mod sync;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::OpenOptionsExt as _, net::UnixStream},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::state::rundir::{RunDir, open_lock_file, try_flock, write_private_atomically};

pub use lifecycle::{LOG_LIMIT, cap_log, ensure, remove_log, stop};

/// This build: the package version and a hash of the eBPF object, so that
/// an attach from a newer fan-xdp (or with other programs) replaces an
/// older agent.
pub fn version() -> String {
    // The tests' stand-in for an agent of an older release.
    if cfg!(feature = "fault-injection")
        && std::env::var("FAN_XDP_INJECT").is_ok_and(|v| v == "version:older")
    {
        return "0.0.0+older".into();
    }
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in crate::dataplane::EBPF_OBJECT {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}+{hash:016x}", env!("CARGO_PKG_VERSION"))
}

/// Test hook: `FAN_XDP_INJECT=delay:<point>:<ms>` makes the agent's work
/// at `point` (`apply`: an attach or detach, see [`crate::apply`]; `dhcp-stop`:
/// stopping a DHCP server; `delivery`: the endpoint map keeper's periodic full
/// read, blocking its task) take that much longer, as a slow kernel or a
/// dnsmasq that ignores SIGTERM would. Honoured only in builds with the
/// `fault-injection` feature.
pub fn injected_delay(point: &str) {
    if !cfg!(feature = "fault-injection") {
        return;
    }
    let Ok(inject) = std::env::var("FAN_XDP_INJECT") else {
        return;
    };
    if let Some(("delay", rest)) = inject.split_once(':')
        && let Some((at, millis)) = rest.split_once(':')
        && at == point
        && let Ok(millis) = millis.parse()
    {
        std::thread::sleep(Duration::from_millis(millis));
    }
}

/// What the agent says about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub version: String,
    /// Started by `attach` (and so stopped by the last `detach`).
    pub started_by_attach: bool,
    /// Unix times (seconds).
    pub since: u64,
    pub last_sync: u64,
    /// The fans are up and the first sync is done.
    pub ready: bool,
    /// Addresses delivered straight into containers, by where the binding
    /// came from (`learned`: the bridge's neighbour and forwarding tables).
    pub bindings: BTreeMap<String, u64>,
    /// Container ports running the encapsulating program.
    pub ports: u64,
    /// Full reads of every link, neighbour and forwarding entry so far (at
    /// start, periodically, on reload, or when an event cannot be taken in
    /// alone); events otherwise change only what they are about.
    #[serde(default)]
    pub full_reads: u64,
    /// Whether the fast path may skip netfilter, and why (not).
    pub bypass: bool,
    pub bypass_why: String,
}

/// The agent's files in a run directory.
pub struct Files {
    pub lock: PathBuf,
    pub status: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Files {
    pub fn of(run: &RunDir) -> Self {
        Self {
            lock: run.path.join("agent.lock"),
            status: run.path.join("agent.json"),
            socket: run.path.join("agent.sock"),
            log: run.path.join("agent.log"),
        }
    }
}

/// `agent.lock`, held: this process is the namespace's agent.
pub struct AgentLock {
    _file: fs::File,
}

/// Takes `agent.lock` for this process's life, or refuses, naming the agent
/// that holds it.
pub fn lock(run: &RunDir) -> Result<AgentLock> {
    run.create()?;
    let files = Files::of(run);
    let mut file = open_lock_file(&files.lock)?;
    if !try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        let holder = holder_pid(&files).map_or_else(|| "unknown".to_string(), |p| p.to_string());
        bail!(
            "another fan-xdp run (pid {holder}) already serves this network namespace ({} is held)",
            files.lock.display()
        );
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(AgentLock { _file: file })
}

fn holder_pid(files: &Files) -> Option<u32> {
    fs::read_to_string(&files.lock).ok()?.trim().parse().ok()
}

/// The pid of the agent serving this namespace, if one runs (it holds the lock).
pub fn running(run: &RunDir) -> Option<u32> {
    let files = Files::of(run);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&files.lock)
        .ok()?;
    // A shared lock we get is released when `file` closes.
    if try_flock(&file, libc::LOCK_SH | libc::LOCK_NB).unwrap_or(false) {
        return None;
    }
    Some(holder_pid(&files).unwrap_or(0))
}

/// Writes the status atomically (a reader never sees half of it).
pub fn write_status(run: &RunDir, status: &Status) -> Result<()> {
    write_private_atomically(&Files::of(run).status, &serde_json::to_vec(status)?)
        .context("publishing the agent's status")
}

/// The status of the agent serving this namespace, if one runs. A status
/// file left by an agent that was killed (SIGKILL leaves it, ready) is not
/// the status of the agent that took the lock since: until that one has
/// written its own, there is none.
pub fn status(run: &RunDir) -> Option<Status> {
    let holder = running(run)?;
    let text = fs::read_to_string(Files::of(run).status).ok()?;
    let status: Status = serde_json::from_str(&text).ok()?;
    (status.pid == holder).then_some(status)
}

/// Sends `op` to the agent and returns its answer.
pub fn request(run: &RunDir, op: &str, timeout: Duration) -> Result<serde_json::Value> {
    send(run, &serde_json::json!({ "op": op }), timeout)
}

/// Sends one request to the agent and returns its answer, or the agent's
/// refusal as an error.
pub fn send(
    run: &RunDir,
    request: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let socket = Files::of(run).socket;
    let mut stream = UnixStream::connect(&socket)
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("waiting for the agent's answer")?;
    let answer: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("the agent answered {line:?}"))?;
    if answer["ok"] != true {
        bail!(
            "the agent refused {}: {}",
            request["op"].as_str().unwrap_or("the request"),
            answer["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(answer)
}

/// Longest request line the agent reads (a binding is well under it).
const REQUEST_MAX: usize = 4096;

/// Reads one request line from a control connection (bounded): a JSON
/// object that names its op.
pub fn parse_request(mut reader: impl std::io::Read) -> Result<serde_json::Value> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < REQUEST_MAX {
        if reader.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let request: serde_json::Value =
        serde_json::from_slice(&line).context("a request is one JSON object")?;
    if !request["op"].is_string() {
        bail!("a request names its op");
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    #[test]
    fn requests_name_their_op() {
        assert_eq!(
            super::parse_request(&b"{\"op\":\"stop\"}\n"[..]).unwrap()["op"],
            "stop"
        );
        assert!(super::parse_request(&b"{\"op\":1}\n"[..]).is_err());
        assert!(super::parse_request(&b"stop\n"[..]).is_err());
    }

    #[test]
    fn the_version_names_the_programs() {
        let version = super::version();
        assert!(version.starts_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(version.len(), env!("CARGO_PKG_VERSION").len() + 17);
    }
}
