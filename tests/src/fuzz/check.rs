//! Comparing a run with the model's prediction, and the properties every
//! run must have whatever the model says.

use fan_common::vxlan::{SOURCE_PORT_MAX, SOURCE_PORT_MIN};

use super::bed::Observed;
use crate::model::{
    Config, Fate, Prediction, Program, VXLAN_SOURCE_PORT,
    wire::{ETH_LEN, Ipv4View, PROTO_TCP, PROTO_UDP, be16, to_hex},
};

/// Whether `frame` is an IPv4 packet of UDP: for an encapsulated frame,
/// VXLAN (its inner frame 50 bytes after the Ethernet header).
pub fn is_vxlan(frame: &[u8]) -> bool {
    Ipv4View::parse(frame, ETH_LEN).is_some_and(|ip| ip.protocol() == PROTO_UDP)
}

/// An inner flow as the kernel's flow hash sees it: (source, destination,
/// protocol, source port, destination port).
pub type Flow = (u32, u32, u8, u16, u16);

/// The flow of a VXLAN-encapsulated frame's inner TCP or UDP packet, when
/// plainly one: an unfragmented IPv4 packet without options, whose length
/// is the frame's (the flow hash then reads exactly these fields).
pub fn vxlan_flow(encapsulated: &[u8]) -> Option<Flow> {
    if !is_vxlan(encapsulated) {
        return None;
    }
    let at = inner_at(encapsulated);
    let ip = Ipv4View::parse(encapsulated, at)?;
    let plain = ip.header_len() == 20
        && be16(encapsulated, at + 6) & 0x3fff == 0
        && usize::from(ip.total_len()) == encapsulated.len() - at
        && usize::from(ip.total_len()) >= 24
        && matches!(ip.protocol(), PROTO_TCP | PROTO_UDP);
    plain.then(|| {
        let ports = at + 20;
        (
            ip.src(),
            ip.dst(),
            ip.protocol(),
            be16(encapsulated, ports),
            be16(encapsulated, ports + 2),
        )
    })
}

/// Where the inner IPv4 header of an encapsulated frame is.
fn inner_at(frame: &[u8]) -> usize {
    let outer_len = Ipv4View::parse(frame, ETH_LEN).map_or(20, |ip| ip.header_len());
    if is_vxlan(frame) {
        ETH_LEN + outer_len + 16 + ETH_LEN
    } else {
        ETH_LEN + outer_len
    }
}

/// Counters that count a packet a second time, as a subset of another
/// outcome: documented double counts, not outcomes of their own.
const SUBSET_COUNTERS: [&str; 4] = [
    "encapsulated_gso",
    "encapsulated_neigh_pending",
    "decapsulated_direct",
    // A first path MTU for a host, beside `pmtu_learned`.
    "pmtu_host_added",
];

pub fn is_subset_counter(name: &str) -> bool {
    SUBSET_COUNTERS.contains(&name)
}

/// The differences between the model's prediction and the run, if any.
pub fn compare(predicted: &Option<Prediction>, observed: &Observed) -> Vec<String> {
    let mut differences = Vec::new();
    match (predicted, observed) {
        (None, Observed::Refused(_)) => {}
        (None, Observed::Ran { verdict, .. }) => differences.push(format!(
            "model: the kernel refuses this run; program: it ran, verdict {verdict:#x}"
        )),
        (Some(p), Observed::Refused(errno)) => differences.push(format!(
            "model: verdict {:#x}; program: the kernel refused the run (errno {errno})",
            p.verdict
        )),
        (
            Some(p),
            Observed::Ran {
                verdict,
                frame,
                counters,
                learned,
            },
        ) => {
            let expected: Vec<(u32, u32)> = p.learned.into_iter().collect();
            if expected != *learned {
                differences.push(format!(
                    "path MTUs written (host, MTU): model {expected:08x?}, program {learned:08x?}"
                ));
            }
            if p.verdict != *verdict {
                differences.push(format!(
                    "verdict: model {:#x}, program {verdict:#x}",
                    p.verdict
                ));
            }
            let mut predicted_frame = p.frame.clone();
            if is_vxlan(&p.frame) && p.fate == Fate::Encapsulated {
                // The source port hashes the inner flow with the kernel's
                // per-boot key: in the kernel's range, and otherwise taken.
                let port = VXLAN_SOURCE_PORT;
                if let Some(bytes) = frame.get(port.clone()) {
                    let value = u16::from_be_bytes([bytes[0], bytes[1]]);
                    if !(SOURCE_PORT_MIN..SOURCE_PORT_MAX).contains(&value) {
                        differences.push(format!("VXLAN source port {value} out of range"));
                    }
                    predicted_frame[port].copy_from_slice(bytes);
                }
            }
            if predicted_frame != *frame {
                differences.push(frame_difference(&predicted_frame, frame));
            }
            let mut expected: Vec<(&str, u64, u64)> =
                p.counters.iter().map(|&(n, b)| (n, 1, b)).collect();
            let mut seen = counters.clone();
            expected.sort();
            seen.sort();
            if expected != seen {
                differences.push(format!(
                    "counters (name, packets, bytes): model {expected:?}, program {seen:?}"
                ));
            }
        }
    }
    differences
}

/// Where two frames part, with the bytes around it.
fn frame_difference(model: &[u8], program: &[u8]) -> String {
    let at = model
        .iter()
        .zip(program)
        .position(|(a, b)| a != b)
        .unwrap_or(model.len().min(program.len()));
    let from = at.saturating_sub(8);
    let window = |f: &[u8]| to_hex(&f[from.min(f.len())..(at + 24).min(f.len())]);
    format!(
        "frame out (model {} bytes, program {}): first difference at byte {at}; from byte {from}: model {}, program {}",
        model.len(),
        program.len(),
        window(model),
        window(program)
    )
}

/// What the run did to the packet, read from the counters it moved.
pub fn observed_fate(counters: &[(&'static str, u64, u64)]) -> Fate {
    let moved = |name: &str| counters.iter().any(|c| c.0 == name);
    if moved("encapsulated") {
        Fate::Encapsulated
    } else if moved("pmtu_answered") {
        Fate::Answered
    } else if moved("decapsulated_direct") {
        Fate::DeliveredDirect
    } else if moved("decapsulated") {
        Fate::Decapsulated
    } else if counters.iter().any(|c| c.0.starts_with("drop_")) {
        Fate::Dropped
    } else {
        Fate::Passed
    }
}

/// The properties of one run, independent of the model: violations found.
pub fn properties(
    config: &Config,
    program: Program,
    input: &[u8],
    observed: &Observed,
) -> Vec<String> {
    let Observed::Ran {
        frame, counters, ..
    } = observed
    else {
        return vec![];
    };
    let mut violations = Vec::new();
    let fate = observed_fate(counters);
    // Exactly one outcome per run: every counter one packet, and one
    // counter that is not a subset of another (`port_passed` for the port
    // program's passes).
    if counters.iter().any(|c| c.1 != 1) {
        violations.push(format!(
            "a counter moved by more than one packet: {counters:?}"
        ));
    }
    let outcomes = counters
        .iter()
        .filter(|c| !SUBSET_COUNTERS.contains(&c.0))
        .count();
    if outcomes != 1 {
        violations.push(format!(
            "{outcomes} outcomes counted, expected 1: {counters:?}"
        ));
    }
    let port_passed = counters.iter().any(|c| c.0 == "port_passed");
    if port_passed != (program == Program::EncapPort && fate == Fate::Passed) {
        violations.push(format!(
            "port_passed counts the port program's passes and nothing else: {counters:?}"
        ));
    }
    match fate {
        Fate::Passed => {
            if frame != input {
                violations.push("a passed frame was changed".into());
            }
        }
        Fate::Dropped => {}
        Fate::Encapsulated => {
            let outer = Ipv4View::parse(frame, ETH_LEN);
            if !outer.is_some_and(|h| h.checksum_ok()) {
                violations.push("the outer header's checksum is wrong".into());
            }
            if checksum_ok_at(input, ETH_LEN) && !checksum_ok_at(frame, inner_at(frame)) {
                violations.push("the inner checksum went wrong in encapsulation".into());
            }
        }
        // A VXLAN fan's ARP comes out as it went in (checked by the model).
        Fate::Decapsulated | Fate::DeliveredDirect
            if is_vxlan(input) && frame.get(12..14) != Some(&[0x08, 0x00]) => {}
        Fate::Decapsulated | Fate::DeliveredDirect => {
            violations.extend(decapsulated_properties(config, input, frame));
        }
        Fate::Answered => violations.extend(answer_properties(config, program, input, frame)),
    }
    violations
}

/// An answer is a well-formed ICMP error to the packet's sender, quoting
/// the packet's start: a container's from a slice gateway, the host's own
/// (at fan-host's egress) from the address it was sent to.
fn answer_properties(
    config: &Config,
    program: Program,
    input: &[u8],
    output: &[u8],
) -> Vec<String> {
    let mut violations = Vec::new();
    let Some((asked, answer)) = ipv4_headers(input, output) else {
        return vec!["an answer without its IPv4 headers".into()];
    };
    if !answer.checksum_ok() {
        violations.push("the answer's IPv4 checksum is wrong".into());
    }
    let icmp = &output[ETH_LEN + answer.header_len()..];
    if crate::model::wire::ones_complement_sum(icmp) != 0xffff {
        violations.push("the answer's ICMP checksum is wrong".into());
    }
    let from_the_right_source = if program == Program::EncapOutput {
        answer.src() == asked.dst()
    } else {
        config.fans.iter().any(|f| f.gateway() == answer.src())
    };
    if answer.dst() != asked.src() || !from_the_right_source {
        violations.push(format!(
            "answer {:#010x} -> {:#010x} is not to the sender from its gateway (or, for the host, from the destination)",
            answer.src(),
            answer.dst()
        ));
    }
    let quoted = ETH_LEN..(ETH_LEN + asked.header_len()).min(input.len());
    if icmp.get(8..8 + quoted.len()) != input.get(quoted) {
        violations.push("the answer does not quote the packet's header".into());
    }
    violations
}

/// The IPv4 headers right after Ethernet in a run's input and its output.
fn ipv4_headers<'a>(input: &'a [u8], output: &'a [u8]) -> Option<(Ipv4View<'a>, Ipv4View<'a>)> {
    Some((
        Ipv4View::parse(input, ETH_LEN)?,
        Ipv4View::parse(output, ETH_LEN)?,
    ))
}

fn checksum_ok_at(frame: &[u8], at: usize) -> bool {
    Ipv4View::parse(frame, at).is_some_and(|h| h.checksum_ok())
}

/// A delivered inner source lies in the slice its outer source owns, and a
/// correct inner checksum stays correct.
fn decapsulated_properties(config: &Config, input: &[u8], output: &[u8]) -> Vec<String> {
    let mut violations = Vec::new();
    let Some((outer, inner_out)) = ipv4_headers(input, output) else {
        return vec!["a decapsulated frame without its IPv4 headers".into()];
    };
    let owned = config
        .fans
        .iter()
        .any(|f| f.map.owns(outer.src(), inner_out.src()));
    if !owned {
        violations.push(format!(
            "delivered inner source {:#010x} is not owned by outer source {:#010x}",
            inner_out.src(),
            outer.src()
        ));
    }
    let inner_in_at = inner_at(input);
    if checksum_ok_at(input, inner_in_at) && !inner_out.checksum_ok() {
        violations.push("the inner checksum went wrong in decapsulation".into());
    }
    violations
}
