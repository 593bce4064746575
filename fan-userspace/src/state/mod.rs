//! Where fan-xdp's pinned state lives: one directory per network namespace.
//!
//! Layout: `<bpffs>/fan-xdp/netns-<cookie>/`, holding the pinned maps (the fan
//! configuration, counters and fan-xdp's own records), programs and links.
//! The namespace cookie (SO_NETNS_COOKIE) identifies the namespace and, unlike
//! an inode number, is never reused, so a new namespace never inherits the
//! state of a dead one.
//!
//! `<bpffs>` is, in order: `--pin-dir`; `/sys/fs/bpf` when it is a bpffs; and
//! otherwise the host's `/sys/fs/bpf`, mounted if needed. Under `ip netns exec`
//! every command gets a private mount namespace with a fresh `/sys` and no
//! bpffs, and a bpffs mounted there would vanish (with its pins) when the
//! command exits. So fan-xdp finds the nearest ancestor process in another
//! mount namespace (the shell that ran `ip netns exec`), reaches that
//! namespace's `/sys/fs/bpf` through `/proc/<pid>/root`, and mounts the bpffs
//! there with a short-lived helper process when it is missing, with mode 0700.
//!
//! A bpffs is world-writable (mode 1777) unless mounted otherwise, so anyone
//! could have made `fan-xdp/` or a namespace's directory first, or made it a
//! symbolic link to somewhere else. Both are checked without following links
//! and refused unless root owns them and nobody else may write to them.

pub mod named;
pub mod record;
pub mod rundir;
pub mod settings;

use std::{
    ffi::CString,
    fs,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";
/// The hidden subcommand that mounts bpffs in another mount namespace.
pub const MOUNT_HELPER: &str = "__mount-bpffs";

/// The pinned-state directory of the current network namespace.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// `<bpffs>/fan-xdp`: every namespace's directory lives here.
    pub root: PathBuf,
    /// `<root>/netns-<cookie>`.
    pub path: PathBuf,
    /// Where bpffs is to be mounted, if it is not yet (see [`StateDir::mount`]).
    unmounted: Option<Unmounted>,
}

/// The host's bpffs is not mounted yet; it goes here.
#[derive(Clone, Copy, Debug)]
enum Unmounted {
    /// On /sys/fs/bpf of this process's mount namespace.
    Here,
    /// On /sys/fs/bpf of the mount namespace of process `pid`, the nearest
    /// ancestor outside ours (we run under `ip netns exec`).
    InNamespaceOf(u32),
}

impl StateDir {
    /// Finds the state directory of this network namespace, changing
    /// nothing: where the host's bpffs is not mounted yet, the directory is
    /// where it will be once [`StateDir::mount`] has mounted it (and does
    /// not exist till then). The directory itself is only created by
    /// [`StateDir::create`].
    pub fn locate(pin_dir: Option<&Path>) -> Result<Self> {
        let (base, unmounted) = match pin_dir {
            Some(dir) => {
                if !is_bpffs(dir) {
                    bail!(
                        "--pin-dir {} is not on a bpffs (mount -t bpf bpf {0})",
                        dir.display()
                    );
                }
                (dir.to_path_buf(), None)
            }
            None => system_bpffs()?,
        };
        let root = base.join("fan-xdp");
        let path = root.join(format!("netns-{}", netns_cookie()?));
        // The root first: a trusted namespace directory inside an untrusted
        // parent could be swapped for another.
        check_private_dir(&root)?;
        check_private_dir(&path)?;
        Ok(Self {
            root,
            path,
            unmounted,
        })
    }

    /// Mounts the host's bpffs where [`StateDir::locate`] found it missing
    /// (root only, mode 0700); nothing where it is mounted.
    pub fn mount(&self) -> Result<()> {
        let local = Path::new(SYSTEM_BPFFS);
        match self.unmounted {
            None => {}
            Some(Unmounted::Here) if !is_bpffs(local) => mount_bpffs(local)?,
            Some(Unmounted::Here) => {}
            Some(Unmounted::InNamespaceOf(pid)) => {
                let outer = PathBuf::from(format!("/proc/{pid}/root{SYSTEM_BPFFS}"));
                if !is_bpffs(&outer) {
                    let exe = std::env::current_exe().context("locating the fan-xdp binary")?;
                    let status = Command::new(exe)
                        .args([MOUNT_HELPER, &pid.to_string()])
                        .status()
                        .context("starting the bpffs mount helper")?;
                    if !status.success() || !is_bpffs(&outer) {
                        bail!(
                            "bpffs unavailable: {SYSTEM_BPFFS} is not mounted in the host's mount namespace and mounting it failed; mount it (mount -t bpf bpf {SYSTEM_BPFFS}) or pass --pin-dir"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The same directory, reached through a descriptor of its bpffs that
    /// this process keeps open: `/proc/self/fd/<n>/fan-xdp/...`. For the
    /// agent, whose bpffs may be reachable only through another process's
    /// mount namespace (`/proc/<pid>/root/...` under `ip netns exec`), and
    /// that process may exit first; an open descriptor keeps the mount.
    pub fn held_open(self) -> Result<Self> {
        let base = self
            .root
            .parent()
            .context("the state directory has no parent")?;
        let held = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(base)
            .with_context(|| format!("opening {}", base.display()))?;
        // Kept open for the rest of the process's life, on purpose.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(held);
        let root = PathBuf::from(format!("/proc/self/fd/{fd}")).join("fan-xdp");
        let path = root.join(
            self.path
                .file_name()
                .context("the state directory has no name")?,
        );
        Ok(Self {
            root,
            path,
            unmounted: None,
        })
    }

    pub fn exists(&self) -> bool {
        // Not followed: `locate` refused a symlink, and one made since is not ours.
        fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir())
    }

    /// Creates the shared parent and this namespace's directory, each owned
    /// by root with mode 0700 (a bpffs root is world-writable, mode 1777).
    pub fn create(&self) -> Result<()> {
        create_private_dirs(&[&self.root, &self.path], "the pin directory")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.path.join(format!("prog_{name}"))
    }

    /// A BPF link's pin, named by device and the program's role there
    /// (`encap`, `decap-tc`, `decap-xdp`): `link_<device>_<role>`.
    pub fn link(&self, device: &str, role: &str) -> PathBuf {
        self.path.join(format!("link_{device}_{role}"))
    }

    /// Removes the directory and everything pinned in it (the objects live on
    /// while something else holds them, so this is the last step of a detach).
    pub fn remove(&self) -> Result<()> {
        if self.exists() {
            fs::remove_dir_all(&self.path)
                .with_context(|| format!("removing {}", self.path.display()))?;
        }
        // The shared parent goes when the last namespace's state is gone.
        let _ = fs::remove_dir(&self.root);
        Ok(())
    }

    /// The directories of other namespaces, with their cookies.
    pub fn others(&self) -> Vec<(PathBuf, u64)> {
        other_namespaces(&self.root, &self.path)
    }
}

/// The `netns-<cookie>` directories under `root` but `own`, with their cookies.
pub(crate) fn other_namespaces(root: &Path, own: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let cookie = name.to_str()?.strip_prefix("netns-")?.parse::<u64>().ok()?;
            Some((entry.path(), cookie))
        })
        .filter(|(path, _)| path != own)
        .collect()
}

/// Creates each of `dirs` in order (owned by root, mode 0700) where missing,
/// and checks each with [`check_private_dir`], also after creating it:
/// another process may have made it first. `what` names them in errors.
pub fn create_private_dirs(dirs: &[&Path], what: &str) -> Result<()> {
    for dir in dirs {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating {what} {}", dir.display()));
            }
        }
        check_private_dir(dir)?;
    }
    Ok(())
}

/// Refuses a state directory that anyone but root could have made or could
/// change: a symbolic link (never followed), something not a directory, a
/// directory not owned by root, or one writable by its group or by others.
/// A directory that does not exist (yet) is fine.
pub fn check_private_dir(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    let problem = if meta.file_type().is_symlink() {
        "is a symbolic link, which fan-xdp never follows".to_string()
    } else if !meta.is_dir() {
        "is not a directory".to_string()
    } else if meta.uid() != 0 {
        format!("is owned by uid {}, not root", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    bail!(
        "refusing the state directory {}: it {problem}; remove it (fan-xdp recreates it owned by root, mode 0700)",
        path.display()
    )
}

/// The network namespace cookie of the calling thread.
pub fn netns_cookie() -> Result<u64> {
    crate::host::netns::current_cookie()
}

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into `buf`, a plain C struct we own.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a valid out pointer.
    let ret = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    ret == 0 && buf.f_type as i64 == BPF_FS_MAGIC
}

/// The host's bpffs, as reachable from this process, and whether it still
/// has to be mounted there.
fn system_bpffs() -> Result<(PathBuf, Option<Unmounted>)> {
    let local = Path::new(SYSTEM_BPFFS);
    if is_bpffs(local) {
        return Ok((local.to_path_buf(), None));
    }
    Ok(match outer_mount_ns_pid()? {
        None => (local.to_path_buf(), Some(Unmounted::Here)),
        Some(pid) => {
            let outer = PathBuf::from(format!("/proc/{pid}/root{SYSTEM_BPFFS}"));
            let unmounted = (!is_bpffs(&outer)).then_some(Unmounted::InNamespaceOf(pid));
            (outer, unmounted)
        }
    })
}

fn mount_bpffs(target: &Path) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let c_target = CString::new(target.as_os_str().as_bytes())?;
    // Only root may create pins at the top: bpffs defaults to mode 1777.
    let options = c"mode=0700";
    // SAFETY: valid NUL-terminated strings; bpffs parses the data as a string.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!(
                "bpffs unavailable: mounting it at {} failed",
                target.display()
            )
        });
    }
    Ok(())
}

/// The helper's body: join the mount namespace of `pid`, mount the host's
/// bpffs there. Runs in a fresh single-threaded process, as setns(CLONE_NEWNS) requires.
pub fn mount_helper(pid: &str) -> Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .context("opening the host mount namespace")?;
    // SAFETY: a valid namespace fd; this process has a single thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the host mount namespace");
    }
    let target = Path::new(SYSTEM_BPFFS);
    if !is_bpffs(target) {
        mount_bpffs(target)?;
    }
    Ok(())
}

/// The nearest ancestor process whose mount namespace differs from ours, if
/// any (we run under `ip netns exec` or similar).
fn outer_mount_ns_pid() -> Result<Option<u32>> {
    let ours = fs::read_link("/proc/self/ns/mnt").context("reading our mount namespace")?;
    let mut pid = std::process::id();
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name is parenthesised and may contain spaces: parse after it.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == 0 {
            return Ok(None);
        }
        match fs::read_link(format!("/proc/{ppid}/ns/mnt")) {
            Ok(theirs) if theirs != ours => return Ok(Some(ppid)),
            Ok(_) => pid = ppid,
            Err(_) => return Ok(None),
        }
    }
}
