//! fan-xdp's user side: the `fan-xdp` command, its agent, host plumbing and data-plane loader.
//!
//! The folders are the architecture. Data flows one way:
//! `cli` -> `commands` (one module per command) -> `dataplane` (the programs and
//! their pinned maps) and `host` (netlink, nftables, sysctls) -> the kernel; and
//! a client -> `agent` (the per-namespace daemon) -> `dataplane` and `host`.
//! `state` is where things are kept: pins, `/run` and the records of what
//! attach created.

pub mod agent;
pub mod apply;
pub mod cli;
pub mod cni;
pub mod commands;
pub mod config;
pub mod dataplane;
pub mod host;
pub mod state;

use anyhow::{Context as _, Result, bail};
use ipnetwork::{IpNetwork, Ipv4Network};

/// The IPv4 network in `net`, or a clear refusal of IPv6.
pub fn ipv4_network(net: IpNetwork, what: &str) -> Result<Ipv4Network> {
    match net {
        IpNetwork::V4(v4) => Ok(v4),
        IpNetwork::V6(_) => bail!("{what} {net} is IPv6: fan-xdp maps IPv4 only"),
    }
}

/// Checks that this process has the capabilities fan-xdp's changes need,
/// and names the one that is missing. (Root without them, in a container
/// say, fails the same way; a non-root user with them passes.)
pub fn require_capabilities() -> Result<()> {
    let effective = effective_capabilities()?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !has(CAP_NET_ADMIN) {
        bail!(
            "missing capability CAP_NET_ADMIN: fan-xdp changes links, addresses, routes, sysctls and firewall rules and attaches programs (run it as root)"
        );
    }
    // The kernel lets CAP_SYS_ADMIN stand in for CAP_BPF (and before 5.8 asked for it).
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        bail!(
            "missing capability CAP_BPF (or CAP_SYS_ADMIN): fan-xdp loads and pins eBPF programs (run it as root)"
        );
    }
    Ok(())
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set, from `CapEff` in /proc/self/status.
fn effective_capabilities() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| anyhow::anyhow!("no CapEff in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn effective_capabilities_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(super::parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(super::parse_cap_eff("Name: x\n"), None);
    }
}
