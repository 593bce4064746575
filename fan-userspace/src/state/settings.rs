//! What attach was told about a fan beyond its pinned record: the address
//! plan's overrides and whether DHCP runs on the slice.
//!
//! One small JSON file per fan in the namespace's run directory,
//! `fan-<overlay network>-<prefix>.json`, next to the agent's files: the
//! pinned record's layout stays as it is (no map layout version to bump),
//! and like the pins it dies with the boot. `show`, the agent (which runs
//! the DHCP server from it) and the CNI plugin read it back through
//! [`plan_of`] and [`dhcp_of`]. A fan without the file has the default plan
//! and no DHCP.
//!
//! The overrides are kept with the slice they were given for. Should the
//! slice move (the host's underlay address changed), the parts keep their
//! places relative to the slice's start, so a plan that was valid stays one.

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, anyhow};
use fan_common::plan::{AddrRange, AddressPlan, Cidr};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::state::{
    record::Fan,
    rundir::{RunDir, write_private_atomically},
};

/// A fan's settings, as attach wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The slice the overrides were given for.
    pub slice: Option<Ipv4Network>,
    /// Serve DHCP on the slice bridge (dnsmasq, supervised by the agent).
    #[serde(default)]
    pub dhcp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<[Ipv4Addr; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_range: Option<[Ipv4Addr; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_cidr: Option<(Ipv4Addr, u8)>,
    /// The MTU given with `--mtu` (or `mtu N` in the file), kept whatever
    /// the underlay's MTU does; without it the fan's MTU follows the
    /// underlay's (less the outer header), and the agent keeps it so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_mtu: Option<u32>,
    /// The dnsmasq attach found (`FAN_XDP_DNSMASQ` or PATH), which the
    /// agent runs: its environment is reduced to a fixed PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsmasq: Option<PathBuf>,
}

impl Settings {
    /// Settings for `slice` with the given overrides.
    pub fn new(
        slice: Ipv4Network,
        dhcp: bool,
        dhcp_range: Option<AddrRange>,
        cni_range: Option<AddrRange>,
        docker_cidr: Option<Cidr>,
    ) -> Self {
        Self {
            slice: Some(slice),
            dhcp,
            dhcp_range: dhcp_range.map(|r| [r.first, r.last]),
            cni_range: cni_range.map(|r| [r.first, r.last]),
            docker_cidr: docker_cidr.map(|c| (c.base, c.len)),
            explicit_mtu: None,
            dnsmasq: None,
        }
    }

    /// Whether nothing here differs from a fan without the file.
    pub fn is_default(&self) -> bool {
        !self.dhcp
            && self.dhcp_range.is_none()
            && self.cni_range.is_none()
            && self.docker_cidr.is_none()
            && self.explicit_mtu.is_none()
    }

    /// Whether both ask for the same: DHCP and the same overrides (the slice
    /// is the fan's, and where dnsmasq was found is not a request; the MTU
    /// is compared as a value with the fan's, and how it was chosen is the
    /// first attach's).
    pub fn same_request(&self, other: &Settings) -> bool {
        (self.dhcp, self.dhcp_range, self.cni_range, self.docker_cidr)
            == (
                other.dhcp,
                other.dhcp_range,
                other.cni_range,
                other.docker_cidr,
            )
    }

    /// The plan of `slice` with `host_reserve` addresses kept for the host:
    /// the default one with these overrides, validated (disjoint, inside the
    /// slice, off its network and broadcast addresses).
    pub fn plan(&self, slice: Ipv4Network, host_reserve: u32) -> Result<AddressPlan> {
        let (base, len) = (slice.network(), slice.prefix());
        let describe =
            |e: fan_common::plan::PlanError| anyhow!("address plan of slice {slice}: {e}");
        let mut plan = AddressPlan::default_for(base, len, host_reserve).map_err(describe)?;
        // The overrides follow the slice if it moved since they were given.
        let from = self.slice.map_or(base, |s| s.network());
        let moved = |a: Ipv4Addr| {
            Ipv4Addr::from(
                u32::from(a)
                    .wrapping_sub(u32::from(from))
                    .wrapping_add(u32::from(base)),
            )
        };
        if let Some([first, last]) = self.dhcp_range {
            plan.dhcp = AddrRange::new(moved(first), moved(last));
        }
        if let Some([first, last]) = self.cni_range {
            plan.cni = AddrRange::new(moved(first), moved(last));
        }
        if let Some((cidr_base, cidr_len)) = self.docker_cidr {
            plan.docker = Cidr::new(moved(cidr_base), cidr_len)
                .ok_or_else(|| anyhow!("Docker range {cidr_base}/{cidr_len} is not aligned"))?;
        }
        plan.validate(base, len).map_err(|e| {
            anyhow!(
                "address plan of slice {slice}: {e} (host reserve {}, DHCP range {}, Docker range {}, CNI range {})",
                plan.reserve,
                plan.dhcp,
                plan.docker,
                plan.cni
            )
        })?;
        Ok(plan)
    }
}

/// The settings file of `overlay`.
pub fn path(run: &RunDir, overlay: Ipv4Network) -> PathBuf {
    run.path.join(format!(
        "fan-{}-{}.json",
        overlay.network(),
        overlay.prefix()
    ))
}

/// The settings of `overlay`; a fan without a file has the defaults.
pub fn load(run: &RunDir, overlay: Ipv4Network) -> Result<Settings> {
    let file = path(run, overlay);
    match fs::read(&file) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Writes (or, for default settings, removes) the settings of `overlay`.
pub fn save(run: &RunDir, overlay: Ipv4Network, settings: &Settings) -> Result<()> {
    if settings.is_default() {
        return remove(run, overlay);
    }
    run.create()?;
    write_private_atomically(&path(run, overlay), &serde_json::to_vec_pretty(settings)?)
        .with_context(|| format!("writing the settings of fan {overlay}"))
}

/// Removes the settings of `overlay` (detach); nothing if there are none.
pub fn remove(run: &RunDir, overlay: Ipv4Network) -> Result<()> {
    match fs::remove_file(path(run, overlay)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the settings of fan {overlay}")),
    }
}

/// The address plan of `fan`: its settings' overrides on the default plan.
pub fn plan_of(run: &RunDir, fan: &Fan) -> Result<AddressPlan> {
    load(run, fan.overlay)?.plan(fan.slice, fan.host_reserve)
}

/// Whether `fan` serves DHCP on its slice.
pub fn dhcp_of(run: &RunDir, fan: &Fan) -> Result<bool> {
    Ok(load(run, fan.overlay)?.dhcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn range(first: &str, last: &str) -> AddrRange {
        AddrRange::new(ip(first), ip(last))
    }

    #[test]
    fn overrides_replace_parts_and_are_validated() {
        let slice: Ipv4Network = "250.0.28.0/24".parse().unwrap();
        let settings = Settings::new(
            slice,
            true,
            Some(range("250.0.28.10", "250.0.28.99")),
            Some(range("250.0.28.100", "250.0.28.127")),
            None,
        );
        let plan = settings.plan(slice, 9).unwrap();
        assert_eq!(plan.reserve, range("250.0.28.1", "250.0.28.9"));
        assert_eq!(plan.dhcp, range("250.0.28.10", "250.0.28.99"));
        assert_eq!(plan.cni, range("250.0.28.100", "250.0.28.127"));
        assert_eq!(plan.docker.to_string(), "250.0.28.128/26");

        // A DHCP range over Docker's default is refused, naming both and every part.
        let overlapping = Settings::new(
            slice,
            true,
            Some(range("250.0.28.2", "250.0.28.200")),
            None,
            None,
        );
        let err = overlapping.plan(slice, 1).unwrap_err().to_string();
        assert!(
            err.contains("the DHCP range and the Docker range overlap"),
            "{err}"
        );
        assert!(err.contains("DHCP range 250.0.28.2-250.0.28.200"), "{err}");
        // Over the host reserve, or outside the slice.
        let over_reserve = Settings::new(
            slice,
            false,
            Some(range("250.0.28.5", "250.0.28.50")),
            None,
            None,
        );
        let err = over_reserve.plan(slice, 9).unwrap_err().to_string();
        assert!(
            err.contains("host reserve and the DHCP range overlap"),
            "{err}"
        );
        let outside = Settings::new(
            slice,
            false,
            None,
            Some(range("250.0.29.1", "250.0.29.9")),
            None,
        );
        let err = outside.plan(slice, 1).unwrap_err().to_string();
        assert!(err.contains("CNI range reaches outside the slice"), "{err}");
    }

    #[test]
    fn overrides_follow_a_moved_slice() {
        let old: Ipv4Network = "250.0.28.0/24".parse().unwrap();
        let new: Ipv4Network = "250.0.29.0/24".parse().unwrap();
        let settings = Settings::new(
            old,
            true,
            Some(range("250.0.28.10", "250.0.28.99")),
            None,
            None,
        );
        assert_eq!(
            settings.plan(new, 1).unwrap().dhcp,
            range("250.0.29.10", "250.0.29.99")
        );
    }

    #[test]
    fn the_file_round_trips_and_defaults_leave_none() {
        let settings = Settings::new(
            "250.0.28.0/24".parse().unwrap(),
            true,
            Some(range("250.0.28.10", "250.0.28.99")),
            None,
            Cidr::new(ip("250.0.28.128"), 26),
        );
        let text = serde_json::to_string(&settings).unwrap();
        assert_eq!(serde_json::from_str::<Settings>(&text).unwrap(), settings);
        assert!(Settings::default().is_default());
        // What attach builds for no flags asks for what no file means.
        let none = Settings::new("250.0.28.0/24".parse().unwrap(), false, None, None, None);
        assert!(none.is_default() && none.same_request(&Settings::default()));
        assert!(!settings.same_request(&Settings::default()));
        assert!(!settings.is_default());
    }
}
