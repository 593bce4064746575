//! Path MTUs in the host's routes: what the programs learn about narrower
//! underlay paths (the pinned `FAN_PATH_MTU` map) becomes, for each remote
//! slice behind such a path, a route through the fan's device (`fan-host`
//! for IP-in-IP, the slice bridge for VXLAN) with that MTU less the fan's
//! overhead (20 bytes, or 50). The stack then fragments packets without DF (from
//! containers, which the programs hand to it) before they are encapsulated,
//! and the host's own sockets see the path MTU of their route. Kept by
//! `fan-xdp run`; removed when it stops, which falls back to the overlay's
//! route.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use fan_common::{maps::PathMtu, pmtu::is_fresh};
use ipnetwork::Ipv4Network;
use log::info;

use crate::{
    dataplane::{PinnedMaps, monotonic_ns},
    host::Net,
    state::record::{Fan, HOST_DEVICE},
};

/// A route to a remote slice with a lowered MTU.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SliceRoute {
    pub slice: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The device it goes through: `fan-host`, or a VXLAN fan's slice bridge.
    pub device: String,
}

/// The learned path MTUs: remote host, its entry, and whether it still holds.
pub fn learned(maps: &PinnedMaps) -> Result<Vec<(Ipv4Addr, PathMtu, bool)>> {
    let now = monotonic_ns();
    let mut out = Vec::new();
    for item in maps.path_mtus.iter() {
        let (key, entry) = item.context("reading the path MTU map")?;
        out.push((Ipv4Addr::from(key), entry, is_fresh(entry.learned_ns, now)));
    }
    out.sort_by_key(|(host, _, _)| *host);
    Ok(out)
}

/// How long ago `learned_ns` (CLOCK_MONOTONIC) was, in seconds.
pub fn age_seconds(learned_ns: u64) -> u64 {
    monotonic_ns().saturating_sub(learned_ns) / 1_000_000_000
}

/// The routes the learned path MTUs call for: one per remote slice of each
/// complete fan whose underlay holds a host with a fresh entry.
pub fn wanted(learned: &[(Ipv4Addr, PathMtu, bool)], fans: &[Fan]) -> Vec<SliceRoute> {
    let mut routes = Vec::new();
    for (host, entry, fresh) in learned {
        if !fresh {
            continue;
        }
        for fan in fans.iter().filter(|f| f.complete) {
            let map = fan.map();
            let host_bits = u32::from(*host);
            if !map.underlay_contains(host_bits) || *host == fan.host {
                continue;
            }
            let slice = Ipv4Addr::from(map.slice_of(host_bits));
            let Ok(slice) = Ipv4Network::new(slice, map.slice_len()) else {
                continue;
            };
            let mtu = entry.mtu.saturating_sub(fan.overhead()).min(fan.mtu);
            let device = if fan.is_vxlan() {
                fan.bridge.clone()
            } else {
                HOST_DEVICE.to_string()
            };
            routes.push(SliceRoute {
                slice,
                gateway: fan.gateway,
                mtu,
                device,
            });
        }
    }
    routes.sort();
    routes
}

/// The routes `fan-xdp run` has put in place, by slice.
#[derive(Default)]
pub struct SliceRoutes(BTreeMap<Ipv4Network, SliceRoute>);

impl SliceRoutes {
    /// Brings the host's routes in line with `wanted`, logging each change.
    pub async fn sync(&mut self, net: &Net, wanted: &[SliceRoute]) -> Result<()> {
        let want: BTreeMap<_, _> = wanted.iter().map(|r| (r.slice, r.clone())).collect();
        let gone: Vec<SliceRoute> = self
            .0
            .values()
            .filter(|r| want.get(&r.slice).is_none_or(|w| w.device != r.device))
            .cloned()
            .collect();
        for route in gone {
            // A device that went took its routes along.
            if let Some(device) = net.device(&route.device).await? {
                net.del_route(route.slice.network(), route.slice.prefix(), device.index)
                    .await?;
            }
            self.0.remove(&route.slice);
            info!(
                "path MTU towards {} expired: its route is gone",
                route.slice
            );
        }
        for (slice, route) in want {
            if self.0.get(&slice) == Some(&route) {
                continue;
            }
            let Some(device) = net.device(&route.device).await? else {
                continue;
            };
            net.replace_route_with_mtu(
                slice.network(),
                slice.prefix(),
                device.index,
                route.gateway,
                route.mtu,
            )
            .await?;
            info!(
                "path MTU towards {slice}: route through {} with MTU {}",
                route.device, route.mtu
            );
            self.0.insert(slice, route);
        }
        Ok(())
    }

    /// Takes over the path MTU routes an agent killed before it could
    /// remove them left (marked with fan-xdp's routing protocol number): the
    /// next [`SliceRoutes::sync`] replaces those still wanted and removes the rest.
    pub async fn adopt(&mut self, net: &Net) -> Result<()> {
        for (dest, len, oif) in net.path_mtu_routes().await? {
            let Some(device) = net.device_by_index(oif).await? else {
                continue;
            };
            let slice = Ipv4Network::new(dest, len).context("a route's prefix")?;
            // MTU 0 matches no wanted route: the next sync writes it again or removes it.
            let unknown = SliceRoute {
                slice,
                gateway: Ipv4Addr::UNSPECIFIED,
                mtu: 0,
                device: device.name,
            };
            self.0.insert(slice, unknown);
            info!("path MTU route towards {slice}: left by the previous agent, taken over");
        }
        Ok(())
    }

    /// Removes every route put in place.
    pub async fn clear(&mut self, net: &Net) -> Result<()> {
        self.sync(net, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use fan_common::{
        Encap,
        maps::{FanMeta, MAP_LAYOUT_VERSION},
    };

    use super::*;
    use crate::state::record::name_bytes;

    /// Host 198.18.0.1/16's complete fan 250.0.0.0/8 of wire format `encap`.
    fn fan(encap: Encap) -> Fan {
        let meta = FanMeta {
            iface: name_bytes("eth0"),
            bridge: name_bytes("fan-250-0-1"),
            decap_mode: 2,
            mode_reason: 0,
            nat: 1,
            complete: 1,
            orig_forwarding: 1,
            orig_rp_filter: 0xff,
            orig_rp_filter_all: 0xff,
            underlay_len: 16,
            host: u32::from(Ipv4Addr::new(198, 18, 0, 1)),
            host_reserve: 1,
            mtu: 1500 - encap.overhead(),
            layout_version: MAP_LAYOUT_VERSION,
            owned: 0,
            orig_bridge_mtu: [0; 2],
            orig_bridge_accept_ra: 0,
            encap: encap as u8,
            _pad: [0],
            vxlan_port: 8472,
            vni: 16_384_000,
        };
        Fan::from_record([8, u32::from(Ipv4Addr::new(250, 0, 0, 0))], meta).unwrap()
    }

    #[test]
    fn a_narrower_path_lowers_each_fan_by_its_own_overhead_through_its_own_device() {
        let learned = [(
            Ipv4Addr::new(198, 18, 0, 2),
            PathMtu {
                mtu: 1400,
                _pad: 0,
                learned_ns: 0,
            },
            true,
        )];
        let route = |encap| wanted(&learned, &[fan(encap)]);
        let slice: Ipv4Network = "250.0.2.0/24".parse().unwrap();
        let gateway = Ipv4Addr::new(250, 0, 1, 1);
        assert_eq!(
            route(Encap::Vxlan),
            [SliceRoute {
                slice,
                gateway,
                mtu: 1350,
                device: "fan-250-0-1".into()
            }]
        );
        assert_eq!(
            route(Encap::Ipip),
            [SliceRoute {
                slice,
                gateway,
                mtu: 1380,
                device: HOST_DEVICE.into()
            }]
        );
    }
}
