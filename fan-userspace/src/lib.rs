//! fan-xdp's user side: the `fan-xdp` command, its host plumbing and the loader.
//!
//! Data flows one way: `cli` -> a command module (`attach`, `detach`, `show`,
//! `stats`, `map`) -> the loader and host plumbing -> the kernel.

pub mod attach;
pub mod cli;
pub mod detach;
pub mod endpoints;
pub mod host;
pub mod loader;
pub mod map;
pub mod naming;
pub mod nat;
pub mod netns;
pub mod ports;
pub mod record;
pub mod run;
pub mod rundir;
pub mod show;
pub mod state;
pub mod stats;

use anyhow::{Result, bail};
use ipnetwork::{IpNetwork, Ipv4Network};

/// The IPv4 network in `net`, or a clear refusal of IPv6.
pub fn ipv4_network(net: IpNetwork, what: &str) -> Result<Ipv4Network> {
    match net {
        IpNetwork::V4(v4) => Ok(v4),
        IpNetwork::V6(_) => bail!("{what} {net} is IPv6: fan-xdp maps IPv4 only"),
    }
}

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("not root: fan-xdp needs root (CAP_NET_ADMIN and CAP_BPF) to change this host");
    }
    Ok(())
}
