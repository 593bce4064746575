//! Bindings: which container port an overlay address is delivered to, and
//! who said so.
//!
//! The CNI plugin, the DHCP server's leases and the command line (`static`)
//! bind addresses on purpose; containers without a binding own what their
//! runtime configured on their interface. Which port a binding stands for,
//! and what outranks what, is [`super::ownership`]'s table: a bound address
//! is never moved by ARP, the forwarding database or a MAC, and no resync
//! removes it: only the one who bound it unbinds it. The one exception is a
//! `cni` binding whose port no longer exists (its container's DEL ran while
//! no agent was up): a full sync removes it (see the agent's
//! `sync::collect_portless`). The agent is the only writer of the
//! table; others ask it over the control socket ([`bind`], [`unbind`],
//! [`list`]), and the agent answers a bind only once the endpoint map holds
//! the address, so the first packet already takes the fast path.
//!
//! The table is kept in the run directory (`bindings.json`), so an agent
//! that restarts keeps it; it dies with the boot, as the ports do.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::Ipv4Addr,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{endpoints::Slices, ownership};
use crate::state::rundir::{RunDir, write_private_atomically};

/// Where a binding came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The CNI plugin's ADD.
    Cni,
    /// A lease of the slice's DHCP server.
    Dhcp,
    /// Given on the command line or in the configuration.
    Static,
    /// The bridge's neighbour and forwarding tables: never a binding's.
    Learned,
}

impl Origin {
    pub const fn name(self) -> &'static str {
        match self {
            Origin::Cni => "cni",
            Origin::Dhcp => "dhcp",
            Origin::Static => "static",
            Origin::Learned => "learned",
        }
    }
}

/// One bound address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub address: Ipv4Addr,
    /// The container's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The host end of the container's veth; when absent, the port whose
    /// container end first had `mac` and `address` (see [`ownership`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    pub origin: Origin,
    /// Who the binding is for: a container id, a DHCP client id.
    #[serde(default)]
    pub owner: String,
    /// The Kubernetes pod of a `cni` binding, from the runtime's CNI_ARGS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

/// A Kubernetes pod, as kubelet names it to the runtime and the runtime to
/// CNI plugins (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Empty where the runtime names no namespace (Podman).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl std::fmt::Display for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            return write!(f, "{}", self.name);
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Binding {
    pub fn mac_bytes(&self) -> Result<[u8; 6]> {
        parse_mac(&self.mac)
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next().filter(|p| p.len() == 2);
        *byte = part
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .with_context(|| format!("MAC address {text:?} is not six hex pairs"))?;
    }
    if parts.next().is_some() {
        bail!("MAC address {text:?} is not six hex pairs");
    }
    Ok(out)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The agent's table of bound addresses.
#[derive(Default)]
pub struct Bindings {
    by_address: BTreeMap<Ipv4Addr, Binding>,
    /// The port each binding without a named port was fixed at, with the
    /// MAC it was fixed for. Not kept in the file: an agent that restarts
    /// finds the same ports from the container ends.
    fixed: HashMap<Ipv4Addr, (String, u32)>,
    /// Where the table is kept; `None` for `fan-xdp run --once`.
    file: Option<std::path::PathBuf>,
}

impl Bindings {
    /// The table the previous agent of this namespace kept, if any.
    pub fn load(run: &RunDir) -> Result<Self> {
        let file = run.path.join("bindings.json");
        let by_address = match fs::read(&file) {
            Ok(bytes) => {
                let list: Vec<Binding> = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", file.display()))?;
                list.into_iter().map(|b| (b.address, b)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Self {
            by_address,
            fixed: HashMap::new(),
            file: Some(file),
        })
    }

    /// Drops every binding, and the file that kept them.
    pub fn forget(&mut self) -> Result<()> {
        self.by_address.clear();
        self.fixed.clear();
        match &self.file {
            Some(file) => match fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", file.display()))
                }
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    fn save(&self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let list: Vec<&Binding> = self.by_address.values().collect();
        write_private_atomically(file, &serde_json::to_vec(&list)?)
    }

    /// Binds `binding.address`, or refuses if another live endpoint holds it
    /// (`slices` says which ports are live). Binding an address again for
    /// the same MAC updates it.
    pub fn bind(&mut self, binding: Binding, slices: &Slices) -> Result<()> {
        if binding.origin == Origin::Learned {
            bail!(
                "a binding's origin is cni, dhcp or static: learned entries come from the bridge"
            );
        }
        let mac = binding.mac_bytes()?;
        if !slices.in_slice(binding.address) {
            bail!("{} is in no slice of this host", binding.address);
        }
        if let Some(port) = &binding.port
            && !slices.ports.iter().any(|(_, name)| name == port)
        {
            bail!("{port} is not a port of a slice bridge");
        }
        if let Some(held) = self.by_address.get(&binding.address)
            && held.mac_bytes().ok() != Some(mac)
            && ownership::port_of(held, self.fixed_port(held), slices)
                .is_some_and(|port| slices.deliverable.contains(&port))
        {
            bail!(
                "{} is already bound to {} ({} binding for {})",
                binding.address,
                held.port.as_deref().unwrap_or(&held.mac),
                held.origin.name(),
                if held.owner.is_empty() {
                    "an unnamed owner"
                } else {
                    &held.owner
                }
            );
        }
        self.by_address.insert(binding.address, binding);
        self.save()
    }

    /// Removes `address`'s binding if `origin` made it; idempotent.
    pub fn unbind(&mut self, address: Ipv4Addr, origin: Origin) -> Result<bool> {
        if self
            .by_address
            .get(&address)
            .is_some_and(|b| b.origin == origin)
        {
            self.by_address.remove(&address);
            self.save()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Makes the bindings of `origin` exactly `wanted` (the DHCP server's
    /// current leases, say), leaving other origins' alone. Returns whether
    /// anything changed.
    pub fn replace_origin(&mut self, origin: Origin, wanted: Vec<Binding>) -> Result<bool> {
        let before = self.by_address.clone();
        self.by_address.retain(|_, b| b.origin != origin);
        for binding in wanted {
            // Another origin's binding of the same address stands.
            self.by_address.entry(binding.address).or_insert(binding);
        }
        let changed = before != self.by_address;
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    pub fn list(&self) -> impl Iterator<Item = &Binding> {
        self.by_address.values()
    }

    /// Whether a binding holds `address`.
    pub fn holds(&self, address: Ipv4Addr) -> bool {
        self.by_address.contains_key(&address)
    }

    fn fixed_port(&self, binding: &Binding) -> Option<u32> {
        self.fixed
            .get(&binding.address)
            .filter(|(mac, _)| *mac == binding.mac)
            .map(|(_, port)| *port)
    }

    /// Each binding's port now, in the order of [`Bindings::list`]; a
    /// binding without a named port that found one is fixed at it.
    pub fn fix_ports(&mut self, slices: &Slices) -> Vec<Option<u32>> {
        let ports: Vec<Option<u32>> = self
            .by_address
            .values()
            .map(|b| ownership::port_of(b, self.fixed_port(b), slices))
            .collect();
        let mut fixed = HashMap::new();
        for (binding, port) in self.by_address.values().zip(&ports) {
            if let (None, Some(port)) = (&binding.port, port) {
                if self.fixed_port(binding) != Some(*port) {
                    log::info!(
                        "{}: {} binding fixed at port {port}",
                        binding.address,
                        binding.origin.name()
                    );
                }
                fixed.insert(binding.address, (binding.mac.clone(), *port));
            }
        }
        self.fixed = fixed;
        ports
    }

    /// How many bindings each origin has, for the status.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for binding in self.by_address.values() {
            *counts.entry(binding.origin.name().to_string()).or_insert(0) += 1;
        }
        counts
    }
}

/// How long a client waits for the agent to act on a binding.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the agent to bind `binding`; returns once the endpoint map holds it
/// (or, when its port cannot deliver yet, once the agent has recorded it).
pub fn bind(run: &RunDir, binding: &Binding) -> Result<()> {
    super::send(
        run,
        &serde_json::json!({ "op": "bind", "binding": binding }),
        BIND_TIMEOUT,
    )
    .map(drop)
}

/// Asks the agent to drop `address`'s binding of `origin` (success if it had none).
pub fn unbind(run: &RunDir, address: Ipv4Addr, origin: Origin) -> Result<()> {
    let request = serde_json::json!({ "op": "unbind", "address": address, "origin": origin });
    super::send(run, &request, BIND_TIMEOUT).map(drop)
}

/// The agent's bindings (not the learned entries).
pub fn list(run: &RunDir) -> Result<Vec<Binding>> {
    let answer = super::send(run, &serde_json::json!({ "op": "bindings" }), BIND_TIMEOUT)?;
    serde_json::from_value(answer["bindings"].clone()).context("reading the agent's bindings")
}

#[cfg(test)]
mod tests;
