//! The namespace's IPv4 sysctls (`/proc/sys/net/ipv4`): forwarding and
//! reverse-path filtering; and of IPv6 (`/proc/sys/net/ipv6`) whether the
//! slice bridge takes router advertisements.

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
    read_at(&format!("/proc/sys/net/ipv4/{key}"))
}

pub fn write_sysctl(key: &str, value: u8) -> Result<()> {
    write_at(&format!("/proc/sys/net/ipv4/{key}"), value)
}

/// The accept_ra sysctl of one interface, under `/proc/sys/net/ipv6`.
pub fn accept_ra_key(iface: &str) -> String {
    format!("conf/{iface}/accept_ra")
}

/// Reads an IPv6 sysctl, e.g. `conf/fan-250-0-1/accept_ra`; None where the
/// namespace has no IPv6 (or the interface none: `disable_ipv6` keeps the
/// directory, a kernel without IPv6 has none).
pub fn read_ipv6_sysctl(key: &str) -> Result<Option<u8>> {
    let path = format!("/proc/sys/net/ipv6/{key}");
    if !std::path::Path::new(&path).exists() {
        return Ok(None);
    }
    read_at(&path).map(Some)
}

pub fn write_ipv6_sysctl(key: &str, value: u8) -> Result<()> {
    write_at(&format!("/proc/sys/net/ipv6/{key}"), value)
}

fn read_at(path: &str) -> Result<u8> {
    let value = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))
}

fn write_at(path: &str, value: u8) -> Result<()> {
    std::fs::write(path, value.to_string()).with_context(|| format!("writing {path}"))
}
