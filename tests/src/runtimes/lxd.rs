//! Debian's LXD 5.0 (no snap) on a simulated host: one daemon per host,
//! inside its namespace, with its own `LXD_DIR`, a `dir` storage pool, a
//! busybox image imported offline, and a default profile whose `eth0` is a
//! bridged nic on the slice bridge.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use super::{Scratch, busybox_rootfs, cgroups, in_host_with_sysfs, stdout_of, terminate};
use crate::{netns::Netns, topology::Host};

pub const LXD: &str = "/usr/bin/lxd";
/// LXD's client (Debian's lxd-client), not LXC's tools.
pub const LXC: &str = "/usr/bin/lxc";
pub const IMAGE: &str = "fxt-busybox";

/// What LXD leaves outside its directory: the cgroup its monitors pivot to
/// when a container stops, in every hierarchy.
pub fn leftovers() -> Vec<String> {
    cgroups("lxc.pivot")
}

/// The preseed (`lxd init --preseed`) the tests use: a `dir` pool at
/// `pool` (outside LXD_DIR, which LXD refuses) and the default profile's
/// root disk on it. Privileged containers: root here has no subordinate
/// ids to map.
pub fn preseed(pool: &str) -> String {
    format!(
        "storage_pools:
- name: default
  driver: dir
  config:
    source: {pool}
profiles:
- name: default
  config:
    security.privileged: \"true\"
  devices:
    root:
      type: disk
      path: /
      pool: default
"
    )
}

/// An LXD daemon serving one host; its containers are deleted and it is
/// shut down when dropped.
pub struct Lxd {
    child: Child,
    names: Vec<String>,
    dir: Scratch,
}

pub struct LxdContainer {
    pub name: String,
    /// The container's network namespace, named for the traffic helpers.
    pub ns: Netns,
}

impl Lxd {
    /// Starts LXD in `host`'s namespace (no route out: it would try to reach
    /// an image server), initialised with [`preseed`], the default
    /// profile's `eth0` a bridged nic on `bridge`.
    pub fn start(host: &Host, label: &str, bridge: &str, mtu: u32) -> Result<Self> {
        let dir = Scratch::new(&format!("lxd-{label}"))?;
        for sub in ["lxd", "pool", "aside"] {
            std::fs::create_dir(dir.join(sub))?;
        }
        let log = dir.join("lxd.log");
        let child = in_host_with_sysfs(host.ns.name(), &dir.join("aside"), LXD)
            .args(["--group", "root", "--logfile"])
            .arg(&log)
            .env("LXD_DIR", dir.join("lxd"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting lxd")?;
        let lxd = Self {
            child,
            names: Vec::new(),
            dir,
        };
        let ready = Command::new(LXD)
            .args(["waitready", "--timeout", "20"])
            .env("LXD_DIR", lxd.dir.join("lxd"))
            .status()?;
        ensure!(ready.success(), "lxd not ready: {}", lxd.log());
        let pool = lxd.dir.join("pool");
        let preseed = preseed(pool.to_str().context("pool path")?);
        lxd.run_with_input(LXD, &["init", "--preseed"], &preseed)?;
        // The nic on the slice bridge, as an LXD fan network's profile
        // moves to fan-xdp (docs/containers.md).
        lxd.lxc(&[
            "profile",
            "device",
            "add",
            "default",
            "eth0",
            "nic",
            "nictype=bridged",
            &format!("parent={bridge}"),
            &format!("mtu={mtu}"),
            "name=eth0",
        ])?;
        lxd.import_busybox()?;
        Ok(lxd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lxd.log")).unwrap_or_default()
    }

    /// `lxc ARGS` against this daemon.
    pub fn lxc(&self, args: &[&str]) -> Result<String> {
        self.run_with_input(LXC, args, "")
    }

    fn run_with_input(&self, program: &str, args: &[&str], input: &str) -> Result<String> {
        use std::io::Write as _;
        let mut child = Command::new(program)
            .args(args)
            .env("LXD_DIR", self.dir.join("lxd"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        stdout_of(
            child.wait_with_output()?,
            &format!("{program} {}", args.join(" ")),
        )
    }

    /// `lxc image import META ROOTFS --alias fxt-busybox`: a busybox root
    /// whose init asks for an address by DHCP, and the `metadata.yaml` LXD
    /// needs (architecture and creation date).
    fn import_busybox(&self) -> Result<()> {
        let image = self.dir.join("image");
        busybox_rootfs(&image.join("rootfs"), true)?;
        std::fs::write(
            image.join("metadata.yaml"),
            "architecture: x86_64\ncreation_date: 1764547200\nproperties:\n  description: busybox\n",
        )?;
        let tar = |archive: &str, dir: &PathBuf, what: &str| -> Result<()> {
            let status = Command::new("tar")
                .arg("-C")
                .arg(dir)
                .args(["-czf", archive, what])
                .status()?;
            ensure!(status.success(), "tar {archive}");
            Ok(())
        };
        let meta = image.join("meta.tar.gz");
        let rootfs = image.join("rootfs.tar.gz");
        let (meta, rootfs) = (
            meta.to_str().context("path")?,
            rootfs.to_str().context("path")?,
        );
        tar(meta, &image, "metadata.yaml")?;
        tar(rootfs, &image.join("rootfs"), ".")?;
        self.lxc(&["image", "import", meta, rootfs, "--alias", IMAGE])?;
        Ok(())
    }

    /// `lxc launch fxt-busybox NAME`, on the default profile's nic.
    pub fn launch(&mut self, name: &str) -> Result<LxdContainer> {
        self.names.push(name.to_string());
        self.lxc(&["launch", IMAGE, name])?;
        let pid: u32 = self
            .lxc(&["list", name, "--format", "csv", "-c", "p"])?
            .parse()
            .context("the container's pid")?;
        Ok(LxdContainer {
            name: name.to_string(),
            ns: Netns::attach(name, pid)?,
        })
    }

    /// LXD's view of container `name`'s IPv4 address (`lxc list -c 4`).
    pub fn address(&self, name: &str) -> Result<String> {
        self.lxc(&["list", name, "--format", "csv", "-c", "4"])
    }
}

impl Drop for Lxd {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.lxc(&["delete", "--force", name]);
        }
        let _ = Command::new(LXD)
            .args(["shutdown", "--timeout", "20"])
            .env("LXD_DIR", self.dir.join("lxd"))
            .output();
        terminate(&mut self.child, Duration::from_secs(5));
    }
}
