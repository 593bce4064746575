//! Network namespace identity: cookies of the current and of every live namespace.

use std::{
    collections::HashSet,
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
};

use anyhow::{Context as _, Result};

/// SO_NETNS_COOKIE (Linux 5.14), not yet in every libc release.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace.
pub fn current_cookie() -> Result<u64> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SO_NETNS_COOKIE");
    }
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the given size.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if ret != 0 {
        return Err(err).context("reading the network namespace cookie (needs Linux 5.14)");
    }
    Ok(cookie)
}

/// The inode number of the initial PID namespace, fixed by the kernel
/// (`PROC_PID_INIT_INO` in include/linux/proc_ns.h).
const INITIAL_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

/// Whether this process sees every process of the machine: it is in the
/// initial PID namespace. A DaemonSet pod without `hostPID`, say, is not.
fn sees_every_process() -> Result<bool> {
    let ns = fs::metadata("/proc/self/ns/pid").context("reading our PID namespace")?;
    Ok(ns.ino() == INITIAL_PID_NAMESPACE_INODE)
}

/// Cookies of every network namespace some process, `ip netns` name or
/// bind mount holds. An error in a PID namespace of its own, whose /proc
/// shows only some of the processes: a namespace held by a process it
/// cannot see would be taken for gone, and its state swept.
pub fn live_cookies() -> Result<HashSet<u64>> {
    if !sees_every_process()? {
        anyhow::bail!(
            "not judging which network namespaces are gone: fan-xdp runs in a PID namespace of its own and sees only some of the processes"
        );
    }
    let mut paths = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                paths.push(entry.path().join("ns/net"));
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        paths.extend(entries.flatten().map(|e| e.path()));
    }
    paths.extend(bind_mounted());
    let mut seen_inodes = HashSet::new();
    let mut cookies = HashSet::new();
    for path in paths {
        let Ok(file) = fs::File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !seen_inodes.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if let Ok(cookie) = cookie_of(&file) {
            cookies.insert(cookie);
        }
    }
    cookies.insert(current_cookie()?);
    Ok(cookies)
}

/// Network namespaces bind-mounted anywhere, in any mount namespace (a
/// runtime's `/var/run/docker/netns/...`, say): they live on with no process
/// in them. Reached through each mount namespace's first process, as
/// `/proc/<pid>/root/<mount point>`.
fn bind_mounted() -> Vec<std::path::PathBuf> {
    let mut seen_mount_ns = HashSet::new();
    let mut paths = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return paths;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(mount_ns) = fs::read_link(entry.path().join("ns/mnt")) else {
            continue;
        };
        if !seen_mount_ns.insert(mount_ns) {
            continue;
        }
        let Ok(mountinfo) = fs::read_to_string(entry.path().join("mountinfo")) else {
            continue;
        };
        for line in mountinfo.lines() {
            // "... mount-point options ... - fstype source super-options"
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            if after.split_whitespace().next() != Some("nsfs") {
                continue;
            }
            if let Some(point) = before.split_whitespace().nth(4) {
                // Octal escapes (\040 for a space) are left as they are: such
                // a path does not open, and only makes the sweep keep more.
                paths.push(
                    entry
                        .path()
                        .join("root")
                        .join(point.trim_start_matches('/')),
                );
            }
        }
    }
    paths
}

/// The cookie of the namespace behind `file`, read on a thread that enters it.
fn cookie_of(file: &fs::File) -> Result<u64> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this short-lived thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                current_cookie()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("namespace probe panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests run as the machine's processes do, in the initial PID
    /// namespace (as fan-xdp on a host, or a DaemonSet pod with hostPID).
    #[test]
    fn the_initial_pid_namespace_is_recognised() {
        assert!(sees_every_process().unwrap());
        assert!(live_cookies().unwrap().contains(&current_cookie().unwrap()));
    }
}
