//! Which dnsmasq runs, with which command line, writing which files.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use fan_common::plan::AddressPlan;
use ipnetwork::Ipv4Network;

use crate::state::{record::Fan, rundir::RunDir};

/// Where leases are kept unless `--state-dir` says otherwise.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/fan-xdp";
/// The package that has dnsmasq, named in every error about it.
pub const PACKAGE: &str = "dnsmasq-base";
/// How long a lease lasts; clients renew at half of it.
const LEASE_TIME: &str = "1h";

/// dnsmasq on this host: `FAN_XDP_DNSMASQ` if set, else the first on PATH
/// (or in /usr/sbin, where Debian puts it). A clear error naming the package.
pub fn find_dnsmasq() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FAN_XDP_DNSMASQ") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "--dhcp needs dnsmasq: FAN_XDP_DNSMASQ names {}, which is not an executable",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("dnsmasq"))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow!("--dhcp needs dnsmasq, which is not installed: apt-get install {PACKAGE}")
        })
}

pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The files of one fan's server.
pub struct Files {
    pub pid: PathBuf,
    pub leases: PathBuf,
}

impl Files {
    /// The pid file in the run directory, the leases under the state
    /// directory keyed by overlay and slice (a moved slice starts afresh).
    pub fn of(run: &RunDir, state_dir: Option<&Path>, fan: &Fan) -> Self {
        let root = state_dir.unwrap_or(Path::new(SYSTEM_STATE_DIR));
        let key = |net: Ipv4Network| format!("{}-{}", net.network(), net.prefix());
        Self {
            pid: run.path.join(format!("dnsmasq-{}.pid", key(fan.overlay))),
            leases: root
                .join(format!("{}_{}", key(fan.overlay), key(fan.slice)))
                .join("dnsmasq.leases"),
        }
    }
}

/// dnsmasq's whole command line for `fan`'s slice.
pub fn command_line(dnsmasq: &Path, fan: &Fan, plan: &AddressPlan, files: &Files) -> Vec<String> {
    let range = plan.dhcp;
    vec![
        dnsmasq.display().to_string(),
        "--conf-file=/dev/null".into(),
        "--keep-in-foreground".into(),
        // Bound to the bridge alone (SO_BINDTODEVICE: one server per bridge
        // in a namespace); dynamic, which dnsmasq asks for, rather than
        // warning on every interface change.
        "--bind-dynamic".into(),
        format!("--interface={}", fan.bridge),
        "--except-interface=lo".into(),
        "--port=0".into(),
        format!(
            "--dhcp-range={},{},{},{LEASE_TIME}",
            range.first,
            range.last,
            fan.slice.mask()
        ),
        format!("--dhcp-option=option:router,{}", plan.gateway),
        format!("--dhcp-option-force=26,{}", fan.mtu),
        "--no-ping".into(),
        format!("--dhcp-lease-max={}", range.len()),
        "--dhcp-authoritative".into(),
        format!("--dhcp-leasefile={}", files.leases.display()),
        format!("--pid-file={}", files.pid.display()),
        "--log-facility=-".into(),
        "--quiet-dhcp".into(),
    ]
}
