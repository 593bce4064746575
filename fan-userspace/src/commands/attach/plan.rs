//! Planning an attach: every input checked against the host as it is,
//! nothing changed; and the choices made from the plan (the decapsulation
//! hook, the fan's first record).

use super::*;

pub(super) async fn plan(
    net: &Net,
    args: &AttachArgs,
    global: &Global,
    run: &RunDir,
) -> Result<Plan> {
    let overlay = ipv4_network(args.overlay, "overlay")?;
    let iface = net
        .device(&args.iface)
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
            let named = |a: &Ipv4Addr| args.host.is_none_or(|host| host == *a);
            let (addr, _) = addrs.iter().find(|(a, _)| u.contains(*a) && named(a)).ok_or_else(|| {
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
    let map = fan_map(overlay, underlay);
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
    let mut settings = Settings::new(
        slice,
        args.dhcp,
        args.dhcp_range,
        args.cni_range,
        args.docker_cidr,
    );
    // A slice too small for a plan (a /29 or /30) attaches as before, as
    // long as nothing asks for one.
    if !settings.is_default() {
        settings.plan(slice, args.host_reserve)?;
    }
    if args.dhcp {
        settings.dnsmasq = Some(dhcp::find_dnsmasq()?);
    }
    settings.explicit_mtu = args.mtu;
    let gateway = Ipv4Addr::from(map.gateway_of(u32::from(host)));
    let bridge = args
        .bridge
        .clone()
        .unwrap_or_else(|| bridge_name(slice_start));
    if let Err(why) = check_bridge_name(&bridge) {
        bail!("bridge name {bridge:?}: {why}");
    }
    let wire = wire_format(args, overlay)?;
    let overhead = Encap::from(args.fan_type).overhead();
    let max_mtu = iface.mtu.saturating_sub(overhead);
    let mtu = args.mtu.unwrap_or(max_mtu);
    if mtu > max_mtu || mtu < MIN_FAN_MTU {
        bail!(
            "--mtu {mtu} does not fit: {} has MTU {}, leaving at most {max_mtu} after the {overhead}-byte {} header (and at least {MIN_FAN_MTU})",
            iface.name,
            iface.mtu,
            args.fan_type.name()
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
    if let Some(old) = fans.iter().find(|f| {
        f.meta.layout_version != MAP_LAYOUT_VERSION
            && !MIGRATES_FROM.contains(&f.meta.layout_version)
    }) {
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
            if other.mode == Some(DecapMode::Xdp) {
                Mode::Xdp
            } else {
                Mode::Tc
            }
        }
        (requested, Some(other))
            if requested_decap(requested).is_some() && requested_decap(requested) != other.mode =>
        {
            bail!(
                "{} already decapsulates in {} mode for overlay {}; attach with --mode {} or auto",
                iface.name,
                other.mode_name(),
                other.overlay,
                other.mode_name()
            )
        }
        (requested, _) => requested,
    };
    if wire != Wire::Ipip
        && mode == Mode::Xdp
        && let Some(other) = others.iter().find(|f| f.iface == iface.name)
    {
        bail!(
            "{} decapsulates in xdp mode for overlay {}, and VXLAN decapsulates at TC only; attach {} again with --mode tc first",
            iface.name,
            other.overlay,
            other.overlay
        );
    }
    if let Some(prog) = iface.xdp_prog_id
        && mode != Mode::Tc
        && wire == Wire::Ipip
        && !inspect::xdp_link_runs(&dir, &iface.name, prog)
    {
        let name = inspect::program_name(prog).unwrap_or_else(|| "unknown".into());
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
        wire,
        bypass: args.bypass,
        nat: !args.no_nat,
        host_reserve: args.host_reserve,
        dir,
        run: run.clone(),
        settings,
        others,
        existing: existing.pop(),
    })
}

/// The wire format asked for, checked: `--vni` and `--port` belong to
/// VXLAN, which decapsulates at TC only (the XDP program passes it on).
pub(super) fn wire_format(args: &AttachArgs, overlay: Ipv4Network) -> Result<Wire> {
    match args.fan_type {
        FanType::Ipip => {
            if args.vni.is_some() || args.port.is_some() {
                bail!("--vni and --port set VXLAN's header: they need --type vxlan");
            }
            Ok(Wire::Ipip)
        }
        FanType::Vxlan => {
            if args.mode == Mode::Xdp {
                bail!(
                    "--mode xdp does not decapsulate VXLAN (the TC program does): attach with --mode tc or auto"
                );
            }
            Ok(Wire::Vxlan {
                vni: args
                    .vni
                    .unwrap_or_else(|| default_vni(u32::from(overlay.network()))),
                port: args.port.unwrap_or(VXLAN_DEFAULT_PORT),
            })
        }
    }
}

/// The hook `--mode` asks for, if it names one.
pub(super) fn requested_decap(mode: Mode) -> Option<DecapMode> {
    match mode {
        Mode::Xdp => Some(DecapMode::Xdp),
        Mode::Tc => Some(DecapMode::Tc),
        Mode::Auto => None,
    }
}

/// The decapsulation hook to try first, and why.
pub(super) fn decap_choice(plan: &Plan) -> (DecapMode, ModeReason) {
    let veth = plan.iface.kind.as_deref() == Some("veth");
    match plan.mode {
        // VXLAN decapsulates at TC only (the record says why: see `Fan`).
        Mode::Auto if plan.wire != Wire::Ipip && veth => (DecapMode::Tc, ModeReason::AutoVeth),
        Mode::Auto if plan.wire != Wire::Ipip => (DecapMode::Tc, ModeReason::AutoNoNativeXdp),
        Mode::Xdp => (DecapMode::Xdp, ModeReason::Requested),
        Mode::Tc => (DecapMode::Tc, ModeReason::Requested),
        Mode::Auto if veth => (DecapMode::Tc, ModeReason::AutoVeth),
        Mode::Auto => (DecapMode::Xdp, ModeReason::AutoNativeXdp),
    }
}

/// A new record: settings, and the sysctls as they were before any fan, so
/// detaching the last fan restores them. Later fans copy the first one's.
pub(super) fn new_record(plan: &Plan) -> Result<FanMeta> {
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
        orig_bridge_mtu: [0; 2],
        orig_bridge_accept_ra: 0,
        encap: plan.wire.encap() as u8,
        _pad: [0],
        vxlan_port: plan.wire.vni_and_port().1,
        vni: plan.wire.vni_and_port().0,
    })
}
