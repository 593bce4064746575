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

use fan_common::WireAddr;
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
    host::{Device, FdbEntry, Net, events::Change},
    state::record::Fan,
};

/// What `fan-xdp run` keeps in step with the slice bridges.
#[derive(Default)]
pub struct Slices {
    /// What the endpoint map should hold, by address (network byte order).
    pub endpoints: HashMap<WireAddr, Endpoint>,
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

/// What the agent knows of one slice bridge: read whole by a full sync,
/// then kept current by netlink events, one change at a time.
pub struct Bridge {
    index: u32,
    slice: Ipv4Network,
    gateway_mac: [u8; 6],
    refresh_idle: Duration,
    ports: HashMap<u32, Device>,
    fdb: HashMap<[u8; 6], FdbEntry>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
}

/// Every complete fan's slice bridge, as last read or told.
#[derive(Default)]
pub struct Observed {
    bridges: Vec<Bridge>,
}

/// What one change did to what the agent knows.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the agent follows.
    None,
    /// A port, neighbour or forwarding entry of a slice bridge changed.
    Changed,
    /// A slice bridge itself changed or went: read everything again.
    ReadAgain,
}

/// Reads the slice bridges of every complete fan in `fans`.
pub async fn observe(net: &Net, fans: &[Fan]) -> Result<Observed> {
    let mut observed = Observed::default();
    for fan in fans.iter().filter(|f| f.complete) {
        let Some(bridge) = net.device(&fan.bridge).await? else {
            continue;
        };
        let Some(gateway_mac) = bridge.mac else {
            continue;
        };
        observed.bridges.push(Bridge {
            index: bridge.index,
            slice: fan.slice,
            gateway_mac,
            refresh_idle: bridge.ageing.unwrap_or(Duration::from_secs(300))
                / REFRESH_AFTER_AGEING_FRACTION,
            ports: net
                .ports(bridge.index)
                .await?
                .into_iter()
                .map(|l| (l.index, l))
                .collect(),
            fdb: net
                .fdb(bridge.index)
                .await?
                .into_iter()
                .map(|e| (e.mac, e))
                .collect(),
            neighbours: net.neighbours(bridge.index).await?.into_iter().collect(),
        });
    }
    Ok(observed)
}

/// Reads the slice bridges of every complete fan in `fans`, as [`Slices`].
pub async fn desired(net: &Net, fans: &[Fan]) -> Result<Slices> {
    Ok(observe(net, fans).await?.slices())
}

impl Observed {
    /// Takes in one change the kernel announced.
    pub fn apply(&mut self, change: &Change) -> Effect {
        match change {
            Change::Device(link) => {
                if let Some(bridge) = self.bridges.iter().find(|b| b.index == link.index) {
                    // A bridge announces itself whenever a port comes or
                    // goes (its carrier, MTU, features); only a new MAC or
                    // ageing time changes what the agent derives from it.
                    let ageing = link.ageing.map(|a| a / REFRESH_AFTER_AGEING_FRACTION);
                    return if link.mac.is_some_and(|m| m != bridge.gateway_mac)
                        || ageing.is_some_and(|a| a != bridge.refresh_idle)
                    {
                        Effect::ReadAgain
                    } else {
                        Effect::None
                    };
                }
                let mut effect = Effect::None;
                for bridge in &mut self.bridges {
                    if link.controller == Some(bridge.index) {
                        bridge.ports.insert(link.index, link.clone());
                        effect = Effect::Changed;
                    } else if bridge.ports.remove(&link.index).is_some() {
                        effect = Effect::Changed;
                    }
                }
                effect
            }
            Change::LinkGone(index) => {
                if self.bridges.iter().any(|b| b.index == *index) {
                    return Effect::ReadAgain;
                }
                let mut effect = Effect::None;
                for bridge in &mut self.bridges {
                    if bridge.ports.remove(index).is_some() {
                        bridge.fdb.retain(|_, e| e.port != *index);
                        effect = Effect::Changed;
                    }
                }
                effect
            }
            Change::Neighbour {
                ifindex,
                address,
                mac,
            } => {
                let Some(bridge) = self.bridges.iter_mut().find(|b| b.index == *ifindex) else {
                    return Effect::None;
                };
                match mac {
                    Some(mac) => bridge.neighbours.insert(*address, *mac),
                    None => bridge.neighbours.remove(address),
                };
                Effect::Changed
            }
            Change::Fdb {
                bridge,
                entry,
                gone,
            } => {
                let Some(bridge) = self.bridges.iter_mut().find(|b| b.index == *bridge) else {
                    return Effect::None;
                };
                if *gone {
                    if bridge
                        .fdb
                        .get(&entry.mac)
                        .is_some_and(|e| e.port == entry.port)
                    {
                        bridge.fdb.remove(&entry.mac);
                    }
                } else {
                    bridge.fdb.insert(entry.mac, *entry);
                }
                Effect::Changed
            }
        }
    }

    /// What the endpoint map and the port programs should cover, from what
    /// is known: a neighbour whose MAC the bridge learned on a port that
    /// can deliver is an endpoint behind that port.
    pub fn slices(&self) -> Slices {
        let mut slices = Slices::default();
        for bridge in &self.bridges {
            let deliverable: HashSet<u32> = bridge
                .ports
                .values()
                .filter(|l| can_deliver_to(l))
                .map(|l| l.index)
                .collect();
            let fdb: HashMap<[u8; 6], &FdbEntry> = bridge
                .fdb
                .values()
                .filter(|e| deliverable.contains(&e.port))
                .map(|e| (e.mac, e))
                .collect();
            slices.gateways.push((bridge.slice, bridge.gateway_mac));
            slices
                .fdb
                .extend(fdb.iter().map(|(mac, entry)| (*mac, entry.port)));
            for (addr, mac) in &bridge.neighbours {
                if !bridge.slice.contains(*addr) {
                    continue;
                }
                let Some(entry) = fdb.get(mac) else {
                    continue;
                };
                slices.endpoints.insert(
                    WireAddr::from(*addr),
                    Endpoint {
                        ifindex: entry.port,
                        mac: *mac,
                        gateway_mac: bridge.gateway_mac,
                    },
                );
                if !entry.permanent && entry.idle > bridge.refresh_idle {
                    slices.fading.push(**entry);
                }
            }
            // Encapsulation at a port works on any veth; delivery only on some.
            slices.ports.extend(
                bridge
                    .ports
                    .values()
                    .filter(|l| l.kind.as_deref() == Some("veth"))
                    .map(|l| (l.index, l.name.clone())),
            );
            slices.deliverable.extend(deliverable);
        }
        slices.ports.sort();
        slices
    }
}

/// Whether direct delivery through bridge port `port` can reach a container.
/// `bpf_redirect_peer` enters a veth's peer; the kernel drops the packet,
/// after the program already counted it delivered, when that peer is down
/// or in this same namespace (no container there). So: a veth that is up
/// (which a veth is only while its peer is) with its peer in another namespace.
pub fn can_deliver_to(port: &Device) -> bool {
    port.kind.as_deref() == Some("veth") && port.oper_up && port.peer_netns_id.is_some()
}

/// What the endpoint map should hold given what it holds: a binding holds
/// while its port can deliver. Neither a neighbour entry that the kernel's
/// garbage collection drops (a quiet container) nor one that another
/// container rewrites by answering ARP for the address moves or removes it;
/// the address is released when its port goes (the container is gone). On
/// its own port, a binding follows the container's MAC.
pub fn keep_bindings(
    have: &HashMap<WireAddr, Endpoint>,
    slices: &Slices,
) -> HashMap<WireAddr, Endpoint> {
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
                    std::net::Ipv4Addr::from(*addr),
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
pub fn apply(maps: &mut PinnedMaps, want: &HashMap<WireAddr, Endpoint>) -> Result<(usize, usize)> {
    let have: HashMap<WireAddr, Endpoint> = maps.endpoints.iter().collect::<Result<_, _>>()?;
    apply_diff(maps, &have, want)
}

/// Makes the pinned endpoint map, which holds `have`, hold `want`, writing
/// only the entries that differ. Returns (added or changed, removed).
pub fn apply_diff(
    maps: &mut PinnedMaps,
    have: &HashMap<WireAddr, Endpoint>,
    want: &HashMap<WireAddr, Endpoint>,
) -> Result<(usize, usize)> {
    let mut removed = 0;
    for key in have.keys().filter(|k| !want.contains_key(k)) {
        // Already gone (a detach emptied the map) is gone.
        let _ = maps.endpoints.remove(key);
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
mod tests;
