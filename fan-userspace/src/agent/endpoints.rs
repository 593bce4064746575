//! The endpoint map: which veth each local container's overlay address is
//! behind, so decapsulation can deliver straight into the container.
//!
//! The kernel already knows: the slice bridge's neighbour table maps a
//! container's address to its MAC, and the bridge's forwarding database maps
//! that MAC to the port (the host end of the container's veth). `sync` reads
//! both and makes the map say exactly that, adding, changing and removing
//! entries; anything unknown is simply absent and takes the stack. So is a
//! container whose veth is down or whose peer is not in another namespace
//! (see [`can_deliver_to`]); `fan-xdp run` resyncs on every link event, so
//! an endpoint leaves the map when its link goes down.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::Result;
use fan_common::maps::Endpoint;
use ipnetwork::Ipv4Network;

use crate::{
    dataplane::PinnedMaps,
    host::{FdbEntry, Link, Net},
    state::record::Fan,
};

/// What `fan-xdp run` keeps in step with the slice bridges.
#[derive(Default)]
pub struct Slices {
    /// What the endpoint map should hold, by address (network byte order).
    pub endpoints: HashMap<u32, Endpoint>,
    /// The veth ports of the slice bridges (index, name): where containers
    /// send from, and where encapsulation can start.
    pub ports: Vec<(u32, String)>,
    /// The ports direct delivery can reach (see [`can_deliver_to`]).
    pub deliverable: HashSet<u32>,
    /// Forwarding entries of endpoints the bridge has not seen for a while:
    /// traffic encapsulated at the port never reaches the bridge to refresh
    /// them, so they would age out although the container is busy.
    pub fading: Vec<FdbEntry>,
    /// Each deliverable port's MACs, from the bridges' forwarding databases.
    pub fdb: HashMap<[u8; 6], u32>,
    /// Each slice and its bridge's MAC (the gateway's).
    pub gateways: Vec<(Ipv4Network, [u8; 6])>,
}

impl Slices {
    pub fn in_slice(&self, address: Ipv4Addr) -> bool {
        self.gateway_mac_of(address).is_some()
    }

    /// The MAC of the bridge of `address`'s slice.
    pub fn gateway_mac_of(&self, address: Ipv4Addr) -> Option<[u8; 6]> {
        self.gateways
            .iter()
            .find(|(slice, _)| slice.contains(address))
            .map(|(_, mac)| *mac)
    }
}

/// Forwarding entries idle for more than this share of the bridge's ageing
/// time (300 s by default) are refreshed. Fresher ones were just learned from
/// real frames, which keeps a container that moved from being pinned back to
/// its old port.
const REFRESH_AFTER_AGEING_FRACTION: u32 = 3;

/// Reads the slice bridges of every complete fan in `fans`.
pub async fn desired(net: &Net, fans: &[Fan]) -> Result<Slices> {
    let mut slices = Slices::default();
    for fan in fans.iter().filter(|f| f.complete) {
        let Some(bridge) = net.link(&fan.bridge).await? else {
            continue;
        };
        let Some(gateway_mac) = bridge.mac else {
            continue;
        };
        let refresh_idle =
            bridge.ageing.unwrap_or(Duration::from_secs(300)) / REFRESH_AFTER_AGEING_FRACTION;
        let ports = net.ports(bridge.index).await?;
        // Encapsulation at a port works on any veth; delivery only on some.
        let veths: HashMap<u32, String> = ports
            .iter()
            .filter(|l| l.kind.as_deref() == Some("veth"))
            .map(|l| (l.index, l.name.clone()))
            .collect();
        let deliverable: Vec<u32> = ports
            .iter()
            .filter(|l| can_deliver_to(l))
            .map(|l| l.index)
            .collect();
        let fdb: HashMap<[u8; 6], FdbEntry> = net
            .fdb(bridge.index)
            .await?
            .into_iter()
            .filter(|e| deliverable.contains(&e.port))
            .map(|e| (e.mac, e))
            .collect();
        slices.gateways.push((fan.slice, gateway_mac));
        slices
            .fdb
            .extend(fdb.iter().map(|(mac, entry)| (*mac, entry.port)));
        for (addr, mac) in net.neighbours(bridge.index).await? {
            if !fan.slice.contains(addr) {
                continue;
            }
            let Some(entry) = fdb.get(&mac) else {
                continue;
            };
            slices.endpoints.insert(
                u32::from(addr).to_be(),
                Endpoint {
                    ifindex: entry.port,
                    mac,
                    gateway_mac,
                },
            );
            if !entry.permanent && entry.idle > refresh_idle {
                slices.fading.push(*entry);
            }
        }
        slices.ports.extend(veths);
        slices.deliverable.extend(deliverable);
    }
    slices.ports.sort();
    Ok(slices)
}

/// Whether direct delivery through bridge port `port` can reach a container.
/// `bpf_redirect_peer` enters a veth's peer; the kernel drops the packet,
/// after the program already counted it delivered, when that peer is down
/// or in this same namespace (no container there). So: a veth that is up
/// (which a veth is only while its peer is) with its peer in another namespace.
pub fn can_deliver_to(port: &Link) -> bool {
    port.kind.as_deref() == Some("veth") && port.oper_up && port.peer_netns_id.is_some()
}

/// What the endpoint map should hold given what it holds: a binding holds
/// while its port can deliver. Neither a neighbour entry that the kernel's
/// garbage collection drops (a quiet container) nor one that another
/// container rewrites by answering ARP for the address moves or removes it;
/// the address is released when its port goes (the container is gone). On
/// its own port, a binding follows the container's MAC.
pub fn keep_bindings(have: &HashMap<u32, Endpoint>, slices: &Slices) -> HashMap<u32, Endpoint> {
    let mut want = slices.endpoints.clone();
    for (addr, bound) in have {
        if !slices.deliverable.contains(&bound.ifindex) {
            continue;
        }
        match want.get(addr) {
            Some(learned) if learned.ifindex == bound.ifindex => {}
            Some(learned) => {
                log::warn!(
                    "{} is bound to port {} and answered for on port {}: kept where it is",
                    std::net::Ipv4Addr::from(u32::from_be(*addr)),
                    bound.ifindex,
                    learned.ifindex
                );
                want.insert(*addr, *bound);
            }
            None => {
                want.insert(*addr, *bound);
            }
        }
    }
    want
}

/// Makes the pinned endpoint map equal `want`. Returns (added or changed, removed).
pub fn apply(maps: &mut PinnedMaps, want: &HashMap<u32, Endpoint>) -> Result<(usize, usize)> {
    let have: HashMap<u32, Endpoint> = maps.endpoints.iter().collect::<Result<_, _>>()?;
    let mut removed = 0;
    for key in have.keys().filter(|k| !want.contains_key(k)) {
        maps.endpoints.remove(key)?;
        removed += 1;
    }
    let mut changed = 0;
    for (key, endpoint) in want {
        if have.get(key) != Some(endpoint) {
            maps.endpoints.insert(key, endpoint, 0)?;
            changed += 1;
        }
    }
    Ok((changed, removed))
}

/// Empties the endpoint map: every packet takes the stack.
pub fn clear(maps: &mut PinnedMaps) -> Result<()> {
    apply(maps, &HashMap::new()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ifindex: u32, last: u8) -> Endpoint {
        Endpoint {
            ifindex,
            mac: [2, 0, 0, 0, 0, last],
            gateway_mac: [2, 0, 0, 0, 0, 1],
        }
    }

    #[test]
    fn a_binding_holds_while_its_port_can_deliver() {
        let (a, b, c) = (10u32.to_be(), 11u32.to_be(), 12u32.to_be());
        let have = HashMap::from([
            (a, endpoint(5, 0xa)),
            (b, endpoint(6, 0xb)),
            (c, endpoint(7, 0xc)),
        ]);
        let slices = Slices {
            // a: another port answers for it; b: its neighbour entry is gone;
            // c: its port is gone, and a new port holds it.
            endpoints: HashMap::from([(a, endpoint(6, 0xb)), (c, endpoint(8, 0xd))]),
            deliverable: HashSet::from([5, 6, 8]),
            ..Slices::default()
        };
        let want = keep_bindings(&have, &slices);
        assert_eq!(want[&a], endpoint(5, 0xa), "moved by another port's ARP");
        assert_eq!(
            want[&b],
            endpoint(6, 0xb),
            "dropped with its neighbour entry"
        );
        assert_eq!(want[&c], endpoint(8, 0xd), "not released with its port");
        // On its own port a binding follows the container's MAC.
        let slices = Slices {
            endpoints: HashMap::from([(a, endpoint(5, 0xe))]),
            deliverable: HashSet::from([5]),
            ..Slices::default()
        };
        assert_eq!(keep_bindings(&have, &slices)[&a], endpoint(5, 0xe));
    }
}
