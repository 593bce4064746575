//! The step table: the steps of an attach in their order, named as
//! `FAN_XDP_INJECT` names them, and the tests' hook into each.

use super::*;

/// Test hook: `FAN_XDP_INJECT=kill:<step>` SIGKILLs attach right after that
/// step, `fail:<step>` makes it fail there (to exercise the rollback),
/// `pause:<step>` holds it there for two seconds (to race another command).
/// Honoured only in builds with the `fault-injection` feature.
pub(super) fn checkpoint(step: &str) -> Result<()> {
    injected(std::env::var("FAN_XDP_INJECT").ok().as_deref(), step)
}

pub(super) fn injected(inject: Option<&str>, step: &str) -> Result<()> {
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
pub(super) enum Step {
    /// The state directory, the pinned maps and fan-xdp's record of the fan (incomplete).
    Record,
    /// Forwarding, and loose reverse-path filtering on the underlay.
    Sysctl,
    /// The slice bridge with the gateway address.
    Bridge,
    /// IP-in-IP: the NOARP device for the host's own overlay traffic.
    HostDevice,
    /// VXLAN: the slice bridge's overlay port (a veth pair).
    OverlayPort,
    /// IP-in-IP: the overlay route.
    Route,
    /// Masquerading slice traffic leaving the overlays.
    Nat,
    /// Decapsulation on the underlay, encapsulation on the bridge and the
    /// host device (IP-in-IP) or the overlay port (VXLAN).
    Programs,
    /// The fan entry the programs look up.
    Config,
}

impl Step {
    pub(super) const ORDER: [Step; 9] = [
        Step::Record,
        Step::Sysctl,
        Step::Bridge,
        Step::HostDevice,
        Step::OverlayPort,
        Step::Route,
        Step::Nat,
        Step::Programs,
        Step::Config,
    ];

    pub(super) const fn name(self) -> &'static str {
        match self {
            Step::Record => "record",
            Step::Sysctl => "sysctl",
            Step::Bridge => "bridge",
            Step::HostDevice => "host-device",
            Step::OverlayPort => "overlay-port",
            Step::Route => "route",
            Step::Nat => "nat",
            Step::Programs => "programs",
            Step::Config => "config",
        }
    }
}

/// The attach steps, in order. Names are what `FAN_XDP_INJECT` refers to.
pub const STEPS: [&str; 9] = {
    let mut names = [""; 9];
    let mut i = 0;
    while i < names.len() {
        names[i] = Step::ORDER[i].name();
        i += 1;
    }
    names
};
