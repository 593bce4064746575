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

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    self as cri, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::netns::{Netns, run};

#[path = "../../xtask/src/oci.rs"]
pub mod oci;

/// The sandbox image (containerd's `sandbox_image`) and the workload's.
pub const PAUSE_IMAGE: &str = "pause:fan-test";
pub const BUSYBOX_IMAGE: &str = "busybox:fan-test";

/// The name containerd gives an image imported under `reference`.
pub fn full_name(reference: &str) -> String {
    format!("docker.io/library/{reference}")
}

/// The images of the tests, built once per test into a private directory.
pub struct Images {
    dir: PathBuf,
    pub pause: PathBuf,
    pub busybox: PathBuf,
}

impl Images {
    /// Builds the pause archive (a static C program that sleeps until
    /// signalled) and the busybox archive (Debian's static busybox and a
    /// link per applet).
    pub fn build() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fan-cri-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pause_root = dir.join("pause-root");
        std::fs::create_dir_all(&pause_root)?;
        let source = dir.join("pause.c");
        std::fs::write(
            &source,
            "#include <signal.h>\n#include <unistd.h>\n\
             static void stop(int sig) { (void)sig; _exit(0); }\n\
             int main(void) { signal(SIGINT, stop); signal(SIGTERM, stop); for (;;) pause(); }\n",
        )?;
        run(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(pause_root.join("pause"))
            .arg(&source))
        .context("building the static pause program (gcc, libc6-dev)")?;
        let pause = dir.join("pause.tar");
        oci::write_archive(
            &pause_root,
            &oci::ImageConfig {
                reference: PAUSE_IMAGE,
                entrypoint: &["/pause"],
                env: &[],
            },
            &dir.join("work"),
            &pause,
        )?;
        let busybox_root = dir.join("busybox-root");
        for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(busybox_root.join(sub))?;
        }
        crate::podman::busybox_rootfs(&busybox_root)?;
        let busybox = dir.join("busybox.tar");
        oci::write_archive(
            &busybox_root,
            &oci::ImageConfig {
                reference: BUSYBOX_IMAGE,
                entrypoint: &[],
                env: &["PATH=/bin"],
            },
            &dir.join("work"),
            &busybox,
        )?;
        Ok(Self {
            dir,
            pause,
            busybox,
        })
    }
}

/// fan-xdp's DaemonSet image, named as `cargo xtask image` names it.
pub fn fan_xdp_reference() -> String {
    format!("fan-xdp:{}", env!("CARGO_PKG_VERSION"))
}

impl Images {
    /// Where the images are built.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// fan-xdp's DaemonSet image as `cargo xtask image` lays it out, around
    /// the binary under test (its debug information stripped): the archive.
    pub fn fan_xdp(&self) -> Result<PathBuf> {
        let binary = self.dir.join("fan-xdp");
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&binary)
            .arg(crate::topology::fan_xdp_binary()))?;
        let root = self.dir.join("fan-xdp-root");
        oci::fan_xdp_rootfs(&binary, &root)?;
        let archive = self.dir.join("fan-xdp.tar");
        oci::write_archive(
            &root,
            &oci::ImageConfig {
                reference: &fan_xdp_reference(),
                entrypoint: &["/usr/bin/fan-xdp"],
                env: &[oci::IMAGE_PATH],
            },
            &self.dir.join("work"),
            &archive,
        )?;
        std::fs::remove_dir_all(&root)?;
        Ok(archive)
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
            netns_before: pod_namespaces(),
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

    fn channel(&self) -> Result<Channel> {
        self.channel
            .lock()
            .unwrap()
            .clone()
            .context("containerd is not running")
    }

    /// A call of the runtime service.
    pub fn runtime<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = RuntimeServiceClient::new(self.channel()?);
        let answer = self.runtime.block_on(call(client));
        answer
            .map(tonic::Response::into_inner)
            .map_err(|status| anyhow::anyhow!("CRI: {}", status.message()))
    }

    /// A call of the image service.
    pub fn images<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(ImageServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = ImageServiceClient::new(self.channel()?);
        self.runtime
            .block_on(call(client))
            .map(tonic::Response::into_inner)
            .map_err(|status| anyhow::anyhow!("CRI: {}", status.message()))
    }

    pub fn version(&self) -> Result<cri::VersionResponse> {
        self.runtime(|mut c| async move {
            c.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// The runtime's conditions by type (RuntimeReady, NetworkReady).
    pub fn conditions(&self) -> Result<HashMap<String, (bool, String)>> {
        let status =
            self.runtime(
                |mut c| async move { c.status(cri::StatusRequest { verbose: false }).await },
            )?;
        Ok(status
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.r#type, (c.status, c.message)))
            .collect())
    }

    /// Waits until NetworkReady (containerd reads the CNI configuration
    /// asynchronously).
    pub fn wait_until_network_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let conditions = self.conditions()?;
            if conditions.get("NetworkReady").is_some_and(|c| c.0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("NetworkReady is not true after 20 s: {conditions:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kubelet's sandbox configuration of pod `namespace/name`.
    pub fn pod_config(&self, namespace: &str, name: &str) -> cri::PodSandboxConfig {
        let logs = self.dir.join("logs").join(name);
        let _ = std::fs::create_dir_all(&logs);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{namespace}-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox for pod `namespace/name`: its id.
    pub fn run_pod(&self, namespace: &str, name: &str) -> Result<String> {
        self.run_sandbox(self.pod_config(namespace, name))
    }

    /// RunPodSandbox with `config`: its id.
    pub fn run_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let answer = self.runtime(|mut c| async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })?;
        let id = answer.pod_sandbox_id;
        let netns = self.pod_netns(&id).ok();
        self.sandboxes.lock().unwrap().push(Sandbox {
            id: id.clone(),
            netns,
        });
        Ok(id)
    }

    /// PodSandboxStatus, verbose (containerd's info: pid, spec).
    pub fn pod_status(&self, id: &str) -> Result<cri::PodSandboxStatusResponse> {
        let id = id.to_string();
        self.runtime(|mut c| async move {
            c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })
    }

    /// The pod's address, as PodSandboxStatus reports it.
    pub fn pod_ip(&self, id: &str) -> Result<std::net::Ipv4Addr> {
        let status = self.pod_status(id)?.status.context("no status")?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .with_context(|| format!("PodSandboxStatus gave the IP {ip:?}"))
    }

    /// Whether the sandbox is SANDBOX_READY.
    pub fn pod_ready(&self, id: &str) -> Result<bool> {
        let status = self.pod_status(id)?.status.context("no status")?;
        Ok(status.state == cri::PodSandboxState::SandboxReady as i32)
    }

    /// The pod's network namespace, from containerd's verbose info.
    pub fn pod_netns(&self, id: &str) -> Result<PathBuf> {
        let info = self.pod_status(id)?.info;
        let text = info.get("info").context("no verbose info")?;
        let value: serde_json::Value = serde_json::from_str(text)?;
        value["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .map(PathBuf::from)
            .context("no network namespace in the sandbox's spec")
    }

    /// A handle on the pod's network namespace for the tests' helpers.
    pub fn pod_ns(&self, id: &str) -> Result<Netns> {
        let path = self.pod_netns(id)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("namespace name")?;
        Ok(Netns::of_runtime(name))
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let owned = id.to_string();
        self.runtime(|mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: owned,
            })
            .await
        })?;
        let owned = id.to_string();
        self.runtime(|mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: owned,
            })
            .await
        })?;
        Ok(())
    }

    /// A busybox container `work` in pod `pod` running `sleep 3600`,
    /// started: its id.
    pub fn run_busybox(&self, pod: &str, namespace: &str, pod_name: &str) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "work".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: full_name(BUSYBOX_IMAGE),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "work.log".into(),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        };
        self.run_container(pod, config, self.pod_config(namespace, pod_name))
    }

    /// CreateContainer and StartContainer: its id.
    pub fn run_container(
        &self,
        pod: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String> {
        let pod_id = pod.to_string();
        let created = self.runtime(|mut c| async move {
            c.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id,
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
        })?;
        let id = created.container_id;
        let owned = id.clone();
        self.runtime(|mut c| async move {
            c.start_container(cri::StartContainerRequest {
                container_id: owned,
            })
            .await
        })?;
        Ok(id)
    }

    /// The container's state and exit code.
    pub fn container_state(&self, id: &str) -> Result<(cri::ContainerState, i32)> {
        let id = id.to_string();
        let status = self.runtime(|mut c| async move {
            c.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
        })?;
        let status = status.status.context("no container status")?;
        Ok((
            cri::ContainerState::try_from(status.state)
                .unwrap_or(cri::ContainerState::ContainerUnknown),
            status.exit_code,
        ))
    }

    /// ExecSync in container `id`: (exit code, stdout and stderr).
    pub fn exec(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<(i32, String)> {
        let request = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let out = self.runtime(|mut c| async move { c.exec_sync(request).await })?;
        Ok((
            out.exit_code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// The ids of the sandboxes containerd lists.
    pub fn pods(&self) -> Result<Vec<String>> {
        let list = self.runtime(|mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(list.items.into_iter().map(|p| p.id).collect())
    }

    /// Every sandbox this containerd ran.
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        self.sandboxes.lock().unwrap().clone()
    }

    /// What a crashed or failed run may leave outside this containerd's
    /// directory, for the sandboxes it ran: running containers (in its own
    /// runc root), shims (by the pid on their command line naming its
    /// socket) and their sockets, the pods' namespaces, libcni's cache.
    fn remove_leftovers(&self) {
        let runc_root = self.dir.join("runc/k8s.io");
        if let Ok(list) = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&list.stdout).split_whitespace() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "-f", id])
                    .output();
            }
        }
        let address = self.socket().display().to_string();
        for pid in shims_of(&address) {
            // SAFETY: signalling a shim of this containerd, by the pid found
            // with its socket on its command line.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // A namespace containerd made for a sandbox that failed before it
        // was recorded (1.6 leaves one when its CNI is not initialized):
        // new since the start, and nothing runs in it.
        for name in pod_namespaces() {
            if self.netns_before.contains(&name) {
                continue;
            }
            let pids = Command::new("ip").args(["netns", "pids", &name]).output();
            if pids.is_ok_and(|out| out.status.success() && out.stdout.is_empty()) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        for sandbox in self.sandboxes() {
            // The shim's socket: /run/containerd/s/ and the SHA-256 of
            // ADDRESS/NAMESPACE/ID, as containerd 1.6 names it.
            if let Ok(hash) = oci::sha256(format!("{address}/k8s.io/{}", sandbox.id).as_bytes()) {
                let _ = std::fs::remove_file(Path::new("/run/containerd/s").join(hash));
            }
            if let Some(netns) = sandbox.netns.filter(|n| n.exists()) {
                let _ = Command::new("umount").arg(&netns).output();
                let _ = std::fs::remove_file(&netns);
            }
            for cached in [
                format!("fan-{}-eth0", sandbox.id),
                format!("cni-loopback-{}-lo", sandbox.id),
            ] {
                let _ = std::fs::remove_file(Path::new("/var/lib/cni/results").join(cached));
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.channel.lock().unwrap().is_some() {
            for id in self.pods().unwrap_or_default() {
                let _ = self.remove_pod(&id);
            }
        }
        let _ = self.stop();
        self.remove_leftovers();
        let state = self.dir.join("state");
        // Mounts a killed shim may have left (the sandboxes' /dev/shm, rootfs).
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let dir = self.dir.display().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                let _ = Command::new("umount").arg("-l").arg(point).output();
            }
        }
        let _ = std::fs::remove_dir_all(state);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The names of the pod namespaces in /run/netns (`cni-*`).
fn pod_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of shims started by the containerd at `address`.
fn shims_of(address: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                    && args.contains(&address.as_bytes())
            })
        })
        .collect()
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
