//! What the tests of fan-xdp over time share (tests/tests/lifecycle.rs and
//! tests/tests/soak.rs): containers that come and go, the counters that
//! must not move, the agent's footprint, and sizes from the environment.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use fan_common::StatReason;

use crate::{
    topology::{Container, Host, add_container_at},
    traffic::snmp_counter,
};

/// A number from the environment variable `name`, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// Container `addr_index` of `host` (address slice + 10 + index) plugged
/// into the slice bridge through port `veth<port>`: a later container can
/// take an address again on another port.
pub fn container(host: &Host, port: u8, addr_index: u8) -> Result<Container> {
    add_container_at(
        host,
        port,
        Ipv4Addr::from(u32::from(host.slice) + 10 + addr_index as u32),
    )
}

/// Waits (at most ~5 s) until `host`'s slice bridge has no port left: a
/// deleted container namespace takes its veth with it in the kernel's
/// deferred work, and detach keeps a bridge that still has ports.
pub fn wait_until_bridge_empty(host: &Host) -> Result<()> {
    for _ in 0..50 {
        let ports = host
            .ns
            .ip(&["-o", "link", "show", "master", &host.bridge])
            .unwrap_or_default();
        if ports.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{}'s bridge kept its ports", host.ns.name())
}

/// Packets every drop counter of `host` has counted, summed.
pub fn drops(host: &Host) -> Result<u64> {
    let stats = host.pinned_maps()?.stats()?;
    Ok(StatReason::ALL
        .iter()
        .filter(|r| r.name().starts_with("drop_"))
        .map(|r| stats.get(*r).packets)
        .sum())
}

/// TCP resets the stack of container `c` sent or took (`OutRsts` and
/// `EstabResets` of its /proc/net/snmp).
pub fn resets(c: &Container) -> Result<u64> {
    Ok(snmp_counter(&c.ns, "Tcp", "OutRsts")? + snmp_counter(&c.ns, "Tcp", "EstabResets")?)
}

/// Slows what `c` sends to `rate` (a tbf on its eth0, e.g. "100mbit"), so
/// that a transfer spans what the test does meanwhile.
pub fn shape(c: &Container, rate: &str) -> Result<()> {
    c.ns.run(
        "tc",
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb",
            "latency", "50ms",
        ],
    )?;
    Ok(())
}

/// The pid of `host`'s agent, from `fan-xdp show --json`.
pub fn agent_pid(host: &Host) -> Result<u32> {
    let shown: serde_json::Value = serde_json::from_str(&host.fan_xdp_ok(&["show", "--json"])?)?;
    let pid = shown[0]["agent"]["pid"]
        .as_u64()
        .with_context(|| format!("no agent in {shown}"))?;
    Ok(pid as u32)
}

/// What a process holds: resident memory in KiB and open descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: usize,
}

impl Footprint {
    pub fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok(Self { rss_kib, fds })
    }
}
