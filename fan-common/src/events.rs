//! Events the programs hand `fan-xdp run` through a BPF ring buffer: every
//! drop (rate-limited per CPU), and samples of the rest while a
//! `fan-xdp monitor` asks for them. The agent is the ring's only reader
//! and fans its events out to the monitors.

use crate::WireAddr;
pub use crate::program::Program;

/// Bytes of the ring buffer: a few thousand events between two reads.
pub const EVENT_RING_BYTES: u32 = 256 * 1024;

/// Events each CPU may send per second once its burst is spent...
pub const EVENTS_PER_SECOND: u64 = 10;
/// ...and at once after a quiet spell. Drops and samples have a budget each.
pub const EVENT_BURST: u64 = 20;

/// Bit of the settings map's slot 0: sample what is not dropped too.
pub const SAMPLE_PASSES: u32 = 1;

/// Whether the event is a drop or a sample of a packet passed on to the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    Drop = 0,
    Pass = 1,
}

impl TryFrom<u8> for EventKind {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(EventKind::Drop),
            1 => Ok(EventKind::Pass),
            other => Err(other),
        }
    }
}

/// One event. Addresses are as on the wire; 0.0.0.0 where the packet has
/// no such header (an outer header
/// on a container's packet not yet encapsulated, an inner one on plain
/// underlay traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Event {
    /// The counter the packet moved ([`crate::StatReason`]).
    pub reason: u32,
    /// The device the program runs on.
    pub ifindex: u32,
    /// The packet's length in bytes.
    pub len: u32,
    pub outer_src: WireAddr,
    pub outer_dst: WireAddr,
    pub inner_src: WireAddr,
    pub inner_dst: WireAddr,
    /// [`EventKind`].
    pub kind: u8,
    /// [`Program`].
    pub program: u8,
    /// The IP protocol of the innermost IPv4 header; 0 for none.
    pub protocol: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
// SAFETY: Event is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for Event {}
