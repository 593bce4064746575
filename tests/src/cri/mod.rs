//! Kubernetes's path to the CNI plugin without kubelet: containerd 1.6's
//! CRI plugin, one containerd per simulated node, driven over its CRI v1
//! socket by a small client of the tests' own (the CRI proto generated with
//! tonic, from the k8s-cri crate), as kubelet drives it.
//!
//! Each containerd runs in its node's network namespace (`nsenter --net`:
//! `ip netns exec` would remount /sys and hide the cgroups from runc), with
//! its own root, state, socket and runc root, and the CNI binary and
//! configuration directories of the test. Its images are built offline
//! ([`Images`]): a static `pause` and a busybox root filesystem, each a
//! one-layer OCI archive imported with `ctr`. Dropping a [`Containerd`]
//! removes its pods, stops it by pid and removes what it made outside its
//! directory: the pods' `/var/run/netns/cni-*`, libcni's cached results in
//! `/var/lib/cni/results`, and shims with their sockets in `/run/containerd/s`.

mod calls;
mod cleanup;
pub mod daemonset;
mod images;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tonic::transport::{Channel, Endpoint, Uri};

pub use self::images::{BUSYBOX_IMAGE, Images, PAUSE_IMAGE, fan_xdp_reference, full_name, oci};
use crate::netns::{Netns, run};

/// containerd's settings for a node: its own root, state, sockets and runc
/// root; the CRI plugin with the offline pause image, no OOM score raise
/// (this root lacks CAP_SYS_RESOURCE), cgroupfs (PID 1 is not systemd) and
/// the test's CNI directories.
pub fn containerd_config(dir: &Path, bin_dir: &Path, conf_dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
        pause = full_name(PAUSE_IMAGE),
        bin = bin_dir.display(),
        conf = conf_dir.display(),
    )
}

/// A pod sandbox this containerd ran: what its cleanup needs.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    /// `/var/run/netns/cni-...`, made by containerd; none for a pod on
    /// the node's network.
    pub netns: Option<PathBuf>,
}

/// One node's containerd, in the node's network namespace.
pub struct Containerd {
    /// The node's network namespace (its name under /run/netns).
    pub node: String,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
    runtime: tokio::runtime::Runtime,
    channel: Mutex<Option<Channel>>,
    /// Every sandbox it ran, for the cleanup.
    sandboxes: Mutex<Vec<Sandbox>>,
    /// The pod namespaces (`/run/netns/cni-*`) there before it started.
    netns_before: Vec<String>,
}

impl Containerd {
    /// Starts containerd for `node` with the CNI plugins of `bin_dir` and
    /// the configuration `conflist` (as `10-fan.conflist`; none: what an
    /// installer writes later into [`Containerd::conf_dir`]), `env` passed
    /// on to it and so to the plugins; imports `images`.
    pub fn start(
        node: &Netns,
        bin_dir: &Path,
        conflist: Option<&[u8]>,
        env: &[(&str, &str)],
        images: &Images,
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fan-cri-{}", node.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net.d"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        if let Some(conflist) = conflist {
            std::fs::write(dir.join("net.d/10-fan.conflist"), conflist)?;
        }
        std::fs::write(
            dir.join("config.toml"),
            containerd_config(&dir, bin_dir, &dir.join("net.d")),
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let this = Self {
            node: node.name().to_string(),
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: Mutex::new(None),
            runtime,
            channel: Mutex::new(None),
            sandboxes: Mutex::new(Vec::new()),
            netns_before: cleanup::pod_namespaces(),
        };
        this.launch()?;
        for archive in [&images.pause, &images.busybox] {
            this.import(archive)?;
        }
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            this.wait_for_image(&full_name(image))?;
        }
        Ok(this)
    }

    /// The configuration directory containerd's CRI reads.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Starts the daemon (again, on the same directories) and waits until
    /// its CRI answers.
    pub fn launch(&self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket().exists() {
                let channel = self.runtime.block_on(connect(self.socket()));
                if let Ok(channel) = channel {
                    *self.channel.lock().unwrap() = Some(channel);
                    if self.version().is_ok() {
                        return Ok(());
                    }
                }
            }
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!("containerd exited ({status}): {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd's CRI did not answer in 20 s: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the daemon by its pid (SIGTERM, then SIGKILL after 10 s): its
    /// shims and pods keep running, as on a real node.
    pub fn stop(&self) -> Result<()> {
        *self.channel.lock().unwrap() = None;
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return Ok(());
        };
        // SAFETY: signalling the containerd this struct started, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait()?;
        let _ = std::fs::remove_file(self.socket());
        Ok(())
    }

    /// The last lines of containerd's log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `ctr images import --all-platforms ARCHIVE` into the CRI's namespace.
    pub fn import(&self, archive: &Path) -> Result<()> {
        run(Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
            .arg(archive))
        .map(drop)
    }

    /// Waits until the CRI image service lists `image` (it learns of an
    /// imported image asynchronously).
    pub fn wait_for_image(&self, image: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.images(|mut c| async move {
                c.image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
            })?;
            if status.image.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the CRI image service does not list {image} after 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A gRPC channel over containerd's unix socket.
async fn connect(socket: PathBuf) -> Result<Channel> {
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("connecting to containerd's socket")
}
