//! Debian's LXC 5.0 on a simulated host (to come).
