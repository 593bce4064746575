//! A reference model of fan-xdp's six programs, written from the stated
//! policy (docs/security.md, docs/design.md) and independent of fan-ebpf:
//! given the host's configuration, one frame and the test run's context, it
//! predicts the verdict, the exact
//! frame the program leaves and the counters that move.
//!
//! From fan-common it uses only the Fan arithmetic (`FanMap`); headers,
//! checksums, ECN, TTL, the outer header, MTU rules and the route lookup's
//! outcome are computed here again.

pub mod config;
mod decap;
mod encap;
#[cfg(test)]
mod fixtures;
mod pmtu;
pub mod route;
mod vxlan;
pub mod wire;

pub use config::Config;
pub use encap::arp_ipv4_sender;

/// The program a case runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    EncapForward,
    EncapPort,
    EncapOutput,
    DecapTc,
    DecapXdp,
    /// A VXLAN fan's overlay port `B`: what the slice bridge switches there.
    VxlanOut,
}

impl Program {
    pub const ALL: [Program; 6] = [
        Program::EncapForward,
        Program::EncapPort,
        Program::EncapOutput,
        Program::DecapTc,
        Program::DecapXdp,
        Program::VxlanOut,
    ];

    /// The program's name in the eBPF object (and in reproducers).
    pub fn name(self) -> &'static str {
        match self {
            Program::EncapForward => "fan_encap_forward",
            Program::EncapPort => "fan_encap_port",
            Program::EncapOutput => "fan_encap_output",
            Program::DecapTc => "fan_decap_tc",
            Program::DecapXdp => "fan_decap_xdp",
            Program::VxlanOut => "fan_vxlan_out",
        }
    }

    pub fn from_name(name: &str) -> Option<Program> {
        Program::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn is_xdp(self) -> bool {
        self == Program::DecapXdp
    }

    pub fn is_encap(self) -> bool {
        matches!(
            self,
            Program::EncapForward | Program::EncapPort | Program::EncapOutput | Program::VxlanOut
        )
    }
}

/// What the test run's context carries besides the frame (TC programs only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunContext {
    /// `__sk_buff.ingress_ifindex`: the port a frame came in on.
    pub ingress_ifindex: u32,
    /// `__sk_buff.gso_size`: non-zero makes the skb a GSO packet.
    pub gso_size: u32,
}

pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// -1: on to the next program in the chain, then the stack.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// What became of the packet, for the properties checked on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Left as it was, for the next program or the stack.
    Passed,
    Dropped,
    /// Wrapped in an outer header, on its way to the underlay.
    Encapsulated,
    /// Outer header removed, handed to the stack.
    Decapsulated,
    /// Outer header removed, redirected into a container.
    DeliveredDirect,
    /// Turned into ICMP "fragmentation needed" from the slice gateway and
    /// sent back to the container (too big for the learned path MTU).
    Answered,
}

/// The model's prediction for one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    pub verdict: u32,
    pub frame: Vec<u8>,
    /// Every counter that moves, by name, with the bytes it adds (one packet each).
    pub counters: Vec<(&'static str, u64)>,
    pub fate: Fate,
    /// The path MTU the run writes into the table: (host, MTU).
    pub learned: Option<(u32, u32)>,
}

/// The largest frame the kernel takes for an skb test run: a page less the
/// skb's headroom (NET_SKB_PAD) and its shared info.
pub const TC_MAX_FRAME: usize = 4096 - 64 - 320;
/// The linear part of an XDP test run's buffer: a page less XDP's headroom
/// and the shared info; the rest of a longer frame goes into fragments.
pub const XDP_LINEAR_MAX: usize = 4096 - 256 - 320;

/// Whether the kernel's BPF_PROG_TEST_RUN takes this input at all (it
/// refuses, with EINVAL, frames shorter than an Ethernet header, skb runs
/// of IP frames shorter than their basic network header, and oversized skbs).
pub fn kernel_accepts(program: Program, frame: &[u8]) -> bool {
    let Some(ethertype) = wire::ethertype(frame) else {
        return false;
    };
    if program.is_xdp() {
        return true;
    }
    let network_min = match ethertype {
        0x0800 => 20,
        0x86dd => 40,
        _ => 0,
    };
    frame.len() >= wire::ETH_LEN + network_min && frame.len() <= TC_MAX_FRAME
}

/// The model's prediction, or `None` when the kernel refuses the run.
pub fn predict(
    config: &Config,
    program: Program,
    frame: &[u8],
    ctx: RunContext,
) -> Option<Prediction> {
    if !kernel_accepts(program, frame) {
        return None;
    }
    Some(match program {
        Program::EncapForward => encap::run(config, encap::Site::Forward, frame, ctx),
        Program::EncapPort => encap::run(config, encap::Site::Port, frame, ctx),
        Program::EncapOutput => encap::run(config, encap::Site::Output, frame, ctx),
        Program::DecapTc => decap::run_tc(config, frame, ctx),
        Program::DecapXdp => decap::run_xdp(config, frame),
        Program::VxlanOut => vxlan::run_out(config, frame, ctx),
    })
}

/// The known finding this input runs into, if any: the model's prediction
/// for the programs and its prediction for the stated policy part here.
pub fn known_finding(
    config: &Config,
    program: Program,
    frame: &[u8],
    ctx: RunContext,
) -> Option<config::Finding> {
    let programs = predict(config, program, frame, ctx);
    config::Finding::ALL.into_iter().find(|finding| {
        if config.enforce.contains(finding) {
            return false;
        }
        let mut readme = config.clone();
        readme.enforce.push(*finding);
        predict(&readme, program, frame, ctx) != programs
    })
}

/// Where an encapsulated VXLAN frame's outer UDP source port is: a hash of
/// the inner flow with the kernel's per-boot key, which the model cannot
/// know (the checker checks its range and masks it).
pub const VXLAN_SOURCE_PORT: std::ops::Range<usize> = 34..36;

/// A prediction that leaves the frame as it is.
fn untouched(frame: &[u8], verdict: u32, counter: Option<&'static str>, fate: Fate) -> Prediction {
    Prediction {
        verdict,
        frame: frame.to_vec(),
        counters: counter
            .map(|name| vec![(name, frame.len() as u64)])
            .unwrap_or_default(),
        fate,
        learned: None,
    }
}
