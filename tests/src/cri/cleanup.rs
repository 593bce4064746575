//! What a containerd of the tests leaves outside its directory, removed
//! when it is dropped, also after a failure: its pods, containers, shims
//! and their sockets, the pods' namespaces and libcni's cache entries.

use std::{path::Path, process::Command};

use super::{Containerd, oci};

impl Containerd {
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
pub(super) fn pod_namespaces() -> Vec<String> {
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
