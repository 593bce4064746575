//! What the tests need to run deploy/fan-xdp-daemonset.yaml's steps
//! through the CRI: its literal blocks (the init script, the conflist), and
//! a private stand-in for the node's bpffs.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::netns::{Netns, run};

/// The literal block (`key: |`) of deploy/fan-xdp-daemonset.yaml that
/// follows the first line containing `anchor`, dedented.
pub fn yaml_block(yaml: &str, anchor: &str) -> String {
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let mut lines = yaml.lines().skip_while(|l| !l.contains(anchor));
    let key = lines
        .find(|l| l.trim_end().ends_with('|'))
        .expect("a literal block");
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || indent_of(l) > indent_of(key))
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent_of(l))
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(indent..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
        + "\n"
}

/// A directory of this test on the host's bpffs, standing for the node's
/// `/sys/fs/bpf` in the DaemonSet's pod: the agent's pins (and its sweep
/// of namespaces it cannot see from its pod) stay inside it. Bind-mounted
/// on itself as a shared mount, as a systemd host's /sys/fs/bpf is (the
/// DaemonSet's Bidirectional propagation needs one; this machine's is
/// private). Removed with what is pinned there, after a detach.
pub struct PrivateBpffs {
    pub path: PathBuf,
    node: String,
    run: PathBuf,
}

impl PrivateBpffs {
    /// `/sys/fs/bpf/fxt-cri-<pid>` (mode 0700) for the fan of `node`,
    /// whose agent keeps its run directory in `run`.
    pub fn new(node: &Netns, run_dir: &Path) -> Result<Self> {
        let this = Self {
            path: PathBuf::from(format!("/sys/fs/bpf/fxt-cri-{}", std::process::id())),
            node: node.name().to_string(),
            run: run_dir.to_path_buf(),
        };
        std::fs::create_dir_all(&this.path)?;
        std::fs::set_permissions(
            &this.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let shared = this.path.to_str().unwrap_or_default();
        run(std::process::Command::new("mount").args(["--bind", shared, shared]))?;
        run(std::process::Command::new("mount").args(["--make-shared", shared]))?;
        Ok(this)
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(crate::topology::fan_xdp_binary())
            .args(["detach", "eth0"])
            .env("FAN_XDP_PIN_DIR", &self.path)
            .env("FAN_XDP_RUN_DIR", &self.run)
            .output();
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .output();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
