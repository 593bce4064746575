//! Podman 4.3 with its CNI backend, one per simulated host, run inside the
//! host's network namespace (`nsenter --net`, which keeps the cgroup mounts
//! that `ip netns exec` would hide): its storage, run and temporary
//! directories, its settings (`CONTAINERS_CONF`) and its network
//! configurations are private to the test. Podman runs the CNI plugins in
//! its own network namespace, so they find the host's slice bridge.
//! Containers run from a busybox root filesystem directory (`--rootfs`), so
//! no image store is needed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::netns::{Netns, run};

/// The settings: the CNI backend, the test's plugin and network directories,
/// cgroupfs and a file event log (no systemd here), runc (crun refuses this
/// machine's hybrid cgroups), and open-file and process limits within what
/// this root may set (it cannot raise rlimits).
fn containers_conf(bin: &Path, networks: &Path) -> String {
    format!(
        "[containers]\n\
         default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n\
         runtime = \"runc\"\n\
         [network]\n\
         network_backend = \"cni\"\n\
         cni_plugin_dirs = [\"{}\"]\n\
         network_config_dir = \"{}\"\n",
        bin.display(),
        networks.display()
    )
}

/// One host's Podman; every container it made is removed when dropped.
pub struct Podman<'a> {
    host: &'a Netns,
    dir: PathBuf,
}

impl<'a> Podman<'a> {
    /// A Podman for `host` whose CNI plugins are in `bin` and whose one
    /// network is `conflist` (as `fan.conflist`).
    pub fn new(host: &'a Netns, bin: &Path, conflist: &[u8]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fan-podman-{}", host.name()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "root",
            "runroot",
            "tmp",
            "networks",
            "rootfs/bin",
            "rootfs/etc",
            "rootfs/tmp",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(dir.join("networks/fan.conflist"), conflist)?;
        std::fs::write(
            dir.join("containers.conf"),
            containers_conf(bin, &dir.join("networks")),
        )?;
        busybox_rootfs(&dir.join("rootfs"))?;
        Ok(Self { host, dir })
    }

    /// The network configuration this Podman reads.
    pub fn conflist(&self) -> PathBuf {
        self.dir.join("networks/fan.conflist")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host.name()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            // The cleanup Podman leaves to conmon does not get it: the plugin
            // must find its state where every invocation finds it.
            .env_remove("FAN_XDP_STATE_DIR");
        cmd
    }

    /// `podman ARGS`, failing with its output unless it succeeds.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run(&mut self.command(args)).map(|out| out.trim().to_string())
    }

    /// Starts container `name` on the fan, running `sleep` (bounded).
    pub fn start(&self, name: &str) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        self.run(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "fan",
            "--rootfs",
            rootfs.to_str().context("rootfs path")?,
            "sleep",
            "600",
        ])
        .map(drop)
    }

    /// The container's address on the fan, as Podman reports it.
    pub fn address(&self, name: &str) -> Result<std::net::Ipv4Addr> {
        let text = self.run(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.fan.IPAddress}}",
            name,
        ])?;
        text.parse()
            .with_context(|| format!("podman inspect gave {text:?}"))
    }

    /// `podman exec NAME ARGS`.
    pub fn exec(&self, name: &str, args: &[&str]) -> Result<String> {
        self.run(&[&["exec", name][..], args].concat())
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "-a", "-f", "-t", "0"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A root filesystem of Debian's static busybox with a link per applet
/// (not for `busybox` itself, which would replace the binary by a link to itself).
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    let busybox = dir.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox).context("copying /bin/busybox (busybox-static)")?;
    let applets = run(Command::new(&busybox).arg("--list"))?;
    for applet in applets.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    Ok(())
}
