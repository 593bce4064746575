//! `fan-xdp attach`: make this host a member of a fan.
//!
//! `plan` checks every input and changes nothing. Then the steps run in
//! their order ([`Step`], named as `FAN_XDP_INJECT` names them), each
//! changing one kind of thing and pushing, for every change, an undo that
//! holds the state it found; if a later step fails, the undos run in
//! reverse and put back exactly what was there. fan-xdp's record of the fan
//! is written first (marked incomplete), and what attach creates is claimed
//! in it before it is made, so that an attach killed half-way is finished by
//! the next attach or cleaned up by detach, which removes only that.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use fan_common::{
    Encap, FanEntry, FanMap,
    fan::validate_fans,
    maps::{DecapMode, FanMeta, FanMetaKey, MAP_LAYOUT_VERSION, ModeReason, SYSCTL_UNKNOWN, owned},
    vxlan::{VXLAN_DEFAULT_PORT, default_vni},
};
use ipnetwork::Ipv4Network;
use log::{info, warn};

use crate::{
    agent,
    agent::dhcp,
    cli::{AttachArgs, Bypass, FanType, Global, Mode},
    dataplane::{
        DECAP_TC, DECAP_XDP, Dataplane, ENCAP_FORWARD, ENCAP_OUTPUT, Hook, LinkChange, PinnedMaps,
        VXLAN_OUT, VXLAN_OUT_PIN, inspect, overlay_key, pinned_link_ifindex, pinned_program_id,
        sweep_stale, tcx_supported, unlink,
    },
    host::naming::{
        OVERLAY_PORT_MAC, bridge_mac, bridge_name, check_bridge_name, overlay_port_names,
    },
    host::nat,
    host::{
        Device, FoundRoute, IP_FORWARD, Net, RP_FILTER_LOOSE, TcBpfFilter, accept_ra_key,
        read_ipv6_sysctl, read_sysctl, rp_filter_is_strict, rp_filter_key, write_ipv6_sysctl,
        write_sysctl,
    },
    ipv4_network, require_capabilities,
    state::StateDir,
    state::record::{
        Fan, HOST_DEVICE, HOST_DEVICE_PEER, Wire, fan_map, gateway_prefix, load_fans, meta_key,
        name_bytes,
    },
    state::rundir::RunDir,
    state::settings::{self, Settings},
};

mod links;
mod plan;
mod steps;
mod table;

pub use links::defunct;
use plan::{decap_choice, new_record, plan};
use steps::apply;
pub use table::STEPS;
use table::checkpoint;

/// The smallest fan MTU: IPv4's minimum datagram every host must accept.
pub(crate) const MIN_FAN_MTU: u32 = 576;

/// Everything attach will do, worked out before anything changes.
struct Plan {
    iface: Device,
    host: Ipv4Addr,
    underlay: Ipv4Network,
    overlay: Ipv4Network,
    map: FanMap,
    slice: Ipv4Network,
    gateway: Ipv4Addr,
    bridge: String,
    mtu: u32,
    mode: Mode,
    wire: Wire,
    bypass: Bypass,
    nat: bool,
    host_reserve: u32,
    dir: StateDir,
    run: RunDir,
    /// The address plan's overrides and DHCP, kept in the run directory.
    settings: Settings,
    /// Fans already attached in this namespace (other overlays).
    others: Vec<Fan>,
    /// This overlay's record, if an earlier attach created it.
    existing: Option<Fan>,
}

/// How to take back one step.
enum Undo {
    StateDir,
    Record,
    Sysctl(String, u8),
    Ipv6Sysctl(String, u8),
    /// Clear an [`owned`] bit of the record again.
    Claim(u8),
    Device(String),
    Address(u32, Ipv4Addr, u8),
    /// Put back the MTU a link had.
    Mtu(u32, u32),
    /// Set a link down again.
    Down(u32),
    /// Delete the overlay route attach added.
    Route(Ipv4Network),
    /// Put back the route attach replaced, exactly as it was.
    RestoreRoute(Box<FoundRoute>),
    /// Remove the masquerade rule attach added, or put back the one it
    /// replaced (the slice it masqueraded).
    Nat(Ipv4Network, Option<Ipv4Network>),
    /// Take an overlay out of the masquerade exceptions again.
    NatException(Ipv4Network),
    Pin(std::path::PathBuf, String, Hook),
    /// Put back the fan entry found (or remove the one added).
    Config(Option<FanEntry>),
    /// Delete the clsact qdisc attach added to a device (before 6.6).
    Clsact(u32),
    /// Put back the fan's settings as they were (defaults: no file).
    Settings(Settings),
}

/// `fan-xdp attach`: the change through the apply layer, then, with
/// `--dhcp`, the agent's server waited for.
pub async fn run(args: &AttachArgs, global: &Global) -> Result<()> {
    require_capabilities()?;
    if args.dhcp && args.no_agent {
        bail!(
            "--dhcp needs the agent, which starts and supervises the DHCP server (dnsmasq): attach without --no-agent"
        );
    }
    let fan = crate::apply::attach(args, global, crate::apply::How::COMMAND).await?;
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    if args.dhcp {
        // The agent starts the server once the lock is free; its reload
        // answers after a full sync.
        agent::request(&run_dir, "reload", Duration::from_secs(30))?;
        wait_for_dhcp(&run_dir, global, &fan)?;
    }
    Ok(())
}

/// How long attach waits for the agent to start the DHCP server.
const DHCP_TIMEOUT: Duration = Duration::from_secs(10);

fn wait_for_dhcp(run_dir: &RunDir, global: &Global, overlay: &Ipv4Network) -> Result<()> {
    let deadline = Instant::now() + DHCP_TIMEOUT;
    loop {
        let fans = crate::state::record::attached(global)?.1;
        let fan = fans
            .iter()
            .find(|f| f.overlay == *overlay)
            .ok_or_else(|| anyhow!("fan {overlay} is gone"))?;
        let plan = settings::plan_of(run_dir, fan)?;
        let status = dhcp::status(run_dir, global.state_dir.as_deref(), fan, &plan);
        if let Some(pid) = status.pid {
            println!(
                "DHCP: dnsmasq (pid {pid}) leases {} on {} (router {}, MTU {})",
                status.range, fan.bridge, fan.gateway, fan.mtu
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not start the DHCP server for {overlay} within {} s; see {}",
                DHCP_TIMEOUT.as_secs(),
                agent::Files::of(run_dir).log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plans and applies the attach (its caller holds `state.lock`: see
/// [`crate::apply`]); returns the overlay.
pub(crate) async fn attach(
    args: &AttachArgs,
    global: &Global,
    run_dir: &RunDir,
    report: crate::apply::Report,
) -> Result<Ipv4Network> {
    let net = Net::connect()?;
    let plan = plan(&net, args, global, run_dir).await?;
    checkpoint("plan")?;
    // After planning, which changes nothing: state of namespaces that are gone.
    match sweep_stale(&plan.dir) {
        Ok(removed) => {
            for path in removed {
                info!(
                    "removed the state of a namespace that is gone: {}",
                    path.display()
                );
            }
        }
        Err(e) => warn!("sweeping stale state: {e:#}"),
    }
    run_dir.sweep_gone_namespaces();
    if let Some(existing) = &plan.existing
        && existing.complete
        && !same_settings(existing, &plan)
    {
        bail!(
            "overlay {} is already attached with other settings (type {}, bridge {}, interface {}, underlay {}); detach it first",
            plan.overlay,
            existing.wire.encap().name(),
            existing.bridge,
            existing.iface,
            existing.underlay
        );
    }
    if let Some(existing) = &plan.existing
        && existing.complete
        && !settings::load(run_dir, plan.overlay)?.same_request(&plan.settings)
    {
        bail!(
            "overlay {} is already attached with another address plan or DHCP setting; detach it first",
            plan.overlay
        );
    }
    if let Some(chain) = nat::forward_drop_policy() {
        warn!(
            "{chain} drops forwarded packets by default: traffic decapsulated for {bridge} will be dropped. \
             Allow it, e.g. `nft insert rule <family> <table> <chain> oifname \"{bridge}\" accept` and the same with iifname",
            bridge = plan.bridge
        );
    }
    let mut undo = Vec::new();
    match apply(&net, &plan, &mut undo).await {
        Ok(changed) => {
            if report == crate::apply::Report::Quiet {
                // Its caller says what changed.
            } else if changed {
                let wire = match plan.wire.vxlan() {
                    None => String::new(),
                    Some((vni, port)) => format!(" (VXLAN, VNI {vni}, port {port})"),
                };
                println!(
                    "attached: {} over {} on {} ({}), slice {} on {}, gateway {}{wire}",
                    plan.overlay,
                    plan.underlay,
                    plan.iface.name,
                    plan.host,
                    plan.slice,
                    plan.bridge,
                    plan.gateway
                );
            } else {
                println!(
                    "already attached: {} on {} (nothing to do)",
                    plan.overlay, plan.iface.name
                );
            }
            // An older layout taken over: the maps it lacked exist now.
            let relabelled = PinnedMaps::open(&plan.dir)?.relabel_layout(MAP_LAYOUT_VERSION)?;
            if relabelled > 0 {
                info!(
                    "the pinned maps of {relabelled} fan(s) now have layout v{MAP_LAYOUT_VERSION} (migrated in place)"
                );
            }
            // The fast path: the agent keeps it (and is already running if
            // another fan of this namespace started it).
            if !args.no_agent {
                agent::ensure(run_dir, global)?;
            }
            Ok(plan.overlay)
        }
        Err(e) => {
            rollback(&net, &plan, undo).await;
            Err(e)
        }
    }
}

/// Older map layouts an attach takes over in place, without a detach:
/// layout 2 lacks only the event ring, its settings and the per-fan
/// counters, which loading the programs creates and pins beside the maps it
/// reuses (the totals included).
const MIGRATES_FROM: [u32; 1] = [2];

fn same_settings(existing: &Fan, plan: &Plan) -> bool {
    existing.iface == plan.iface.name
        && existing.underlay == plan.underlay
        && existing.host == plan.host
        && existing.bridge == plan.bridge
        && existing.nat == plan.nat
        && existing.host_reserve == plan.host_reserve
        && existing.mtu == plan.mtu
        && existing.wire == plan.wire
}

async fn rollback(net: &Net, plan: &Plan, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        let result: Result<()> = async {
            match step {
                Undo::Config(previous) => {
                    let mut maps = PinnedMaps::open(&plan.dir)?;
                    match previous {
                        Some(entry) => maps.insert_fan(&entry)?,
                        None => maps.remove_fan(plan.map.overlay, plan.map.overlay_len)?,
                    }
                }
                Undo::Pin(path, device, hook) => unlink(&path, &device, hook)?,
                Undo::Nat(overlay, None) => nat::remove_masquerade(overlay)?,
                Undo::Nat(overlay, Some(slice)) => {
                    let others: Vec<Ipv4Network> = plan.others.iter().map(|f| f.overlay).collect();
                    nat::ensure_masquerade(slice, overlay, &others)?;
                }
                Undo::NatException(overlay) => nat::exclude_overlay(overlay)?,
                Undo::Route(overlay) => {
                    if let Some(dev) = net.device(HOST_DEVICE).await? {
                        net.del_route(overlay.network(), overlay.prefix(), dev.index)
                            .await?;
                    }
                }
                Undo::RestoreRoute(route) => net.restore_route(&route).await?,
                Undo::Clsact(index) => net.del_clsact(index).await?,
                Undo::Mtu(index, mtu) => net.set_mtu(index, mtu).await?,
                Undo::Down(index) => net.set_down(index).await?,
                Undo::Address(index, addr, len) => net.del_addr(index, addr, len).await?,
                Undo::Claim(bit) => {
                    let mut maps = PinnedMaps::open(&plan.dir)?;
                    let key = meta_key(plan.overlay);
                    if let Ok(mut meta) = maps.meta.get(&key, 0) {
                        meta.owned &= !bit;
                        maps.meta.insert(key, meta, 0)?;
                    }
                }
                Undo::Device(name) => {
                    if let Some(link) = net.device(&name).await? {
                        net.del_link(link.index).await?;
                    }
                }
                Undo::Sysctl(key, value) => write_sysctl(&key, value)?,
                Undo::Ipv6Sysctl(key, value) => write_ipv6_sysctl(&key, value)?,
                Undo::Record => {
                    let mut maps = PinnedMaps::open(&plan.dir)?;
                    maps.meta.remove(&meta_key(plan.overlay))?;
                }
                Undo::StateDir => plan.dir.remove()?,
                Undo::Settings(found) => settings::save(&plan.run, plan.overlay, &found)?,
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            warn!("rollback step failed: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fault_injection_only_in_builds_with_the_feature() {
        let result = super::table::injected(Some("fail:record"), "record");
        assert_eq!(result.is_err(), cfg!(feature = "fault-injection"));
        assert!(super::table::injected(Some("fail:record"), "nat").is_ok());
        assert!(super::table::injected(None, "record").is_ok());
    }
}
