//! Debian's LXD 5.0 on a simulated host (to come).
