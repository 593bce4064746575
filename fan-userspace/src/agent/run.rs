//! `fan-xdp run`: the long-running mode (a systemd unit's `ExecStart`). It
//! keeps the endpoint map in step with the containers (from netlink link,
//! neighbour and bridge forwarding events, plus a periodic full resync),
//! encapsulates at the containers' bridge ports (see [`crate::agent::ports`]),
//! turns the path MTUs the programs learn into routes (see [`crate::agent::pmtu`]),
//! and hands the programs' drop events to `fan-xdp monitor` (see
//! [`crate::agent::monitor`]). When it stops, it empties the
//! endpoint map and its port programs go with it, so every packet takes the
//! bridge and the stack, which is always correct.
//!
//! This file starts the agent's controllers, each the owner of one
//! concern, talking through channels (nothing one does holds up another),
//! waits for a stop, and stops them in order: `delivery` (bindings,
//! endpoint map, port programs, routes, monitors, status), `fans` (every
//! attach and detach the agent makes), `dhcp::controller`, `ruleset`,
//! `heartbeat`, `control` (the socket), and the netlink event reader here.

use std::{
    collections::HashSet,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, channel::mpsc::UnboundedReceiver};
use log::{info, warn};
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK, RTMGRP_NEIGH},
    packet_core::NetlinkMessage,
    packet_route::RouteNetlinkMessage,
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::{
    net::UnixListener,
    sync::{
        mpsc::{Sender, UnboundedSender},
        watch,
    },
};

use crate::{
    agent,
    agent::bindings::Bindings,
    agent::config::FileFans,
    agent::control::{self, Controllers},
    agent::delivery::{self, Delivery, ToDelivery, report},
    agent::dhcp::controller::{Dhcp, round_now},
    agent::fans::{self, Fans, ToFans},
    agent::follow::concerns,
    agent::heartbeat::{Heartbeat, KeeperAlive},
    agent::monitor::Monitors,
    agent::notify,
    agent::pmtu::SliceRoutes,
    agent::ports::AtPorts,
    agent::ruleset::RulesetWatch,
    agent::sync::{sync, unix_now},
    cli::{Global, RunArgs},
    host::Net,
    require_capabilities,
    state::StateDir,
    state::rundir::RunDir,
};

pub async fn run(args: &RunArgs, global: &Global) -> Result<()> {
    require_capabilities()?;
    if let Some(addr) = args.metrics {
        agent::metrics::check(addr, args.metrics_any_address)?;
    }
    let dir = StateDir::locate(global.pin_dir.as_deref())?;
    // The agent may start before any attach (at boot): it mounts bpffs, so
    // that the directory it holds open below is the one attach pins into.
    dir.mount()?;
    let net = Net::connect()?;
    let mut routes = SliceRoutes::default();
    if args.once {
        let mut none = Bindings::default();
        agent::ruleset::decide(&dir)?;
        return sync(&net, &dir, &mut none, &mut None, &mut None, None, None)
            .await
            .map(drop);
    }
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    let _lock = agent::lock(&run_dir)?;
    let at_ports = AtPorts::new(args.steer_flows, &run_dir);
    // Ours alone now (the lock): what a killed predecessor left is ours to keep or remove.
    report(routes.adopt(&net).await);
    run_dir.sweep_gone_namespaces();
    let bindings = Bindings::load(&run_dir)?;
    // Under `ip netns exec` the bpffs is reached through the mount namespace
    // of the command's parent, which may exit long before the agent does.
    let dir = dir.held_open()?;
    if let Some(addr) = args.metrics {
        agent::metrics::serve(addr, dir.clone())?;
    }
    let files = agent::Files::of(&run_dir);
    // A socket left by an agent that died: ours to replace, as we hold the lock.
    let _ = std::fs::remove_file(&files.socket);
    let control_socket = UnixListener::bind(&files.socket)
        .with_context(|| format!("listening on {}", files.socket.display()))?;
    std::fs::set_permissions(&files.socket, std::fs::Permissions::from_mode(0o600))?;

    let (mut connection, _, events) = rtnetlink::new_connection().context("opening rtnetlink")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR,
        ))
        .context("subscribing to link, neighbour and address events")?;
    // Hundreds of containers starting at once announce megabytes of events;
    // the default buffer (rmem_default, about 200 KiB) would drop most of
    // them. A lost event is caught (an overrun makes the agent read
    // everything), but each costs a full read.
    let events_fd = connection.socket_mut().socket_mut().as_raw_fd();
    let buffer: libc::c_int = EVENT_BUFFER_BYTES;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int
    // that outlives the call and its size.
    let set = unsafe {
        libc::setsockopt(
            events_fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const buffer).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        warn!(
            "enlarging the netlink event buffer: {}",
            std::io::Error::last_os_error()
        );
    }
    tokio::spawn(connection);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let resync_period = Duration::from_secs(args.resync_seconds.max(1));
    let status = agent::Status {
        pid: std::process::id(),
        version: agent::version(),
        started_by_attach: args.started_by_attach,
        since: unix_now(),
        ..agent::Status::default()
    };
    // Each concern has a controller of its own, and they talk through
    // channels: nothing one does holds up another. The delivery
    // controller (bindings, endpoint map, port programs, status) and the
    // control socket's run here; the fans controller (attach and detach:
    // the file's fans, following the host), the DHCP servers' supervision,
    // the ruleset watch and the heartbeat each on a thread of its own.
    let (delivery_tx, delivery_inbox) = tokio::sync::mpsc::channel(delivery::QUEUE);
    let (stop_tx, mut stop_asked) = tokio::sync::mpsc::unbounded_channel();
    // attach and detach, run by the fans controller for the configuration's
    // fans and to follow the host, reach the bpffs through the descriptor
    // held open.
    let inner = Global {
        pin_dir: dir.root.parent().map(std::path::Path::to_path_buf),
        ..global.clone()
    };
    let mut file_fans = FileFans::new(args, &run_dir);
    // A bad file stops the start: nothing of it is applied.
    let lines = file_fans.read()?;
    let (started, fans_up) = tokio::sync::oneshot::channel();
    let fans = Fans::start(
        fans::Setting {
            file_fans,
            lines,
            dir: dir.clone(),
            run_dir: run_dir.clone(),
            global: inner,
            resync_period,
        },
        started,
    )?;
    if let Ok(Err(e)) = fans_up.await {
        warn!("the configuration's fans: {e:#}");
    }
    // The file's fans' DHCP servers too, then the bypass and the first
    // sync: ready once the fans are up and the fast path is in place.
    let dhcp = Dhcp::start(
        run_dir.clone(),
        global.state_dir.clone(),
        dir.clone(),
        delivery_tx.clone(),
    )?;
    let mut ruleset = RulesetWatch::start(dir.clone(), resync_period)?;
    let first_verdict = ruleset.verdicts.borrow_and_update().clone();
    let keeper = KeeperAlive::new();
    let delivering = Delivery {
        net,
        dir: dir.clone(),
        run_dir: run_dir.clone(),
        bindings,
        at_ports,
        routes,
        status,
        resync_period,
        known: None,
        ports: None,
        monitors: Monitors::default(),
        alive: keeper.clone(),
    };
    let (stop_delivery, delivery_stopped) = tokio::sync::oneshot::channel();
    let delivery_task = tokio::spawn(delivering.run(delivery_inbox, delivery_stopped));
    round_now(&dhcp.inbox).await;
    let _ = delivery_tx.send(ToDelivery::Bypass(first_verdict)).await;
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let _ = delivery_tx.send(ToDelivery::Ready(ready)).await;
    let _ = is_ready.await;
    let heartbeat = Heartbeat::start(dir.clone(), keeper, args.started_by_attach, stop_tx.clone())?;
    tokio::spawn(forward_verdicts(ruleset, delivery_tx.clone()));
    tokio::spawn(read_events(
        events,
        delivery_tx.clone(),
        fans.inbox.clone(),
        fans.devices.clone(),
        stop_tx.clone(),
    ));
    tokio::spawn(control::serve(
        control_socket,
        Controllers {
            delivery: delivery_tx,
            fans: fans.inbox.clone(),
            dhcp: dhcp.inbox.clone(),
            stop: stop_tx,
        },
    ));
    notify::notify("READY=1");
    info!(
        "fan-xdp run: serving {} (pid {}, version {})",
        dir.path.display(),
        std::process::id(),
        agent::version()
    );
    tokio::select! {
        _ = stop_asked.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    notify::notify("STOPPING=1");
    // No attach is cut in half; no beat after the endpoint map is emptied.
    fans.stop();
    dhcp.stop();
    drop(heartbeat);
    let _ = stop_delivery.send(());
    match delivery_task.await {
        Ok(released) => released?,
        Err(e) => warn!("the delivery controller: {e}"),
    }
    let _ = std::fs::remove_file(&files.status);
    let _ = std::fs::remove_file(&files.socket);
    info!(
        "fan-xdp run: stopped; the endpoint map is empty, traffic takes the bridge and the stack"
    );
    Ok(())
}

/// The ruleset watch's verdicts, to the delivery controller (for the status).
async fn forward_verdicts(mut ruleset: RulesetWatch, delivery: Sender<ToDelivery>) {
    while ruleset.verdicts.changed().await.is_ok() {
        let verdict = ruleset.verdicts.borrow_and_update().clone();
        if delivery.send(ToDelivery::Bypass(verdict)).await.is_err() {
            return;
        }
    }
}

/// The netlink event reader: bursts to the delivery controller, and a
/// word to the fans controller when one may concern a fan. The stream's
/// end stops the agent.
async fn read_events(
    mut events: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    delivery: Sender<ToDelivery>,
    fans: UnboundedSender<ToFans>,
    devices: watch::Receiver<HashSet<String>>,
    stop: UnboundedSender<()>,
) {
    while let Some((first, _)) = events.next().await {
        // A burst (a container coming up, or hundreds) arrives as many
        // events: take them in until the kernel is quiet for a moment (or
        // for at most a quarter of a second), then write once.
        let mut messages = vec![first];
        let burst = std::time::Instant::now();
        while burst.elapsed() < BURST_MOST {
            match tokio::time::timeout(BURST_QUIET, events.next()).await {
                Ok(Some((message, _))) => messages.push(message),
                _ => break,
            }
        }
        // The host's own changes (an underlay's address, a fan's device
        // deleted or re-created) are the fans controller's.
        let concerns_fans = {
            let devices = devices.borrow();
            messages.iter().any(|m| concerns(&devices, &m.payload))
        };
        if concerns_fans {
            let _ = fans.send(ToFans::HostChanged);
        }
        if delivery.send(ToDelivery::Events(messages)).await.is_err() {
            return;
        }
    }
    warn!("netlink event stream ended");
    let _ = stop.send(());
}

/// Events closer than this belong to one burst, taken in together...
const BURST_QUIET: Duration = Duration::from_millis(20);
/// ...for at most this long, so a steady stream still gets written.
const BURST_MOST: Duration = Duration::from_millis(250);

/// The netlink event socket's receive buffer.
const EVENT_BUFFER_BYTES: libc::c_int = 16 << 20;

/// `fan-xdp reload`: the agent resyncs, then answers.
pub fn reload(global: &Global) -> Result<()> {
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    if agent::running(&run_dir).is_none() {
        bail!("no fan-xdp run serves this network namespace");
    }
    agent::request(&run_dir, "reload", Duration::from_secs(30))?;
    println!("reloaded");
    Ok(())
}
