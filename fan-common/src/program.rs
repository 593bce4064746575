//! fan-xdp's programs, by what they are.

/// One of fan-xdp's programs (one per hook they run at): what events name,
/// and what the encapsulating code is told it runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Program {
    EncapForward = 0,
    EncapPort = 1,
    EncapOutput = 2,
    DecapTc = 3,
    DecapXdp = 4,
    /// TC ingress of a VXLAN fan's overlay port (`B`): frames the slice
    /// bridge sends towards other hosts.
    VxlanOut = 5,
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
            Program::VxlanOut => "fan_vxlan_out",
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
            5 => Program::VxlanOut,
            other => return Err(other),
        })
    }
}
