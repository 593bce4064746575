//! The steps of an attach, each with the undo of what it changed: the
//! record, sysctls, the bridge, the host device (IP-in-IP) or the overlay
//! port (VXLAN), the route (IP-in-IP), NAT and the fan entry (the
//! programs' step is in `links`).

use super::links::retire_other_decap;
use super::table::{Step, checkpoint};
use super::*;

pub(super) async fn apply(net: &Net, plan: &Plan, undo: &mut Vec<Undo>) -> Result<bool> {
    let mut attach = Attach::open(net, plan, undo)?;
    for step in Step::ORDER {
        attach.run(step).await?;
        checkpoint(step.name())?;
    }
    attach.finish()
}

/// An attach under way: what the steps share.
pub(super) struct Attach<'a> {
    pub(super) net: &'a Net,
    pub(super) plan: &'a Plan,
    pub(super) undo: &'a mut Vec<Undo>,
    pub(super) dataplane: Dataplane,
    pub(super) key: FanMetaKey,
    /// fan-xdp's record of the fan as written so far.
    pub(super) meta: FanMeta,
    /// Whether any step changed anything.
    pub(super) changed: bool,
    /// The host device, once its step made sure of it.
    pub(super) host_dev: Option<Device>,
    /// A VXLAN fan's overlay port (its end in this namespace, where
    /// `fan_vxlan_out` runs) and the slice bridge, once their steps made sure of them.
    pub(super) overlay_port: Option<Device>,
    pub(super) bridge_index: u32,
    /// The decapsulation mode and why, once the programs step attached it.
    pub(super) decap: Option<(DecapMode, ModeReason)>,
}

impl<'a> Attach<'a> {
    /// Creates the state directory if needed and loads the programs with
    /// the maps pinned there (part of the record step: undone with it).
    fn open(net: &'a Net, plan: &'a Plan, undo: &'a mut Vec<Undo>) -> Result<Self> {
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
            overlay_port: None,
            bridge_index: 0,
            decap: None,
        })
    }

    async fn run(&mut self, step: Step) -> Result<()> {
        match step {
            Step::Record => self.record(),
            Step::Sysctl => self.sysctl(),
            Step::Bridge => self.bridge().await,
            Step::HostDevice => self.host_device().await,
            Step::OverlayPort => self.overlay_port().await,
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
        // Whether the MTU was given is the first attach's to say: a later
        // one (the agent's repair) names the fan's MTU as it is.
        let first_mtu =
            self.plan.existing.is_none() && found.explicit_mtu != self.plan.settings.explicit_mtu;
        if !found.same_request(&self.plan.settings) || first_mtu {
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
        let bridge = match net.device(&plan.bridge).await? {
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
                self.undo.push(Undo::Device(plan.bridge.clone()));
                self.changed = true;
                link
            }
        };
        if bridge.mtu != plan.mtu {
            if self.meta.owned & (owned::BRIDGE | owned::BRIDGE_MTU) == 0 {
                // An adopted bridge's own MTU, recorded before it changes,
                // so that detach gives the bridge back as it was found.
                self.meta.orig_bridge_mtu =
                    u16::try_from(bridge.mtu).unwrap_or(u16::MAX).to_ne_bytes();
                self.claim(owned::BRIDGE_MTU)?;
            }
            net.set_mtu(bridge.index, plan.mtu).await?;
            self.undo.push(Undo::Mtu(bridge.index, bridge.mtu));
            self.changed = true;
        }
        self.bridge_index = bridge.index;
        let prefix = gateway_prefix(plan.wire.encap(), plan.overlay, plan.slice);
        let gateway = (plan.gateway, prefix);
        if !net.ipv4_addrs(bridge.index).await?.contains(&gateway) {
            self.claim(owned::GATEWAY_ADDRESS)?;
            net.add_addr(bridge.index, gateway.0, gateway.1).await?;
            self.undo
                .push(Undo::Address(bridge.index, gateway.0, gateway.1));
            self.changed = true;
        }
        self.ignore_router_advertisements()?;
        self.changed |= bring_up(net, &bridge, self.undo).await?;
        Ok(())
    }

    /// The host takes no router advertisement from the slice bridge: a
    /// container's would give the host a default route and addresses (the
    /// port programs drop IPv6, but they need the agent and Linux 6.6).
    /// What an adopted bridge had is recorded before the write, for detach.
    fn ignore_router_advertisements(&mut self) -> Result<()> {
        let key = accept_ra_key(&self.plan.bridge);
        let Some(before) = read_ipv6_sysctl(&key)? else {
            return Ok(());
        };
        if before == 0 {
            return Ok(());
        }
        if self.meta.owned & owned::BRIDGE == 0 && self.meta.owned & owned::BRIDGE_ACCEPT_RA == 0 {
            self.meta.orig_bridge_accept_ra = before;
            self.claim(owned::BRIDGE_ACCEPT_RA)?;
        }
        write_ipv6_sysctl(&key, 0)?;
        self.undo.push(Undo::Ipv6Sysctl(key, before));
        self.changed = true;
        Ok(())
    }

    /// The NOARP device for the host's own overlay traffic, shared by every
    /// fan, with the smallest overlay MTU of them.
    async fn host_device(&mut self) -> Result<()> {
        let (net, plan) = (self.net, self.plan);
        if plan.wire != Wire::Ipip {
            // The bridge carries a VXLAN fan's host traffic: see `overlay_port`.
            return Ok(());
        }
        let host_dev = match net.device(HOST_DEVICE).await? {
            Some(link) => link,
            None => {
                let link = net
                    .create_noarp_veth(HOST_DEVICE, HOST_DEVICE_PEER, plan.mtu)
                    .await?;
                self.undo.push(Undo::Device(HOST_DEVICE.to_string()));
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

    /// A VXLAN fan's overlay port, fan-xdp's stand-in for the Fan's vxlan
    /// device: a veth pair whose end A is a port of the slice bridge, and
    /// whose end B, up, unaddressed and without IPv6, runs `fan_vxlan_out`
    /// at its ingress (what the bridge sends A is encapsulated there, and
    /// what is decapsulated for the bridge is sent out of B). Named from the
    /// slice, fan-xdp's alone: detach deletes it by name.
    async fn overlay_port(&mut self) -> Result<()> {
        let (net, plan) = (self.net, self.plan);
        if plan.wire == Wire::Ipip {
            return Ok(());
        }
        let (a, b) = overlay_port_names(plan.slice.network());
        let (port, inner) = match (net.device(&a).await?, net.device(&b).await?) {
            (None, None) => {
                let port = (a.as_str(), OVERLAY_PORT_MAC);
                let pair = net
                    .create_bridge_veth(port, &b, self.bridge_index, plan.mtu)
                    .await?;
                self.undo.push(Undo::Device(a.clone()));
                self.changed = true;
                pair
            }
            (Some(port), Some(inner))
                if port.kind.as_deref() == Some("veth") && port.peer_index == Some(inner.index) =>
            {
                (port, inner)
            }
            _ => bail!(
                "{a} or {b} exists and is not the veth pair fan-xdp makes for {}'s overlay port: remove it first",
                plan.bridge
            ),
        };
        // A bridge re-created since (the agent repairs) has lost its port.
        if port.controller != Some(self.bridge_index) {
            net.set_controller(port.index, self.bridge_index).await?;
            self.changed = true;
        }
        for end in [&port, &inner] {
            if end.mtu != plan.mtu {
                net.set_mtu(end.index, plan.mtu).await?;
                self.undo.push(Undo::Mtu(end.index, end.mtu));
                self.changed = true;
            }
            // No link-local address, router solicitation or neighbour
            // discovery of the host's into the bridge (the device goes with its settings).
            let key = format!("conf/{}/disable_ipv6", end.name);
            if read_ipv6_sysctl(&key)?.is_some_and(|v| v == 0) {
                write_ipv6_sysctl(&key, 1)?;
            }
            self.changed |= bring_up(net, end, self.undo).await?;
        }
        self.overlay_port = Some(inner);
        Ok(())
    }

    /// The overlay route via the host device, sourced from the gateway so
    /// receivers' anti-spoofing accepts it. A VXLAN fan has none of its own:
    /// the gateway's address on the bridge, with the overlay's prefix, gives it.
    async fn route(&mut self) -> Result<()> {
        let (net, plan) = (self.net, self.plan);
        if plan.wire != Wire::Ipip {
            return Ok(());
        }
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
        let (vni, vxlan_port) = plan.wire.vni_and_port();
        let entry = FanEntry {
            map: plan.map,
            local_host: u32::from(plan.host),
            underlay_ifindex: plan.iface.index,
            overlay_mtu: plan.mtu,
            encap: plan.wire.encap() as u8,
            _pad: [0; 1],
            vxlan_port,
            vni,
            overlay_port_ifindex: self.overlay_port.as_ref().map_or(0, |d| d.index),
            bridge_ifindex: self.bridge_index,
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
        // The underlays follow the fans; a state from before the map
        // existed has it empty until now.
        PinnedMaps::open(&plan.dir)?.sync_underlays()
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

    pub(super) fn claim(&mut self, bit: u8) -> Result<()> {
        claim(
            &mut self.dataplane,
            self.key,
            &mut self.meta,
            bit,
            self.undo,
        )
    }
}

/// A device a program is attached to, and the [`owned`] bit that records
/// that attach added its clsact qdisc (before 6.6), or None where the
/// device is fan-xdp's own and the qdisc goes with it.
pub(super) struct Target<'a> {
    pub(super) device: &'a str,
    pub(super) clsact: Option<u8>,
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
async fn bring_up(net: &Net, link: &Device, undo: &mut Vec<Undo>) -> Result<bool> {
    if link.up {
        return Ok(false);
    }
    net.set_up(link.index).await?;
    undo.push(Undo::Down(link.index));
    Ok(true)
}
