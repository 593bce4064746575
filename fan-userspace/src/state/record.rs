//! An attached fan as user space sees it: the data-plane entry and fan-xdp's
//! record combined, with everything derived from them.

use std::net::Ipv4Addr;

use anyhow::Result;
use fan_common::{
    Encap, FanMap,
    maps::{DecapMode, FanMeta, FanMetaKey, ModeReason},
    plan::AddressPlan,
};
use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::dataplane::PinnedMaps;

/// fan-xdp's NOARP device for overlay traffic the host originates, and its idle peer.
pub const HOST_DEVICE: &str = "fan-host";
pub const HOST_DEVICE_PEER: &str = "fan-host-sink";

#[derive(Clone, Debug, Serialize)]
pub struct Fan {
    pub overlay: Ipv4Network,
    pub underlay: Ipv4Network,
    pub host: Ipv4Addr,
    pub slice: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub iface: String,
    /// None while an interrupted attach has not got that far.
    #[serde(serialize_with = "serialize_mode")]
    pub mode: Option<DecapMode>,
    pub mode_reason: &'static str,
    /// Shown as `type` ("ipip" or "vxlan"), `vni` and `port` (null for
    /// IP-in-IP).
    #[serde(flatten)]
    pub wire: Wire,
    pub nat: bool,
    pub host_reserve: u32,
    pub mtu: u32,
    /// False if an attach was interrupted: detach cleans it up, attach finishes it.
    pub complete: bool,
    #[serde(skip)]
    pub meta: FanMeta,
}

/// A fan's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// IP-in-IP: a routed overlay through `fan-host`.
    Ipip,
    /// VXLAN: an Ethernet overlay through the slice bridge's overlay port,
    /// with its network identifier and UDP destination port.
    Vxlan { vni: u32, port: u16 },
}

impl Wire {
    /// As fan-xdp's record holds it (an unknown type read as IP-in-IP).
    fn of(meta: &FanMeta) -> Self {
        match Encap::try_from(meta.encap) {
            Ok(Encap::Vxlan) => Wire::Vxlan {
                vni: meta.vni,
                port: meta.vxlan_port,
            },
            Ok(Encap::Ipip) | Err(_) => Wire::Ipip,
        }
    }

    pub const fn encap(self) -> Encap {
        match self {
            Wire::Ipip => Encap::Ipip,
            Wire::Vxlan { .. } => Encap::Vxlan,
        }
    }

    pub const fn is_vxlan(self) -> bool {
        matches!(self, Wire::Vxlan { .. })
    }

    /// VXLAN's network identifier and UDP port (0 for IP-in-IP), as the fan
    /// entry and the record hold them.
    pub const fn vni_and_port(self) -> (u32, u16) {
        match self {
            Wire::Ipip => (0, 0),
            Wire::Vxlan { vni, port } => (vni, port),
        }
    }

    /// VXLAN's network identifier and UDP port, `None` for IP-in-IP.
    pub const fn vxlan(self) -> Option<(u32, u16)> {
        match self {
            Wire::Ipip => None,
            Wire::Vxlan { vni, port } => Some((vni, port)),
        }
    }
}

impl Serialize for Wire {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let vxlan = self.vxlan();
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("type", self.encap().name())?;
        map.serialize_entry("vni", &vxlan.map(|(vni, _)| vni))?;
        map.serialize_entry("port", &vxlan.map(|(_, port)| port))?;
        map.end()
    }
}

pub fn meta_key(overlay: Ipv4Network) -> FanMetaKey {
    [overlay.prefix() as u32, u32::from(overlay.network())]
}

/// A NUL-padded interface name.
pub fn name_bytes(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    out
}

pub fn name_str(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Fan {
    /// Built from fan-xdp's record alone, so an interrupted attach (whose
    /// data-plane entry may be missing) can still be shown and cleaned up.
    pub fn from_record(key: FanMetaKey, meta: FanMeta) -> Option<Self> {
        let overlay = Ipv4Network::new(Ipv4Addr::from(key[1]), key[0] as u8).ok()?;
        let host = Ipv4Addr::from(meta.host);
        let underlay = Ipv4Network::new(host, meta.underlay_len).ok()?;
        let map = fan_map(overlay, underlay);
        let slice_start = Ipv4Addr::from(map.slice_of(meta.host));
        let wire = Wire::of(&meta);
        let reason = ModeReason::try_from(meta.mode_reason);
        Some(Self {
            overlay,
            underlay: Ipv4Network::new(underlay.network(), meta.underlay_len).ok()?,
            host,
            slice: Ipv4Network::new(slice_start, map.slice_len()).ok()?,
            gateway: Ipv4Addr::from(map.gateway_of(meta.host)),
            bridge: name_str(&meta.bridge),
            iface: name_str(&meta.iface),
            mode: DecapMode::try_from(meta.decap_mode).ok(),
            mode_reason: match reason {
                Ok(ModeReason::Requested) | Err(_) => "requested",
                Ok(_) if wire.is_vxlan() => "auto: VXLAN decapsulates at TC",
                Ok(reason) => reason.text(),
            },
            wire,
            nat: meta.nat != 0,
            host_reserve: meta.host_reserve,
            mtu: meta.mtu,
            complete: meta.complete != 0,
            meta,
        })
    }

    /// The slice's address plan (see [`fan_common::plan`]).
    pub fn plan(&self) -> Result<AddressPlan> {
        AddressPlan::default_for(self.slice.network(), self.slice.prefix(), self.host_reserve)
            .map_err(|e| anyhow::anyhow!("slice {} of fan {}: {e}", self.slice, self.overlay))
    }

    /// The decapsulation mode as `show` names it ("none" before it is chosen).
    pub fn mode_name(&self) -> &'static str {
        self.mode.map_or("none", DecapMode::name)
    }

    pub fn map(&self) -> FanMap {
        fan_map(self.overlay, self.underlay)
    }

    pub fn is_vxlan(&self) -> bool {
        self.wire.is_vxlan()
    }

    /// What the wire format adds to each packet: the underlay MTU less this
    /// is the most the fan can carry.
    pub fn overhead(&self) -> u32 {
        self.wire.encap().overhead()
    }

    /// The prefix length of the gateway's address on the slice bridge.
    pub fn gateway_prefix(&self) -> u8 {
        gateway_prefix(self.wire.encap(), self.overlay, self.slice)
    }

    /// A VXLAN fan's overlay port: (the bridge's end, the inner end).
    pub fn overlay_port(&self) -> Option<(String, String)> {
        self.is_vxlan()
            .then(|| crate::host::naming::overlay_port_names(self.slice.network()))
    }
}

/// The MTU of `fan-host`, which carries the host's own traffic of every
/// IP-in-IP fan: the smallest of theirs (`None` without one).
pub fn host_device_mtu<'a>(fans: impl IntoIterator<Item = &'a Fan>) -> Option<u32> {
    fans.into_iter()
        .filter(|fan| !fan.is_vxlan())
        .map(|fan| fan.mtu)
        .min()
}

/// The prefix length of the gateway's address on the slice bridge: the
/// slice's for IP-in-IP (the overlay is routed through `fan-host`); the
/// overlay's for VXLAN, as Ubuntu's Fan and LXD give it, so the kernel's
/// prefix route sends the whole overlay to the bridge and its overlay port.
pub fn gateway_prefix(encap: Encap, overlay: Ipv4Network, slice: Ipv4Network) -> u8 {
    match encap {
        Encap::Ipip => slice.prefix(),
        Encap::Vxlan => overlay.prefix(),
    }
}

fn serialize_mode<S: serde::Serializer>(mode: &Option<DecapMode>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.map_or("none", DecapMode::name))
}

/// The Fan mapping of an overlay over an underlay, from their networks as
/// written (host bits in the overlay are the caller's to refuse).
pub fn fan_map(overlay: Ipv4Network, underlay: Ipv4Network) -> FanMap {
    FanMap::new(
        u32::from(overlay.ip()),
        overlay.prefix(),
        u32::from(underlay.network()),
        underlay.prefix(),
    )
}

/// Every fan recorded in the pinned maps, ordered by overlay.
pub fn load_fans(maps: &PinnedMaps) -> Result<Vec<Fan>> {
    Ok(maps
        .fans()?
        .into_iter()
        .filter_map(|(key, meta)| Fan::from_record(key, meta))
        .collect())
}

/// The fans attached in this namespace (none if nothing was ever attached),
/// with their state directory.
pub fn attached(global: &crate::cli::Global) -> Result<(crate::state::StateDir, Vec<Fan>)> {
    let dir = crate::state::StateDir::locate(global.pin_dir.as_deref())?;
    let fans = if dir.exists() {
        load_fans(&PinnedMaps::open(&dir)?)?
    } else {
        Vec::new()
    };
    Ok((dir, fans))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Wire;

    #[test]
    fn a_wire_format_shows_as_its_type_vni_and_port() {
        assert_eq!(
            serde_json::to_value(Wire::Ipip).unwrap(),
            json!({"type": "ipip", "vni": null, "port": null})
        );
        let vxlan = Wire::Vxlan {
            vni: 16_384_000,
            port: 8472,
        };
        assert_eq!(
            serde_json::to_value(vxlan).unwrap(),
            json!({"type": "vxlan", "vni": 16_384_000, "port": 8472})
        );
    }
}
