//! Real container runtimes on a fan (Docker, LXC, LXD, from Debian's
//! packages), each daemon inside the namespace of the simulated host it
//! serves, so that nothing of theirs reaches the root namespace's networking.
//!
//! Every runtime process is entered with `nsenter --net` (which keeps the
//! host's cgroup mounts; `ip netns exec` would hide them behind a fresh
//! `/sys`) and `unshare --mount`, so the mounts a daemon makes (container
//! namespaces, storage) live in a mount namespace of its own and vanish with
//! it. [`Bed`] is the one topology: a fleet, its runtimes and what they left
//! outside their directories, torn down in that order even when a test fails.

pub mod docker;
pub mod lxc;
pub mod lxd;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use fan_common::Encap;

use crate::{
    dhcp::{Leased, StateDir, leased},
    topology::Fleet,
};

/// Whether `package`'s program `program` is here. Missing, the test skips,
/// except under CI (`CI=true`), where a skipped test is a failure.
pub fn installed(package: &str, program: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match missing(package, program, Path::new(program).exists(), ci) {
        None => true,
        Some(Missing::Fail(message)) => panic!("{message}"),
        Some(Missing::Skip(message)) => {
            eprintln!("{message}");
            false
        }
    }
}

#[derive(Debug, PartialEq)]
enum Missing {
    Fail(String),
    Skip(String),
}

/// What a runtime test does about its program: run (None), fail, or skip,
/// with a message that names the package to install.
fn missing(package: &str, program: &str, present: bool, ci: bool) -> Option<Missing> {
    if present {
        return None;
    }
    let install = format!("install Debian's {package} (`cargo xtask setup` does)");
    Some(if ci {
        Missing::Fail(format!(
            "{program} is missing: {install}; CI=true forbids skipping this test"
        ))
    } else {
        Missing::Skip(format!("skipping: {program} is missing: {install}"))
    })
}

/// Runtime tests share paths outside their own directories (dockerd's
/// `/run/containerd`, LXD's `lxc.pivot` cgroups), which a bed removes at
/// its end when they were absent at its start: they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A fleet with runtimes on it. Field order is drop order: the runtimes stop
/// (their containers first) before the paths they left are removed and the
/// namespaces go.
pub struct Bed<R> {
    pub runtimes: Vec<R>,
    /// The fans' wire format (`attach --type`).
    pub encap: Encap,
    leftovers: Leftovers,
    /// fan-xdp's `--state-dir` (DHCP leases), private to the test.
    pub state: StateDir,
    pub fleet: Fleet,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl<R> Bed<R> {
    /// `hosts` hosts attached with `fan-xdp attach eth0 --overlay
    /// 250.0.0.0/8 ATTACH`, nothing of any runtime yet. `leftovers` are paths
    /// outside their own directories that the runtime writes: those absent
    /// now are removed at the end.
    pub fn new(hosts: u8, attach: &[&str], leftovers: &[String]) -> Result<Self> {
        Self::new_typed(hosts, Encap::Ipip, attach, leftovers)
    }

    /// [`Bed::new`] with fans of wire format `encap` (`--type`), which
    /// every later [`Bed::attach`] keeps.
    pub fn new_typed(
        hosts: u8,
        encap: Encap,
        attach: &[&str],
        leftovers: &[String],
    ) -> Result<Self> {
        let guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bed = Self {
            runtimes: Vec::new(),
            encap,
            leftovers: Leftovers::absent_now(leftovers),
            state: StateDir::new()?,
            fleet: Fleet::new(hosts)?,
            _one_at_a_time: guard,
        };
        for i in 0..bed.fleet.hosts.len() {
            bed.attach(i, attach)?;
        }
        Ok(bed)
    }

    /// `fan-xdp attach eth0 --overlay 250.0.0.0/8 --type TYPE ARGS` on
    /// host `i`.
    pub fn attach(&self, i: usize, args: &[&str]) -> Result<String> {
        let attach = [
            "attach",
            "eth0",
            "--overlay",
            "250.0.0.0/8",
            "--type",
            self.encap.name(),
        ];
        self.fan_xdp(i, &[&attach[..], args].concat())
    }

    /// The fans' MTU: the hosts' 1500-byte underlay less the encapsulation's
    /// overhead (1480 IP-in-IP, 1450 VXLAN).
    pub fn fan_mtu(&self) -> u32 {
        crate::topology::UNDERLAY_MTU - self.encap.overhead()
    }

    /// `fan-xdp ARGS` on host `i`, with the bed's state directory.
    pub fn fan_xdp(&self, i: usize, args: &[&str]) -> Result<String> {
        crate::dhcp::fan_xdp(&self.fleet.hosts[i], &self.state, args)
    }
}

impl<R> Drop for Bed<R> {
    /// The runtimes stop before the fans go (a detach stops the agent and
    /// its dnsmasq), then what they left and the state directory go.
    fn drop(&mut self) {
        self.runtimes.clear();
        for i in 0..self.fleet.hosts.len() {
            let _ = self.fan_xdp(i, &["detach", "eth0"]);
        }
        self.leftovers.remove();
    }
}

/// Paths that did not exist before a runtime ran.
struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    fn absent_now(paths: &[String]) -> Self {
        Self(
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|path| !path.exists())
                .collect(),
        )
    }

    fn remove(&self) {
        for path in &self.0 {
            if path.starts_with("/sys/fs/cgroup") {
                remove_cgroup_tree(path);
            } else {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

/// The trimmed stdout of a runtime's command (`what`, for the message), or
/// an error naming it with its stderr.
pub fn stdout_of(out: std::process::Output, what: &str) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A directory of one runtime's own, removed with its contents when dropped.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// `/tmp/fxt<pid>-<label>`, made empty.
    pub fn new(label: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "{}{}-{label}",
            crate::netns::PREFIX,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes the cgroup `name` (with the groups below it, deepest first) from
/// every hierarchy: what a runtime told to use it as its parent made.
pub fn remove_cgroups(name: &str) {
    for path in cgroups(name) {
        remove_cgroup_tree(Path::new(&path));
    }
}

/// The cgroup `name` in every hierarchy (`/sys/fs/cgroup/*/NAME`).
pub fn cgroups(name: &str) -> Vec<String> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    hierarchies
        .flatten()
        .filter(|h| h.file_type().is_ok_and(|t| t.is_dir()))
        .map(|h| h.path().join(name).to_string_lossy().into_owned())
        .collect()
}

/// Removes cgroup `dir` and the groups below it. A runtime's stop command
/// returns before its last processes (LXC's monitor) have left their
/// groups, so this tries again for up to five seconds.
fn remove_cgroup_tree(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_remove_cgroup_tree(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One pass, deepest first; whether `dir` is still there.
fn try_remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                try_remove_cgroup_tree(&child.path());
            }
        }
    }
    // A cgroup directory goes with rmdir once it has no children or tasks.
    let _ = std::fs::remove_dir(dir);
    dir.exists()
}

/// `program` inside host namespace `ns` (its `ip netns` name), in a mount
/// namespace of its own.
pub fn in_host(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).args([
        "unshare",
        "--mount",
        "--propagation",
        "private",
        program,
    ]);
    cmd
}

/// [`in_host`] with a fresh `/sys` of the namespace (LXC and LXD find the
/// slice bridge there) and the host's cgroup tree moved back under it, by
/// way of `aside`, an empty directory.
pub fn in_host_with_sysfs(ns: &str, aside: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --rbind /sys/fs/cgroup \"$0\" && mount -t sysfs sysfs /sys \
             && mount --move \"$0\" /sys/fs/cgroup && exec \"$@\"",
        )
        .arg(aside)
        .arg(program);
    cmd
}

/// A root filesystem of Debian's static busybox (one link per applet) in
/// `dir`, with `/init` (also `/sbin/init`): a container's first process,
/// which with `dhcp` runs busybox's `udhcpc` and then waits.
pub fn busybox_rootfs(dir: &Path, dhcp: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for sub in ["sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        // `busybox` is in its own list: a link named so would replace the binary.
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    std::fs::write(dir.join("etc/udhcpc.script"), DHCP_SCRIPT)?;
    std::fs::write(dir.join("init"), if dhcp { INIT_DHCP } else { INIT })?;
    std::os::unix::fs::symlink("/init", dir.join("sbin/init"))?;
    for script in ["init", "etc/udhcpc.script"] {
        std::fs::set_permissions(dir.join(script), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// busybox udhcpc hands a lease to a script; this one applies the MTU
/// (option 26), the address and the router, in that order, so that a
/// default route means the whole lease is in place.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    ;;
esac
exit 0
"#;

/// Waiting, bounded: no test runs that long.
const INIT: &str = "#!/bin/sh\nexec /bin/sleep 900\n";

/// A DHCP client that keeps its lease (`-b`: on in the background once it
/// has one, or after 20 tries), asking for the MTU, then waiting.
const INIT_DHCP: &str = "#!/bin/sh\nexport PATH=/bin\n\
udhcpc -i eth0 -s /etc/udhcpc.script -O mtu -t 20 -T 1 -b\nexec sleep 900\n";

/// Waits (bounded by `limit`) until the DHCP client in container namespace
/// `ns` has applied its lease (address, MTU and default route), and returns
/// what eth0 holds then.
pub fn wait_for_lease(ns: &crate::netns::Netns, limit: Duration) -> Result<Leased> {
    let started = Instant::now();
    loop {
        let now = leased(ns);
        if now.as_ref().is_ok_and(|leased| leased.router.is_some()) {
            return now;
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{} has no complete lease within {limit:?}: {now:?}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a container may take to get its DHCP lease.
pub const LEASE_TIME: Duration = Duration::from_secs(20);

/// SIGTERM to `child` (by its pid), SIGKILL if it has not exited within
/// `grace`; reaped either way.
pub fn terminate(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    // SAFETY: signalling our own child process, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runtime_fails_under_ci_naming_its_package_and_skips_elsewhere() {
        assert_eq!(missing("lxd", "/usr/bin/lxd", true, true), None);
        assert_eq!(
            missing("lxd", "/usr/bin/lxd", false, true),
            Some(Missing::Fail(
                "/usr/bin/lxd is missing: install Debian's lxd (`cargo xtask setup` does); CI=true forbids skipping this test".into()
            ))
        );
        assert_eq!(
            missing("docker.io", "/usr/sbin/dockerd", false, false),
            Some(Missing::Skip(
                "skipping: /usr/sbin/dockerd is missing: install Debian's docker.io (`cargo xtask setup` does)".into()
            ))
        );
    }
}
