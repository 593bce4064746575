//! A small CNI runner, since no `cnitool` is packaged: the specification's
//! protocol as a runtime speaks it (the command and the attachment in
//! `CNI_*` variables, the configuration on stdin, the result or an error
//! object on stdout), run inside a simulated host's namespace.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    netns::Netns,
    topology::{Host, fan_xdp_binary},
};
use fan_userspace::{
    agent::bindings::{self, Binding},
    state::rundir::RunDir,
};

/// Debian's reference plugins (containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A CNI binary directory: `fan` (a link to the fan-xdp under test, which
/// is the plugin when run by that name) and links to the reference plugins.
pub struct BinDir {
    pub path: PathBuf,
    _dir: TempDir,
}

impl BinDir {
    pub fn new(label: &str) -> Result<Self> {
        let dir = TempDir::new(&format!("bin-{label}"))?;
        let path = dir.path.clone();
        std::os::unix::fs::symlink(fan_xdp_binary(), path.join("fan"))?;
        for plugin in ["host-local", "portmap", "loopback"] {
            let reference = Path::new(REFERENCE_PLUGINS).join(plugin);
            if reference.exists() {
                std::os::unix::fs::symlink(reference, path.join(plugin))?;
            }
        }
        Ok(Self { path, _dir: dir })
    }
}

/// The agent's bindings on `host`.
pub fn bound(host: &Host) -> Vec<Binding> {
    host.ns
        .enter(|| bindings::list(&RunDir::locate(None)?))
        .expect("entering the host's namespace")
        .expect("listing the agent's bindings")
}

/// The plugin's ports (`fv...`) on `host`'s slice bridge.
pub fn ports(host: &Host) -> Vec<String> {
    let out = host
        .ns
        .ip(&["-o", "link", "show", "master", &host.bridge])
        .expect("listing the bridge's ports");
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter_map(|n| n.split('@').next())
        // A VXLAN fan's overlay port is the fan's, not a container's.
        .filter(|n| n.starts_with("fv") && !fan_userspace::host::naming::is_overlay_port(n))
        .map(str::to_string)
        .collect()
}

/// The addresses named by the files of `dir` (the plugin's allocations,
/// host-local's): empty if there is no such directory.
pub fn addresses_in(dir: &Path) -> BTreeSet<Ipv4Addr> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A private directory, removed when dropped (the plugin's state, host-local's).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("fan-cni-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One invocation's attachment; `netns: None` leaves CNI_NETNS empty.
#[derive(Clone, Debug)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<String>,
}

impl<'a> Attachment<'a> {
    /// `eth0` of container namespace `ns`.
    pub fn of(container_id: &'a str, ns: &Netns) -> Self {
        Self {
            container_id,
            ifname: "eth0",
            netns: Some(format!("/run/netns/{}", ns.name())),
        }
    }
}

/// What the plugin answered.
#[derive(Debug)]
pub struct Answer {
    pub ok: bool,
    /// stdout as JSON (`Value::Null` when it printed nothing).
    pub json: Value,
    pub stderr: String,
}

impl Answer {
    /// The error code, failing the test if the plugin succeeded.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.json);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.json))
    }

    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or_default()
    }

    /// The result, failing the test with the error if the plugin failed.
    pub fn result(&self) -> &Value {
        assert!(self.ok, "the plugin failed: {} {}", self.json, self.stderr);
        &self.json
    }
}

/// Runs plugin `plugin` of `bin` for `command` inside `host`, with exactly
/// the variables a runtime sets (plus `extra`), `conf` on stdin.
pub fn invoke(
    host: &Netns,
    bin: &BinDir,
    plugin: &str,
    command: &str,
    attachment: Option<&Attachment>,
    conf: &str,
    extra: &[(&str, &str)],
) -> Result<Answer> {
    let mut cmd = host.command(bin.path.join(plugin).to_str().context("bin path")?);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", &bin.path);
    if let Some(a) = attachment {
        cmd.env("CNI_CONTAINERID", a.container_id)
            .env("CNI_IFNAME", a.ifname)
            .env("CNI_NETNS", a.netns.as_deref().unwrap_or(""));
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {plugin} {command}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{plugin} {command} printed {text:?}"))?
    };
    Ok(Answer {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
