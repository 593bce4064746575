//! The bypass's owner in the agent: it decides whether the fast path may
//! skip netfilter (`host::bypass`) as soon as the host's nftables ruleset
//! changes, not on the next resync.
//!
//! The kernel announces every committed nftables change (a table, chain,
//! rule or set added or removed: what `nft monitor` prints, and what
//! iptables-nft writes goes through the same path) to the members of the
//! netlink group NFNLGRP_NFTABLES. A thread of its own waits on that
//! socket; when a change comes it gathers the rest of the transaction,
//! dumps the ruleset with `nft -j list ruleset` (megabytes on a host with
//! kube-proxy: never on the agent's event loop) and writes the verdict to
//! the pinned bypass map, then tells the loop for the status. Legacy
//! iptables tables announce nothing there: the thread also decides again
//! every resync period, the safety net it had before.

use std::{
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use log::{info, warn};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use tokio::sync::watch;

use super::stoppable::{StopAsked, Stoppable};
use crate::{dataplane::PinnedMaps, host::bypass, state::StateDir};

/// The netlink multicast group of nftables' change notifications
/// (`NFNLGRP_NFTABLES` in linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

/// One transaction's notifications arrive back to back: the thread waits
/// this long after the last one before it reads the ruleset...
const QUIET: Duration = Duration::from_millis(5);
/// ...but no longer than this after the first, so a steady stream of
/// changes is still followed.
const GATHER_MOST: Duration = Duration::from_millis(50);
/// How often the thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// Decides the bypass from the setting in the pinned map and the host's
/// netfilter now, and writes it if it changed. `None` once no fan is
/// attached (there is no map to write).
pub fn decide(dir: &StateDir) -> Result<Option<bypass::Verdict>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut maps = PinnedMaps::open(dir)?;
    let value = maps.bypass()?;
    let (decided, verdict) = bypass::decide(bypass::setting_of(value));
    if decided != value {
        maps.set_bypass(decided)?;
        info!(
            "bypass {} ({})",
            if verdict.on { "on" } else { "off" },
            verdict.why
        );
    }
    Ok(Some(verdict))
}

/// The thread that keeps the bypass decided, and the verdicts it reaches.
pub struct RulesetWatch {
    /// The latest verdict; changed whenever the thread decides.
    pub verdicts: watch::Receiver<Option<bypass::Verdict>>,
    _thread: Stoppable,
}

impl RulesetWatch {
    /// Subscribes to nftables' notifications in this network namespace, decides
    /// once, and starts the thread; it decides again on every change and at
    /// least every `resync`.
    pub fn start(dir: StateDir, resync: Duration) -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_NETFILTER).context("opening a netfilter netlink socket")?;
        socket
            .bind_auto()
            .context("binding the netfilter netlink socket")?;
        socket
            .add_membership(NFNLGRP_NFTABLES)
            .context("subscribing to nftables' change notifications")?;
        socket.set_non_blocking(true)?;
        // Subscribed first, then the first decision: a change between the
        // two is announced, so none is missed.
        let first = decide(&dir).unwrap_or_else(|e| {
            warn!("deciding the bypass: {e:#}");
            None
        });
        let (verdicts_tx, verdicts) = watch::channel(first);
        let thread = Stoppable::spawn("ruleset-watch", move |stop| {
            follow(&socket, &dir, resync, &verdicts_tx, &stop);
        })?;
        Ok(Self {
            verdicts,
            _thread: thread,
        })
    }
}

/// The thread: waits for a change (or the resync period), then decides.
fn follow(
    socket: &Socket,
    dir: &StateDir,
    resync: Duration,
    verdicts: &watch::Sender<Option<bypass::Verdict>>,
    stop: &StopAsked,
) {
    let mut decided_at = Instant::now();
    while !stop.get() {
        let until_resync = resync.saturating_sub(decided_at.elapsed());
        let changed = match wait_readable(socket, until_resync.min(STOP_CHECK)) {
            Ok(readable) => readable,
            Err(e) => {
                warn!("waiting for nftables' notifications: {e}");
                std::thread::sleep(STOP_CHECK);
                false
            }
        };
        if changed {
            gather(socket);
        } else if decided_at.elapsed() < resync {
            continue;
        }
        match decide(dir) {
            Ok(verdict) => {
                verdicts.send_if_modified(|latest| {
                    let modified = *latest != verdict;
                    *latest = verdict;
                    modified
                });
            }
            Err(e) => warn!("deciding the bypass: {e:#}"),
        }
        decided_at = Instant::now();
    }
}

/// Reads the notifications of one transaction (and any that follow it
/// closely): their content does not matter, only that the ruleset changed.
/// A full socket buffer (ENOBUFS) says the same.
fn gather(socket: &Socket) {
    let first = Instant::now();
    let mut buffer = Vec::with_capacity(64 * 1024);
    loop {
        while socket.recv(&mut buffer, 0).is_ok() {
            buffer.clear();
        }
        if first.elapsed() >= GATHER_MOST || !wait_readable(socket, QUIET).unwrap_or(false) {
            return;
        }
    }
}

/// Whether `socket` has something to read within `limit`.
fn wait_readable(socket: &Socket, limit: Duration) -> std::io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = limit.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd on our stack, alive for the call, and its count.
    let ready = unsafe { libc::poll(&raw mut poll, 1, millis) };
    match ready {
        -1 => {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}
