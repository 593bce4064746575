//! What the agent knows between full syncs, and how one netlink event
//! changes it: the event is about one port, neighbour or forwarding entry,
//! so the agent updates that in what it knows and writes only the endpoint
//! map entries that differ, instead of reading every link, neighbour and
//! forwarding entry again. Its cost per container therefore does not grow
//! with the number of containers. The periodic full sync stays, as the
//! safety net for anything an event did not say (or a lost event).

use fan_common::WireAddr;
use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use fan_common::maps::Endpoint;
use log::{debug, info};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{
    bindings::Bindings,
    endpoints::{self, Effect, Observed},
    ownership,
    ports::PortEncap,
};
use crate::{
    dataplane::PinnedMaps,
    host::{Net, events},
    state::StateDir,
};

/// What the last full sync found, kept current by events since.
pub struct Known {
    pub observed: Observed,
    /// The endpoint map as the agent last wrote it: the agent is its only writer.
    pub have: HashMap<WireAddr, Endpoint>,
}

impl Known {
    /// Takes in the changes `messages` announce. `None` if one of them needs
    /// a full sync (a slice bridge changed or went, or events were lost);
    /// `Some(Ok(None))` if none was about a slice bridge (nothing to write);
    /// else the bindings by origin after the endpoint map and the ports were
    /// brought in step.
    pub async fn take_in(
        &mut self,
        messages: &[NetlinkMessage<RouteNetlinkMessage>],
        net: &Net,
        dir: &StateDir,
        bindings: &mut Bindings,
        ports: &mut Option<PortEncap>,
    ) -> Option<Result<Option<BTreeMap<String, u64>>>> {
        let mut changed = false;
        for message in messages {
            let inner = match &message.payload {
                NetlinkPayload::InnerMessage(inner) => inner,
                // The socket's buffer overflowed and the kernel dropped
                // events: only reading everything again tells what they said.
                NetlinkPayload::Overrun(_) => {
                    info!(
                        "netlink events were lost (the socket's buffer overflowed): reading everything"
                    );
                    return None;
                }
                _ => continue,
            };
            let Some(change) = events::change_of(inner) else {
                continue;
            };
            match self.observed.apply(&change) {
                Effect::ReadAgain => return None,
                Effect::Changed => changed = true,
                Effect::None => {}
            }
        }
        if !changed {
            debug!("{} event(s), none about a slice bridge", messages.len());
            return Some(Ok(None));
        }
        // Only the ports the events were about are read again.
        self.observed.read_ends(net).await;
        Some(self.settle(dir, bindings, ports).map(Some))
    }

    /// Writes what differs between what is known and the endpoint map, and
    /// runs the port program on exactly the known ports.
    pub fn settle(
        &mut self,
        dir: &StateDir,
        bindings: &mut Bindings,
        ports: &mut Option<PortEncap>,
    ) -> Result<BTreeMap<String, u64>> {
        let want = self.observed.slices();
        let (bound, counts) = ownership::owners(bindings, &want);
        if bound != self.have {
            let mut maps = PinnedMaps::open(dir)?;
            let (changed, removed) = endpoints::apply_diff(&mut maps, &self.have, &bound)?;
            info!(
                "endpoints: {} known, {changed} added or changed, {removed} removed",
                bound.len()
            );
            self.have = bound;
        }
        if let Some(ports) = ports {
            ports.sync(&want.ports)?;
        }
        Ok(counts)
    }
}
