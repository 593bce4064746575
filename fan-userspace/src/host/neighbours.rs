//! Neighbours (`ip neighbour`) and bridges' forwarding databases (`bridge
//! fdb`): where the containers' addresses and MACs are learned.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    AddressFamily,
    neighbour::{NeighbourFlags, NeighbourState},
};

use super::{Net, events};

/// One learned entry of a bridge's forwarding database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub port: u32,
    /// Since the bridge last saw a frame from `mac` on `port`.
    pub idle: Duration,
    /// Added by hand (`bridge fdb add ... static`): it never ages.
    pub permanent: bool,
}

impl Net {
    /// Usable IPv4 neighbours on `ifindex`: address and MAC.
    pub async fn neighbours(&self, ifindex: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let mut out = Vec::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = dump.try_next().await.context("listing neighbours")? {
            if msg.header.ifindex != ifindex || !events::is_usable(msg.header.state) {
                continue;
            }
            if let Some((ip, Some(mac))) = events::inet_neighbour_of(&msg) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// The forwarding database of bridge `bridge`: which port each MAC was
    /// learned on, and how long ago the bridge last saw it there.
    pub async fn fdb(&self, bridge: u32) -> Result<Vec<FdbEntry>> {
        let mut out = Vec::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .context("listing the bridge forwarding database")?
        {
            if let Some((of, entry)) = events::fdb_entry_of(&msg)
                && of == bridge
            {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Tells bridge of `port` that `mac` is in use there, as a frame from it
    /// would (`bridge fdb replace ... master use`): the entry's age restarts.
    pub async fn refresh_fdb(&self, port: u32, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(port, &mac)
            .state(NeighbourState::Reachable)
            .flags(NeighbourFlags::Use | NeighbourFlags::Controller)
            .replace()
            .execute()
            .await
            .context("refreshing a bridge forwarding entry")
    }
}
