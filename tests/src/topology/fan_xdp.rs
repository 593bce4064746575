//! fan-xdp as the tests run it in a simulated host: the binary next to the
//! test executable, one command through `ip netns exec`, `fan-xdp run` as a
//! [`Daemon`], and waiting until the agent has taken over the ports.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::Host;
use crate::netns::Netns;

/// A `fan-xdp run` process; stopped with SIGTERM (a clean stop) when dropped.
pub struct Daemon(std::process::Child);

impl Daemon {
    /// Starts `fan-xdp run ARGS` in `ns`, resyncing every second unless
    /// ARGS say otherwise.
    pub fn start(ns: &Netns, extra: &[&str]) -> Result<Self> {
        Self::spawn(
            ns,
            extra,
            std::process::Stdio::null(),
            std::process::Stdio::null(),
        )
    }

    /// [`Daemon::start`], its output (the agent's log) appended to `log`.
    pub fn start_logged(ns: &Netns, extra: &[&str], log: &std::path::Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        Self::spawn(ns, extra, file.try_clone()?.into(), file.into())
    }

    fn spawn(
        ns: &Netns,
        extra: &[&str],
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<Self> {
        let resync: &[&str] = if extra.contains(&"--resync-seconds") {
            &[]
        } else {
            &["--resync-seconds", "1"]
        };
        let child = ns
            .command(fan_xdp_binary().to_str().context("binary path")?)
            .arg("run")
            .args(resync)
            .args(extra)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting fan-xdp run")?;
        Ok(Self(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops it the way systemd would, and waits for it.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// Kills it with no chance to clean up.
    pub fn kill(mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        Ok(self.0.wait()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Whether `fan-xdp show --json` output says `fan-xdp run` has taken over
/// every fan's slice: its port program on each of the bridge's ports, or no
/// port programs to wait for (a kernel without TCX). False while no fan is
/// attached or an attach is incomplete (no fast path shown).
pub fn ports_taken_over(show_json: &str) -> Result<bool> {
    let fans: Vec<serde_json::Value> =
        serde_json::from_str(show_json).context("fan-xdp show --json")?;
    Ok(!fans.is_empty()
        && fans.iter().all(|fan| {
            let fast_path = &fan["fast_path"];
            match fast_path["ports_encapsulating"] {
                serde_json::Value::Null => fast_path.is_object(),
                ref encapsulating => *encapsulating == fast_path["ports"],
            }
        }))
}

/// The `fan-xdp` binary next to the running test or demo executable
/// (`cargo xtask test` builds it; so does `cargo build -p fan-userspace`).
pub fn fan_xdp_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("fan-xdp");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p fan-userspace`",
        bin.display()
    );
    bin
}

impl Host {
    /// Runs `fan-xdp ARGS` inside this host's namespace, through `ip netns exec`
    /// like an operator would, and returns its output whatever the exit status.
    pub fn fan_xdp(&self, args: &[&str]) -> Result<std::process::Output> {
        self.ns
            .command(fan_xdp_binary().to_str().context("binary path")?)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .context("running fan-xdp")
    }

    /// Packets counted for `reason` in this host's pinned counters.
    pub fn counter(&self, reason: fan_common::StatReason) -> Result<u64> {
        Ok(self.pinned_maps()?.stats()?.get(reason).packets)
    }

    /// Pings `to` from `from` until this host delivers straight into a
    /// container (bounded: about five seconds); whether it did.
    pub fn wait_for_direct(&self, from: &Netns, to: Ipv4Addr) -> Result<bool> {
        let direct = fan_common::StatReason::DecapsulatedDirect;
        let start = self.counter(direct)?;
        for _ in 0..25 {
            let _ = crate::traffic::ping(from, to, 1);
            if self.counter(direct)? > start {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Ok(false)
    }

    /// The first fan entry in this host's pinned maps (the one fan of a
    /// host with one).
    pub fn pinned_fan_entry(&self) -> Result<fan_common::FanEntry> {
        let maps = self.pinned_maps()?;
        let first = maps.config.iter().next().context("no fan entry")?;
        Ok(first?.1)
    }

    /// `fan-xdp ARGS` with the test hook `FAN_XDP_INJECT=<inject>` set
    /// (honoured by a build with the `fault-injection` feature).
    pub fn fan_xdp_injected(&self, args: &[&str], inject: &str) -> Result<std::process::Output> {
        self.ns
            .command(fan_xdp_binary().to_str().context("binary path")?)
            .args(args)
            .env("FAN_XDP_INJECT", inject)
            .output()
            .context("running fan-xdp")
    }

    /// Runs the attach `args` failing after each of its steps in turn, and
    /// asserts each time that the namespace is as `before` says (taken by
    /// `take`): every step's undo takes back exactly what it did.
    #[track_caller]
    pub fn assert_every_step_rolls_back(
        &self,
        args: &[&str],
        before: &str,
        take: fn(&Netns) -> Result<String>,
    ) {
        for step in fan_userspace::commands::attach::STEPS {
            let out = self
                .fan_xdp_injected(args, &format!("fail:{step}"))
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success()
                    && stderr.contains(&format!("injected failure after step {step}")),
                "{step}: {stderr}"
            );
            crate::snapshot::assert_same(
                &self.ns,
                take,
                before,
                &format!("{args:?} failing after {step} was not rolled back"),
            );
        }
    }

    /// fan-xdp's pinned maps for this host's namespace.
    pub fn pinned_maps(&self) -> Result<fan_userspace::dataplane::PinnedMaps> {
        let dir = self
            .ns
            .enter(|| fan_userspace::state::StateDir::locate(None))??;
        fan_userspace::dataplane::PinnedMaps::open(&dir)
    }

    /// Starts `fan-xdp run` (the long-running mode) in this host's namespace.
    pub fn fan_xdp_run(&self) -> Result<Daemon> {
        self.fan_xdp_run_with(&[])
    }

    /// [`Host::fan_xdp_run`] with extra options.
    pub fn fan_xdp_run_with(&self, extra: &[&str]) -> Result<Daemon> {
        Daemon::start(&self.ns, extra)
    }

    /// Waits, polling `fan-xdp show --json`, until the `fan-xdp run` of
    /// this host has its program on every container port of its fans, and
    /// returns how long that took; fails with what show says after `limit`.
    pub fn wait_for_run_ready(&self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let shown = self.fan_xdp_ok(&["show", "--json"])?;
            if ports_taken_over(&shown)? {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= limit {
                anyhow::bail!(
                    "fan-xdp run in {} did not take over its ports within {limit:?}; fan-xdp show:\n{}",
                    self.ns.name(),
                    self.fan_xdp_ok(&["show"]).unwrap_or(shown)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `fan-xdp ARGS` and fails with its stderr unless it succeeds.
    pub fn fan_xdp_ok(&self, args: &[&str]) -> Result<String> {
        stdout_of_success(args, self.fan_xdp(args)?)
    }
}

/// The stdout of `fan-xdp ARGS`, or an error with its stderr unless it succeeded.
pub fn stdout_of_success(args: &[&str], out: std::process::Output) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "fan-xdp {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fan-xdp show --json` with `fast_path` as given, the rest as printed.
    fn shown(fast_path: &str) -> String {
        format!(
            r#"[{{"overlay": "250.0.0.0/8", "underlay": "198.18.0.0/16", "host": "198.18.0.1",
                "slice": "250.0.1.0/24", "gateway": "250.0.1.1", "bridge": "fan-250-0-1",
                "iface": "eth0", "mode": "tc", "mode_reason": "veth", "nat": true,
                "host_reserve": 0, "mtu": 1480, "complete": true, "fast_path": {fast_path}}}]"#
        )
    }

    #[test]
    fn ready_once_every_port_has_the_program() {
        let ready = r#"{"ports": 2, "ports_encapsulating": 2, "endpoints": 0}"#;
        let starting = r#"{"ports": 2, "ports_encapsulating": 0, "endpoints": 0}"#;
        let halfway = r#"{"ports": 2, "ports_encapsulating": 1, "endpoints": 0}"#;
        assert!(ports_taken_over(&shown(ready)).unwrap());
        assert!(!ports_taken_over(&shown(starting)).unwrap());
        assert!(!ports_taken_over(&shown(halfway)).unwrap());
    }

    #[test]
    fn without_tcx_there_is_nothing_to_wait_for_but_an_incomplete_fan_is_not_ready() {
        let no_tcx = r#"{"ports": 2, "ports_encapsulating": null, "endpoints": 0}"#;
        assert!(ports_taken_over(&shown(no_tcx)).unwrap());
        assert!(!ports_taken_over(&shown("null")).unwrap());
        assert!(!ports_taken_over("[]").unwrap());
        assert!(ports_taken_over("not json").is_err());
    }
}
