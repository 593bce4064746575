//! The endpoint map: which veth each local container's overlay address is
//! behind, so decapsulation can deliver straight into the container.
//!
//! The kernel already knows: the slice bridge's neighbour table maps a
//! container's address to its MAC, and the bridge's forwarding database maps
//! that MAC to the port (the host end of the container's veth). `sync` reads
//! both and makes the map say exactly that, adding, changing and removing
//! entries; anything unknown is simply absent and takes the stack.

use std::collections::HashMap;

use anyhow::Result;
use fan_common::maps::Endpoint;

use crate::{host::Net, loader::PinnedMaps, record::Fan};

/// What the endpoint map should hold now, by address (network byte order).
pub async fn desired(net: &Net, fans: &[Fan]) -> Result<HashMap<u32, Endpoint>> {
    let mut want = HashMap::new();
    for fan in fans.iter().filter(|f| f.complete) {
        let Some(bridge) = net.link(&fan.bridge).await? else {
            continue;
        };
        let Some(gateway_mac) = bridge.mac else {
            continue;
        };
        let ports: HashMap<[u8; 6], u32> = net.fdb(bridge.index).await?.into_iter().collect();
        for (addr, mac) in net.neighbours(bridge.index).await? {
            if !fan.slice.contains(addr) {
                continue;
            }
            let Some(&port) = ports.get(&mac) else {
                continue;
            };
            // Direct delivery needs a veth: bpf_redirect_peer enters its peer.
            if net
                .link_by_index(port)
                .await?
                .and_then(|l| l.kind)
                .as_deref()
                != Some("veth")
            {
                continue;
            }
            want.insert(
                u32::from(addr).to_be(),
                Endpoint {
                    ifindex: port,
                    mac,
                    gateway_mac,
                },
            );
        }
    }
    Ok(want)
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
