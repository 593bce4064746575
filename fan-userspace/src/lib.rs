//! fan-xdp's user side: loading the data plane and (later) host plumbing.

pub mod loader;
pub mod naming;
