//! Following the host: what happens to a fan's underlay and slice bridge
//! after attach. Run on every IPv4 address event, every link event of a
//! fan's underlay or slice bridge, and on each periodic resync (the safety
//! net), it looks at each attached fan and, where the host has changed under
//! it, runs attach or detach again, which already know how to create what is
//! missing and re-attach what is defunct:
//!
//! - the underlay's address changed (the fan's address is gone and another
//!   in the underlay is there, whichever came first; unless the
//!   configuration names the fan's address, which it then waits for: an
//!   operator who names an address never sees the fan on another, such as
//!   a keepalived VIP) and stayed so for
//!   [`MOVE_AFTER`]: the fan is detached from the old slice and attached on
//!   the new one, its bridge named by the same rule (the default name
//!   follows the slice; a given name stays). An address that is back
//!   within that time (a flap, a keepalived VIP taking over for a moment)
//!   moves nothing; and a fan the follower moved goes back to the address
//!   it was attached with as soon as that address is back, where its
//!   containers are;
//! - the underlay was deleted and re-created under its name, or the slice
//!   bridge was deleted or re-created: attach again re-creates the bridge,
//!   attaches the programs to the devices as they are now and points the fan
//!   entry at the underlay's new ifindex;
//! - the underlay's MTU changed, and the fan's MTU was not given with
//!   `--mtu`: the fan's MTU follows (the underlay's less the outer header),
//!   in place: the fan entry the programs read (they then hand what no
//!   longer fits to the stack, which answers "fragmentation needed"), the
//!   slice bridge, `fan-host`, the record, and DHCP's MTU option;
//! - the underlay is gone, down, or without an address in its underlay, or
//!   too narrow for a given `--mtu`: nothing to do but wait (said once).
//!
//! Each change is one log line; a wait is said once until it ends.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Result;
use fan_common::maps::{DecapMode, ModeReason};
use ipnetwork::{IpNetwork, Ipv4Network};
use log::{debug, info};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{AddressFamily, RouteNetlinkMessage, link::LinkAttribute},
};

use crate::{
    apply::{self, How},
    cli::{AttachArgs, FanType, Global, Mode},
    commands::attach::{self, MIN_FAN_MTU},
    config::resolve::detach_args,
    dataplane::{Hook, PinnedMaps, VXLAN_OUT_PIN, overlay_key},
    host::{Net, bypass, naming::bridge_name},
    state::{
        StateDir,
        record::{Fan, HOST_DEVICE, host_device_mtu, load_fans},
        rundir::{RunDir, StateLock},
        settings,
    },
};

/// What a fan needs after a look at the host.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    /// Nothing can be done until the host changes again; why.
    Wait(String),
    /// Its address is gone; this one in its underlay is there.
    Move(Ipv4Addr),
    /// Attach again; why.
    Repair(String),
    /// The underlay's MTU changed: the fan's follows, to this.
    Retune(u32),
}

/// How long a fan's address must stay gone, with another one there,
/// before the fan moves to the other: a flap moves nothing.
pub const MOVE_AFTER: Duration = Duration::from_secs(2);

/// A move seen but not yet made: to where, and since when.
struct Pending {
    to: Ipv4Addr,
    since: Instant,
}

/// The waits already said, by overlay, so that each is logged once, the
/// devices the fans are on (as of the last look), the moves waiting out
/// [`MOVE_AFTER`], and the fans the follower moved: (the address each was
/// attached with, the one it moved to).
#[derive(Default)]
pub struct Follower {
    said: HashMap<Ipv4Network, String>,
    devices: HashSet<String>,
    pending: HashMap<Ipv4Network, Pending>,
    moved: HashMap<Ipv4Network, (Ipv4Addr, Ipv4Addr)>,
}

impl Follower {
    /// The devices the fans are on, as of the last look (see [`concerns`]).
    pub fn devices(&self) -> &HashSet<String> {
        &self.devices
    }

    /// Whether a move waits out [`MOVE_AFTER`]: the agent looks again on
    /// its next tick, as no event may come.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Looks at every complete fan and acts where the host changed under
    /// it. The fans in `named` (by overlay: the configuration or `up` names their
    /// host address) are never moved to another address.
    pub async fn follow(
        &mut self,
        net: &Net,
        dir: &StateDir,
        run_dir: &RunDir,
        global: &Global,
        named: &HashMap<Ipv4Network, Ipv4Addr>,
    ) -> Result<()> {
        if !dir.exists() {
            self.said.clear();
            self.devices.clear();
            return Ok(());
        }
        // A command changing the fans now may be waiting for the agent:
        // never wait for it; the next event or resync looks again.
        let Some(lock) = run_dir.try_lock_state()? else {
            debug!("another fan-xdp is changing the fans: following the host at the next look");
            return Ok(());
        };
        let (fans, bypass) = {
            let maps = PinnedMaps::open(dir)?;
            (load_fans(&maps)?, maps.bypass()?)
        };
        self.devices = fans
            .iter()
            .flat_map(|f| [f.iface.clone(), f.bridge.clone()])
            .collect();
        // Moves made by someone else are theirs: nothing to go back to.
        self.moved
            .retain(|overlay, (_, to)| fans.iter().any(|f| f.overlay == *overlay && f.host == *to));
        for fan in fans.iter().filter(|f| f.complete) {
            let attached_with = self.moved.get(&fan.overlay).map(|(from, _)| *from);
            let named = named.get(&fan.overlay).copied();
            let need = need(net, dir, run_dir, fan, attached_with, named).await?;
            if !matches!(need, Need::Move(_))
                && let Some(pending) = self.pending.remove(&fan.overlay)
                && need == Need::Nothing
            {
                info!(
                    "overlay {}: {} is back on {} within {:.1} s: the fan stays",
                    fan.overlay,
                    fan.host,
                    fan.iface,
                    pending.since.elapsed().as_secs_f64()
                );
            }
            match need {
                Need::Nothing => {
                    if self.said.remove(&fan.overlay).is_some() {
                        info!("overlay {}: {} is back as it was", fan.overlay, fan.iface);
                    }
                }
                Need::Wait(why) => {
                    if self.said.get(&fan.overlay) != Some(&why) {
                        info!("overlay {}: {why}", fan.overlay);
                        self.said.insert(fan.overlay, why);
                    }
                }
                Need::Move(to) => {
                    self.said.remove(&fan.overlay);
                    let now = Instant::now();
                    let pending = self
                        .pending
                        .entry(fan.overlay)
                        .or_insert(Pending { to, since: now });
                    if pending.to != to {
                        *pending = Pending { to, since: now };
                    }
                    if pending.since == now {
                        let why = if Some(to) == attached_with {
                            format!(
                                "{to}, which the fan was attached with, is back on {}",
                                fan.iface
                            )
                        } else {
                            format!("{} has {to} but not {}", fan.iface, fan.host)
                        };
                        info!(
                            "overlay {}: {why}: moving the fan there unless that changes within {} s",
                            fan.overlay,
                            MOVE_AFTER.as_secs()
                        );
                    }
                    if pending.since.elapsed() < MOVE_AFTER {
                        continue;
                    }
                    self.pending.remove(&fan.overlay);
                    move_fan(net, fan, to, global, dir, run_dir, &lock).await?;
                    let from = attached_with.unwrap_or(fan.host);
                    if to == from {
                        self.moved.remove(&fan.overlay);
                    } else {
                        self.moved.insert(fan.overlay, (from, to));
                    }
                }
                Need::Repair(why) => {
                    self.said.remove(&fan.overlay);
                    // As it was, its MTU too: a changed underlay MTU is
                    // followed at the next look.
                    let args = args_of(
                        fan,
                        fan.host,
                        bypass,
                        Some(fan.bridge.clone()),
                        Some(fan.mtu),
                        settings::dhcp_of(run_dir, fan).unwrap_or(false),
                    );
                    apply::attach(&args, global, How::held(&lock)).await?;
                    info!("overlay {}: {why}: attached again", fan.overlay);
                }
                Need::Retune(mtu) => {
                    self.said.remove(&fan.overlay);
                    retune(net, dir, fan, mtu).await?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a netlink event may concern a fan on `devices` (the
/// follower's [`Follower::devices`]): any IPv4 address change, and a link
/// change of a fan's underlay or slice bridge (or before the first look,
/// any). A container's port coming and going does not, so hundreds of
/// them cost the follower nothing.
pub fn concerns(devices: &HashSet<String>, payload: &NetlinkPayload<RouteNetlinkMessage>) -> bool {
    let NetlinkPayload::InnerMessage(message) = payload else {
        return false;
    };
    match message {
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            a.header.family == AddressFamily::Inet
        }
        RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => {
            devices.is_empty()
                || link.attributes.iter().any(
                    |attr| matches!(attr, LinkAttribute::IfName(name) if devices.contains(name)),
                )
        }
        _ => false,
    }
}

/// What `fan` needs, from the host as it is now; `attached_with` is the
/// address the follower moved it from, preferred while it is there;
/// `named`, the address the configuration or `up` names for it, the only one it
/// may be on.
async fn need(
    net: &Net,
    dir: &StateDir,
    run_dir: &RunDir,
    fan: &Fan,
    attached_with: Option<Ipv4Addr>,
    named: Option<Ipv4Addr>,
) -> Result<Need> {
    let Some(iface) = net.device(&fan.iface).await? else {
        return Ok(Need::Wait(format!(
            "underlay {} is gone; waiting for it",
            fan.iface
        )));
    };
    let addrs = net.ipv4_addrs(iface.index).await?;
    if let Some(home) = attached_with
        && addrs.iter().any(|(a, _)| *a == home)
    {
        return Ok(Need::Move(home));
    }
    if !addrs.iter().any(|(a, _)| *a == fan.host) {
        if let Some(named) = named {
            return Ok(if addrs.iter().any(|(a, _)| *a == named) {
                Need::Move(named)
            } else {
                Need::Wait(format!(
                    "{} lost {}; {named} is named for this fan (by the configuration or `up`), and no other address: waiting for it",
                    fan.iface, fan.host
                ))
            });
        }
        return Ok(
            match addrs.iter().find(|(a, _)| fan.underlay.contains(*a)) {
                Some((to, _)) => Need::Move(*to),
                None => Need::Wait(format!(
                    "{} lost {} and has no other address in {}; waiting for one",
                    fan.iface, fan.host, fan.underlay
                )),
            },
        );
    }
    let Some(bridge) = net.device(&fan.bridge).await? else {
        return Ok(Need::Repair(format!(
            "slice bridge {} was deleted",
            fan.bridge
        )));
    };
    let decap = if fan.mode == Some(DecapMode::Xdp) {
        ("decap-xdp", Hook::Xdp)
    } else {
        ("decap-tc", Hook::TcIngress)
    };
    let entry_index = PinnedMaps::open(dir)?
        .config
        .get(
            &overlay_key(u32::from(fan.overlay.network()), fan.overlay.prefix()),
            0,
        )
        .ok()
        .map(|e| e.underlay_ifindex);
    if entry_index != Some(iface.index)
        || attach::defunct(net, &dir.link(&fan.iface, decap.0), iface.index, decap.1)
            .await?
            .is_some()
    {
        return Ok(Need::Repair(format!(
            "underlay {} was re-created (ifindex {})",
            fan.iface, iface.index
        )));
    }
    if attach::defunct(
        net,
        &dir.link(&fan.bridge, "encap"),
        bridge.index,
        Hook::TcIngress,
    )
    .await?
    .is_some()
    {
        return Ok(Need::Repair(format!(
            "slice bridge {} was re-created",
            fan.bridge
        )));
    }
    if let Some(why) = overlay_port_broken(net, dir, fan, bridge.index).await? {
        return Ok(Need::Repair(why));
    }
    if !iface.up {
        return Ok(Need::Wait(format!("underlay {} is down", fan.iface)));
    }
    let fits = iface.mtu.saturating_sub(fan.overhead());
    match settings::load(run_dir, fan.overlay)?.explicit_mtu {
        Some(given) if given > fits => Ok(Need::Wait(format!(
            "underlay {} has MTU {} now, too small for the fan's --mtu {given} (at most {fits}); waiting for it to grow, or attach again with a smaller --mtu",
            fan.iface, iface.mtu
        ))),
        Some(_) => Ok(Need::Nothing),
        None if fits < MIN_FAN_MTU => Ok(Need::Wait(format!(
            "underlay {} has MTU {}, leaving {fits} for the fan, below {MIN_FAN_MTU}; waiting for it to grow",
            fan.iface, iface.mtu
        ))),
        None if fits != fan.mtu => Ok(Need::Retune(fits)),
        None => Ok(Need::Nothing),
    }
}

/// What is wrong with a VXLAN fan's overlay port, if anything: deleted,
/// unplugged from the slice bridge (`bridge`, its ifindex now), its program
/// gone with a re-created device, or the fan entry naming old devices.
async fn overlay_port_broken(
    net: &Net,
    dir: &StateDir,
    fan: &Fan,
    bridge: u32,
) -> Result<Option<String>> {
    let Some((port, inner)) = fan.overlay_port() else {
        return Ok(None);
    };
    let (Some(port_dev), Some(inner_dev)) = (net.device(&port).await?, net.device(&inner).await?)
    else {
        return Ok(Some(format!("overlay port {port}/{inner} was deleted")));
    };
    if port_dev.controller != Some(bridge) {
        return Ok(Some(format!(
            "overlay port {port} is no longer a port of {}",
            fan.bridge
        )));
    }
    let pin = dir.link(&inner, VXLAN_OUT_PIN);
    if attach::defunct(net, &pin, inner_dev.index, Hook::TcIngress)
        .await?
        .is_some()
    {
        return Ok(Some(format!("overlay port {inner} was re-created")));
    }
    let key = overlay_key(u32::from(fan.overlay.network()), fan.overlay.prefix());
    let entry = PinnedMaps::open(dir)?.config.get(&key, 0).ok();
    if entry
        .is_some_and(|e| e.overlay_port_ifindex != inner_dev.index || e.bridge_ifindex != bridge)
    {
        return Ok(Some(format!(
            "the fan entry names an old {inner} or {}",
            fan.bridge
        )));
    }
    Ok(None)
}

/// Gives `fan` the MTU `mtu` in place: first the fan entry the programs
/// read (lowered, what no longer fits goes to the stack, which answers
/// "fragmentation needed" so TCP adapts), then the slice bridge, `fan-host`
/// (the smallest MTU of the fans) and the record. The agent's DHCP round
/// restarts dnsmasq with the new MTU option.
async fn retune(net: &Net, dir: &StateDir, fan: &Fan, mtu: u32) -> Result<()> {
    let mut maps = PinnedMaps::open(dir)?;
    let key = overlay_key(u32::from(fan.overlay.network()), fan.overlay.prefix());
    let mut entry = maps.config.get(&key, 0)?;
    entry.overlay_mtu = mtu;
    maps.config.insert(&key, entry, 0)?;
    // A VXLAN fan's overlay port first: a bridge takes no MTU above its ports'.
    let (port, inner) = fan.overlay_port().unzip();
    for name in [port, inner].into_iter().flatten() {
        if let Some(end) = net.device(&name).await? {
            net.set_mtu(end.index, mtu).await?;
        }
    }
    if let Some(bridge) = net.device(&fan.bridge).await? {
        net.set_mtu(bridge.index, mtu).await?;
    }
    let meta_key = crate::state::record::meta_key(fan.overlay);
    let mut meta = fan.meta;
    meta.mtu = mtu;
    maps.meta.insert(meta_key, meta, 0)?;
    let fans = load_fans(&maps)?;
    if let Some(host_dev) = net.device(HOST_DEVICE).await?
        && let Some(smallest) = host_device_mtu(&fans)
        && host_dev.mtu != smallest
    {
        net.set_mtu(host_dev.index, smallest).await?;
    }
    info!(
        "overlay {}: underlay {} MTU changed: the fan's MTU follows, {} -> {mtu}",
        fan.overlay, fan.iface, fan.mtu
    );
    Ok(())
}

/// The attach that gives `fan` again, as it was set up (bridge None: named
/// by the default rule for whatever slice the host has now).
fn args_of(
    fan: &Fan,
    host: Ipv4Addr,
    bypass: u32,
    bridge: Option<String>,
    mtu: Option<u32>,
    dhcp: bool,
) -> AttachArgs {
    // A mode that was asked for is asked for again; one auto chose, auto chooses.
    let requested = ModeReason::try_from(fan.meta.mode_reason) == Ok(ModeReason::Requested);
    let mode = match fan.mode {
        Some(DecapMode::Xdp) if requested => Mode::Xdp,
        Some(DecapMode::Tc) if requested => Mode::Tc,
        _ => Mode::Auto,
    };
    AttachArgs {
        iface: fan.iface.clone(),
        overlay: IpNetwork::V4(fan.overlay),
        underlay: Some(IpNetwork::V4(fan.underlay)),
        bridge,
        host_reserve: fan.host_reserve,
        mode,
        fan_type: if fan.is_vxlan() {
            FanType::Vxlan
        } else {
            FanType::Ipip
        },
        vni: fan.wire.vxlan().map(|(vni, _)| vni),
        port: fan.wire.vxlan().map(|(_, port)| port),
        no_nat: !fan.nat,
        mtu,
        no_agent: true,
        bypass: bypass::setting_of(bypass),
        dhcp,
        // The slice's own plan: ranges set by hand on the old slice name
        // addresses of that one (a moved fan gets the default plan).
        dhcp_range: None,
        cni_range: None,
        docker_cidr: None,
        host: Some(host),
    }
}

/// The slice follows the address: detach from the old slice, attach on the
/// new, and name the containers left behind on the old one.
async fn move_fan(
    net: &Net,
    fan: &Fan,
    to: Ipv4Addr,
    global: &Global,
    dir: &StateDir,
    run_dir: &RunDir,
    lock: &StateLock,
) -> Result<()> {
    let left = containers_on(net, fan).await?;
    let bypass = PinnedMaps::open(dir)?.bypass()?;
    let bridge = (fan.bridge != bridge_name(fan.slice.network())).then(|| fan.bridge.clone());
    // Read before detach, which forgets the fan's settings. An MTU given
    // stays given; one that followed the underlay follows it still.
    let (dhcp, explicit_mtu) = match settings::load(run_dir, fan.overlay) {
        Ok(found) => (found.dhcp, found.explicit_mtu),
        Err(_) => (false, Some(fan.mtu)),
    };
    apply::detach(&detach_args(fan), global, How::held(lock)).await?;
    apply::attach(
        &args_of(fan, to, bypass, bridge, explicit_mtu, dhcp),
        global,
        How::held(lock),
    )
    .await?;
    let now = load_fans(&PinnedMaps::open(dir)?)?
        .into_iter()
        .find(|f| f.overlay == fan.overlay);
    let (slice, bridge) = now.map_or_else(
        || ("none".to_string(), "none".to_string()),
        |f| (f.slice.to_string(), f.bridge),
    );
    info!(
        "overlay {}: {} moved from {} to {to}: slice {} on {} is now {slice} on {bridge}; containers left on the old slice: {}",
        fan.overlay,
        fan.iface,
        fan.host,
        fan.slice,
        fan.bridge,
        if left.is_empty() {
            "none".to_string()
        } else {
            left.join(", ")
        }
    );
    Ok(())
}

/// The containers on `fan`'s slice bridge with an address in its slice
/// (from the bridge's neighbours), as `ADDR (PORT)`, or the bare ports.
async fn containers_on(net: &Net, fan: &Fan) -> Result<Vec<String>> {
    let Some(bridge) = net.device(&fan.bridge).await? else {
        return Ok(Vec::new());
    };
    let mut named: Vec<String> = net
        .neighbours(bridge.index)
        .await?
        .into_iter()
        .filter(|(addr, _)| fan.slice.contains(*addr) && *addr != fan.gateway)
        .map(|(addr, _)| addr.to_string())
        .collect();
    named.sort();
    named.dedup();
    let ports = net.port_names(bridge.index).await?;
    if !ports.is_empty() {
        named.push(format!("on port(s) {}", ports.join(" ")));
    }
    Ok(named)
}
