//! Drop events, from the programs to `fan-xdp monitor`. The agent is the
//! only reader of the programs' event ring (a ring buffer has one consumer
//! position: two readers would take each other's events) and writes each
//! event as one JSON line to every monitor connected over its control
//! socket (`{"op":"monitor","passes":false}`), as `cilium monitor` gets
//! its events from the agent. A monitor that does not keep up loses
//! events, counted in the next line it gets; it never holds up the agent.

use std::{
    io::{ErrorKind, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::lpm_trie::Key;
use fan_common::{
    Encap, StatReason, WireAddr,
    events::{Event, EventKind, Program},
};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::{
    dataplane::{EventRing, PinnedMaps, sample_passes},
    state::StateDir,
};

/// Events read from the ring in one go before the agent's loop goes on.
const EVENTS_PER_ROUND: usize = 1024;
/// Bytes queued for a monitor that reads slowly; past them its events are lost.
const QUEUE_LIMIT: usize = 256 * 1024;

/// One event as monitors get it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// `drop`, or `pass` (a sample of a packet passed on to the stack).
    pub kind: String,
    /// The counter the packet moved (`fan-xdp stats` names it).
    pub reason: String,
    pub program: String,
    /// The device the program runs on.
    pub device: String,
    pub len: u32,
    /// The IP-in-IP header's addresses, if the packet has one.
    pub outer: Option<Addresses>,
    /// The container's or host's packet's addresses (inside IP-in-IP).
    pub inner: Option<Addresses>,
    /// The innermost IP protocol number.
    pub protocol: u8,
    /// The wire format ("ipip" or "vxlan") of the fan the inner addresses
    /// belong to, where one does.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub fan_type: Option<String>,
    /// Events this monitor lost (it read too slowly) just before this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The `kind` of a record, by the event's kind.
const KIND_DROP: &str = "drop";
const KIND_PASS: &str = "pass";

impl EventRecord {
    /// A sample of a passed packet (only for monitors that asked for them).
    fn is_pass(&self) -> bool {
        self.kind == KIND_PASS
    }

    /// `fan_of`: the wire format of the fan an overlay address is in.
    pub fn of(event: &Event, fan_of: impl Fn(WireAddr) -> Option<&'static str>) -> Self {
        let addresses = |src: WireAddr, dst: WireAddr| {
            (src != WireAddr::UNSPECIFIED || dst != WireAddr::UNSPECIFIED).then(|| Addresses {
                src: Ipv4Addr::from(src),
                dst: Ipv4Addr::from(dst),
            })
        };
        Self {
            kind: match EventKind::try_from(event.kind) {
                Ok(EventKind::Drop) => KIND_DROP.into(),
                Ok(EventKind::Pass) => KIND_PASS.into(),
                Err(other) => format!("kind {other}"),
            },
            reason: StatReason::from_index(event.reason)
                .map_or_else(|| format!("reason {}", event.reason), |r| r.name().into()),
            program: Program::try_from(event.program)
                .map_or_else(|other| format!("program {other}"), |p| p.name().into()),
            device: device_name(event.ifindex),
            len: event.len,
            outer: addresses(event.outer_src, event.outer_dst),
            inner: addresses(event.inner_src, event.inner_dst),
            protocol: event.protocol,
            fan_type: [event.inner_dst, event.inner_src]
                .into_iter()
                .filter(|a| *a != WireAddr::UNSPECIFIED)
                .find_map(fan_of)
                .map(str::to_string),
            lost: 0,
        }
    }
}

impl std::fmt::Display for EventRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lost > 0 {
            writeln!(
                f,
                "({} event(s) lost: this monitor read too slowly)",
                self.lost
            )?;
        }
        write!(
            f,
            "{} {} at {} on {}, {} bytes",
            self.kind, self.reason, self.program, self.device, self.len
        )?;
        if let Some(fan_type) = &self.fan_type {
            write!(f, ", {fan_type} fan")?;
        }
        if let Some(outer) = self.outer {
            write!(f, ", outer {} -> {}", outer.src, outer.dst)?;
        }
        if let Some(inner) = self.inner {
            write!(f, ", inner {} -> {}", inner.src, inner.dst)?;
        }
        match self.protocol {
            0 => Ok(()),
            1 => write!(f, " (icmp)"),
            6 => write!(f, " (tcp)"),
            17 => write!(f, " (udp)"),
            other => write!(f, " (protocol {other})"),
        }
    }
}

fn device_name(ifindex: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A connected monitor.
struct Client {
    stream: UnixStream,
    passes: bool,
    /// What it has not read yet.
    queue: Vec<u8>,
    lost: u64,
}

/// The ring and the monitors the agent serves.
#[derive(Default)]
pub struct Monitors {
    ring: Option<AsyncFd<EventRing>>,
    clients: Vec<Client>,
    /// Whether the programs were asked for samples of passes.
    sampling: bool,
}

impl Monitors {
    /// Follows the ring pinned in `dir`: opened once attach created it,
    /// opened again when a new attach created another, let go after the
    /// last detach. Also asks the programs for samples while a monitor
    /// wants them.
    pub fn refresh(&mut self, dir: &StateDir) {
        if !dir.exists() {
            self.ring = None;
            self.sampling = false;
            return;
        }
        if self
            .ring
            .as_ref()
            .is_some_and(|ring| !ring.get_ref().is_current(dir))
        {
            self.ring = None;
            self.sampling = false;
        }
        if self.ring.is_none() {
            // SAFETY: the ring owns its fd for as long as the AsyncFd holds
            // it, and as_raw_fd always returns that fd.
            let opened =
                EventRing::open(dir).and_then(|ring| Ok(unsafe { AsyncFd::register(ring) }?));
            match opened {
                Ok(ring) => self.ring = Some(ring),
                // Pinned by a fan-xdp of map layout 2: no ring until an attach.
                Err(e) => debug!("the event ring: {e:#}"),
            }
        }
        let wanted = self.clients.iter().any(|c| c.passes);
        if self.ring.is_some() && wanted != self.sampling {
            match sample_passes(dir, wanted) {
                Ok(()) => {
                    self.sampling = wanted;
                    info!(
                        "samples of passed packets {}",
                        if wanted { "on" } else { "off" }
                    );
                }
                Err(e) => warn!("{e:#}"),
            }
        }
    }

    /// Takes on a monitor whose request was answered on `stream`.
    pub fn add(&mut self, stream: UnixStream, passes: bool, dir: &StateDir) -> Result<()> {
        stream
            .set_nonblocking(true)
            .context("making a monitor's socket non-blocking")?;
        self.clients.push(Client {
            stream,
            passes,
            queue: Vec::new(),
            lost: 0,
        });
        self.refresh(dir);
        Ok(())
    }

    /// Waits until the ring has events, then hands a round of them to every
    /// monitor. Never returns while there is no ring.
    pub async fn pump(&mut self, dir: &StateDir) {
        let Some(ring) = self.ring.as_mut() else {
            return std::future::pending().await;
        };
        let Ok(mut ready) = ring.readable_mut().await else {
            self.ring = None;
            return;
        };
        let mut lines = Vec::new();
        // Each record names its fan's wire format, from the fans as they are now.
        let maps = (!self.clients.is_empty())
            .then(|| PinnedMaps::open(dir).ok())
            .flatten();
        let fan_of = |addr: WireAddr| {
            let entry = maps.as_ref()?.config.get(&Key::new(32, addr), 0).ok()?;
            Encap::try_from(entry.encap).ok().map(Encap::name)
        };
        while lines.len() < EVENTS_PER_ROUND {
            let Some(event) = ready.get_inner_mut().next_event() else {
                // Drained: the kernel wakes the ring's reader for the next
                // event only once it has read everything before it.
                ready.clear_ready();
                break;
            };
            // Events are read (and so consumed) whether or not anyone
            // listens: a full ring would refuse the next drops' events.
            if !self.clients.is_empty() {
                lines.push(EventRecord::of(&event, fan_of));
            }
        }
        let before = self.clients.len();
        self.clients.retain_mut(|client| client.send(&lines));
        if self.clients.len() != before {
            self.refresh(dir);
        }
    }

    /// Lets the programs stop sampling as the agent stops.
    pub fn stop(&mut self, dir: &StateDir) {
        self.clients.clear();
        if self.sampling && dir.exists() {
            let _ = sample_passes(dir, false);
        }
    }
}

impl Client {
    /// Queues `records` (passes only if asked for) and writes what the
    /// socket takes; false once the monitor has gone.
    fn send(&mut self, records: &[EventRecord]) -> bool {
        for record in records {
            if record.is_pass() && !self.passes {
                continue;
            }
            if self.queue.len() > QUEUE_LIMIT {
                self.lost += 1;
                continue;
            }
            let mut record = record.clone();
            record.lost = std::mem::take(&mut self.lost);
            let Ok(mut line) = serde_json::to_vec(&record) else {
                continue;
            };
            line.push(b'\n');
            self.queue.extend_from_slice(&line);
        }
        while !self.queue.is_empty() {
            match self.stream.write(&self.queue) {
                Ok(0) => return false,
                Ok(n) => {
                    self.queue.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Asks the agent of this namespace for its events: the stream of their
/// JSON lines, after the agent's acknowledgement.
pub fn subscribe(run: &crate::state::rundir::RunDir, passes: bool) -> Result<UnixStream> {
    if super::running(run).is_none() {
        bail!(
            "no fan-xdp run serves this network namespace: the agent reads the programs' events (attach starts it)"
        );
    }
    let socket = super::Files::of(run).socket;
    let mut stream = UnixStream::connect(&socket)
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    writeln!(
        stream,
        "{}",
        serde_json::json!({ "op": "monitor", "passes": passes })
    )?;
    // The acknowledgement, read byte by byte: a buffered reader would take
    // the first events with it.
    let mut answer = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        std::io::Read::read_exact(&mut stream, &mut byte)
            .context("waiting for the agent's answer")?;
        answer.push(byte[0]);
    }
    let answer: serde_json::Value = serde_json::from_slice(&answer)
        .with_context(|| format!("the agent answered {:?}", String::from_utf8_lossy(&answer)))?;
    if answer["ok"] != true {
        bail!(
            "the agent refused monitor: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(stream)
}
