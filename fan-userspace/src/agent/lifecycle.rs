//! Starting, replacing and stopping the namespace's agent: `attach` makes
//! sure one of this version serves (a unit under systemd, else a detached
//! process it waits for until ready), the last `detach` stops it through
//! its socket and removes its log, and the agent keeps that log capped.

use std::{
    fs,
    os::unix::{fs::OpenOptionsExt as _, process::CommandExt as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Files, request, running, status, version};
use crate::{cli::Global, state::rundir::RunDir};

/// How long `attach` waits for a new agent to be ready. Generous: on a
/// loaded or emulated host (the 6.1 guest beside CI's suites) its start,
/// with a predecessor's lock still to let go, was seen to take over 10 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes sure an agent of this version serves the namespace: starts one
/// where none runs (a unit under systemd, else a detached process), or
/// replaces one of another version, or has the one that runs resync.
/// Returns once it reports ready (or has resynced).
pub fn ensure(run: &RunDir, global: &Global) -> Result<()> {
    if let Some(current) = status(run) {
        if current.version == version() {
            // It follows netlink events one change at a time; a fan that
            // attach just completed is news it reads whole.
            return request(run, "reload", Duration::from_secs(30)).map(drop);
        }
        log::info!(
            "replacing the agent (pid {}, version {}) with this version ({})",
            current.pid,
            current.version,
            version()
        );
        stop(run)?;
    } else if running(run).is_some() {
        // Holding the lock but saying nothing: starting (then it gets
        // ready) or stopping (then one is started once it has gone).
        if wait_ready(run, None)? {
            return Ok(());
        }
    }
    start(run, global)?;
    if wait_ready(run, Some(global))? {
        return Ok(());
    }
    let log = Files::of(run).log;
    Err(anyhow!(
        "the agent did not report ready within {}s; see {}",
        READY_TIMEOUT.as_secs(),
        log.display()
    ))
}

/// Starts an agent: the unit under systemd, else a detached process.
fn start(run: &RunDir, global: &Global) -> Result<()> {
    if std::env::var_os("INVOCATION_ID").is_some() {
        // Under systemd: the unit owns the agent's life, not this command.
        let status = Command::new("systemctl")
            .args(["start", "fan-xdp.service"])
            .status()
            .context("running systemctl start fan-xdp.service")?;
        if !status.success() {
            bail!("systemctl start fan-xdp.service failed ({status})");
        }
        Ok(())
    } else {
        spawn(run, global)
    }
}

/// Starts `fan-xdp run` as a detached process: its own session, no
/// inherited descriptors, a reduced environment, umask 077, working
/// directory /, output to the capped `agent.log`.
fn spawn(run: &RunDir, global: &Global) -> Result<()> {
    let files = Files::of(run);
    let log = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&files.log)
        .with_context(|| format!("opening {}", files.log.display()))?;
    let exe = std::env::current_exe().context("finding the fan-xdp executable")?;
    let mut command = Command::new(exe);
    command.arg("run").arg("--started-by-attach");
    if let Some(dir) = &global.pin_dir {
        command.arg("--pin-dir").arg(dir);
    }
    if let Some(dir) = &global.run_dir {
        command.arg("--run-dir").arg(dir);
    }
    if let Some(dir) = &global.state_dir {
        command.arg("--state-dir").arg(dir);
    }
    // Never -v: the log is capped, and a busy host's debug lines would
    // push out what matters (the programs' drops are `fan-xdp monitor`'s).
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, umask, close_range)
    // between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::umask(0o077);
            // Everything but stdin, stdout and stderr (which exec keeps).
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    // Not waited for: reaped by whoever inherits it once attach exits.
    let child = command.spawn().context("starting fan-xdp run")?;
    log::info!("started the agent (pid {})", child.id());
    Ok(())
}

/// How long the lock may be free, with no agent ready, before the one
/// started is taken for gone (it lost the lock to one that was stopping).
const GONE_AFTER: Duration = Duration::from_secs(1);

/// Waits until an agent reports ready (true), or, when nobody holds the
/// lock any more, returns false; with `restart`, starts one again instead
/// (once) when the lock has been free for [`GONE_AFTER`].
fn wait_ready(run: &RunDir, mut restart: Option<&Global>) -> Result<bool> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut free_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if status(run).is_some_and(|s| s.ready) {
            return Ok(true);
        }
        if running(run).is_some() {
            free_since = None;
        } else {
            let since = *free_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= GONE_AFTER {
                let Some(global) = restart.take() else {
                    return Ok(false);
                };
                log::info!("the agent started went away; starting another");
                start(run, global)?;
                free_since = None;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}

/// Asks the agent to stop and waits until it has (its lock is free).
pub fn stop(run: &RunDir) -> Result<()> {
    if running(run).is_none() {
        return Ok(());
    }
    request(run, "stop", Duration::from_secs(5))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(run).is_some() {
        if Instant::now() > deadline {
            bail!("the agent acknowledged stop but still runs after 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Removes the log of an agent that [`stop`] stopped, with the last fan's
/// detach: a clean stop leaves nothing to look into, and the directory is
/// then as before the first attach (less its lock files, kept by design).
pub fn remove_log(run: &RunDir) -> Result<()> {
    let log = Files::of(run).log;
    match fs::remove_file(&log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", log.display()))
        }
        _ => Ok(()),
    }
}

/// Most an agent's log may grow before it starts over.
pub const LOG_LIMIT: u64 = 1 << 20;

/// Starts the log over when it has outgrown [`LOG_LIMIT`] (a `-v` drop
/// flood must not fill /run). Appends continue at the new end.
pub fn cap_log(run: &RunDir) {
    let log = Files::of(run).log;
    if fs::symlink_metadata(&log).is_ok_and(|m| m.is_file() && m.len() > LOG_LIMIT)
        && let Ok(file) = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log)
    {
        let _ = file.set_len(0);
    }
}
