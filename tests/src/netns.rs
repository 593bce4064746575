//! Network namespaces owned by a test: created on demand, deleted on drop
//! (also when the test panics), and swept if a killed run left them behind.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

/// Every namespace this crate creates starts with this, then the pid of its creator.
pub const PREFIX: &str = "fxt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Made by this test (deleted on drop), not by a runtime.
    owned: bool,
}

impl Netns {
    /// Creates a namespace `fxt<pid>-<n>-<label>` with loopback up.
    pub fn new(label: &str) -> Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Names the network namespace of process `pid` (a container a runtime
    /// started) `fxt<pid>-<n>-<label>`, so that the helpers here run in it.
    /// Dropping it removes the name and kills what runs in that namespace.
    pub fn attach(label: &str, pid: u32) -> Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        run(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]))?;
        Ok(Self { name, owned: true })
    }

    /// The namespace `/run/netns/NAME` that a runtime made and owns (a pod's,
    /// by containerd): the helpers here run in it, and dropping this leaves
    /// it and what runs in it alone.
    pub fn of_runtime(name: &str) -> Self {
        Self {
            name: name.to_string(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A veth pair: `port` here, its peer `eth0` in `other` (a host's NIC on
    /// the switch, a container's link on its bridge).
    pub fn add_veth_to(&self, port: &str, other: &Netns) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &other.name,
        ])
        .map(drop)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip ARGS` inside this namespace and fails on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs a program inside this namespace and fails on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs a program inside this namespace and returns its output, whatever its exit.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))
    }

    /// Sets a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a thread that has entered this namespace, so that interface
    /// names, netlink and BPF attachments made by `f` resolve inside it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        enter_path(Path::new(&format!("/run/netns/{}", self.name)), f)
    }
}

/// [`Netns::enter`] for the network namespace at `path`, named or not
/// (`/proc/<pid>/ns/net` of a process that holds one).
pub fn enter_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening namespace {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only; the fd is open for the call.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("setns into the test namespace");
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Whatever still runs inside (an agent a failed test did not stop)
        // would keep the namespace alive after its name is gone.
        kill_processes_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// SIGKILLs every process in namespace `name` (by pid, from `ip netns pids`).
fn kill_processes_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: signalling a process by pid; it lives in our test namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Runs a command, returning stdout or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespaces left by test processes that no longer exist (a run
/// killed before its destructors ran).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}
