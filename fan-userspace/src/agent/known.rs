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
    endpoints::{self, Effect, Observed, Slices},
    ports::PortEncap,
};
use crate::{dataplane::PinnedMaps, host::events, state::StateDir};

/// What the last full sync found, kept current by events since.
pub struct Known {
    pub observed: Observed,
    /// The endpoint map as the agent last wrote it: the agent is its only writer.
    pub have: HashMap<WireAddr, Endpoint>,
}

/// The endpoint map's entries: what the bridge taught (learned entries,
/// which keep to a live port), then the bindings made on purpose over it;
/// and how many each origin has. Kept while the bypass is off too: the
/// programs then deliver nothing directly (they read the bypass), but the
/// port programs still check each container's source against them.
pub fn choose(
    have: &HashMap<WireAddr, Endpoint>,
    want: &Slices,
    bindings: &Bindings,
) -> (HashMap<WireAddr, Endpoint>, BTreeMap<String, u64>) {
    let mut bound = endpoints::keep_bindings(have, want);
    let chosen = bindings.endpoints(want);
    let mut counts = bindings.counts();
    let learned = bound.keys().filter(|k| !chosen.contains_key(k)).count();
    counts.insert("learned".into(), learned as u64);
    bound.extend(chosen);
    (bound, counts)
}

impl Known {
    /// Takes in the changes `messages` announce. `None` if one of them needs
    /// a full sync (a slice bridge changed or went, or events were lost);
    /// `Some(Ok(None))` if none was about a slice bridge (nothing to write);
    /// else the bindings by origin after the endpoint map and the ports were
    /// brought in step.
    pub fn take_in(
        &mut self,
        messages: &[NetlinkMessage<RouteNetlinkMessage>],
        dir: &StateDir,
        bindings: &Bindings,
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
        Some(self.settle(dir, bindings, ports).map(Some))
    }

    /// Writes what differs between what is known and the endpoint map, and
    /// runs the port program on exactly the known ports.
    pub fn settle(
        &mut self,
        dir: &StateDir,
        bindings: &Bindings,
        ports: &mut Option<PortEncap>,
    ) -> Result<BTreeMap<String, u64>> {
        let want = self.observed.slices();
        let (bound, counts) = choose(&self.have, &want, bindings);
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
