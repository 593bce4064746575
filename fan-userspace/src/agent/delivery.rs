//! The delivery controller: the one owner of what decides where a packet
//! goes straight to: the bindings, the endpoint map (with what is known
//! of the bridges since the last full read), the port programs, the path
//! MTU routes, the programs' event ring and its monitors, and the status
//! file that says all of it. The other controllers tell it what changed
//! (netlink events, DHCP leases, the bypass verdict) and ask it what it
//! knows (status, bindings) through its channel; nothing it does waits
//! on another controller, and nothing it does blocks for long (every read
//! of the host is netlink, asynchronous).

use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use anyhow::Result;
use log::{info, warn};
use rtnetlink::{packet_core::NetlinkMessage, packet_route::RouteNetlinkMessage};
use tokio::sync::{mpsc, oneshot};

use crate::{
    agent,
    agent::bindings::{Binding, Bindings, Origin},
    agent::endpoints,
    agent::heartbeat::KeeperAlive,
    agent::known::Known,
    agent::monitor::Monitors,
    agent::pmtu::SliceRoutes,
    agent::ports::{AtPorts, PortEncap},
    agent::sync::{
        Synced, bind, bind_known, collect_portless, is_delivered, publish, publish_bypass, sync,
        sync_routes,
    },
    dataplane::PinnedMaps,
    host::{Net, bypass},
    state::StateDir,
    state::rundir::RunDir,
};

/// What the other controllers tell or ask the delivery controller.
pub(super) enum ToDelivery {
    /// A burst of link, neighbour and address events.
    Events(Vec<NetlinkMessage<RouteNetlinkMessage>>),
    /// A full read of the host (resync, reload); answered with the status after it.
    FullSync(oneshot::Sender<agent::Status>),
    /// The first full read: then the agent is ready (answered once it is).
    Ready(oneshot::Sender<()>),
    /// The DHCP servers' leases, as bindings of origin `dhcp`.
    DhcpLeases(Vec<Binding>),
    /// The ruleset watch decided the bypass.
    Bypass(Option<bypass::Verdict>),
    Bind(Binding, oneshot::Sender<Result<serde_json::Value>>),
    Unbind(Ipv4Addr, Origin, oneshot::Sender<Result<serde_json::Value>>),
    Bindings(oneshot::Sender<serde_json::Value>),
    Status(oneshot::Sender<agent::Status>),
    /// A monitor whose request was answered on this stream.
    Monitor(std::os::unix::net::UnixStream, bool),
}

/// Messages waiting for the delivery controller.
pub(super) const QUEUE: usize = 256;

/// Built by `fan-xdp run` with nothing known yet (`known`, `ports` None,
/// no monitors): its first full read fills them in.
pub(super) struct Delivery {
    pub(super) net: Net,
    pub(super) dir: StateDir,
    pub(super) run_dir: RunDir,
    pub(super) bindings: Bindings,
    pub(super) at_ports: AtPorts,
    pub(super) routes: SliceRoutes,
    pub(super) status: agent::Status,
    pub(super) resync_period: Duration,
    pub(super) known: Option<Known>,
    pub(super) ports: Option<PortEncap>,
    pub(super) monitors: Monitors,
    /// Stamped each time round the loop: the heartbeat beats only while it is.
    pub(super) alive: KeeperAlive,
}

impl Delivery {
    /// Serves `inbox` until `stop` fires (or every sender is gone), then
    /// lets go of the fast path: the port programs, the path MTU routes,
    /// the endpoint map (emptied, so every packet takes the bridge and the
    /// stack). The heartbeat must have stopped before.
    pub(super) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<ToDelivery>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<()> {
        self.monitors.refresh(&self.dir);
        let mut resync = tokio::time::interval(self.resync_period);
        resync.tick().await;
        // Every second: the path MTU routes (the programs learn path MTUs
        // with no netlink event to say so), the event ring, the log's cap.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.alive.turned();
            tokio::select! {
                message = inbox.recv() => {
                    let Some(message) = message else { break };
                    self.take(message).await;
                }
                _ = resync.tick() => {
                    // A test's stand-in for a hung keeper (blocks this task).
                    agent::injected_delay("delivery");
                    // The safety net for changes whose event was missed.
                    let synced = self.full_sync().await;
                    self.publish(synced);
                }
                _ = tick.tick() => {
                    self.monitors.refresh(&self.dir);
                    report(sync_routes(&self.net, &self.dir, &mut self.routes).await);
                    agent::cap_log(&self.run_dir);
                }
                () = self.monitors.pump(&self.dir) => {}
                _ = &mut stop => break,
            }
        }
        self.release().await
    }

    async fn take(&mut self, message: ToDelivery) {
        match message {
            ToDelivery::Events(messages) => {
                let taken = match self.known.as_mut() {
                    Some(k) => {
                        k.take_in(
                            &messages,
                            &self.net,
                            &self.dir,
                            &mut self.bindings,
                            &mut self.ports,
                        )
                        .await
                    }
                    None => None,
                };
                let synced = match taken {
                    // Nothing about a slice bridge: nothing to write or say.
                    Some(Ok(None)) => return,
                    Some(Ok(Some(bindings))) => Ok(self.synced(bindings)),
                    Some(Err(e)) => Err(e),
                    None => self.full_sync().await,
                };
                self.publish(synced);
            }
            ToDelivery::FullSync(answer) => {
                let synced = self.full_sync().await;
                self.publish(synced);
                let _ = answer.send(self.status.clone());
            }
            ToDelivery::Ready(answer) => {
                let synced = self.full_sync().await;
                // The first heartbeat is fresh before READY.
                report(agent::sync::beat(&self.dir));
                self.status.ready = true;
                self.publish(synced);
                let _ = answer.send(());
            }
            ToDelivery::DhcpLeases(leases) => {
                let fresh = self.fresh_lease_macs(&leases);
                match self.bindings.replace_origin(Origin::Dhcp, leases) {
                    Ok(true) => {
                        // With what is known, a lease costs what it
                        // changes (the ends of its container read again,
                        // which configured the address since), not a full
                        // read: hundreds of containers leasing at once
                        // would read everything hundreds of times.
                        let synced = match self.known.as_mut() {
                            Some(known) => {
                                known.observed.read_again_holding(&fresh);
                                known.observed.read_ends(&self.net).await;
                                known
                                    .settle(&self.dir, &mut self.bindings, &mut self.ports)
                                    .map(|bindings| self.synced(bindings))
                            }
                            None => self.full_sync().await,
                        };
                        self.publish(synced);
                    }
                    Ok(false) => {}
                    Err(e) => warn!("DHCP bindings: {e:#}"),
                }
            }
            ToDelivery::Bypass(verdict) => {
                publish_bypass(&self.run_dir, &mut self.status, verdict);
            }
            ToDelivery::Bind(binding, answer) => {
                let _ = answer.send(self.bind(binding).await);
            }
            ToDelivery::Unbind(address, origin, answer) => {
                let _ = answer.send(self.unbind(address, origin).await);
            }
            ToDelivery::Bindings(answer) => {
                let _ = answer.send(
                    serde_json::json!({ "bindings": self.bindings.list().collect::<Vec<_>>() }),
                );
            }
            ToDelivery::Status(answer) => {
                let _ = answer.send(self.status.clone());
            }
            ToDelivery::Monitor(stream, passes) => {
                report(self.monitors.add(stream, passes, &self.dir));
            }
        }
    }

    /// The MACs of the leases in `leases` that are not bindings yet.
    fn fresh_lease_macs(&self, leases: &[Binding]) -> HashSet<[u8; 6]> {
        let bound: HashSet<(Ipv4Addr, &str)> = self
            .bindings
            .list()
            .filter(|b| b.origin == Origin::Dhcp)
            .map(|b| (b.address, b.mac.as_str()))
            .collect();
        leases
            .iter()
            .filter(|lease| !bound.contains(&(lease.address, lease.mac.as_str())))
            .filter_map(|lease| lease.mac_bytes().ok())
            .collect()
    }

    /// A full read: every link, neighbour and forwarding entry.
    async fn full_sync(&mut self) -> Result<Synced> {
        report(collect_portless(&self.net, &mut self.bindings).await);
        let synced = sync(
            &self.net,
            &self.dir,
            &mut self.bindings,
            &mut self.known,
            &mut self.ports,
            Some(&self.at_ports),
            Some(&mut self.routes),
        )
        .await;
        self.status.full_reads += 1;
        synced
    }

    fn synced(&self, bindings: std::collections::BTreeMap<String, u64>) -> Synced {
        Synced {
            bindings,
            ports: self.ports.as_ref().map_or(0, PortEncap::ports),
        }
    }

    fn publish(&mut self, synced: Result<Synced>) {
        publish(&self.run_dir, &mut self.status, synced);
    }

    async fn bind(&mut self, binding: Binding) -> Result<serde_json::Value> {
        let address = binding.address;
        // With what is known, only the binding's port is read again:
        // fifty containers starting at once cost fifty small changes, not
        // fifty full reads.
        let counts = match self.known.as_mut() {
            Some(known) => Some(
                bind_known(
                    &self.net,
                    &self.dir,
                    &mut self.bindings,
                    known,
                    &mut self.ports,
                    binding,
                )
                .await?,
            ),
            None => {
                bind(&self.net, &self.dir, &mut self.bindings, binding).await?;
                None
            }
        };
        let synced = match counts {
            Some(bindings) => Ok(self.synced(bindings)),
            None => self.full_sync().await,
        };
        self.publish(synced);
        is_delivered(&self.dir, address).map(|active| serde_json::json!({ "active": active }))
    }

    async fn unbind(&mut self, address: Ipv4Addr, origin: Origin) -> Result<serde_json::Value> {
        let removed = self.bindings.unbind(address, origin)?;
        if removed {
            info!("{address}: {} binding removed", origin.name());
        }
        let synced = match self.known.as_mut() {
            Some(known) => known
                .settle(&self.dir, &mut self.bindings, &mut self.ports)
                .map(|bindings| self.synced(bindings)),
            None => self.full_sync().await,
        };
        self.publish(synced);
        Ok(serde_json::json!({ "removed": removed }))
    }

    async fn release(mut self) -> Result<()> {
        self.monitors.stop(&self.dir);
        if let Some(ports) = self.ports.take() {
            ports.release(&self.net).await;
        }
        if let Err(e) = self.routes.clear(&self.net).await {
            warn!("removing the path MTU routes: {e:#}");
        }
        if self.dir.exists() {
            let mut maps = PinnedMaps::open(&self.dir)?;
            maps.stop_beating()?;
            endpoints::clear(&mut maps)?;
        } else {
            // Every fan is detached: no port of theirs is left to bind to.
            self.bindings.forget()?;
        }
        Ok(())
    }
}

pub(super) fn report(result: Result<()>) {
    if let Err(e) = result {
        warn!("{e:#}");
    }
}
