//! A client's calls of containerd's CRI v1 services (what kubelet asks).

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_cri::v1::{
    self as cri, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

use super::{BUSYBOX_IMAGE, Containerd, Sandbox, full_name};
use crate::netns::Netns;

impl Containerd {
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
}
