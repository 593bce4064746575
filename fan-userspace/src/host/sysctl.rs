//! The namespace's IPv4 sysctls (`/proc/sys/net/ipv4`): forwarding and
//! reverse-path filtering.

use anyhow::{Context as _, Result};

/// The forwarding switch of the namespace.
pub const IP_FORWARD: &str = "ip_forward";
/// Loose reverse-path filtering: a source must be routable through some interface.
pub const RP_FILTER_LOOSE: u8 = 2;
const RP_FILTER_STRICT: u8 = 1;

/// The rp_filter sysctl of one interface.
pub fn rp_filter_key(iface: &str) -> String {
    format!("conf/{iface}/rp_filter")
}

/// Whether reverse-path filtering on `iface` is strict: the kernel applies
/// the larger of `conf/all/rp_filter` and the device's own value.
pub fn rp_filter_is_strict(iface: &str) -> Result<bool> {
    let effective = read_sysctl("conf/all/rp_filter")?.max(read_sysctl(&rp_filter_key(iface))?);
    Ok(effective == RP_FILTER_STRICT)
}

/// Reads an IPv4 sysctl of the calling thread's namespace, e.g. `ip_forward`
/// or `conf/eth0/rp_filter`.
pub fn read_sysctl(key: &str) -> Result<u8> {
    let path = format!("/proc/sys/net/ipv4/{key}");
    let value = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))
}

pub fn write_sysctl(key: &str, value: u8) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/{key}");
    std::fs::write(&path, value.to_string()).with_context(|| format!("writing {path}"))
}
