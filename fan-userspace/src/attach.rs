//! `fan-xdp attach`: make this host a member of a fan.
//!
//! Every input is checked before anything changes. Then each step records how
//! to undo itself; if a later step fails, the steps already done are undone in
//! reverse, so a failed attach leaves the host as it found it. fan-xdp's own
//! record of the fan is written first (marked incomplete) so that an attach
//! killed half-way can be finished by the next attach or cleaned up by detach.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, anyhow, bail};
use fan_common::{
    FanEntry, FanMap,
    fan::validate_fans,
    maps::{
        FanMeta, FanMetaKey, MAP_LAYOUT_VERSION, SYSCTL_UNKNOWN, decap_mode, mode_reason, owned,
    },
};
use ipnetwork::Ipv4Network;
use log::{info, warn};

use crate::{
    agent,
    cli::{AttachArgs, Bypass, Global, Mode},
    host::{
        FoundRoute, IP_FORWARD, Link, Net, RP_FILTER_LOOSE, read_sysctl, rp_filter_is_strict,
        rp_filter_key, write_sysctl,
    },
    ipv4_network,
    loader::{
        DECAP_TC, DECAP_XDP, Dataplane, ENCAP_FORWARD, ENCAP_OUTPUT, Hook, LinkChange, PinnedMaps,
        overlay_key, pinned_link_ifindex, pinned_program_id, sweep_stale, tcx_supported, unlink,
    },
    naming::{IFNAME_MAX, bridge_name},
    nat,
    record::{Fan, HOST_DEVICE, HOST_DEVICE_PEER, load_fans, meta_key, name_bytes},
    require_capabilities,
    rundir::RunDir,
    state::StateDir,
};

/// IP-in-IP costs 20 bytes of every underlay packet.
const OUTER_HEADER: u32 = 20;

/// Everything attach will do, worked out before anything changes.
struct Plan {
    iface: Link,
    host: Ipv4Addr,
    underlay: Ipv4Network,
    overlay: Ipv4Network,
    map: FanMap,
    slice: Ipv4Network,
    gateway: Ipv4Addr,
    bridge: String,
    mtu: u32,
    mode: Mode,
    bypass: Bypass,
    nat: bool,
    host_reserve: u32,
    dir: StateDir,
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
    /// Clear an [`owned`] bit of the record again.
    Claim(u8),
    Link(String),
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
}

pub async fn run(args: &AttachArgs, global: &Global) -> Result<()> {
    require_capabilities()?;
    // Held until attach returns: planning and applying see no other change.
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    let _lock = run_dir.lock_state()?;
    let net = Net::connect()?;
    let plan = plan(&net, args, global).await?;
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
    if let Some(existing) = &plan.existing
        && existing.complete
        && !same_settings(existing, &plan)
    {
        bail!(
            "overlay {} is already attached with other settings (bridge {}, interface {}, underlay {}); detach it first",
            plan.overlay,
            existing.bridge,
            existing.iface,
            existing.underlay
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
    match apply(&net, &plan, global, &mut undo).await {
        Ok(changed) => {
            if changed {
                println!(
                    "attached: {} over {} on {} ({}), slice {} on {}, gateway {}",
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
            // The fast path: the agent keeps it (and is already running if
            // another fan of this namespace started it).
            if !args.no_agent {
                agent::ensure(&run_dir, global)?;
            }
            Ok(())
        }
        Err(e) => {
            rollback(&net, &plan, undo).await;
            Err(e)
        }
    }
}

fn same_settings(existing: &Fan, plan: &Plan) -> bool {
    existing.iface == plan.iface.name
        && existing.underlay == plan.underlay
        && existing.host == plan.host
        && existing.bridge == plan.bridge
        && existing.nat == plan.nat
        && existing.host_reserve == plan.host_reserve
        && existing.mtu == plan.mtu
}

async fn plan(net: &Net, args: &AttachArgs, global: &Global) -> Result<Plan> {
    let overlay = ipv4_network(args.overlay, "overlay")?;
    let iface = net
        .link(&args.iface)
        .await?
        .ok_or_else(|| anyhow!("no such interface: {}", args.iface))?;
    let addrs = net.ipv4_addrs(iface.index).await?;
    if addrs.is_empty() {
        bail!(
            "{} has no IPv4 address: the underlay address names this host",
            iface.name
        );
    }
    let (host, underlay) = match args.underlay {
        Some(u) => {
            let u = ipv4_network(u, "underlay")?;
            if u.ip() != u.network() {
                bail!(
                    "underlay {u} has host bits set (did you mean {}/{}?)",
                    u.network(),
                    u.prefix()
                );
            }
            let (addr, _) = addrs.iter().find(|(a, _)| u.contains(*a)).ok_or_else(|| {
                let held: Vec<String> = addrs.iter().map(|(a, l)| format!("{a}/{l}")).collect();
                anyhow!(
                    "overlay/underlay mismatch: {} holds no address in underlay {u} (it has {})",
                    iface.name,
                    held.join(", ")
                )
            })?;
            (*addr, u)
        }
        None => {
            let (addr, len) = addrs[0];
            (
                addr,
                Ipv4Network::new(addr, len)?
                    .network()
                    .to_string()
                    .parse::<Ipv4Addr>()
                    .map(|n| Ipv4Network::new(n, len))??,
            )
        }
    };
    let map = FanMap::new(
        u32::from(overlay.network()),
        overlay.prefix(),
        u32::from(underlay.network()),
        underlay.prefix(),
    );
    if overlay.ip() != overlay.network() {
        bail!(
            "overlay {overlay} has host bits set (did you mean {}/{}?)",
            overlay.network(),
            overlay.prefix()
        );
    }
    map.validate()?;
    map.validate_host(u32::from(host))?;
    let slice_start = Ipv4Addr::from(map.slice_of(u32::from(host)));
    let slice = Ipv4Network::new(slice_start, map.slice_len())?;
    if args.host_reserve == 0 || args.host_reserve as u64 >= slice.size() as u64 - 2 {
        bail!(
            "--host-reserve {} must be at least 1 (the gateway) and leave addresses in {slice}",
            args.host_reserve
        );
    }
    let gateway = Ipv4Addr::from(u32::from(slice_start) + 1);
    let bridge = args
        .bridge
        .clone()
        .unwrap_or_else(|| bridge_name(slice_start));
    if bridge.is_empty() || bridge.len() > IFNAME_MAX {
        bail!("bridge name {bridge:?} must be 1 to {IFNAME_MAX} bytes");
    }
    let max_mtu = iface.mtu.saturating_sub(OUTER_HEADER);
    let mtu = args.mtu.unwrap_or(max_mtu);
    if mtu > max_mtu || mtu < 576 {
        bail!(
            "--mtu {mtu} does not fit: {} has MTU {}, leaving at most {max_mtu} after the 20-byte outer header (and at least 576)",
            iface.name,
            iface.mtu
        );
    }

    let dir = StateDir::locate(global.pin_dir.as_deref())?;
    let fans = if dir.exists() {
        PinnedMaps::open(&dir)
            .and_then(|maps| load_fans(&maps))
            .with_context(|| {
                format!(
                    "reading the pinned state in {} (left by a fan-xdp with another map layout? detach with that version first)",
                    dir.path.display()
                )
            })?
    } else {
        Vec::new()
    };
    if let Some(old) = fans
        .iter()
        .find(|f| f.meta.layout_version != MAP_LAYOUT_VERSION)
    {
        bail!(
            "the pinned state in {} was written by a fan-xdp with map layout v{} (this one is v{MAP_LAYOUT_VERSION}); detach with that version first",
            dir.path.display(),
            old.meta.layout_version
        );
    }
    let (mut existing, others): (Vec<Fan>, Vec<Fan>) =
        fans.into_iter().partition(|f| f.overlay == overlay);
    let mut maps: Vec<FanMap> = others.iter().map(Fan::map).collect();
    maps.push(map);
    validate_fans(&maps)?;
    if let Some(other) = others.iter().find(|f| f.bridge == bridge) {
        bail!("bridge {bridge} already serves overlay {}", other.overlay);
    }
    let mode = match (args.mode, others.iter().find(|f| f.iface == iface.name)) {
        // Decapsulation on an interface is shared by its fans: keep its mode.
        (Mode::Auto, Some(other)) => {
            if other.mode == "xdp" {
                Mode::Xdp
            } else {
                Mode::Tc
            }
        }
        (requested, Some(other))
            if requested != Mode::Auto && mode_str(requested) != other.mode =>
        {
            bail!(
                "{} already decapsulates in {} mode for overlay {}; attach with --mode {} or auto",
                iface.name,
                other.mode,
                other.overlay,
                other.mode
            )
        }
        (requested, _) => requested,
    };
    if let Some(prog) = iface.xdp_prog_id
        && mode != Mode::Tc
        && !ours(&dir, &iface.name, prog)
    {
        let name = aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == prog)
            .and_then(|p| p.name_as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        bail!(
            "{} already has XDP program {prog} ({name}) attached; fan-xdp will not replace it (detach it, or attach with --mode tc)",
            iface.name
        );
    }
    Ok(Plan {
        iface,
        host,
        underlay,
        overlay,
        map,
        slice,
        gateway,
        bridge,
        mtu,
        mode,
        bypass: args.bypass,
        nat: !args.no_nat,
        host_reserve: args.host_reserve,
        dir,
        others,
        existing: existing.pop(),
    })
}

fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Xdp => "xdp",
        Mode::Tc => "tc",
        Mode::Auto => "auto",
    }
}

/// Whether XDP program `prog` on `iface` is attached through our pinned link.
fn ours(dir: &StateDir, iface: &str, prog: u32) -> bool {
    aya::programs::links::PinnedLink::from_pin(dir.link(iface, "decap-xdp"))
        .ok()
        .map(aya::programs::links::FdLink::from)
        .and_then(|l| l.info().ok())
        .is_some_and(|info| info.program_id() == prog)
}

/// Test hook: `FAN_XDP_INJECT=kill:<step>` SIGKILLs attach right after that
/// step, `fail:<step>` makes it fail there (to exercise the rollback),
/// `pause:<step>` holds it there for two seconds (to race another command).
/// Honoured only in builds with the `fault-injection` feature.
fn checkpoint(step: &str) -> Result<()> {
    injected(std::env::var("FAN_XDP_INJECT").ok().as_deref(), step)
}

fn injected(inject: Option<&str>, step: &str) -> Result<()> {
    if !cfg!(feature = "fault-injection") {
        return Ok(());
    }
    match inject.and_then(|i| i.split_once(':')) {
        Some(("kill", s)) if s == step => {
            // SAFETY: signalling ourselves.
            unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
            Ok(())
        }
        Some(("fail", s)) if s == step => bail!("injected failure after step {step}"),
        // Widens the window in which a concurrent command could interfere.
        Some(("pause", s)) if s == step => {
            std::thread::sleep(std::time::Duration::from_secs(2));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The attach steps, in order. Names are what `FAN_XDP_INJECT` refers to.
pub const STEPS: [&str; 8] = [
    "record",
    "sysctl",
    "bridge",
    "host-device",
    "route",
    "nat",
    "programs",
    "config",
];

async fn apply(net: &Net, plan: &Plan, global: &Global, undo: &mut Vec<Undo>) -> Result<bool> {
    let mut changed = false;
    let key = meta_key(plan.overlay);

    // 1. State directory, maps, and our record of the fan (incomplete).
    if !plan.dir.exists() {
        plan.dir.create()?;
        undo.push(Undo::StateDir);
    }
    let log_level = if global.verbose { 5 } else { 0 };
    let mut dataplane = Dataplane::load_pinned(&plan.dir, log_level)?;
    let mut meta = match &plan.existing {
        Some(existing) => existing.meta,
        None => {
            let meta = new_record(plan)?;
            dataplane.insert_meta(key, &meta)?;
            undo.push(Undo::Record);
            changed = true;
            meta
        }
    };
    checkpoint("record")?;

    // 2. Forwarding, and loose reverse-path filtering on the underlay:
    // decapsulated packets arrive there from overlay sources routed elsewhere.
    let forwarding = read_sysctl(IP_FORWARD)?;
    if forwarding != 1 {
        write_sysctl(IP_FORWARD, 1)?;
        undo.push(Undo::Sysctl(IP_FORWARD.to_string(), forwarding));
        changed = true;
    }
    changed |= loosen_rp_filter(&mut dataplane, key, &mut meta, &plan.iface.name, undo)?;
    checkpoint("sysctl")?;

    // 3. The slice bridge with the gateway address: created, or adopted if
    // one by that name exists. What attach makes is claimed in the record
    // first, so detach removes it even after a kill half-way, and nothing else.
    let bridge = match net.link(&plan.bridge).await? {
        Some(link) => {
            if link.kind.as_deref() != Some("bridge") {
                bail!("{} exists and is not a bridge", plan.bridge);
            }
            link
        }
        None => {
            claim(&mut dataplane, key, &mut meta, owned::BRIDGE, undo)?;
            let link = net.create_bridge(&plan.bridge, plan.mtu).await?;
            undo.push(Undo::Link(plan.bridge.clone()));
            changed = true;
            link
        }
    };
    if bridge.mtu != plan.mtu {
        net.set_mtu(bridge.index, plan.mtu).await?;
        undo.push(Undo::Mtu(bridge.index, bridge.mtu));
        changed = true;
    }
    if !net
        .ipv4_addrs(bridge.index)
        .await?
        .contains(&(plan.gateway, plan.slice.prefix()))
    {
        claim(&mut dataplane, key, &mut meta, owned::GATEWAY_ADDRESS, undo)?;
        net.add_addr(bridge.index, plan.gateway, plan.slice.prefix())
            .await?;
        undo.push(Undo::Address(
            bridge.index,
            plan.gateway,
            plan.slice.prefix(),
        ));
        changed = true;
    }
    changed |= bring_up(net, &bridge, undo).await?;
    checkpoint("bridge")?;

    // 4. The NOARP device for the host's own overlay traffic.
    let host_dev = match net.link(HOST_DEVICE).await? {
        Some(link) => link,
        None => {
            let link = net
                .create_noarp_veth(HOST_DEVICE, HOST_DEVICE_PEER, plan.mtu)
                .await?;
            undo.push(Undo::Link(HOST_DEVICE.to_string()));
            changed = true;
            link
        }
    };
    // Shared by every fan: the smallest overlay MTU of them.
    if plan.mtu < host_dev.mtu {
        net.set_mtu(host_dev.index, plan.mtu).await?;
        undo.push(Undo::Mtu(host_dev.index, host_dev.mtu));
        changed = true;
    }
    changed |= bring_up(net, &host_dev, undo).await?;
    checkpoint("host-device")?;

    // 5. The overlay route, sourced from the gateway so receivers' anti-spoofing accepts it.
    let found = net
        .find_route(plan.overlay.network(), plan.overlay.prefix())
        .await?;
    let ours = found.as_ref().is_some_and(|r| {
        r.unicast && !r.multipath && r.oif == Some(host_dev.index) && r.src == Some(plan.gateway)
    });
    if !ours {
        if let Some(stale) = found {
            if !stale.unicast || stale.multipath || stale.oif != Some(host_dev.index) {
                bail!(
                    "a route to {} already exists ({}); remove it first",
                    plan.overlay,
                    describe_route(&stale)
                );
            }
            // Ours but for its source (an older version's, or changed by hand).
            net.del_found_route(&stale).await?;
            undo.push(Undo::RestoreRoute(Box::new(stale)));
        }
        net.add_route(
            plan.overlay.network(),
            plan.overlay.prefix(),
            host_dev.index,
            Some(plan.gateway),
        )
        .await?;
        undo.push(Undo::Route(plan.overlay));
        changed = true;
    }
    checkpoint("route")?;

    // 6. Masquerade slice traffic leaving the overlay.
    if plan.nat {
        if !nat::available() {
            bail!("nft not found: install nftables, or attach with --no-nat");
        }
        let others: Vec<Ipv4Network> = plan.others.iter().map(|f| f.overlay).collect();
        match nat::ensure_masquerade(plan.slice, plan.overlay, &others)? {
            nat::Masquerade::Unchanged => {}
            nat::Masquerade::Added => {
                undo.push(Undo::Nat(plan.overlay, None));
                changed = true;
            }
            nat::Masquerade::Replaced(old_slice) => {
                undo.push(Undo::Nat(plan.overlay, Some(old_slice)));
                changed = true;
            }
        }
    }
    // Whichever fans masquerade, none touches traffic to this overlay.
    if nat::include_overlay(plan.overlay)? {
        undo.push(Undo::NatException(plan.overlay));
        changed = true;
    }
    checkpoint("nat")?;

    // 7. Programs: decapsulation on the underlay, encapsulation on the bridge
    // and the host device. Existing links are kept or upgraded in place.
    let same_version = dataplane.use_pinned_programs(&plan.dir)?;
    let (mode, reason) = decap_choice(plan);
    let decap_pin = plan.dir.link(
        &plan.iface.name,
        if mode == decap_mode::XDP {
            "decap-xdp"
        } else {
            "decap-tc"
        },
    );
    let decap = if mode == decap_mode::XDP {
        (DECAP_XDP, Hook::Xdp)
    } else {
        (DECAP_TC, Hook::TcIngress)
    };
    let (mode, reason) = match link(
        net,
        &mut dataplane,
        undo,
        decap.0,
        &plan.iface.name,
        decap.1,
        &decap_pin,
        Some(Clsact {
            key,
            meta: &mut meta,
            bit: owned::CLSACT_UNDERLAY,
        }),
    )
    .await
    {
        Ok(c) => {
            changed |= c;
            (mode, reason)
        }
        Err(e) if plan.mode == Mode::Auto && mode == decap_mode::XDP => {
            info!(
                "native XDP refused on {} ({e:#}); using TC",
                plan.iface.name
            );
            let pin = plan.dir.link(&plan.iface.name, "decap-tc");
            changed |= link(
                net,
                &mut dataplane,
                undo,
                DECAP_TC,
                &plan.iface.name,
                Hook::TcIngress,
                &pin,
                Some(Clsact {
                    key,
                    meta: &mut meta,
                    bit: owned::CLSACT_UNDERLAY,
                }),
            )
            .await?;
            (decap_mode::TC, mode_reason::AUTO_NO_NATIVE_XDP)
        }
        Err(e) => return Err(e),
    };
    let bridge_pin = plan.dir.link(&plan.bridge, "encap");
    let mut relinked = link(
        net,
        &mut dataplane,
        undo,
        ENCAP_FORWARD,
        &plan.bridge,
        Hook::TcIngress,
        &bridge_pin,
        Some(Clsact {
            key,
            meta: &mut meta,
            bit: owned::CLSACT_BRIDGE,
        }),
    )
    .await?;
    let host_pin = plan.dir.link(HOST_DEVICE, "encap");
    relinked |= link(
        net,
        &mut dataplane,
        undo,
        ENCAP_OUTPUT,
        HOST_DEVICE,
        Hook::TcEgress,
        &host_pin,
        // fan-host is fan-xdp's: its qdisc goes with it.
        None,
    )
    .await?;
    // The pinned programs are the ones the links run: a new version (or a
    // first attach) moved every link to this load's programs, so they
    // replace the pins, all together; otherwise the links run the pins'.
    if !same_version {
        dataplane.pin_programs(&plan.dir)?;
    }
    changed |= relinked;
    checkpoint("programs")?;

    // 8. Whether the fast path may skip netfilter, before any packet of this
    // fan is encapsulated; then the fan entry the programs look up, and the
    // record marked complete.
    let (bypass, verdict) = crate::bypass::decide(plan.bypass);
    let mut maps = PinnedMaps::open(&plan.dir)?;
    if maps.bypass()? != bypass {
        maps.set_bypass(bypass)?;
    }
    if !verdict.on {
        warn!(
            "the bypass is off ({}): fan traffic takes the host's stack, so netfilter sees it (slower); `--bypass on` forces the fast path",
            verdict.why
        );
    }
    let entry = FanEntry {
        map: plan.map,
        local_host: u32::from(plan.host),
        underlay_ifindex: plan.iface.index,
        overlay_mtu: plan.mtu,
    };
    let previous = maps
        .config
        .get(&overlay_key(entry.map.overlay, entry.map.overlay_len), 0)
        .ok();
    if previous != Some(entry) {
        dataplane.insert_fan(&entry)?;
        undo.push(Undo::Config(previous));
        changed = true;
    }
    checkpoint("config")?;
    // Nothing fails after this: the decapsulation of another mode can go.
    changed |= retire_other_decap(plan, mode)?;
    if meta.complete == 0 || meta.decap_mode != mode || meta.mode_reason != reason {
        meta.complete = 1;
        meta.decap_mode = mode;
        meta.mode_reason = reason;
        dataplane.insert_meta(key, &meta)?;
    }
    Ok(changed)
}

/// Records in the fan's record that attach is about to make the thing
/// `bit` names (an [`owned`] bit), before it does.
fn claim(
    dataplane: &mut Dataplane,
    key: FanMetaKey,
    meta: &mut FanMeta,
    bit: u8,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    if meta.owned & bit == 0 {
        meta.owned |= bit;
        dataplane.insert_meta(key, meta)?;
        undo.push(Undo::Claim(bit));
    }
    Ok(())
}

/// Makes reverse-path filtering on the underlay `iface` loose, only if it is
/// strict there. The kernel applies the larger of `conf/all` and the device's
/// value, so only the device is written and `conf/all`, which governs every
/// other interface, is left alone. The value found is recorded in the fan's
/// record before the write, so that an attach killed in between still leaves
/// detach knowing what to restore.
fn loosen_rp_filter(
    dataplane: &mut Dataplane,
    key: FanMetaKey,
    meta: &mut FanMeta,
    iface: &str,
    undo: &mut Vec<Undo>,
) -> Result<bool> {
    if !rp_filter_is_strict(iface)? {
        return Ok(false);
    }
    let sysctl = rp_filter_key(iface);
    let before = read_sysctl(&sysctl)?;
    if meta.orig_rp_filter == SYSCTL_UNKNOWN {
        meta.orig_rp_filter = before;
        dataplane.insert_meta(key, meta)?;
    }
    write_sysctl(&sysctl, RP_FILTER_LOOSE)?;
    undo.push(Undo::Sysctl(sysctl, before));
    Ok(true)
}

/// What kind of route is in the way, for the refusal.
fn describe_route(route: &FoundRoute) -> String {
    match (route.unicast, route.multipath, route.oif) {
        (false, _, _) => format!("of type {:?}", route.message.header.kind).to_lowercase(),
        (_, true, _) => "with several next hops".to_string(),
        (_, _, Some(oif)) => format!("via another interface, index {oif}"),
        (_, _, None) => "with no output interface".to_string(),
    }
}

/// Sets `link` up unless it is; the undo sets it down again.
async fn bring_up(net: &Net, link: &Link, undo: &mut Vec<Undo>) -> Result<bool> {
    if link.up {
        return Ok(false);
    }
    net.set_up(link.index).await?;
    undo.push(Undo::Down(link.index));
    Ok(true)
}

/// Removes the decapsulation of the mode not chosen from the underlay: a
/// re-attach with another `--mode` would otherwise leave both attached.
fn retire_other_decap(plan: &Plan, mode: u8) -> Result<bool> {
    let (other, hook) = if mode == decap_mode::XDP {
        ("decap-tc", Hook::TcIngress)
    } else {
        ("decap-xdp", Hook::Xdp)
    };
    let pin = plan.dir.link(&plan.iface.name, other);
    if !pin.exists() {
        return Ok(false);
    }
    unlink(&pin, &plan.iface.name, hook)?;
    info!(
        "removed {other} from {}: now decapsulating in the other mode",
        plan.iface.name
    );
    Ok(true)
}

/// Who answers for the clsact qdisc a TC filter needs before Linux 6.6: the
/// fan's record (its [`owned`] bit says attach added it), or nobody, where
/// the device is fan-xdp's own and the qdisc goes with it.
struct Clsact<'a> {
    key: FanMetaKey,
    meta: &'a mut FanMeta,
    bit: u8,
}

/// Attaches one program (or keeps/upgrades its pinned link) and records the undo.
#[allow(clippy::too_many_arguments)]
async fn link(
    net: &Net,
    dataplane: &mut Dataplane,
    undo: &mut Vec<Undo>,
    program: &str,
    device: &str,
    hook: Hook,
    pin: &std::path::Path,
    clsact: Option<Clsact<'_>>,
) -> Result<bool> {
    retire_if_defunct(net, pin, device, hook).await?;
    if hook != Hook::Xdp
        && !tcx_supported()
        && let Some(Clsact { key, meta, bit }) = clsact
    {
        claim_clsact(net, dataplane, key, meta, bit, device, undo).await?;
    }
    let change = dataplane.ensure_link(program, device, hook, pin)?;
    if change == LinkChange::Created {
        undo.push(Undo::Pin(pin.to_path_buf(), device.to_string(), hook));
    }
    Ok(change.changed())
}

/// Before attaching a TC filter without TCX: if `device` has no clsact
/// qdisc yet, the filter's attach adds one, so claim it in the record first
/// (detach removes it then) and undo it on rollback.
async fn claim_clsact(
    net: &Net,
    dataplane: &mut Dataplane,
    key: FanMetaKey,
    meta: &mut FanMeta,
    bit: u8,
    device: &str,
    undo: &mut Vec<Undo>,
) -> Result<()> {
    let index = net
        .link(device)
        .await?
        .ok_or_else(|| anyhow!("no such interface: {device}"))?
        .index;
    if !net.has_clsact(index).await? {
        claim(dataplane, key, meta, bit, undo)?;
        undo.push(Undo::Clsact(index));
    }
    Ok(())
}

/// Removes the pin at `pin` if what it attached is not on `device` as it is
/// now: the device was deleted since, and perhaps re-created under its name
/// (netplan, a driver reload), taking the program with it. Trusting such a
/// pin would report success and attach nothing. A TCX or XDP link must be on
/// the device's current ifindex (a defunct one reports 0); a clsact filter
/// (kernels before 6.6, marked by a pinned program) must be on the device.
async fn retire_if_defunct(
    net: &Net,
    pin: &std::path::Path,
    device: &str,
    hook: Hook,
) -> Result<()> {
    let now = net
        .link(device)
        .await?
        .ok_or_else(|| anyhow!("no such interface: {device}"))?
        .index;
    let attached_to = if hook != Hook::Xdp && !tcx_supported() {
        let Some(program) = pinned_program_id(pin) else {
            return Ok(());
        };
        let on_device = net.tc_bpf_programs(now, hook == Hook::TcEgress).await?;
        if on_device.contains(&program) {
            return Ok(());
        }
        None
    } else {
        match pinned_link_ifindex(pin)? {
            None => return Ok(()),
            Some(index) if index == now => return Ok(()),
            Some(index) => Some(index),
        }
    };
    match attached_to {
        None | Some(0) => info!(
            "{}: {device} was deleted since; attaching anew",
            pin.display()
        ),
        Some(old) => info!(
            "{}: attached to ifindex {old}, but {device} is ifindex {now} now; attaching anew",
            pin.display()
        ),
    }
    std::fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))
}

/// The decapsulation hook to try first, and why.
fn decap_choice(plan: &Plan) -> (u8, u8) {
    match plan.mode {
        Mode::Xdp => (decap_mode::XDP, mode_reason::REQUESTED),
        Mode::Tc => (decap_mode::TC, mode_reason::REQUESTED),
        Mode::Auto if plan.iface.kind.as_deref() == Some("veth") => {
            (decap_mode::TC, mode_reason::AUTO_VETH)
        }
        Mode::Auto => (decap_mode::XDP, mode_reason::AUTO_NATIVE_XDP),
    }
}

/// A new record: settings, and the sysctls as they were before any fan, so
/// detaching the last fan restores them. Later fans copy the first one's.
fn new_record(plan: &Plan) -> Result<FanMeta> {
    let first = plan.others.first().map(|f| f.meta);
    let same_iface = plan
        .others
        .iter()
        .find(|f| f.iface == plan.iface.name)
        .map(|f| f.meta);
    let read = |key: &str| read_sysctl(key).unwrap_or(SYSCTL_UNKNOWN);
    Ok(FanMeta {
        iface: name_bytes(&plan.iface.name),
        bridge: name_bytes(&plan.bridge),
        decap_mode: 0,
        mode_reason: 0,
        nat: u8::from(plan.nat),
        complete: 0,
        // Recorded for the record only: detach leaves forwarding on.
        orig_forwarding: first.map_or_else(|| read(IP_FORWARD), |m| m.orig_forwarding),
        // Filled in by the sysctl step if it loosens the device.
        orig_rp_filter: same_iface.map_or(SYSCTL_UNKNOWN, |m| m.orig_rp_filter),
        // fan-xdp no longer writes conf/all (older versions did).
        orig_rp_filter_all: SYSCTL_UNKNOWN,
        underlay_len: plan.underlay.prefix(),
        host: u32::from(plan.host),
        host_reserve: plan.host_reserve,
        mtu: plan.mtu,
        layout_version: MAP_LAYOUT_VERSION,
        // The underlay's clsact qdisc is the fans' of that device together:
        // the claim passes on, so the last one to go removes it.
        owned: same_iface.map_or(0, |m| m.owned & owned::CLSACT_UNDERLAY),
        _pad: [0; 3],
    })
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
                    if let Some(dev) = net.link(HOST_DEVICE).await? {
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
                Undo::Link(name) => {
                    if let Some(link) = net.link(&name).await? {
                        net.del_link(link.index).await?;
                    }
                }
                Undo::Sysctl(key, value) => write_sysctl(&key, value)?,
                Undo::Record => {
                    let mut maps = PinnedMaps::open(&plan.dir)?;
                    maps.meta.remove(&meta_key(plan.overlay))?;
                }
                Undo::StateDir => plan.dir.remove()?,
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
        let result = super::injected(Some("fail:record"), "record");
        assert_eq!(result.is_err(), cfg!(feature = "fault-injection"));
        assert!(super::injected(Some("fail:record"), "nat").is_ok());
        assert!(super::injected(None, "record").is_ok());
    }
}
