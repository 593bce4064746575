//! What the agent writes and publishes: a sync (the endpoint map from what
//! the host shows, the port programs, the path MTU routes), a binding taken
//! in, the heartbeat, and the status file a sync leaves. The event loop in
//! [`crate::agent::run`] decides when.

use fan_common::WireAddr;
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use anyhow::{Result, bail};
use fan_common::maps::Endpoint;
use log::{debug, info, warn};

use crate::{
    agent,
    agent::bindings::{Binding, Bindings, Origin},
    agent::endpoints,
    agent::known::Known,
    agent::notify,
    agent::ownership,
    agent::pmtu::{self, SliceRoutes},
    agent::ports::{AtPorts, PortEncap},
    dataplane::PinnedMaps,
    host::bypass,
    host::{Net, events::Change},
    state::StateDir,
    state::record::load_fans,
    state::rundir::RunDir,
};

/// Records `binding` in the table, checked against the slices as they are now.
pub(super) async fn bind(
    net: &Net,
    dir: &StateDir,
    bindings: &mut Bindings,
    binding: Binding,
) -> Result<()> {
    if !dir.exists() {
        bail!("no fan is attached in this network namespace");
    }
    let fans = load_fans(&PinnedMaps::open(dir)?)?;
    let slices = endpoints::desired(net, &fans).await?;
    let (address, origin) = (binding.address, binding.origin);
    bindings.bind(binding, &slices)?;
    info!("{address}: {} binding recorded", origin.name());
    Ok(())
}

/// Records `binding` against what is known, with its port read again (a
/// CNI plugin binds right after it plugged the port, maybe before the
/// agent took in the event), and writes what changed.
pub(super) async fn bind_known(
    net: &Net,
    dir: &StateDir,
    bindings: &mut Bindings,
    known: &mut Known,
    ports: &mut Option<PortEncap>,
    binding: Binding,
) -> Result<BTreeMap<String, u64>> {
    if let Some(port) = &binding.port
        && let Some(link) = net.device(port).await?
    {
        known.observed.apply(&Change::Device(link));
        known.observed.read_ends(net).await;
    }
    let (address, origin) = (binding.address, binding.origin);
    bindings.bind(binding, &known.observed.slices())?;
    info!("{address}: {} binding recorded", origin.name());
    known.settle(dir, bindings, ports)
}

/// Removes the CNI bindings whose port no longer exists. The port (the
/// host end of the container's veth) dies with the container's namespace,
/// and a DEL that ran while no agent was up could not unbind: left alone,
/// every such address would stay taken for the plugin's ADD, and the CNI
/// range would shrink with every rollout. Other origins' bindings stand:
/// a static or DHCP binding outlives its port on purpose.
pub(super) async fn collect_portless(net: &Net, bindings: &mut Bindings) -> Result<()> {
    let mut gone = Vec::new();
    for binding in bindings.list().filter(|b| b.origin == Origin::Cni) {
        if let Some(port) = &binding.port
            && net.device(port).await?.is_none()
        {
            gone.push((binding.address, port.clone()));
        }
    }
    for (address, port) in gone {
        bindings.unbind(address, Origin::Cni)?;
        warn!(
            "{address}: cni binding removed: its port {port} is gone (the container's DEL ran while no agent was up)"
        );
    }
    Ok(())
}

/// Whether the endpoint map delivers `address` straight to a container.
pub(super) fn is_delivered(dir: &StateDir, address: Ipv4Addr) -> Result<bool> {
    let maps = PinnedMaps::open(dir)?;
    Ok(maps.endpoints.get(&WireAddr::from(address), 0).is_ok())
}

/// What a sync found, for the status.
#[derive(Default)]
pub(super) struct Synced {
    /// Addresses delivered straight into containers, by origin.
    pub(super) bindings: BTreeMap<String, u64>,
    pub(super) ports: usize,
}

/// Records a sync in the status file (and says so to the service manager).
pub(super) fn publish(run_dir: &RunDir, status: &mut agent::Status, synced: Result<Synced>) {
    match synced {
        Ok(synced) => {
            status.last_sync = unix_now();
            status.bindings = synced.bindings;
            status.ports = synced.ports as u64;
        }
        Err(e) => warn!("sync failed: {e:#}"),
    }
    write_status(run_dir, status);
}

/// Records the ruleset watch's verdict in the status.
pub(super) fn publish_bypass(
    run_dir: &RunDir,
    status: &mut agent::Status,
    verdict: Option<bypass::Verdict>,
) {
    let Some(verdict) = verdict else { return };
    status.bypass = verdict.on;
    status.bypass_why = verdict.why;
    write_status(run_dir, status);
}

/// Writes the status file and says the status to the service manager.
fn write_status(run_dir: &RunDir, status: &agent::Status) {
    if let Err(e) = agent::write_status(run_dir, status) {
        warn!("writing the agent's status: {e:#}");
    }
    let (bound, ports) = (status.bindings.values().sum::<u64>(), status.ports);
    notify::notify(&if status.bypass {
        format!("STATUS=direct delivery to {bound} container(s), encapsulation at {ports} port(s)")
    } else {
        format!(
            "STATUS=bypass off ({}): {bound} address(es) bound, source and DHCP checks at {ports} port(s)",
            status.bypass_why
        )
    });
}

pub(super) fn beat(dir: &StateDir) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    PinnedMaps::open(dir)?.beat()
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One pass: the endpoint map, the port programs (`at_ports` says whether
/// to steer flows, and where what must be undone after a kill is
/// recorded) and the path MTU routes; with `--once` neither of the last
/// two (None: nothing would remove them after the exit).
pub(super) async fn sync(
    net: &Net,
    dir: &StateDir,
    bindings: &mut Bindings,
    known: &mut Option<Known>,
    ports: &mut Option<PortEncap>,
    at_ports: Option<&AtPorts>,
    routes: Option<&mut SliceRoutes>,
) -> Result<Synced> {
    *known = None;
    if !dir.exists() {
        // Detached: the ports' links would keep a dead fan's program running.
        if let Some(ports) = ports.take() {
            ports.release(net).await;
        }
        if let Some(routes) = routes {
            routes.clear(net).await?;
        }
        return Ok(Synced::default());
    }
    let mut maps = PinnedMaps::open(dir)?;
    let fans = load_fans(&maps)?;
    let observed = endpoints::observe(net, &fans).await?;
    let want = observed.slices();
    let have: HashMap<WireAddr, Endpoint> = maps.endpoints.iter().collect::<Result<_, _>>()?;
    let (bound, counts) = ownership::owners(bindings, &want);
    let (changed, removed) = endpoints::apply_diff(&mut maps, &have, &bound)?;
    if changed + removed > 0 {
        info!(
            "endpoints: {} known, {changed} added or changed, {removed} removed",
            bound.len()
        );
    } else {
        debug!("endpoints: {} known, unchanged", bound.len());
    }
    *known = Some(Known {
        observed,
        have: bound,
    });

    if let Some(current) = ports
        && !current.is_current(dir)
    {
        info!("a new program version was attached: moving the ports to it");
        if !current.follow_upgrade(dir)? {
            *ports = None;
        }
    }
    // The port programs stay while the bypass is off: they pass what is
    // for other slices to the stack then, but still drop what a container
    // must not send (a sibling's source, a DHCP server's replies).
    if let Some(at_ports) = at_ports
        && ports.is_none()
        && fans.iter().any(|f| f.complete)
    {
        *ports = PortEncap::open(dir, at_ports)?;
    }
    if let Some(ports) = ports {
        ports.sync(&want.ports)?;
        ports.tidy(net).await;
        for entry in &want.fading {
            net.refresh_fdb(entry.port, entry.mac).await?;
        }
    }
    if let Some(routes) = routes {
        routes
            .sync(net, &pmtu::wanted(&pmtu::learned(&maps)?, &fans))
            .await?;
    }
    Ok(Synced {
        bindings: counts,
        ports: ports.as_ref().map_or(0, PortEncap::ports),
    })
}

/// The path MTU routes alone.
pub(super) async fn sync_routes(net: &Net, dir: &StateDir, routes: &mut SliceRoutes) -> Result<()> {
    if !dir.exists() {
        return routes.clear(net).await;
    }
    let maps = PinnedMaps::open(dir)?;
    let fans = load_fans(&maps)?;
    routes
        .sync(net, &pmtu::wanted(&pmtu::learned(&maps)?, &fans))
        .await
}
