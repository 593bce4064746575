//! `fan-xdp run`: the long-running mode (a systemd unit's `ExecStart`). It
//! keeps the endpoint map in step with the containers (from netlink link,
//! neighbour and bridge forwarding events, plus a periodic full resync),
//! encapsulates at the containers' bridge ports (see [`crate::ports`]),
//! turns the path MTUs the programs learn into routes (see [`crate::pmtu`]),
//! and with `-v` streams the eBPF programs' log. When it stops, it empties the
//! endpoint map and its port programs go with it, so every packet takes the
//! bridge and the stack, which is always correct.

use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use log::{debug, info, warn};
use rtnetlink::{
    constants::{RTMGRP_LINK, RTMGRP_NEIGH},
    sys::{AsyncSocket as _, SocketAddr},
};

use crate::{
    cli::{Global, RunArgs},
    endpoints,
    host::Net,
    loader::PinnedMaps,
    pmtu::{self, SliceRoutes},
    ports::PortEncap,
    record::load_fans,
    require_capabilities,
    state::StateDir,
};

pub async fn run(args: &RunArgs, global: &Global) -> Result<()> {
    require_capabilities()?;
    let dir = StateDir::locate(global.pin_dir.as_deref())?;
    let net = Net::connect()?;
    let mut ports = None;
    let mut routes = SliceRoutes::default();
    if args.once {
        return sync(&net, &dir, &mut ports, None, None).await;
    }
    let (mut connection, _, mut events) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_NEIGH))
        .context("subscribing to link and neighbour events")?;
    tokio::spawn(connection);
    let _logs = if global.verbose {
        crate::stats::stream_ebpf_logs(&dir)
    } else {
        None
    };

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    // Path MTUs are learned by the programs, with no netlink event to say
    // so: their routes are checked every second (a read of a small map).
    let mut path_mtus = tokio::time::interval(Duration::from_secs(1));
    info!(
        "fan-xdp run: keeping the endpoint map of {} current",
        dir.path.display()
    );
    loop {
        tokio::select! {
            event = events.next() => {
                if event.is_none() {
                    warn!("netlink event stream ended");
                    break;
                }
                // A burst (a container coming up) arrives as many events:
                // settle briefly, drain, then resync once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
                report(sync(&net, &dir, &mut ports, Some(args.steer_flows), Some(&mut routes)).await);
            }
            _ = resync.tick() => report(
                sync(&net, &dir, &mut ports, Some(args.steer_flows), Some(&mut routes)).await
            ),
            _ = path_mtus.tick() => report(sync_routes(&net, &dir, &mut routes).await),
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    drop(ports);
    if let Err(e) = routes.clear(&net).await {
        warn!("removing the path MTU routes: {e:#}");
    }
    if dir.exists() {
        endpoints::clear(&mut PinnedMaps::open(&dir)?)?;
    }
    info!(
        "fan-xdp run: stopped; the endpoint map is empty, traffic takes the bridge and the stack"
    );
    Ok(())
}

fn report(result: Result<()>) {
    if let Err(e) = result {
        warn!("endpoint sync failed: {e:#}");
    }
}

/// One pass: the endpoint map, the port programs (`at_ports` says whether
/// to steer flows) and the path MTU routes; with `--once` neither of the last
/// two (None: nothing would remove them after the exit).
async fn sync(
    net: &Net,
    dir: &StateDir,
    ports: &mut Option<PortEncap>,
    at_ports: Option<bool>,
    routes: Option<&mut SliceRoutes>,
) -> Result<()> {
    if !dir.exists() {
        // Detached: the ports' links would keep a dead fan's program running.
        *ports = None;
        if let Some(routes) = routes {
            routes.clear(net).await?;
        }
        return Ok(());
    }
    let mut maps = PinnedMaps::open(dir)?;
    let fans = load_fans(&maps)?;
    let want = endpoints::desired(net, &fans).await?;
    let (changed, removed) = endpoints::apply(&mut maps, &want.endpoints)?;
    if changed + removed > 0 {
        info!(
            "endpoints: {} known, {changed} added or changed, {removed} removed",
            want.endpoints.len()
        );
    } else {
        debug!("endpoints: {} known, unchanged", want.endpoints.len());
    }

    if ports.as_ref().is_some_and(|p| !p.is_current(dir)) {
        info!("a new program version was attached: moving the ports to it");
        *ports = None;
    }
    if let Some(steer_flows) = at_ports
        && ports.is_none()
        && fans.iter().any(|f| f.complete)
    {
        *ports = PortEncap::open(dir, steer_flows)?;
    }
    if let Some(ports) = ports {
        ports.sync(&want.ports)?;
        for entry in &want.fading {
            net.refresh_fdb(entry.port, entry.mac).await?;
        }
    }
    if let Some(routes) = routes {
        routes
            .sync(net, &pmtu::wanted(&pmtu::learned(&maps)?, &fans))
            .await?;
    }
    Ok(())
}

/// The path MTU routes alone.
async fn sync_routes(net: &Net, dir: &StateDir, routes: &mut SliceRoutes) -> Result<()> {
    if !dir.exists() {
        return routes.clear(net).await;
    }
    let maps = PinnedMaps::open(dir)?;
    let fans = load_fans(&maps)?;
    routes
        .sync(net, &pmtu::wanted(&pmtu::learned(&maps)?, &fans))
        .await
}
