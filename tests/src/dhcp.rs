//! DHCP on a fan's slice, for the tests and the bench: container namespaces
//! with no address, busybox udhcpc with Debian's script (which applies the
//! router and the MTU), and a private state directory for the leases.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    netns::Netns,
    topology::{Host, fan_xdp_binary, stdout_of_success},
};

/// Debian's udhcpc script: without it busybox's udhcpc sets no address.
pub const UDHCPC_SCRIPT: &str = "/etc/udhcpc/default.script";

/// Fails with the package to install when the DHCP tools are missing (and
/// so fails under `CI=true` rather than skipping).
pub fn require_tools() -> Result<()> {
    ensure!(
        Path::new(UDHCPC_SCRIPT).exists(),
        "{UDHCPC_SCRIPT} is missing: install udhcpc (cargo xtask setup does)"
    );
    ensure!(
        Path::new("/usr/sbin/dnsmasq").exists(),
        "/usr/sbin/dnsmasq is missing: install dnsmasq-base (cargo xtask setup does)"
    );
    Ok(())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private `--state-dir` (where fan-xdp keeps DHCP leases), removed on
/// drop with whatever a test put there (a foreign server's leases).
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn new() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fan-tests-state-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        // Private, as fan-xdp wants its state directory.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn env(&self) -> (&'static str, &Path) {
        ("FAN_XDP_STATE_DIR", &self.0)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `fan-xdp ARGS` in `host`'s namespace with leases under `state`; its
/// stdout, or an error with its stderr.
pub fn fan_xdp(host: &Host, state: &StateDir, args: &[&str]) -> Result<String> {
    stdout_of_success(args, fan_xdp_output(host, state, args)?)
}

/// As [`fan_xdp`], whatever the exit status.
pub fn fan_xdp_output(
    host: &Host,
    state: &StateDir,
    args: &[&str],
) -> Result<std::process::Output> {
    let (key, value) = state.env();
    host.ns
        .command(fan_xdp_binary().to_str().context("binary path")?)
        .args(args)
        .env(key, value)
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("running fan-xdp")
}

/// A container namespace `label` whose `eth0` is the peer of `port` on
/// `bridge` of `host_ns`, up and without an address. The link keeps the
/// veth default MTU (1500): only the lease's option 26 brings it down to
/// the fan's.
pub fn plug_dhcp_container(
    host_ns: &Netns,
    bridge: &str,
    port: &str,
    label: &str,
) -> Result<Netns> {
    let ns = Netns::new(label)?;
    host_ns.add_veth_to(port, &ns)?;
    host_ns.ip(&["link", "set", port, "master", bridge, "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    Ok(ns)
}

/// udhcpc on `ns`'s eth0 until it holds a lease, then exits (`-q`): at most
/// 10 discovers a second apart. The script writes /etc/resolv.conf, which
/// in a plain network namespace is the host's: the client writes into a
/// bind mount of /dev/null instead (`ip netns exec` gives it a private
/// mount namespace, so the mount goes with it).
pub fn start_client(ns: &Netns) -> Result<Child> {
    Command::new("timeout")
        .args(["30", "ip", "netns", "exec", ns.name(), "sh", "-c"])
        .arg(format!(
            "mount --bind /dev/null /etc/resolv.conf && exec udhcpc -i eth0 -f -q -n -t 10 -T 1 -s {UDHCPC_SCRIPT}"
        ))
        .stdin(Stdio::null())
        // Only stderr is kept (for a failure's message): a bench starts
        // hundreds of clients at once, each pipe is a descriptor.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting udhcpc")
}

/// What a container got from DHCP, read back from its interface and routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// Waits for a client started by [`start_client`] and reads what it set.
pub fn finish_client(ns: &Netns, client: Child) -> Result<Leased> {
    let out = client.wait_with_output().context("waiting for udhcpc")?;
    if !out.status.success() {
        bail!(
            "udhcpc in {} got no lease ({}): {}{}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    leased(ns)
}

/// A lease for `ns` (udhcpc run to completion).
pub fn lease(ns: &Netns) -> Result<Leased> {
    finish_client(ns, start_client(ns)?)
}

/// The IPv4 address, router and MTU `ns`'s eth0 has now.
pub fn leased(ns: &Netns) -> Result<Leased> {
    let addrs: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-4", "addr", "show", "dev", "eth0"])?)?;
    let link = &addrs[0];
    let info = &link["addr_info"][0];
    let addr = info["local"]
        .as_str()
        .with_context(|| format!("no address on eth0 of {}: {addrs}", ns.name()))?
        .parse()?;
    let routes: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "route", "show", "default"])?)?;
    Ok(Leased {
        addr,
        prefix: info["prefixlen"].as_u64().context("prefix length")? as u8,
        router: routes[0]["gateway"].as_str().and_then(|g| g.parse().ok()),
        mtu: link["mtu"].as_u64().context("MTU")? as u32,
    })
}

/// The pids of processes named `comm` in `ns` (from `ip netns pids`).
pub fn pids_named(ns: &Netns, comm: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
                // A zombie (reparented to a PID 1 that does not reap) is gone.
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        })
        .collect()
}
