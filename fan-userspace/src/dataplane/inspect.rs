//! Read-only questions about the programs in the kernel, for the commands
//! and the agent: which program an id is, whether a pinned link or a port
//! runs fan-xdp's.

use aya::programs::{
    ProgramInfo, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};

use super::ENCAP_PORT;
use crate::state::StateDir;

/// The name of loaded program `id`, if it has one.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// Whether XDP program `prog` on `iface` runs through fan-xdp's pinned link.
pub fn xdp_link_runs(dir: &StateDir, iface: &str, prog: u32) -> bool {
    PinnedLink::from_pin(dir.link(iface, "decap-xdp"))
        .ok()
        .map(FdLink::from)
        .and_then(|l| l.info().ok())
        .is_some_and(|info| info.program_id() == prog)
}

/// How many of `ports` run the pinned port program on their TCX ingress.
pub fn ports_running_encap<'a>(dir: &StateDir, ports: impl Iterator<Item = &'a str>) -> usize {
    let encap = ProgramInfo::from_pin(dir.program(ENCAP_PORT))
        .map(|info| info.id())
        .ok();
    ports
        .filter(|port| {
            SchedClassifier::query_tcx(port, TcAttachType::Ingress)
                .is_ok_and(|(_, programs)| programs.iter().any(|p| Some(p.id()) == encap))
        })
        .count()
}

/// The programs that run before fan-xdp's pinned program `name` on `iface`'s
/// TCX ingress (id and name): each decides first, and may drop or redirect
/// fan traffic before fan-xdp sees it.
pub fn tcx_ingress_before(dir: &StateDir, iface: &str, name: &str) -> Vec<(u32, String)> {
    let Ok(ours) = ProgramInfo::from_pin(dir.program(name)).map(|info| info.id()) else {
        return Vec::new();
    };
    let Ok((_, programs)) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress) else {
        return Vec::new();
    };
    programs
        .iter()
        .take_while(|p| p.id() != ours)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("unnamed").to_string()))
        .collect()
}
