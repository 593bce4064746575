//! Debian's LXC 5.0 on a simulated host: containers from a hand-written
//! config (no template package) whose veth is plugged into the slice
//! bridge, under a container directory of the test's own (`lxc-start -P`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use super::{Scratch, busybox_rootfs, in_host_with_sysfs, remove_cgroups, stdout_of};
use crate::{netns::Netns, topology::Host};

pub const LXC_START: &str = "/usr/bin/lxc-start";

/// LXC on one host; its containers are stopped and their directories and
/// cgroups removed when dropped.
pub struct LxcHost {
    ns: String,
    /// The parent of every cgroup its containers and monitors get.
    cgroup: String,
    names: Vec<String>,
    dir: Scratch,
}

pub struct LxcContainer {
    pub name: String,
    /// The container's network namespace, named for the traffic helpers.
    pub ns: Netns,
}

/// The container config the tests (and docs/containers.md) use: a busybox
/// root, its veth on `bridge` with the fan's MTU, cgroups under `cgroup`.
pub fn config(name: &str, rootfs: &str, bridge: &str, mtu: u32, cgroup: &str) -> String {
    format!(
        "lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.init.cmd = /init
lxc.autodev = 1
lxc.mount.auto = proc:mixed sys:ro cgroup:mixed
lxc.console.path = none
lxc.tty.max = 0
lxc.net.0.type = veth
lxc.net.0.link = {bridge}
lxc.net.0.flags = up
lxc.net.0.mtu = {mtu}
lxc.cgroup.dir.container = {cgroup}/{name}
lxc.cgroup.dir.monitor = {cgroup}/{name}.monitor
lxc.cgroup.dir.monitor.pivot = {cgroup}/pivot
"
    )
}

impl LxcHost {
    pub fn new(host: &Host, label: &str) -> Result<Self> {
        let dir = Scratch::new(&format!("lxc-{label}"))?;
        std::fs::create_dir(dir.join("aside"))?;
        Ok(Self {
            ns: host.ns.name().to_string(),
            cgroup: format!("fxt{}-lxc-{label}", std::process::id()),
            names: Vec::new(),
            dir,
        })
    }

    /// An LXC tool inside the host's namespace, with its `/sys` (LXC looks
    /// the bridge up there) and this host's container directory.
    fn tool(&self, program: &str, name: &str) -> Command {
        let mut cmd = in_host_with_sysfs(&self.ns, &self.dir.join("aside"), program);
        cmd.arg("-P")
            .arg(self.dir.join("containers"))
            .args(["-n", name]);
        cmd
    }

    fn run(&self, program: &str, name: &str, args: &[&str]) -> Result<String> {
        let out = self
            .tool(program, name)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        stdout_of(out, &format!("{program} -n {name} {}", args.join(" "))).with_context(|| {
            format!(
                "the container's log: {}",
                std::fs::read_to_string(self.log(name)).unwrap_or_default()
            )
        })
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(&format!("{name}.log"))
    }

    /// Starts container `name` with its veth on `bridge`; its first process
    /// asks for an address by DHCP.
    pub fn start(&mut self, name: &str, bridge: &str, mtu: u32) -> Result<LxcContainer> {
        let home = self.dir.join("containers").join(name);
        let rootfs = home.join("rootfs");
        busybox_rootfs(&rootfs, true)?;
        let rootfs_text = rootfs.to_str().context("rootfs path")?;
        std::fs::write(
            home.join("config"),
            config(name, rootfs_text, bridge, mtu, &self.cgroup),
        )?;
        self.names.push(name.to_string());
        let log = self.log(name);
        let log = log.to_str().context("log path")?;
        self.run(LXC_START, name, &["-o", log, "-l", "INFO"])?;
        let pid: u32 = self
            .run("lxc-info", name, &["-pH"])?
            .parse()
            .context("the container's pid")?;
        Ok(LxcContainer {
            name: name.to_string(),
            ns: Netns::attach(name, pid)?,
        })
    }
}

impl Drop for LxcHost {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.tool("lxc-stop", name).arg("-k").output();
        }
        remove_cgroups(&self.cgroup);
    }
}
