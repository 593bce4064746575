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
//! This file is the loop and what it waits on; what a sync writes and
//! publishes is in the agent's `sync` module, the control socket's
//! requests and answers in its `control` module.

use std::{
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use log::{info, warn};
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK, RTMGRP_NEIGH},
    sys::{AsyncSocket as _, SocketAddr},
};

use tokio::net::UnixListener;

use crate::{
    agent,
    agent::bindings::Bindings,
    agent::control::{Request, read_request, reply},
    agent::dhcp,
    agent::endpoints,
    agent::known::Known,
    agent::monitor::Monitors,
    agent::notify,
    agent::pmtu::SliceRoutes,
    agent::ports::{AtPorts, PortEncap},
    agent::ruleset::RulesetWatch,
    agent::sync::{
        Synced, beat, bind, bind_known, collect_portless, is_delivered, publish, publish_bypass,
        sync, sync_routes, unix_now,
    },
    agent::{config::FileFans, follow::Follower},
    cli::{Global, RunArgs},
    dataplane::PinnedMaps,
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
    let mut ports = None;
    let mut routes = SliceRoutes::default();
    if args.once {
        let mut none = Bindings::default();
        agent::ruleset::decide(&dir)?;
        return sync(&net, &dir, &mut none, &mut None, &mut ports, None, None)
            .await
            .map(drop);
    }
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    let _lock = agent::lock(&run_dir)?;
    let at_ports = AtPorts::new(args.steer_flows, &run_dir);
    // Ours alone now (the lock): what a killed predecessor left is ours to keep or remove.
    report(routes.adopt(&net).await);
    run_dir.sweep_gone_namespaces();
    let mut bindings = Bindings::load(&run_dir)?;
    let mut dhcp_servers = dhcp::Servers::default();
    let mut known: Option<Known> = None;
    // Under `ip netns exec` the bpffs is reached through the mount namespace
    // of the command's parent, which may exit long before the agent does.
    let dir = dir.held_open()?;
    if let Some(addr) = args.metrics {
        agent::metrics::serve(addr, dir.clone())?;
    }
    let files = agent::Files::of(&run_dir);
    // A socket left by an agent that died: ours to replace, as we hold the lock.
    let _ = std::fs::remove_file(&files.socket);
    let control = UnixListener::bind(&files.socket)
        .with_context(|| format!("listening on {}", files.socket.display()))?;
    std::fs::set_permissions(&files.socket, std::fs::Permissions::from_mode(0o600))?;

    let (mut connection, _, mut events) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
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
    // Control requests, each read by a task of its own, answered here.
    let (requests_tx, mut requests) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
    let resync_period = Duration::from_secs(args.resync_seconds.max(1));
    let mut resync = tokio::time::interval(resync_period);
    // Every second: the heartbeat, and the path MTU routes (the programs
    // learn path MTUs with no netlink event to say so).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut status = agent::Status {
        pid: std::process::id(),
        version: agent::version(),
        started_by_attach: args.started_by_attach,
        since: unix_now(),
        ..agent::Status::default()
    };
    // A full sync, and a heartbeat right after it (the first one must be
    // fresh before READY; the tick keeps it so).
    macro_rules! full_sync {
        () => {{
            report(collect_portless(&net, &mut bindings).await);
            let synced = sync(
                &net,
                &dir,
                &mut bindings,
                &mut known,
                &mut ports,
                Some(&at_ports),
                Some(&mut routes),
            )
            .await;
            report(beat(&dir));
            status.full_reads += 1;
            synced
        }};
    }
    // attach and detach, run from here for the configuration's fans and to
    // follow the host, reach the bpffs through the descriptor held open.
    let inner = Global {
        pin_dir: dir.root.parent().map(std::path::Path::to_path_buf),
        by_agent: true,
        ..global.clone()
    };
    let mut file_fans = FileFans::new(args, &run_dir);
    // A bad file stops the start: nothing of it is applied.
    let lines = file_fans.read()?;
    if let Err(e) = file_fans.apply(&net, &inner, lines).await {
        warn!("the configuration's fans: {e:#}");
    }
    let mut follower = Follower::default();
    let mut monitors = Monitors::default();
    monitors.refresh(&dir);
    // The DHCP servers of fans attached with --dhcp, and their leases.
    macro_rules! dhcp_round {
        () => {
            dhcp::round(
                &mut dhcp_servers,
                &run_dir,
                global.state_dir.as_deref(),
                &dir,
                &mut bindings,
            )
        };
    }
    // The file's fans' DHCP servers too, then the bypass and the first
    // sync: ready once the fans are up and the fast path is in place.
    dhcp_round!();
    let mut ruleset = RulesetWatch::start(dir.clone(), resync_period)?;
    publish_bypass(
        &run_dir,
        &mut status,
        ruleset.verdicts.borrow_and_update().clone(),
    );
    let first = full_sync!();
    status.ready = true;
    publish(&run_dir, &mut status, first);
    notify::notify("READY=1");
    info!(
        "fan-xdp run: serving {} (pid {}, version {})",
        dir.path.display(),
        status.pid,
        status.version
    );
    loop {
        tokio::select! {
            event = events.next() => {
                let Some((first, _)) = event else {
                    warn!("netlink event stream ended");
                    break;
                };
                // A burst (a container coming up, or hundreds) arrives as
                // many events: take them in until the kernel is quiet for a
                // moment (or for at most a quarter of a second), then write once.
                let mut messages = vec![first];
                let burst = std::time::Instant::now();
                while burst.elapsed() < BURST_MOST {
                    match tokio::time::timeout(BURST_QUIET, events.next()).await {
                        Ok(Some((message, _))) => messages.push(message),
                        _ => break,
                    }
                }
                // The host's own changes (an underlay's address, a fan's
                // device deleted or re-created) are the follower's.
                if messages.iter().any(|m| follower.concerns(&m.payload)) {
                    report(follower.follow(&net, &dir, &run_dir, &inner).await);
                    file_fans.retry(&net, &inner).await;
                }
                let taken = match known.as_mut() {
                    Some(k) => k.take_in(&messages, &net, &dir, &mut bindings, &mut ports).await,
                    None => None,
                };
                let synced = match taken {
                    // Nothing about a slice bridge: nothing to write or say.
                    Some(Ok(None)) => continue,
                    Some(Ok(Some(bindings))) => Ok(Synced {
                        bindings,
                        ports: ports.as_ref().map_or(0, PortEncap::ports),
                    }),
                    Some(Err(e)) => Err(e),
                    None => full_sync!(),
                };
                publish(&run_dir, &mut status, synced);
            }
            _ = resync.tick() => {
                // The safety net for host changes whose event was missed.
                report(follower.follow(&net, &dir, &run_dir, &inner).await);
                file_fans.retry(&net, &inner).await;
                let synced = full_sync!();
                publish(&run_dir, &mut status, synced);
            }
            _ = tick.tick() => {
                if args.started_by_attach && !dir.exists() {
                    info!("fan-xdp run: every fan is detached; stopping");
                    break;
                }
                report(beat(&dir));
                if follower.has_pending() {
                    report(follower.follow(&net, &dir, &run_dir, &inner).await);
                }
                monitors.refresh(&dir);
                report(sync_routes(&net, &dir, &mut routes).await);
                if dhcp_round!() {
                    let synced = full_sync!();
                    publish(&run_dir, &mut status, synced);
                }
                agent::cap_log(&run_dir);
            }
            () = monitors.pump(&dir) => {}
            Ok(()) = ruleset.verdicts.changed() => {
                let verdict = ruleset.verdicts.borrow_and_update().clone();
                publish_bypass(&run_dir, &mut status, verdict);
            }
            accepted = control.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Read off the loop: a slow or silent client holds up its
                // own thread (1 s a read at most), never the heartbeat.
                let requests_tx = requests_tx.clone();
                tokio::task::spawn_blocking(move || match read_request(stream) {
                    Ok(read) => {
                        let _ = requests_tx.blocking_send(read);
                    }
                    Err(e) => warn!("control request: {e:#}"),
                });
            }
            Some((mut stream, request)) = requests.recv() => {
                let answer = match request {
                    Request::Status => Ok(serde_json::json!({ "status": status })),
                    // Answered once done, so that `fan-xdp reload` (the
                    // unit's ExecReload) returns when the file is applied,
                    // or with why not.
                    Request::Reload => {
                        let applied = match file_fans.read() {
                            Ok(lines) => file_fans.apply(&net, &inner, lines).await,
                            Err(e) => Err(e),
                        };
                        dhcp_round!();
                        let synced = full_sync!();
                        publish(&run_dir, &mut status, synced);
                        notify::notify("STATUS=reloaded");
                        applied.map(|()| serde_json::json!({ "status": status }))
                    }
                    Request::Stop => {
                        reply(&mut stream, Ok(serde_json::json!({})));
                        break;
                    }
                    Request::Bind(binding) => {
                        let address = binding.address;
                        // With what is known, only the binding's port is read
                        // again: fifty containers starting at once cost fifty
                        // small changes, not fifty full reads.
                        let bound = match known.as_mut() {
                            Some(known) => {
                                bind_known(&net, &dir, &mut bindings, known, &mut ports, binding)
                                    .await
                                    .map(Some)
                            }
                            None => bind(&net, &dir, &mut bindings, binding).await.map(|()| None),
                        };
                        match bound {
                            Ok(counts) => {
                                let synced = match counts {
                                    Some(bindings) => Ok(Synced {
                                        bindings,
                                        ports: ports.as_ref().map_or(0, PortEncap::ports),
                                    }),
                                    None => full_sync!(),
                                };
                                publish(&run_dir, &mut status, synced);
                                is_delivered(&dir, address)
                                    .map(|active| serde_json::json!({ "active": active }))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Request::Unbind(address, origin) => match bindings.unbind(address, origin) {
                        Ok(removed) => {
                            if removed {
                                info!("{address}: {} binding removed", origin.name());
                            }
                            let synced = match known.as_mut() {
                                Some(known) => known.settle(&dir, &mut bindings, &mut ports).map(|bindings| Synced {
                                    bindings,
                                    ports: ports.as_ref().map_or(0, PortEncap::ports),
                                }),
                                None => full_sync!(),
                            };
                            publish(&run_dir, &mut status, synced);
                            Ok(serde_json::json!({ "removed": removed }))
                        }
                        Err(e) => Err(e),
                    },
                    Request::Bindings => {
                        Ok(serde_json::json!({ "bindings": bindings.list().collect::<Vec<_>>() }))
                    }
                    Request::Monitor { passes } => {
                        reply(&mut stream, Ok(serde_json::json!({})));
                        report(monitors.add(stream, passes, &dir));
                        continue;
                    }
                };
                reply(&mut stream, answer);
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    notify::notify("STOPPING=1");
    monitors.stop(&dir);
    if let Some(ports) = ports.take() {
        ports.release(&net).await;
    }
    if let Err(e) = routes.clear(&net).await {
        warn!("removing the path MTU routes: {e:#}");
    }
    if dir.exists() {
        let mut maps = PinnedMaps::open(&dir)?;
        maps.stop_beating()?;
        endpoints::clear(&mut maps)?;
    } else {
        // Every fan is detached: no port of theirs is left to bind to.
        bindings.forget()?;
    }
    let _ = std::fs::remove_file(&files.status);
    let _ = std::fs::remove_file(&files.socket);
    info!(
        "fan-xdp run: stopped; the endpoint map is empty, traffic takes the bridge and the stack"
    );
    Ok(())
}

/// Control requests read and waiting for the loop.
const CONTROL_QUEUE: usize = 64;

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

fn report(result: Result<()>) {
    if let Err(e) = result {
        warn!("{e:#}");
    }
}
