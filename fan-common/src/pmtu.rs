//! Path MTU towards remote underlay hosts, learned from the ICMP
//! "fragmentation needed" messages routers send about our outer packets.
//!
//! No tunnel module handles those messages here, so the kernel learns
//! nothing from them; the programs learn instead, by the kernel's own rules
//! (net.ipv4.route.min_pmtu and mtu_expires at their defaults), and answer
//! containers whose packets no longer fit.

/// No IPv4 link is narrower (RFC 791): a smaller reported MTU is ignored.
pub const MIN_LINK_MTU: u32 = 68;
/// The kernel's `net.ipv4.route.min_pmtu` default: smaller reports are
/// clamped up to it, so a forged message cannot shrink a path below it.
pub const MIN_PMTU: u32 = 552;
/// The kernel's `net.ipv4.route.mtu_expires` default: a learned MTU is
/// forgotten after this, and until then only a lower one replaces it.
pub const PMTU_EXPIRES_NS: u64 = 600 * 1_000_000_000;

/// What to do with a reported next-hop MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmtuVerdict {
    /// Remember this path MTU.
    Learn(u32),
    /// Below any real link's MTU.
    TooSmall,
    /// Not below the length of the packet it is about: it would not have
    /// been refused.
    NotSmaller,
    /// Not below the path MTU already known and not yet expired.
    NotLower,
}

/// Judges a reported MTU about a packet of `quoted_len` bytes, given the
/// unexpired path MTU already known for that host, if any.
#[inline(always)]
pub const fn judge(reported: u32, quoted_len: u32, current: Option<u32>) -> PmtuVerdict {
    if reported < MIN_LINK_MTU {
        return PmtuVerdict::TooSmall;
    }
    if reported >= quoted_len {
        return PmtuVerdict::NotSmaller;
    }
    let mtu = if reported < MIN_PMTU {
        MIN_PMTU
    } else {
        reported
    };
    match current {
        Some(known) if mtu >= known => PmtuVerdict::NotLower,
        _ => PmtuVerdict::Learn(mtu),
    }
}

/// Whether an entry learned at `learned_ns` still holds at `now_ns`.
#[inline(always)]
pub const fn is_fresh(learned_ns: u64, now_ns: u64) -> bool {
    now_ns.wrapping_sub(learned_ns) < PMTU_EXPIRES_NS
}
