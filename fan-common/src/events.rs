//! Events the programs hand `fan-xdp run` through a BPF ring buffer: every
//! drop (rate-limited per CPU), and samples of the rest while a
//! `fan-xdp monitor` asks for them. The agent is the ring's only reader
//! and fans its events out to the monitors.

/// Bytes of the ring buffer: a few thousand events between two reads.
pub const EVENT_RING_BYTES: u32 = 256 * 1024;

/// Events each CPU may send per second once its burst is spent...
pub const EVENTS_PER_SECOND: u64 = 10;
/// ...and at once after a quiet spell. Drops and samples have a budget each.
pub const EVENT_BURST: u64 = 20;

/// Bit of the settings map's slot 0: sample what is not dropped too.
pub const SAMPLE_PASSES: u32 = 1;

/// The program an event comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Program {
    EncapForward = 0,
    EncapPort = 1,
    EncapOutput = 2,
    DecapTc = 3,
    DecapXdp = 4,
}

impl Program {
    /// The program's name in the object (and in `bpftool prog`).
    pub const fn name(self) -> &'static str {
        match self {
            Program::EncapForward => "fan_encap_forward",
            Program::EncapPort => "fan_encap_port",
            Program::EncapOutput => "fan_encap_output",
            Program::DecapTc => "fan_decap_tc",
            Program::DecapXdp => "fan_decap_xdp",
        }
    }

    /// Whether the program sees underlay traffic (its first IPv4 header is
    /// an outer one) rather than containers' and the host's.
    pub const fn decapsulates(self) -> bool {
        matches!(self, Program::DecapTc | Program::DecapXdp)
    }
}

impl TryFrom<u8> for Program {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Ok(match value {
            0 => Program::EncapForward,
            1 => Program::EncapPort,
            2 => Program::EncapOutput,
            3 => Program::DecapTc,
            4 => Program::DecapXdp,
            other => return Err(other),
        })
    }
}

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

/// One event. Addresses are as on the wire (network byte order, read with
/// `u32::from_be`); 0 where the packet has no such header (an outer header
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
    pub outer_src: u32,
    pub outer_dst: u32,
    pub inner_src: u32,
    pub inner_dst: u32,
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
