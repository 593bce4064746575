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
    process::Command,
    sync::{Mutex, MutexGuard},
};

use anyhow::{Context as _, Result};

use crate::{netns::Netns, topology::Fleet};

/// Whether `package`'s program `program` is here. Missing, the test skips,
/// except under CI (`CI=true`), where a skipped test is a failure.
pub fn installed(package: &str, program: &str) -> bool {
    if Path::new(program).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{program} is missing: install Debian's {package} (`cargo xtask setup` does); CI=true forbids skipping this test"
        );
    }
    eprintln!("skipping: {program} is missing (Debian's {package}; `cargo xtask setup` installs it)");
    false
}

/// Runtime tests share files outside their own directories (Docker's
/// `/run/containerd`, LXD's socket names), so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A fleet with runtimes on it. Field order is drop order: the runtimes stop
/// (their containers first) before the paths they left are removed and the
/// namespaces go.
pub struct Bed<R> {
    pub runtimes: Vec<R>,
    leftovers: Leftovers,
    pub fleet: Fleet,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl<R> Bed<R> {
    /// `hosts` hosts attached with `fan-xdp attach eth0 --overlay
    /// 250.0.0.0/8 ATTACH`, nothing of any runtime yet. `leftovers` are paths
    /// outside their own directories that the runtime writes: those absent
    /// now are removed at the end.
    pub fn new(hosts: u8, attach: &[&str], leftovers: &[&str]) -> Result<Self> {
        let guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let leftovers = Leftovers::absent_now(leftovers);
        let fleet = Fleet::new(hosts)?;
        fleet.attach_all(attach)?;
        Ok(Self {
            runtimes: Vec::new(),
            leftovers,
            fleet,
            _one_at_a_time: guard,
        })
    }
}

impl<R> Drop for Bed<R> {
    fn drop(&mut self) {
        self.runtimes.clear();
        self.leftovers.remove();
    }
}

/// Paths that did not exist before a runtime ran.
struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    fn absent_now(paths: &[&str]) -> Self {
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
            let _ = std::fs::remove_dir_all(path);
        }
    }
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
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        remove_cgroup_tree(&hierarchy.path().join(name));
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&child.path());
            }
        }
    }
    // A cgroup directory goes with rmdir once it has no children or tasks.
    let _ = std::fs::remove_dir(dir);
}

/// `program` inside host namespace `ns`, in a mount namespace of its own.
pub fn in_host(ns: &Netns, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .args(["unshare", "--mount", "--propagation", "private", program]);
    cmd
}

/// [`in_host`] with a fresh `/sys` of the namespace (LXC and LXD find the
/// slice bridge there) and the host's cgroup tree moved back under it, by
/// way of `aside`, an empty directory.
pub fn in_host_with_sysfs(ns: &Netns, aside: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
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
/// `dir`, with `/init`: the script a container starts with, which runs
/// `udhcpc` when told to (its first argument `dhcp`) and then waits.
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
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
    std::fs::write(dir.join("init"), INIT)?;
    std::os::unix::fs::symlink("/init", dir.join("sbin/init"))?;
    for script in ["init", "etc/udhcpc.script"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join(script), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// busybox udhcpc hands a lease to a script; this one applies the address,
/// the MTU (option 26) and the router, and records the lease in /run/lease.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    echo "$ip $mask $mtu $router" > /run/lease
    ;;
esac
exit 0
"#;

/// A container's first process: a DHCP client that keeps its lease when
/// asked, then nothing but waiting, bounded (a test never runs that long).
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
if [ "$1" = dhcp ] || [ -e /etc/fan-dhcp ]; then
    udhcpc -i eth0 -s /etc/udhcpc.script -O mtu -t 20 -T 1 -b
fi
exec sleep 900
"#;
