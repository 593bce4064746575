//! Where fan-xdp keeps what is not a pin: `/run/fan-xdp/netns-<cookie>/`.
//!
//! bpffs holds only pins (it refuses regular files, FIFOs and sockets), so
//! locks, and later the agent's status, control socket and logs, live in
//! this directory, one per network namespace (keyed by its cookie, as the
//! pin directory is, so simulated hosts on one machine never share a file).
//! It dies with the boot, as the pins do. Like the pin directories, both
//! levels are created owned by root with mode 0700, and refused if they are
//! symbolic links, not root's, or writable by others.
//!
//! `state.lock` is held by every command that changes a namespace's fans
//! (attach, detach), for as long as it plans and applies the change: two
//! concurrent attaches with overlapping overlays then cannot both pass
//! validation and race on the pins. A live namespace's lock files are never
//! deleted: deleting one while another process waits on it would let two
//! processes lock two different files.
//!
//! A namespace's directory outlives the namespace (a test run leaves
//! hundreds), so every attach and every agent start sweeps the directories
//! of namespaces that are gone ([`RunDir::sweep_stale`]). A cookie is never
//! reused, so once no process, `ip netns` name or bind mount holds a
//! namespace with that cookie, nothing can compute the directory's name
//! again: only a process that opened a lock file before could still use it,
//! and one that holds it keeps the directory (each lock is taken,
//! non-blocking, before the directory is removed).

use std::{
    collections::HashSet,
    fs,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use log::info;

use crate::state::{check_private_dir, create_private_dirs, other_namespaces};

/// The default parent of every namespace's run directory.
const SYSTEM_RUN_DIR: &str = "/run/fan-xdp";

/// The run directory of one network namespace.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// `/run/fan-xdp` (or the override): every namespace's directory lives here.
    pub root: PathBuf,
    /// `<root>/netns-<cookie>`.
    pub path: PathBuf,
}

impl RunDir {
    /// The run directory of the calling thread's namespace, under
    /// `run_dir` if given (tests), else under `/run/fan-xdp`.
    pub fn locate(run_dir: Option<&Path>) -> Result<Self> {
        let root = run_dir.map_or_else(|| PathBuf::from(SYSTEM_RUN_DIR), Path::to_path_buf);
        let path = root.join(format!("netns-{}", crate::host::netns::current_cookie()?));
        check_private_dir(&root)?;
        check_private_dir(&path)?;
        Ok(Self { root, path })
    }

    /// Creates both levels (root-owned, mode 0700) if missing, and checks them.
    pub fn create(&self) -> Result<()> {
        create_private_dirs(&[&self.root, &self.path], "the run directory")
    }

    /// [`RunDir::sweep_stale`] against the namespaces alive now, logged;
    /// called by every attach and agent start.
    pub fn sweep_gone_namespaces(&self) {
        match self.sweep_stale(crate::host::netns::live_cookies) {
            Ok(removed) if !removed.is_empty() => info!(
                "removed the run directories of {} namespace(s) that are gone",
                removed.len()
            ),
            Ok(_) => {}
            Err(e) => log::warn!("sweeping stale run directories: {e:#}"),
        }
    }

    /// Removes the directories of other namespaces whose cookie is not among
    /// the `live` ones (see [`crate::host::netns::live_cookies`]), unless a
    /// process holds one of their locks. The directories are listed before
    /// the live namespaces are: a directory made for a namespace born
    /// meanwhile is not looked at. Returns what was removed.
    pub fn sweep_stale(&self, live: impl FnOnce() -> Result<HashSet<u64>>) -> Result<Vec<PathBuf>> {
        let others = other_namespaces(&self.root, &self.path);
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let live = live()?;
        let mut removed = Vec::new();
        for (path, cookie) in others {
            if live.contains(&cookie) {
                continue;
            }
            // Held until the directory is gone: nobody takes them meanwhile.
            let Some(_held) = take_every_lock(&path)? else {
                continue;
            };
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing the stale run directory {}", path.display()))?;
            removed.push(path);
        }
        Ok(removed)
    }

    /// Takes `state.lock` if no other fan-xdp holds it. The agent's way: a
    /// command that holds it may be waiting for the agent's answer; and its
    /// DHCP supervision skips a round while attach or detach changes the
    /// fans (detach stops a fan's server, which must not be restarted meanwhile).
    pub fn try_lock_state(&self) -> Result<Option<StateLock>> {
        self.create()?;
        let file = open_lock_file(&self.path.join("state.lock"))?;
        Ok(try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)?.then_some(StateLock { _file: file }))
    }

    /// Takes `state.lock`, waiting while another fan-xdp holds it.
    pub fn lock_state(&self) -> Result<StateLock> {
        self.create()?;
        let path = self.path.join("state.lock");
        let file = open_lock_file(&path)?;
        if !try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
            info!(
                "another fan-xdp is changing this namespace's fans ({} is held): waiting for it",
                path.display()
            );
            if !try_flock(&file, libc::LOCK_EX)? {
                unreachable!("a blocking flock returns only when it holds the lock");
            }
        }
        Ok(StateLock { _file: file })
    }
}

/// The lock files a run directory may hold.
const LOCK_FILES: [&str; 2] = ["state.lock", "agent.lock"];

/// Takes each of `dir`'s lock files that exists, non-blocking; None if a
/// process holds one.
fn take_every_lock(dir: &Path) -> Result<Option<Vec<fs::File>>> {
    let mut held = Vec::new();
    for name in LOCK_FILES {
        let path = dir.join(name);
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        if !try_flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
            return Ok(None);
        }
        held.push(file);
    }
    Ok(Some(held))
}

/// Opens (creating it, mode 0600) a lock file of a run directory; never
/// through a symbolic link planted in its place.
pub(crate) fn open_lock_file(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Held `state.lock`: released when dropped (or when the process ends).
pub struct StateLock {
    _file: fs::File,
}

/// flock(2); false if `LOCK_NB` was given and another process holds it.
pub(crate) fn try_flock(file: &fs::File, operation: libc::c_int) -> Result<bool> {
    loop {
        // SAFETY: flock on a file descriptor we own, open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e).context("locking state.lock"),
        }
    }
}
/// Writes `bytes` to `path` so that a reader sees the old content or the new,
/// never half: a private (0600) temporary file beside it, then a rename.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_takes_only_dead_namespaces_directories_whose_locks_are_free() {
        let root = std::env::temp_dir().join(format!("fan-rundir-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = |cookie: u64| {
            let path = root.join(format!("netns-{cookie}"));
            fs::create_dir_all(&path).unwrap();
            for lock in LOCK_FILES {
                fs::write(path.join(lock), b"").unwrap();
            }
            fs::write(path.join("bindings.json"), b"[]").unwrap();
            path
        };
        let (live, dead, held, own) = (dir(1), dir(2), dir(3), dir(4));
        let holder = open_lock_file(&held.join("agent.lock")).unwrap();
        assert!(try_flock(&holder, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        let run = RunDir {
            root: root.clone(),
            path: own.clone(),
        };
        let removed = run.sweep_stale(|| Ok(HashSet::from([1]))).unwrap();
        assert_eq!(removed, vec![dead.clone()]);
        assert!(live.exists() && held.exists() && own.exists() && !dead.exists());
        // Once nobody holds its lock, the next sweep takes it.
        drop(holder);
        assert_eq!(
            run.sweep_stale(|| Ok(HashSet::from([1]))).unwrap(),
            vec![held.clone()]
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
