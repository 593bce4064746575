//! What the tests of fan-xdp over time share (tests/tests/lifecycle.rs and
//! tests/tests/soak.rs): containers that come and go, the counters that
//! must not move, the agent's footprint, and sizes from the environment.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use fan_common::StatReason;

use crate::{
    topology::{Container, Fleet, Host, add_container_at},
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

/// `hosts` hosts with forwarding on (detach leaves it on: whatever started
/// after attach may rely on it) and each one's [`lifecycle_snapshot`],
/// taken before anything of fan-xdp's is there.
///
/// [`lifecycle_snapshot`]: crate::snapshot::lifecycle_snapshot
pub fn fleet_as_found(hosts: u8) -> Result<(Fleet, Vec<String>)> {
    let fleet = Fleet::new(hosts)?;
    for host in &fleet.hosts {
        host.ns.sysctl("net.ipv4.ip_forward", "1")?;
    }
    let before = fleet
        .hosts
        .iter()
        .map(|h| crate::snapshot::lifecycle_snapshot(&h.ns))
        .collect::<Result<_>>()?;
    Ok((fleet, before))
}

/// Two attached hosts with a container each, the second host already
/// delivering straight into its container what the first one's sends.
pub fn attached_pair() -> Result<Fleet> {
    let fleet = Fleet::new(2)?;
    fleet.attach_all(&[])?;
    let fleet = fleet.with_containers(1)?;
    let (c1, h2) = (&fleet.hosts[0].containers[0], &fleet.hosts[1]);
    anyhow::ensure!(
        h2.wait_for_direct(&c1.ns, h2.containers[0].addr)?,
        "no direct delivery between the pair"
    );
    Ok(fleet)
}

/// The tag (instruction hash) of the program the link pinned at `pin` runs.
pub fn linked_tag(pin: &std::path::Path) -> Result<u64> {
    use aya::programs::links::{FdLink, PinnedLink};
    let link = FdLink::from(PinnedLink::from_pin(pin)?);
    let id = link.info()?.program_id();
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| p.tag())
        .with_context(|| format!("no program {id} for the link at {}", pin.display()))
}

/// The tags of the bridge's program and of the host device's in `other`
/// (a load of its own): the output hook's program encapsulates the same
/// way with another tag, which makes it the "other version" a link can be
/// put on, as an older fan-xdp would have left it, for attach to replace.
pub fn forward_and_output_tags(
    other: &mut fan_userspace::dataplane::Dataplane,
) -> Result<(u64, u64)> {
    use fan_userspace::dataplane::{ENCAP_FORWARD, ENCAP_OUTPUT};
    let forward = other.classifier(ENCAP_FORWARD)?.info()?.tag();
    let output = other.classifier(ENCAP_OUTPUT)?.info()?.tag();
    anyhow::ensure!(forward != output, "the two programs have one tag");
    Ok((forward, output))
}
