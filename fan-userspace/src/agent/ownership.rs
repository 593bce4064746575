//! Who owns an overlay address on this host: the one place that decides
//! which port the endpoint map delivers an address to and, through the same
//! map, which port the port programs let send from it.
//!
//! | source                          | standing      | its port                                                                 |
//! |---------------------------------|---------------|--------------------------------------------------------------------------|
//! | `cni` binding (the plugin's ADD) | authoritative | the host end of the veth the ADD created and named                        |
//! | `static` binding                | authoritative | the port it names; else as `dhcp`                                        |
//! | `dhcp` binding (a lease)        | authoritative | fixed at the first port whose container end has the lease's MAC and address |
//! | configured in the container     | configured    | the port whose container end has the address (read through the veth's peer) |
//! | ARP, neighbour entries, the FDB  | none          | never                                                                    |
//!
//! An authoritative binding is one per address (the table refuses a second
//! while the first's port lives) and holds its address whether or not its
//! port can deliver now: nothing configured takes it. A configured address
//! is owned by its port if exactly one deliverable port has it and no
//! binding does; two ports configuring one address own it neither.
//! Nothing a container sends (ARP, a frame from a MAC it forged) changes
//! any of this: the ports come from the CNI ADD, the configuration and the
//! container ends, which only the runtime (or a process with CAP_NET_ADMIN
//! in the container) writes.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use fan_common::{WireAddr, maps::Endpoint};

use super::{
    bindings::{Binding, Bindings, Origin},
    endpoints::Slices,
};

/// Where a claim on an address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Binding(Origin),
    /// The address is on the container's end of a port.
    Configured,
    /// The bridge's neighbour table or forwarding database: what any
    /// container can write by answering ARP or sending frames.
    Learned,
}

/// How much a claim of a source counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Counts for nothing.
    None,
    /// Owns the address unless a binding holds it or another port has it too.
    Configured,
    /// Owns the address, one binding per address.
    Authoritative,
}

/// How the port of a claim is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortFrom {
    /// Named by whoever bound it (the CNI ADD, or `fan-xdp bind --port`).
    Named,
    /// Fixed at the first port whose container end has the binding's MAC and
    /// address, and kept while that port lives.
    FixedAtFirstMatch,
    /// The port whose container end has the address, as it has it now.
    ContainerEnd,
    /// Never: the claim has no port.
    Never,
}

/// The precedence table: each source's standing, and where its port comes from.
pub const fn rule(source: Source, names_a_port: bool) -> (Standing, PortFrom) {
    match source {
        Source::Binding(Origin::Cni | Origin::Static) if names_a_port => {
            (Standing::Authoritative, PortFrom::Named)
        }
        Source::Binding(Origin::Cni | Origin::Static | Origin::Dhcp) => {
            (Standing::Authoritative, PortFrom::FixedAtFirstMatch)
        }
        Source::Configured => (Standing::Configured, PortFrom::ContainerEnd),
        Source::Binding(Origin::Learned) | Source::Learned => (Standing::None, PortFrom::Never),
    }
}

/// The port `binding` stands for, by the table: `fixed` is the port it was
/// fixed at before (by address), if any. None while no port qualifies.
pub fn port_of(binding: &Binding, fixed: Option<u32>, slices: &Slices) -> Option<u32> {
    let mac = binding.mac_bytes().ok()?;
    match rule(Source::Binding(binding.origin), binding.port.is_some()).1 {
        PortFrom::Named => {
            let name = binding.port.as_deref()?;
            slices.ports.iter().find(|(_, n)| n == name).map(|p| p.0)
        }
        PortFrom::FixedAtFirstMatch => {
            if let Some(port) = fixed.filter(|p| slices.ports.iter().any(|(i, _)| i == p)) {
                return Some(port);
            }
            let mut matching = slices
                .ends
                .iter()
                .filter(|(_, end)| end.mac == mac && end.addresses.contains(&binding.address));
            match (matching.next(), matching.next()) {
                (Some((port, _)), None) => Some(*port),
                // None, or a MAC and address cloned onto a second port:
                // fixed at neither until one is left.
                _ => None,
            }
        }
        PortFrom::ContainerEnd | PortFrom::Never => None,
    }
}

/// The endpoint map's entries: every binding whose port can deliver, then
/// every address configured on exactly one deliverable port that no
/// binding holds; and how many entries each source gave. Fixes the port of
/// bindings that found theirs (see [`Bindings::fix_ports`]). Its cost is
/// in the bindings and ports, no netlink request.
pub fn owners(
    bindings: &mut Bindings,
    slices: &Slices,
) -> (HashMap<WireAddr, Endpoint>, BTreeMap<String, u64>) {
    let mut counts = bindings.counts();
    let mut owned = HashMap::new();
    let found = bindings.fix_ports(slices);
    for (binding, port) in bindings.list().zip(found) {
        let Some(port) = port.filter(|p| slices.deliverable.contains(p)) else {
            continue;
        };
        let (Ok(mac), Some(gateway_mac)) =
            (binding.mac_bytes(), slices.gateway_mac_of(binding.address))
        else {
            continue;
        };
        owned.insert(
            WireAddr::from(binding.address),
            Endpoint {
                ifindex: port,
                mac,
                gateway_mac,
            },
        );
    }
    let mut configured: HashMap<Ipv4Addr, Vec<(u32, [u8; 6])>> = HashMap::new();
    for (port, end) in &slices.ends {
        if !slices.deliverable.contains(port) {
            continue;
        }
        for address in &end.addresses {
            if bindings.holds(*address) || slices.reserved.contains(address) {
                continue;
            }
            configured
                .entry(*address)
                .or_default()
                .push((*port, end.mac));
        }
    }
    let mut by_configuration = 0;
    for (address, claims) in configured {
        let ([(port, mac)], Some(gateway_mac)) =
            (claims.as_slice(), slices.gateway_mac_of(address))
        else {
            if claims.len() > 1 {
                log::warn!(
                    "{address} is configured on {} ports: delivered to none of them",
                    claims.len()
                );
            }
            continue;
        };
        owned.insert(
            WireAddr::from(address),
            Endpoint {
                ifindex: *port,
                mac: *mac,
                gateway_mac,
            },
        );
        by_configuration += 1;
    }
    counts.insert("configured".into(), by_configuration);
    (owned, counts)
}

#[cfg(test)]
mod tests;
