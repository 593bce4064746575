//! The kernel's ARP table: one for the host and every namespace on it,
//! each container's included. Its figures and limits are visible only in
//! the initial network namespace (`/proc/net/stat/arp_cache` and the
//! `gc_thresh` sysctls are not there elsewhere).

use std::fs;

use anyhow::{Context as _, Result};

/// `net.ipv4.neigh.default.gc_thresh1` to `3`: past the third the kernel
/// makes no new entry, and so answers no ARP request from a new sender.
pub const GC_THRESH: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

const STAT: &str = "/proc/net/stat/arp_cache";

/// What the kernel says of its ARP table now.
pub struct ArpTable {
    pub entries: u64,
    /// How often since boot it was full (the per-CPU counts summed).
    pub fulls: u64,
    /// The most entries it makes (`gc_thresh3`).
    pub limit: u64,
}

impl ArpTable {
    pub fn read() -> Result<Self> {
        let stat = fs::read_to_string(STAT).with_context(|| format!("reading {STAT}"))?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .with_context(|| format!("{STAT} is empty"))?
            .split_whitespace()
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .with_context(|| format!("no {name} in {STAT}"))
        };
        let (entries_at, fulls_at) = (column("entries")?, column("table_fulls")?);
        // One line per CPU: the entries are the table's (the same on each),
        // the fulls each CPU's own.
        let (mut entries, mut fulls) = (0, 0);
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |at: usize| -> Result<u64> {
                let field = fields
                    .get(at)
                    .with_context(|| format!("a short line in {STAT}"))?;
                u64::from_str_radix(field, 16).with_context(|| format!("{field} in {STAT}"))
            };
            entries = hex(entries_at)?;
            fulls += hex(fulls_at)?;
        }
        let limit = fs::read_to_string(GC_THRESH[2])
            .with_context(|| format!("reading {}", GC_THRESH[2]))?;
        Ok(Self {
            entries,
            fulls,
            limit: limit.trim().parse().context("gc_thresh3")?,
        })
    }
}
