//! `fan-xdp detach`: remove one fan, or every fan of an interface, and
//! everything attach created for it. What fans still share (decapsulation on
//! the interface, the host device, the state directory) goes with the last one.

use anyhow::Result;
use fan_common::maps::{SYSCTL_UNKNOWN, owned};
use log::{info, warn};

use crate::{
    agent,
    agent::dhcp,
    apply::Report,
    cli::{DetachArgs, Global},
    dataplane::{Hook, PinnedMaps, VXLAN_OUT_PIN, unlink},
    host::nat,
    host::{
        Net, RP_FILTER_LOOSE, accept_ra_key, read_ipv6_sysctl, read_sysctl, rp_filter_key,
        write_ipv6_sysctl, write_sysctl,
    },
    ipv4_network, require_capabilities,
    state::record::{Fan, HOST_DEVICE, attached, host_device_mtu, meta_key},
    state::rundir::RunDir,
    state::settings,
};

/// `fan-xdp detach`: the change through the apply layer.
pub async fn run(args: &DetachArgs, global: &Global) -> Result<()> {
    require_capabilities()?;
    crate::apply::detach(args, global, crate::apply::How::COMMAND).await?;
    crate::state::named::forget_detached(global)
}

/// Detaches (its caller holds `state.lock`: see [`crate::apply`]).
pub(crate) async fn detach(
    args: &DetachArgs,
    global: &Global,
    run_dir: RunDir,
    report: Report,
) -> Result<()> {
    let overlay = args
        .overlay
        .map(|o| ipv4_network(o, "overlay"))
        .transpose()?;
    let (dir, fans) = attached(global)?;
    let (going, staying): (Vec<Fan>, Vec<Fan>) = fans
        .into_iter()
        .partition(|f| f.iface == args.iface && overlay.is_none_or(|o| o == f.overlay));
    if going.is_empty() {
        match overlay {
            Some(o) => println!(
                "nothing to detach: overlay {o} is not attached to {}",
                args.iface
            ),
            None => println!("nothing to detach: no fan is attached to {}", args.iface),
        }
        if dir.exists() && staying.is_empty() {
            dir.remove()?; // leftovers of an attach killed before its record was written
        }
        return Ok(());
    }

    // The last fan: an agent that attach started goes first, so nothing
    // it keeps races the teardown (an agent a service manager runs stays,
    // and lets go of the fast path by itself).
    if staying.is_empty()
        && let Some(status) = agent::status(&run_dir)
        && status.started_by_attach
        // The agent itself detaching (its underlay moved): it stays.
        && status.pid != std::process::id()
    {
        agent::stop(&run_dir)?;
        agent::remove_log(&run_dir)?;
        println!("stopped the agent (pid {})", status.pid);
    }
    let net = Net::connect()?;
    let mut maps = PinnedMaps::open(&dir)?;
    let host_dev = net.device(HOST_DEVICE).await?;
    for fan in &going {
        // The settings first: with them gone the agent (which waits while
        // we hold state.lock) no longer wants the fan's DHCP server.
        settings::remove(&run_dir, fan.overlay)?;
        if let Some(pid) = dhcp::stop_recorded(&run_dir, global.state_dir.as_deref(), fan)? {
            println!(
                "stopped the DHCP server of {} (dnsmasq pid {pid}); its leases stay in {}",
                fan.overlay,
                dhcp::Files::of(&run_dir, global.state_dir.as_deref(), fan)
                    .leases
                    .display()
            );
        }
        let map = fan.map();
        maps.remove_fan(map.overlay, map.overlay_len)?;
        nat::exclude_overlay(fan.overlay)?;
        nat::remove_masquerade(fan.overlay)?;
        if let Some(dev) = &host_dev
            && !fan.is_vxlan()
        {
            net.del_route(fan.overlay.network(), fan.overlay.prefix(), dev.index)
                .await?;
        }
        remove_pin(
            &dir.link(&fan.bridge, "encap"),
            &fan.bridge,
            Hook::TcIngress,
        );
        if let Some(bridge) = net.device(&fan.bridge).await? {
            agent::ports::remove_port_filters(&net.port_names(bridge.index).await?);
        }
        // The overlay port before the bridge: a port would keep it.
        if let Some((port, inner)) = fan.overlay_port() {
            remove_pin(&dir.link(&inner, VXLAN_OUT_PIN), &inner, Hook::TcIngress);
            net.del_link_named(&port).await?;
        }
        let kept = release_bridge(&net, fan).await?;
        let _ = maps.meta.remove(&meta_key(fan.overlay));
        if report == Report::Print {
            println!(
                "detached: {} from {} (bridge {}{})",
                fan.overlay,
                fan.iface,
                fan.bridge,
                kept.map(|why| format!(", kept: {why}")).unwrap_or_default()
            );
        }
    }

    let first = &going[0].meta;
    if !staying.iter().any(|f| f.iface == args.iface) {
        remove_pin(&dir.link(&args.iface, "decap-xdp"), &args.iface, Hook::Xdp);
        remove_pin(
            &dir.link(&args.iface, "decap-tc"),
            &args.iface,
            Hook::TcIngress,
        );
        let recorded = going
            .iter()
            .map(|f| f.meta.orig_rp_filter)
            .find(|&v| v != SYSCTL_UNKNOWN)
            .unwrap_or(SYSCTL_UNKNOWN);
        restore_if_ours(&rp_filter_key(&args.iface), recorded);
        if going
            .iter()
            .any(|f| f.meta.owned & owned::CLSACT_UNDERLAY != 0)
            && let Some(iface) = net.device(&args.iface).await?
        {
            net.del_clsact(iface.index).await?;
        }
    }
    // fan-host carries every IP-in-IP fan's host traffic, at the smallest
    // fan MTU: the fan that needed it lower may just have gone.
    let lowest = host_device_mtu(&staying);
    if let (Some(dev), Some(lowest)) = (&host_dev, lowest)
        && dev.mtu < lowest
    {
        net.set_mtu(dev.index, lowest).await?;
        println!(
            "{HOST_DEVICE}: MTU {} -> {lowest}, the smallest of the fans left",
            dev.mtu
        );
    }
    if lowest.is_none() {
        remove_pin(&dir.link(HOST_DEVICE, "encap"), HOST_DEVICE, Hook::TcEgress);
        if let Some(dev) = host_dev {
            net.del_link(dev.index).await?;
        }
    }
    if staying.is_empty() {
        // Only older versions loosened conf/all; new records say UNKNOWN.
        restore_if_ours("conf/all/rp_filter", first.orig_rp_filter_all);
        // Forwarding stays on: a runtime that started after attach (Docker,
        // LXD, libvirt) may rely on it, and none of them turns it off either.
        nat::remove_table()?;
        drop(maps);
        dir.remove()?;
    }
    Ok(())
}

/// Takes back what attach did to the fan's slice bridge: deletes the bridge
/// if attach created it and nothing is plugged into it; otherwise removes
/// only the gateway address attach added, and says why the bridge stays.
async fn release_bridge(net: &Net, fan: &Fan) -> Result<Option<String>> {
    let Some(bridge) = net.device(&fan.bridge).await? else {
        return Ok(None);
    };
    let ports = net.port_names(bridge.index).await?;
    let created = fan.meta.owned & owned::BRIDGE != 0;
    if created && ports.is_empty() {
        net.del_link(bridge.index).await?;
        return Ok(None);
    }
    if fan.meta.owned & owned::CLSACT_BRIDGE != 0 {
        net.del_clsact(bridge.index).await?;
    }
    if fan.meta.owned & owned::GATEWAY_ADDRESS != 0 {
        net.del_addr(bridge.index, fan.gateway, fan.gateway_prefix())
            .await?;
    }
    // The MTU it was adopted with, unless someone has set another since:
    // that choice is theirs to keep.
    if fan.meta.owned & owned::BRIDGE_MTU != 0 && bridge.mtu == fan.mtu {
        let found = u32::from(u16::from_ne_bytes(fan.meta.orig_bridge_mtu));
        net.set_mtu(bridge.index, found).await?;
    }
    if fan.meta.owned & owned::BRIDGE_ACCEPT_RA != 0 {
        restore_accept_ra(&fan.bridge, fan.meta.orig_bridge_accept_ra);
    }
    Ok(Some(if created {
        // Another user's containers (a runtime's) are still plugged in.
        format!("it still has ports ({})", ports.join(", "))
    } else {
        "fan-xdp did not create it".to_string()
    }))
}

/// Puts back an adopted bridge's accept_ra, unless something else has set
/// it since attach set 0: that choice is theirs to keep.
fn restore_accept_ra(bridge: &str, recorded: u8) {
    let key = accept_ra_key(bridge);
    match read_ipv6_sysctl(&key) {
        Ok(Some(0)) => {
            if let Err(e) = write_ipv6_sysctl(&key, recorded) {
                warn!("restoring {key}: {e:#}");
            }
        }
        Ok(Some(other)) => {
            info!("leaving {key} at {other}: it was changed after attach set it to 0")
        }
        Ok(None) => {}
        Err(e) => warn!("{e:#}"),
    }
}

fn remove_pin(path: &std::path::Path, device: &str, hook: Hook) {
    if let Err(e) = unlink(path, device, hook) {
        warn!("{e:#}");
    }
}

/// Puts back the rp_filter value `recorded` before attach loosened it, unless
/// it was not recorded or something else has set another value since: that
/// choice is theirs to keep.
fn restore_if_ours(sysctl: &str, recorded: u8) {
    if recorded == SYSCTL_UNKNOWN {
        return;
    }
    match read_sysctl(sysctl) {
        Ok(RP_FILTER_LOOSE) => {
            if let Err(e) = write_sysctl(sysctl, recorded) {
                warn!("restoring {sysctl}: {e:#}");
            }
        }
        Ok(other) => info!(
            "leaving {sysctl} at {other}: it was changed after attach set it to {RP_FILTER_LOOSE}"
        ),
        Err(e) => warn!("{e:#}"),
    }
}
