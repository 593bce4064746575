//! Debian's Docker 20.10 on a simulated host: one dockerd per host, inside
//! its namespace, with every path of its own (data root, exec root, socket,
//! pidfile, containerd namespaces, cgroup parent), and a busybox image
//! imported offline.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{Scratch, busybox_rootfs, in_host, remove_cgroups, stdout_of, terminate};
use crate::{netns::Netns, topology::Host};

/// Debian's daemon and client (a newer client may come first in PATH).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";

/// What dockerd 20.10 writes outside its own directories, whatever its
/// flags: its key, the plugin directory, the shims' sockets. The runtime
/// tests remove those that were not there before.
pub fn leftovers() -> Vec<String> {
    ["/etc/docker", "/run/docker", "/run/containerd"]
        .map(String::from)
        .to_vec()
}

/// The busybox image every test imports.
pub const IMAGE: &str = "fxt-busybox";

/// A dockerd serving one host; stopped (its containers removed first) and
/// its directories removed when dropped.
pub struct Dockerd {
    child: Child,
    /// The cgroup parent, named after this run so it can be removed.
    cgroup: String,
    dir: Scratch,
}

/// A container `docker run` started, with its network namespace named.
pub struct DockerContainer {
    pub name: String,
    pub addr: Ipv4Addr,
    /// The container's network namespace, named for the traffic helpers.
    pub ns: Netns,
}

impl Dockerd {
    /// Starts dockerd in `host`'s namespace with `options` (the fan's, from
    /// `fan-xdp show --json`) and waits until it answers.
    pub fn start(host: &Host, label: &str, options: &[String]) -> Result<Self> {
        let dir = Scratch::new(&format!("docker-{label}"))?;
        let cgroup = format!("fxt{}-docker-{label}", std::process::id());
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let child = in_host(host.ns.name(), DOCKERD)
            .args(["--data-root", &path("data")])
            .args(["--exec-root", &path("exec")])
            .args(["--pidfile", &path("dockerd.pid")])
            .args(["-H", &format!("unix://{}", path("docker.sock"))])
            .args(["--containerd-namespace", &cgroup])
            .args([
                "--containerd-plugins-namespace",
                &format!("{cgroup}-plugins"),
            ])
            .args(["--cgroup-parent", &cgroup])
            // No images to pull, one small layer: vfs needs no overlay mounts.
            .args(["--storage-driver", "vfs"])
            .args(options)
            .args(["--ip6tables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let mut dockerd = Self { child, cgroup, dir };
        dockerd.wait_ready(Duration::from_secs(20))?;
        Ok(dockerd)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.docker_output(&["info"])?.status.success() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("dockerd exited ({status}): {}", self.log());
            }
            ensure!(
                started.elapsed() < limit,
                "dockerd not ready within {limit:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of dockerd's log, for error messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The client, talking to this daemon.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()));
        cmd
    }

    pub fn docker_output(&self, args: &[&str]) -> Result<Output> {
        self.command().args(args).output().context("running docker")
    }

    /// `docker ARGS`, failing with its stderr; returns stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        stdout_of(
            self.docker_output(args)?,
            &format!("docker {}", args.join(" ")),
        )
    }

    /// Imports [`IMAGE`] from a busybox root filesystem, offline:
    /// `tar -C ROOTFS -c . | docker import -c 'ENV PATH=/bin' - fxt-busybox`.
    pub fn import_busybox(&self) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        busybox_rootfs(&rootfs, false)?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("running tar")?;
        let out = self
            .command()
            // An imported image has no PATH: without it runc finds no command.
            .args(["import", "-c", "ENV PATH=/bin", "-", IMAGE])
            .stdin(tar.stdout.context("tar's output")?)
            .output()?;
        stdout_of(out, "docker import").map(drop)
    }

    /// `docker run -d --name NAME RUN_ARGS fxt-busybox sleep 900`; the
    /// container's address and its network namespace.
    pub fn run(&self, name: &str, run_args: &[&str]) -> Result<DockerContainer> {
        let args = [
            &["run", "-d", "--name", name][..],
            run_args,
            &[IMAGE, "sleep", "900"],
        ]
        .concat();
        self.docker(&args)?;
        let addr = self.address(name)?;
        let pid: u32 = self
            .docker(&["inspect", "-f", "{{.State.Pid}}", name])?
            .parse()
            .context("the container's pid")?;
        Ok(DockerContainer {
            name: name.to_string(),
            addr,
            ns: Netns::attach(name, pid)?,
        })
    }

    /// The IPv4 address Docker gave container `name` (on any network).
    pub fn address(&self, name: &str) -> Result<Ipv4Addr> {
        let shown = self.docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        ])?;
        shown
            .split_whitespace()
            .next()
            .with_context(|| format!("container {name} has no address"))?
            .parse()
            .context("the container's address")
    }

    /// `docker exec NAME ARGS`, whatever its exit.
    pub fn exec(&self, name: &str, args: &[&str]) -> Result<Output> {
        self.docker_output(&[&["exec", name][..], args].concat())
    }

    fn stop(&mut self) {
        // Containers first: dockerd's exit would leave their processes
        // behind in namespaces of their own.
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.docker_output(&[&["rm", "-f"][..], &ids].concat());
            }
        }
        terminate(&mut self.child, Duration::from_secs(15));
        remove_cgroups(&self.cgroup);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}
