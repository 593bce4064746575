//! Types and arithmetic shared by the fan-xdp eBPF programs and user space.
//!
//! Everything here is `no_std` and allocation-free so the kernel side and the
//! user side run the very same code: the Fan mapping exists exactly once.
#![no_std]

pub mod addr;
pub mod events;
pub mod fan;
pub mod ipv4;
pub mod maps;
pub mod plan;
pub mod pmtu;
pub mod program;
pub mod stats;
pub mod vxlan;

pub use addr::WireAddr;
pub use fan::{FanError, FanMap};
pub use maps::{Encap, FanEntry};
pub use program::Program;
pub use stats::{Counter, FanStatKey, StatReason};
