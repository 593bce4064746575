//! What the agent sees of the slice bridges, for the endpoint map (which
//! veth each local container's overlay address is behind, so decapsulation
//! can deliver straight into the container) and the port programs.
//!
//! Per bridge: its ports, its forwarding database (only to keep busy
//! containers' entries from ageing out), and each port's container end as
//! its runtime configured it (MAC and IPv4 addresses, read through the
//! veth's peer, see [`crate::host::ContainerEnd`]). Who owns which address
//! is decided from that and the bindings in one place,
//! [`super::ownership`]: nothing here learns an address from the neighbour
//! table or the forwarding database, which any container can write by
//! answering ARP or sending frames. An endpoint needs a port that can
//! deliver (see [`can_deliver_to`]); `fan-xdp run` follows link events, so
//! an endpoint leaves the map when its link goes down.

use fan_common::WireAddr;
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::Result;
use fan_common::maps::Endpoint;
use ipnetwork::Ipv4Network;

use crate::{
    dataplane::PinnedMaps,
    host::{ContainerEnd, Device, FdbEntry, Net, events::Change, naming::is_overlay_port},
    state::record::Fan,
};

/// What `fan-xdp run` keeps in step with the slice bridges.
#[derive(Default)]
pub struct Slices {
    /// The veth ports of the slice bridges (index, name): where containers
    /// send from, and where encapsulation can start.
    pub ports: Vec<(u32, String)>,
    /// The ports direct delivery can reach (see [`can_deliver_to`]).
    pub deliverable: HashSet<u32>,
    /// Forwarding entries of endpoints the bridge has not seen for a while:
    /// traffic encapsulated at the port never reaches the bridge to refresh
    /// them, so they would age out although the container is busy.
    pub fading: Vec<FdbEntry>,
    /// Each deliverable port's container end, as its runtime configured it.
    pub ends: HashMap<u32, ContainerEnd>,
    /// Each slice and its bridge's MAC (the gateway's).
    pub gateways: Vec<(Ipv4Network, [u8; 6])>,
    /// The slices' addresses no container owns: gateway, network, broadcast.
    pub reserved: HashSet<Ipv4Addr>,
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
    gateway: Ipv4Addr,
    gateway_mac: [u8; 6],
    refresh_idle: Duration,
    ports: HashMap<u32, Device>,
    fdb: HashMap<[u8; 6], FdbEntry>,
    /// Each port's container end, by port.
    ends: HashMap<u32, ContainerEnd>,
}

/// Every complete fan's slice bridge, as last read or told.
#[derive(Default)]
pub struct Observed {
    bridges: Vec<Bridge>,
    /// Ports whose container end is to be read again: the port changed, or
    /// the bridge saw a new MAC on it (the container just came up, perhaps
    /// configured since the port did).
    unread: BTreeSet<u32>,
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
        let ports: HashMap<u32, Device> = net
            .ports(bridge.index)
            .await?
            .into_iter()
            .map(|l| (l.index, l))
            .collect();
        observed.unread.extend(ports.keys());
        observed.bridges.push(Bridge {
            index: bridge.index,
            slice: fan.slice,
            gateway: fan.gateway,
            gateway_mac,
            refresh_idle: bridge.ageing.unwrap_or(Duration::from_secs(300))
                / REFRESH_AFTER_AGEING_FRACTION,
            ports,
            fdb: net
                .fdb(bridge.index)
                .await?
                .into_iter()
                .map(|e| (e.mac, e))
                .collect(),
            ends: HashMap::new(),
        });
    }
    observed.read_ends(net).await;
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
                        self.unread.insert(link.index);
                        effect = Effect::Changed;
                    } else if bridge.ports.remove(&link.index).is_some() {
                        bridge.ends.remove(&link.index);
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
                        bridge.ends.remove(index);
                        effect = Effect::Changed;
                    }
                }
                effect
            }
            // What a container answers in ARP decides nothing.
            Change::Neighbour { .. } => Effect::None,
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
                } else if bridge
                    .fdb
                    .insert(entry.mac, *entry)
                    .is_none_or(|e| e.port != entry.port)
                {
                    self.unread.insert(entry.port);
                }
                Effect::Changed
            }
        }
    }

    /// Reads again the container ends of the ports marked unread: one
    /// small request per port an event was about, never all of them. A
    /// port whose end cannot be read has none (it owns no address by
    /// configuration) until the next read.
    /// Marks the ports whose container end has one of `macs` to be read
    /// again (by [`Observed::read_ends`]): a container that just took a
    /// lease configured its address where no event of this namespace says so.
    pub fn read_again_holding(&mut self, macs: &HashSet<[u8; 6]>) {
        for bridge in &self.bridges {
            self.unread.extend(
                bridge
                    .ends
                    .iter()
                    .filter(|(_, end)| macs.contains(&end.mac))
                    .map(|(port, _)| *port),
            );
        }
    }

    pub async fn read_ends(&mut self, net: &Net) {
        for index in std::mem::take(&mut self.unread) {
            let Some(bridge) = self
                .bridges
                .iter_mut()
                .find(|b| b.ports.contains_key(&index))
            else {
                continue;
            };
            match net.container_end(&bridge.ports[&index]).await {
                Ok(Some(end)) => {
                    bridge.ends.insert(index, end);
                }
                Ok(None) => {
                    bridge.ends.remove(&index);
                }
                Err(e) => {
                    log::warn!("port {index}: {e:#}");
                    bridge.ends.remove(&index);
                }
            }
        }
    }

    /// What the endpoint map and the port programs should cover, from what
    /// is known (who owns which address is [`super::ownership`]'s).
    pub fn slices(&self) -> Slices {
        let mut slices = Slices::default();
        for bridge in &self.bridges {
            let deliverable: HashSet<u32> = bridge
                .ports
                .values()
                .filter(|l| can_deliver_to(l))
                .map(|l| l.index)
                .collect();
            slices.gateways.push((bridge.slice, bridge.gateway_mac));
            slices.reserved.extend([
                bridge.gateway,
                bridge.slice.network(),
                bridge.slice.broadcast(),
            ]);
            for (port, end) in &bridge.ends {
                if !deliverable.contains(port) {
                    continue;
                }
                slices.ends.insert(*port, end.clone());
                // The container's own MAC on its own port, refreshed while
                // it is busy (encapsulated at the port, its traffic never
                // reaches the bridge to refresh it).
                if let Some(entry) = bridge.fdb.get(&end.mac)
                    && entry.port == *port
                    && !entry.permanent
                    && entry.idle > bridge.refresh_idle
                {
                    slices.fading.push(*entry);
                }
            }
            // Encapsulation at a port works on any veth; delivery only on
            // some. A VXLAN fan's overlay port is the overlay, not a container.
            slices.ports.extend(
                bridge
                    .ports
                    .values()
                    .filter(|l| l.kind.as_deref() == Some("veth") && !is_overlay_port(&l.name))
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
