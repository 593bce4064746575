//! The runtime packages' services, kept from starting at boot as
//! `apt::NoServiceStarts` keeps them from starting while apt runs.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::setup::run_cmd;

/// Where Debian's packages put their systemd units.
pub fn unit_dir() -> &'static Path {
    Path::new("/lib/systemd/system")
}

/// The units the runtime packages (and what they pull in) enable for boot.
/// Started, dockerd and lxc-net would configure the root namespace's
/// networking (a bridge, iptables rules, a DHCP server); the tests run their
/// own daemons inside namespaces and need none of them.
const BOOT_UNITS: &[&str] = &[
    "docker.service",
    "docker.socket",
    "containerd.service",
    "lxc.service",
    "lxc-net.service",
    "lxc-monitord.service",
    "lxcfs.service",
    "lxd.service",
    "lxd.socket",
    "lxd-containers.service",
];

/// Those of [`BOOT_UNITS`] whose unit file is in `dir`.
pub fn present_units(dir: &Path) -> Vec<&'static str> {
    BOOT_UNITS
        .iter()
        .copied()
        .filter(|unit| dir.join(unit).exists())
        .collect()
}

/// The policy-rc.d kept the services from starting while apt ran; this
/// keeps the units this install brought from starting at the next boot.
/// Units that were there before are the user's and stay as they are.
pub fn disable_at_boot(units: &[&str]) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    // systemctl edits the unit links (and the SysV links, through
    // systemd-sysv-install) without a running systemd.
    if Command::new("systemctl").arg("--version").output().is_err() {
        println!(
            "setup: no systemctl here: {} may start at boot through their init scripts (`update-rc.d NAME disable`)",
            units.join(", ")
        );
        return Ok(());
    }
    run_cmd(Command::new("systemctl").arg("disable").args(units))
        .context("disabling the runtime services at boot")?;
    println!(
        "setup: disabled at boot: {} (they would configure the root namespace's networking; `systemctl enable` them if you want them)",
        units.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_units_present_are_found() {
        let dir = std::env::temp_dir().join(format!("xtask-units-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(present_units(&dir).is_empty());
        for unit in ["docker.service", "lxc-net.service", "ssh.service"] {
            std::fs::write(dir.join(unit), "").unwrap();
        }
        assert_eq!(present_units(&dir), ["docker.service", "lxc-net.service"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
