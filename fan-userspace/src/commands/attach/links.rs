//! The programs' step of an attach: decapsulation on the underlay,
//! encapsulation on the bridge and the host device (IP-in-IP) or the
//! overlay port (VXLAN), each through a BPF link
//! (a clsact filter before 6.6) that is kept, upgraded in place or
//! replaced when defunct.

use super::steps::{Attach, Target};
use super::*;

impl Attach<'_> {
    /// Decapsulation on the underlay, encapsulation on the bridge and the
    /// host device. Existing links are kept or upgraded in place.
    pub(super) async fn programs(&mut self) -> Result<()> {
        let plan = self.plan;
        let same_version = self.dataplane.use_pinned_programs(&plan.dir)?;
        let (mode, reason) = decap_choice(plan);
        let (program, hook, pin) = if mode == DecapMode::Xdp {
            (DECAP_XDP, Hook::Xdp, "decap-xdp")
        } else {
            (DECAP_TC, Hook::TcIngress, "decap-tc")
        };
        let decap_pin = plan.dir.link(&plan.iface.name, pin);
        let underlay = Target {
            device: &plan.iface.name,
            clsact: Some(owned::CLSACT_UNDERLAY),
        };
        let decap = match self
            .attach_program(program, &underlay, hook, &decap_pin)
            .await
        {
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
                    .attach_program(DECAP_TC, &underlay, Hook::TcIngress, &pin)
                    .await?;
                (DecapMode::Tc, ModeReason::AutoNoNativeXdp)
            }
            Err(e) => return Err(e),
        };
        self.decap = Some(decap);
        let bridge = Target {
            device: &plan.bridge,
            clsact: Some(owned::CLSACT_BRIDGE),
        };
        let bridge_pin = plan.dir.link(&plan.bridge, "encap");
        self.changed |= self
            .attach_program(ENCAP_FORWARD, &bridge, Hook::TcIngress, &bridge_pin)
            .await?;
        // fan-host and the overlay port are fan-xdp's: their qdiscs go with them.
        match &self.overlay_port {
            None => {
                let host = Target {
                    device: HOST_DEVICE,
                    clsact: None,
                };
                let host_pin = plan.dir.link(HOST_DEVICE, "encap");
                self.changed |= self
                    .attach_program(ENCAP_OUTPUT, &host, Hook::TcEgress, &host_pin)
                    .await?;
            }
            Some(inner) => {
                let name = inner.name.clone();
                let port = Target {
                    device: &name,
                    clsact: None,
                };
                let pin = plan.dir.link(&name, VXLAN_OUT_PIN);
                self.changed |= self
                    .attach_program(VXLAN_OUT, &port, Hook::TcIngress, &pin)
                    .await?;
            }
        }
        // The pinned programs are the ones the links run: a new version (or a
        // first attach) moved every link to this load's programs, so they
        // replace the pins, all together; otherwise the links run the pins'.
        if !same_version {
            self.dataplane.pin_programs(&plan.dir)?;
        }
        Ok(())
    }

    /// Attaches one program (or keeps/upgrades its pinned link) and records the undo.
    async fn attach_program(
        &mut self,
        program: &str,
        target: &Target<'_>,
        hook: Hook,
        pin: &std::path::Path,
    ) -> Result<bool> {
        let index = self.net.index_of(target.device).await?;
        retire_if_defunct(self.net, pin, target.device, index, hook).await?;
        let change = if hook != Hook::Xdp && !tcx_supported() {
            if let Some(bit) = target.clsact {
                self.claim_clsact(bit, index).await?;
            }
            let running = self.filter_running(pin, index, hook).await?;
            self.dataplane
                .ensure_clsact(program, target.device, hook, pin, running)?
        } else {
            self.dataplane
                .ensure_link(program, target.device, hook, pin)?
        };
        if change == LinkChange::Created {
            self.undo.push(Undo::Pin(
                pin.to_path_buf(),
                target.device.to_string(),
                hook,
            ));
        }
        Ok(change.changed())
    }

    /// The clsact filter on device `index` that runs the program pinned at
    /// `pin`, if both are there: an upgrade replaces its program in place.
    async fn filter_running(
        &self,
        pin: &std::path::Path,
        index: u32,
        hook: Hook,
    ) -> Result<Option<TcBpfFilter>> {
        let Some(program) = pinned_program_id(pin) else {
            return Ok(None);
        };
        let filters = self
            .net
            .tc_bpf_filters(index, hook == Hook::TcEgress)
            .await?;
        Ok(filters.into_iter().find(|f| f.program == program))
    }

    /// Before attaching a TC filter without TCX: if the device has no clsact
    /// qdisc yet, the filter's attach adds one, so claim it in the record
    /// first (detach removes it then) and undo it on rollback.
    async fn claim_clsact(&mut self, bit: u8, index: u32) -> Result<()> {
        if !self.net.has_clsact(index).await? {
            self.claim(bit)?;
            self.undo.push(Undo::Clsact(index));
        }
        Ok(())
    }
}

/// Removes the decapsulation of the mode not chosen from the underlay: a
/// re-attach with another `--mode` would otherwise leave both attached.
pub(super) fn retire_other_decap(plan: &Plan, mode: DecapMode) -> Result<bool> {
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

/// Removes the pin at `pin` if what it attached is not on `device` (ifindex
/// `now`) as it is now: the device was deleted since, and perhaps re-created
/// under its name (netplan, a driver reload), taking the program with it.
/// Trusting such a pin would report success and attach nothing.
async fn retire_if_defunct(
    net: &Net,
    pin: &std::path::Path,
    device: &str,
    now: u32,
    hook: Hook,
) -> Result<()> {
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
