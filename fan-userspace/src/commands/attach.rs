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
    FanEntry, FanMap,
    fan::validate_fans,
    maps::{DecapMode, FanMeta, FanMetaKey, MAP_LAYOUT_VERSION, ModeReason, SYSCTL_UNKNOWN, owned},
};
use ipnetwork::Ipv4Network;
use log::{info, warn};

use crate::{
    agent,
    agent::dhcp,
    cli::{AttachArgs, Bypass, Global, Mode},
    dataplane::{
        DECAP_TC, DECAP_XDP, Dataplane, ENCAP_FORWARD, ENCAP_OUTPUT, Hook, LinkChange, PinnedMaps,
        inspect, overlay_key, pinned_link_ifindex, pinned_program_id, sweep_stale, tcx_supported,
        unlink,
    },
    host::naming::{IFNAME_MAX, bridge_mac, bridge_name},
    host::nat,
    host::{
        FoundRoute, IP_FORWARD, Link, Net, RP_FILTER_LOOSE, read_sysctl, rp_filter_is_strict,
        rp_filter_key, write_sysctl,
    },
    ipv4_network, require_capabilities,
    state::StateDir,
    state::record::{Fan, HOST_DEVICE, HOST_DEVICE_PEER, fan_map, load_fans, meta_key, name_bytes},
    state::rundir::RunDir,
    state::settings::{self, Settings},
};

/// IP-in-IP costs 20 bytes of every underlay packet.
/// The outer IPv4 header the programs add (no options).
const OUTER_HEADER: u32 = fan_common::ipv4::IPV4_HDR_LEN as u32;

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
    /// Put back the fan's settings as they were (defaults: no file).
    Settings(Settings),
}

pub async fn run(args: &AttachArgs, global: &Global) -> Result<()> {
    require_capabilities()?;
    let run_dir = RunDir::locate(global.run_dir.as_deref())?;
    let fan = {
        // Held while attach plans and applies: neither sees another change
        // (run by the agent, the agent holds it).
        let _lock = if global.by_agent {
            None
        } else {
            Some(run_dir.lock_state()?)
        };
        attach(args, global, &run_dir).await?
    };
    // The agent that runs an attach itself supervises the server anyway.
    if args.dhcp && !global.by_agent {
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

/// Plans and applies the attach (holding `state.lock`); returns the overlay.
async fn attach(args: &AttachArgs, global: &Global, run_dir: &RunDir) -> Result<Ipv4Network> {
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
    match apply(&net, &plan, global, &mut undo).await {
        Ok(changed) => {
            if global.by_agent {
                // The agent runs this attach, and says what changed itself.
            } else if changed {
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
}

async fn plan(net: &Net, args: &AttachArgs, global: &Global, run: &RunDir) -> Result<Plan> {
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
    // The agent's own attaches (following the host) say --no-agent only
    // because the agent is already there.
    if args.dhcp && args.no_agent && !global.by_agent {
        bail!(
            "--dhcp needs the agent, which starts and supervises the DHCP server (dnsmasq): attach without --no-agent"
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
    let gateway = Ipv4Addr::from(map.gateway_of(u32::from(host)));
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
    if let Some(prog) = iface.xdp_prog_id
        && mode != Mode::Tc
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

/// One step of attach. Each changes one kind of thing, and for every change
/// pushes an undo that holds what it found, so a failure restores exactly that.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The state directory, the pinned maps and fan-xdp's record of the fan (incomplete).
    Record,
    /// Forwarding, and loose reverse-path filtering on the underlay.
    Sysctl,
    /// The slice bridge with the gateway address.
    Bridge,
    /// The NOARP device for the host's own overlay traffic.
    HostDevice,
    /// The overlay route.
    Route,
    /// Masquerading slice traffic leaving the overlays.
    Nat,
    /// Decapsulation on the underlay, encapsulation on the bridge and host device.
    Programs,
    /// The fan entry the programs look up.
    Config,
}

impl Step {
    const ORDER: [Step; 8] = [
        Step::Record,
        Step::Sysctl,
        Step::Bridge,
        Step::HostDevice,
        Step::Route,
        Step::Nat,
        Step::Programs,
        Step::Config,
    ];

    const fn name(self) -> &'static str {
        match self {
            Step::Record => "record",
            Step::Sysctl => "sysctl",
            Step::Bridge => "bridge",
            Step::HostDevice => "host-device",
            Step::Route => "route",
            Step::Nat => "nat",
            Step::Programs => "programs",
            Step::Config => "config",
        }
    }
}

/// The attach steps, in order. Names are what `FAN_XDP_INJECT` refers to.
pub const STEPS: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < names.len() {
        names[i] = Step::ORDER[i].name();
        i += 1;
    }
    names
};

async fn apply(net: &Net, plan: &Plan, global: &Global, undo: &mut Vec<Undo>) -> Result<bool> {
    let mut attach = Attach::open(net, plan, global, undo)?;
    for step in Step::ORDER {
        attach.run(step).await?;
        checkpoint(step.name())?;
    }
    attach.finish()
}

/// An attach under way: what the steps share.
struct Attach<'a> {
    net: &'a Net,
    plan: &'a Plan,
    undo: &'a mut Vec<Undo>,
    dataplane: Dataplane,
    key: FanMetaKey,
    /// fan-xdp's record of the fan as written so far.
    meta: FanMeta,
    /// Whether any step changed anything.
    changed: bool,
    /// The host device, once its step made sure of it.
    host_dev: Option<Link>,
    /// The decapsulation mode and why, once the programs step attached it.
    decap: Option<(DecapMode, ModeReason)>,
    /// `-v`: the programs were loaded with their debug events on.
    verbose: bool,
}

impl<'a> Attach<'a> {
    /// Creates the state directory if needed and loads the programs with
    /// the maps pinned there (part of the record step: undone with it).
    fn open(
        net: &'a Net,
        plan: &'a Plan,
        global: &Global,
        undo: &'a mut Vec<Undo>,
    ) -> Result<Self> {
        if !plan.dir.exists() {
            // Planning changed nothing; bpffs is mounted now, if it must be.
            plan.dir.mount()?;
            plan.dir.create()?;
            undo.push(Undo::StateDir);
        }
        let dataplane = Dataplane::load_pinned(&plan.dir)?;
        let meta = match &plan.existing {
            Some(existing) => existing.meta,
            None => new_record(plan)?,
        };
        Ok(Self {
            net,
            plan,
            undo,
            dataplane,
            key: meta_key(plan.overlay),
            meta,
            changed: false,
            host_dev: None,
            decap: None,
            verbose: global.verbose,
        })
    }

    async fn run(&mut self, step: Step) -> Result<()> {
        match step {
            Step::Record => self.record(),
            Step::Sysctl => self.sysctl(),
            Step::Bridge => self.bridge().await,
            Step::HostDevice => self.host_device().await,
            Step::Route => self.route().await,
            Step::Nat => self.nat(),
            Step::Programs => self.programs().await,
            Step::Config => self.config(),
        }
    }

    /// fan-xdp's record of the fan, written first and marked incomplete, so
    /// an attach killed later is finished by the next or cleaned up by detach.
    fn record(&mut self) -> Result<()> {
        if self.plan.existing.is_none() {
            self.dataplane.insert_meta(self.key, &self.meta)?;
            self.undo.push(Undo::Record);
            self.changed = true;
        }
        let (run, overlay) = (&self.plan.run, self.plan.overlay);
        let found = settings::load(run, overlay)?;
        if !found.same_request(&self.plan.settings) {
            settings::save(run, overlay, &self.plan.settings)?;
            self.undo.push(Undo::Settings(found));
            self.changed = true;
        }
        Ok(())
    }

    /// Forwarding, and loose reverse-path filtering on the underlay:
    /// decapsulated packets arrive there from overlay sources routed elsewhere.
    fn sysctl(&mut self) -> Result<()> {
        let forwarding = read_sysctl(IP_FORWARD)?;
        if forwarding != 1 {
            write_sysctl(IP_FORWARD, 1)?;
            self.undo
                .push(Undo::Sysctl(IP_FORWARD.to_string(), forwarding));
            self.changed = true;
        }
        self.changed |= loosen_rp_filter(
            &mut self.dataplane,
            self.key,
            &mut self.meta,
            &self.plan.iface.name,
            self.undo,
        )?;
        Ok(())
    }

    /// The slice bridge with the gateway address: created, or adopted if one
    /// by that name exists. What attach makes is claimed in the record
    /// first, so detach removes it even after a kill half-way, and nothing else.
    async fn bridge(&mut self) -> Result<()> {
        let (net, plan) = (self.net, self.plan);
        let bridge = match net.link(&plan.bridge).await? {
            Some(link) => {
                if link.kind.as_deref() != Some("bridge") {
                    bail!("{} exists and is not a bridge", plan.bridge);
                }
                link
            }
            None => {
                self.claim(owned::BRIDGE)?;
                let mac = bridge_mac(plan.gateway);
                let link = net.create_bridge(&plan.bridge, plan.mtu, mac).await?;
                self.undo.push(Undo::Link(plan.bridge.clone()));
                self.changed = true;
                link
            }
        };
        if bridge.mtu != plan.mtu {
            net.set_mtu(bridge.index, plan.mtu).await?;
            self.undo.push(Undo::Mtu(bridge.index, bridge.mtu));
            self.changed = true;
        }
        let gateway = (plan.gateway, plan.slice.prefix());
        if !net.ipv4_addrs(bridge.index).await?.contains(&gateway) {
            self.claim(owned::GATEWAY_ADDRESS)?;
            net.add_addr(bridge.index, gateway.0, gateway.1).await?;
            self.undo
                .push(Undo::Address(bridge.index, gateway.0, gateway.1));
            self.changed = true;
        }
        self.changed |= bring_up(net, &bridge, self.undo).await?;
        Ok(())
    }

    /// The NOARP device for the host's own overlay traffic, shared by every
    /// fan, with the smallest overlay MTU of them.
    async fn host_device(&mut self) -> Result<()> {
        let (net, plan) = (self.net, self.plan);
        let host_dev = match net.link(HOST_DEVICE).await? {
            Some(link) => link,
            None => {
                let link = net
                    .create_noarp_veth(HOST_DEVICE, HOST_DEVICE_PEER, plan.mtu)
                    .await?;
                self.undo.push(Undo::Link(HOST_DEVICE.to_string()));
                self.changed = true;
                link
            }
        };
        if plan.mtu < host_dev.mtu {
            net.set_mtu(host_dev.index, plan.mtu).await?;
            self.undo.push(Undo::Mtu(host_dev.index, host_dev.mtu));
            self.changed = true;
        }
        self.changed |= bring_up(net, &host_dev, self.undo).await?;
        self.host_dev = Some(host_dev);
        Ok(())
    }

    /// The overlay route via the host device, sourced from the gateway so
    /// receivers' anti-spoofing accepts it.
    async fn route(&mut self) -> Result<()> {
        let (net, plan) = (self.net, self.plan);
        let host_dev = self
            .host_dev
            .as_ref()
            .ok_or_else(|| anyhow!("the route step runs after the host device's"))?
            .index;
        let found = net
            .find_route(plan.overlay.network(), plan.overlay.prefix())
            .await?;
        let ours = found.as_ref().is_some_and(|r| {
            r.unicast && !r.multipath && r.oif == Some(host_dev) && r.src == Some(plan.gateway)
        });
        if ours {
            return Ok(());
        }
        if let Some(stale) = found {
            if !stale.unicast || stale.multipath || stale.oif != Some(host_dev) {
                bail!(
                    "a route to {} already exists ({}); remove it first",
                    plan.overlay,
                    describe_route(&stale)
                );
            }
            // Ours but for its source (an older version's, or changed by hand).
            net.del_found_route(&stale).await?;
            self.undo.push(Undo::RestoreRoute(Box::new(stale)));
        }
        net.add_route(
            plan.overlay.network(),
            plan.overlay.prefix(),
            host_dev,
            Some(plan.gateway),
        )
        .await?;
        self.undo.push(Undo::Route(plan.overlay));
        self.changed = true;
        Ok(())
    }

    /// Masquerades slice traffic leaving the overlays (unless `--no-nat`),
    /// and in any case keeps every fan's rule off traffic to this overlay.
    fn nat(&mut self) -> Result<()> {
        let plan = self.plan;
        if plan.nat {
            if !nat::available() {
                bail!("nft not found: install nftables, or attach with --no-nat");
            }
            let others: Vec<Ipv4Network> = plan.others.iter().map(|f| f.overlay).collect();
            match nat::ensure_masquerade(plan.slice, plan.overlay, &others)? {
                nat::Masquerade::Unchanged => {}
                nat::Masquerade::Added => {
                    self.undo.push(Undo::Nat(plan.overlay, None));
                    self.changed = true;
                }
                nat::Masquerade::Replaced(old_slice) => {
                    self.undo.push(Undo::Nat(plan.overlay, Some(old_slice)));
                    self.changed = true;
                }
            }
        }
        if nat::include_overlay(plan.overlay)? {
            self.undo.push(Undo::NatException(plan.overlay));
            self.changed = true;
        }
        Ok(())
    }

    /// Decapsulation on the underlay, encapsulation on the bridge and the
    /// host device. Existing links are kept or upgraded in place.
    async fn programs(&mut self) -> Result<()> {
        let plan = self.plan;
        // `-v` loaded programs with their debug events on; the pinned ones
        // of the same version may have them off (the log level is data, not
        // code: the tags are equal). So -v always moves the links to this load.
        let same_version = !self.verbose && self.dataplane.use_pinned_programs(&plan.dir)?;
        let (mode, reason) = decap_choice(plan);
        let (program, hook, pin) = if mode == DecapMode::Xdp {
            (DECAP_XDP, Hook::Xdp, "decap-xdp")
        } else {
            (DECAP_TC, Hook::TcIngress, "decap-tc")
        };
        let decap_pin = plan.dir.link(&plan.iface.name, pin);
        let underlay = LinkTarget {
            device: &plan.iface.name,
            clsact: Some(owned::CLSACT_UNDERLAY),
        };
        let decap = match self.link(program, &underlay, hook, &decap_pin).await {
            Ok(changed) => {
                self.changed |= changed;
                (mode, reason)
            }
            Err(e) if plan.mode == Mode::Auto && mode == DecapMode::Xdp => {
                info!(
                    "native XDP refused on {} ({e:#}); using TC",
                    plan.iface.name
                );
                let pin = plan.dir.link(&plan.iface.name, "decap-tc");
                self.changed |= self
                    .link(DECAP_TC, &underlay, Hook::TcIngress, &pin)
                    .await?;
                (DecapMode::Tc, ModeReason::AutoNoNativeXdp)
            }
            Err(e) => return Err(e),
        };
        self.decap = Some(decap);
        let bridge = LinkTarget {
            device: &plan.bridge,
            clsact: Some(owned::CLSACT_BRIDGE),
        };
        let bridge_pin = plan.dir.link(&plan.bridge, "encap");
        self.changed |= self
            .link(ENCAP_FORWARD, &bridge, Hook::TcIngress, &bridge_pin)
            .await?;
        // fan-host is fan-xdp's: its qdisc goes with it.
        let host = LinkTarget {
            device: HOST_DEVICE,
            clsact: None,
        };
        let host_pin = plan.dir.link(HOST_DEVICE, "encap");
        self.changed |= self
            .link(ENCAP_OUTPUT, &host, Hook::TcEgress, &host_pin)
            .await?;
        // The pinned programs are the ones the links run: a new version (or a
        // first attach) moved every link to this load's programs, so they
        // replace the pins, all together; otherwise the links run the pins'.
        if !same_version {
            self.dataplane.pin_programs(&plan.dir)?;
        }
        Ok(())
    }

    /// Whether the fast path may skip netfilter, before any packet of this
    /// fan is encapsulated; then the fan entry the programs look up,
    /// pointing at the underlay's current ifindex.
    fn config(&mut self) -> Result<()> {
        let plan = self.plan;
        let (bypass, verdict) = crate::host::bypass::decide(plan.bypass);
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
            self.dataplane.insert_fan(&entry)?;
            self.undo.push(Undo::Config(previous));
            self.changed = true;
        }
        Ok(())
    }

    /// After the last step, where nothing can fail any more: the other
    /// mode's decapsulation goes, and the record is marked complete.
    fn finish(mut self) -> Result<bool> {
        let (mode, reason) = self
            .decap
            .ok_or_else(|| anyhow!("attach finished without its programs step"))?;
        self.changed |= retire_other_decap(self.plan, mode)?;
        let meta = &mut self.meta;
        if meta.complete == 0 || meta.decap_mode != mode as u8 || meta.mode_reason != reason as u8 {
            meta.complete = 1;
            meta.decap_mode = mode as u8;
            meta.mode_reason = reason as u8;
            self.dataplane.insert_meta(self.key, meta)?;
        }
        Ok(self.changed)
    }

    fn claim(&mut self, bit: u8) -> Result<()> {
        claim(
            &mut self.dataplane,
            self.key,
            &mut self.meta,
            bit,
            self.undo,
        )
    }

    /// Attaches one program (or keeps/upgrades its pinned link) and records the undo.
    async fn link(
        &mut self,
        program: &str,
        target: &LinkTarget<'_>,
        hook: Hook,
        pin: &std::path::Path,
    ) -> Result<bool> {
        let net = self.net;
        retire_if_defunct(net, pin, target.device, hook).await?;
        if hook != Hook::Xdp
            && !tcx_supported()
            && let Some(bit) = target.clsact
        {
            self.claim_clsact(bit, target.device).await?;
        }
        let change = self
            .dataplane
            .ensure_link(program, target.device, hook, pin)?;
        if change == LinkChange::Created {
            self.undo.push(Undo::Pin(
                pin.to_path_buf(),
                target.device.to_string(),
                hook,
            ));
        }
        Ok(change.changed())
    }

    /// Before attaching a TC filter without TCX: if the device has no clsact
    /// qdisc yet, the filter's attach adds one, so claim it in the record
    /// first (detach removes it then) and undo it on rollback.
    async fn claim_clsact(&mut self, bit: u8, device: &str) -> Result<()> {
        let index = self
            .net
            .link(device)
            .await?
            .ok_or_else(|| anyhow!("no such interface: {device}"))?
            .index;
        if !self.net.has_clsact(index).await? {
            self.claim(bit)?;
            self.undo.push(Undo::Clsact(index));
        }
        Ok(())
    }
}

/// A device a program is attached to, and the [`owned`] bit that records
/// that attach added its clsact qdisc (before 6.6), or None where the
/// device is fan-xdp's own and the qdisc goes with it.
struct LinkTarget<'a> {
    device: &'a str,
    clsact: Option<u8>,
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
fn retire_other_decap(plan: &Plan, mode: DecapMode) -> Result<bool> {
    let (other, hook) = if mode == DecapMode::Xdp {
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

/// Removes the pin at `pin` if what it attached is not on `device` as it is
/// now: the device was deleted since, and perhaps re-created under its name
/// (netplan, a driver reload), taking the program with it. Trusting such a
/// pin would report success and attach nothing.
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
    match defunct(net, pin, now, hook).await? {
        None => return Ok(()),
        Some(None | Some(0)) => info!(
            "{}: {device} was deleted since; attaching anew",
            pin.display()
        ),
        Some(Some(old)) => info!(
            "{}: attached to ifindex {old}, but {device} is ifindex {now} now; attaching anew",
            pin.display()
        ),
    }
    std::fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))
}

/// Whether the attachment pinned at `pin` is no longer on the device whose
/// ifindex is `now`: None if it is there (or nothing is pinned), else the
/// ifindex it is on (0 or None: its device is gone). A TCX or XDP link must
/// be on the device's current ifindex (a defunct one reports 0); a clsact
/// filter (kernels before 6.6, marked by a pinned program) must be on the
/// device. The agent asks this too, to follow a re-created device.
pub async fn defunct(
    net: &Net,
    pin: &std::path::Path,
    now: u32,
    hook: Hook,
) -> Result<Option<Option<u32>>> {
    if hook != Hook::Xdp && !tcx_supported() {
        let Some(program) = pinned_program_id(pin) else {
            return Ok(None);
        };
        let on_device = net.tc_bpf_programs(now, hook == Hook::TcEgress).await?;
        return Ok((!on_device.contains(&program)).then_some(None));
    }
    Ok(match pinned_link_ifindex(pin)? {
        None => None,
        Some(index) if index == now => None,
        Some(index) => Some(Some(index)),
    })
}

/// The hook `--mode` asks for, if it names one.
fn requested_decap(mode: Mode) -> Option<DecapMode> {
    match mode {
        Mode::Xdp => Some(DecapMode::Xdp),
        Mode::Tc => Some(DecapMode::Tc),
        Mode::Auto => None,
    }
}

/// The decapsulation hook to try first, and why.
fn decap_choice(plan: &Plan) -> (DecapMode, ModeReason) {
    match plan.mode {
        Mode::Xdp => (DecapMode::Xdp, ModeReason::Requested),
        Mode::Tc => (DecapMode::Tc, ModeReason::Requested),
        Mode::Auto if plan.iface.kind.as_deref() == Some("veth") => {
            (DecapMode::Tc, ModeReason::AutoVeth)
        }
        Mode::Auto => (DecapMode::Xdp, ModeReason::AutoNativeXdp),
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
        let result = super::injected(Some("fail:record"), "record");
        assert_eq!(result.is_err(), cfg!(feature = "fault-injection"));
        assert!(super::injected(Some("fail:record"), "nat").is_ok());
        assert!(super::injected(None, "record").is_ok());
    }
}
