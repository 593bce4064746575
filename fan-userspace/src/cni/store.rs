//! The plugin's own address allocation, from the address plan's CNI range,
//! kept where it survives a reboot: `$FAN_XDP_STATE_DIR` (default
//! `/var/lib/fan-xdp`) `/cni/<network>/<slice>/`.
//!
//! - `lock`: flock, held while an allocation is chosen and written, so
//!   parallel ADDs never take the same address;
//! - one file per allocated address, named by it, holding the attachment
//!   (container id, interface name, host port) as JSON;
//! - `last`: the address allocated last; the next search starts after it, so
//!   a released address is not handed out again at once;
//! - `inflight-<key>`: held (flock) by an ADD from before it allocates until
//!   it has answered, so a GC that runs meanwhile leaves its allocation alone.
//!
//! The slice in the path keeps simulated hosts sharing one disk apart, and a
//! host's allocations apart from those of a slice it had before.

use std::{
    fs,
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use fan_common::plan::AddrRange;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::state::{
    create_private_dirs,
    rundir::{open_lock_file, try_flock},
};

/// The default root of state that outlives a boot.
const SYSTEM_STATE_DIR: &str = "/var/lib/fan-xdp";

/// `$FAN_XDP_STATE_DIR`, or `/var/lib/fan-xdp`.
pub fn state_root() -> PathBuf {
    std::env::var_os("FAN_XDP_STATE_DIR")
        .map_or_else(|| PathBuf::from(SYSTEM_STATE_DIR), PathBuf::from)
}

/// One allocation: which attachment holds the address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The file's name, not in it.
    #[serde(skip, default = "unspecified")]
    pub address: Ipv4Addr,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// The host end of the container's veth.
    pub port: String,
}

fn unspecified() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

/// The allocations of one network on one slice.
pub struct Store {
    pub dir: PathBuf,
}

/// `lock`, held.
pub struct Locked {
    _file: fs::File,
}

impl Store {
    /// The store of `network` on `slice` (not created until used).
    pub fn of(network: &str, slice: Ipv4Network) -> Self {
        Self {
            dir: Self::network_dir(network).join(format!("{}-{}", slice.network(), slice.prefix())),
        }
    }

    pub fn network_dir(network: &str) -> PathBuf {
        state_root().join("cni").join(network)
    }

    /// Every slice's store of `network` (for a DEL that can no longer tell
    /// the slice: its fan was detached).
    pub fn all_of(network: &str) -> Vec<Self> {
        let Ok(entries) = fs::read_dir(Self::network_dir(network)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| Self { dir: e.path() })
            .collect()
    }

    fn create(&self) -> Result<()> {
        let root = state_root();
        let cni = root.join("cni");
        let network = self.dir.parent().context("a store has a parent")?;
        create_private_dirs(
            &[&root, &cni, network, &self.dir],
            "the CNI state directory",
        )
    }

    /// Takes `lock`, waiting for another ADD, DEL or GC of this slice.
    pub fn lock(&self) -> Result<Locked> {
        self.create()?;
        let file = open_lock_file(&self.dir.join("lock"))?;
        try_flock(&file, libc::LOCK_EX)?;
        Ok(Locked { _file: file })
    }

    /// Marks the ADD of attachment `key` as in flight for as long as the
    /// result lives.
    pub fn in_flight(&self, key: &str) -> Result<InFlight> {
        self.create()?;
        let path = self.dir.join(format!("inflight-{key}"));
        let file = open_lock_file(&path)?;
        try_flock(&file, libc::LOCK_EX)?;
        Ok(InFlight { path, _file: file })
    }

    /// Whether an ADD of `key` is in flight (its marker is locked).
    pub fn is_in_flight(&self, key: &str) -> bool {
        let path = self.dir.join(format!("inflight-{key}"));
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            return false;
        };
        !try_flock(&file, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(false)
    }

    /// Every allocation, by address.
    pub fn list(&self, _: &Locked) -> Result<Vec<Allocation>> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let Ok(address) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let text = fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let mut allocation: Allocation = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an allocation", entry.path().display()))?;
            allocation.address = address;
            out.push(allocation);
        }
        out.sort_by_key(|a| a.address);
        Ok(out)
    }

    /// The allocation of (container id, interface), if any.
    pub fn find(
        &self,
        lock: &Locked,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Allocation>> {
        Ok(self
            .list(lock)?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname))
    }

    /// Allocates the first free address of `range` after the last one
    /// allocated (wrapping), for `wanted`; `taken` are addresses known to
    /// be in use otherwise (bound by the agent). None if every one is taken.
    pub fn allocate(
        &self,
        lock: &Locked,
        range: AddrRange,
        wanted: &Allocation,
        taken: &[Ipv4Addr],
    ) -> Result<Option<Ipv4Addr>> {
        let used: Vec<Ipv4Addr> = self.list(lock)?.into_iter().map(|a| a.address).collect();
        let last = fs::read_to_string(self.dir.join("last"))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok())
            .filter(|a| range.contains(*a));
        let (first, count) = (u32::from(range.first), range.len());
        let start = last.map_or(0, |a| u32::from(a) - first + 1);
        for step in 0..count {
            let candidate = Ipv4Addr::from(first + (start + step) % count);
            if used.contains(&candidate) || taken.contains(&candidate) {
                continue;
            }
            write_new(
                &self.dir.join(candidate.to_string()),
                &serde_json::to_vec(wanted)?,
            )?;
            replace(&self.dir.join("last"), candidate.to_string().as_bytes())?;
            return Ok(Some(candidate));
        }
        Ok(None)
    }

    /// Releases `address` (gone already is fine).
    pub fn release(&self, _: &Locked, address: Ipv4Addr) -> Result<()> {
        match fs::remove_file(self.dir.join(address.to_string())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("releasing {address}"))
            }
            _ => Ok(()),
        }
    }
}

/// An ADD in flight: the marker is removed (while still locked) and
/// unlocked when this drops.
pub struct InFlight {
    path: PathBuf,
    _file: fs::File,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes a new file (refusing to follow or replace anything there).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces a file's contents atomically.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes)?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("fan-cni-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Store { dir }
    }

    fn wanted(id: &str) -> Allocation {
        Allocation {
            address: Ipv4Addr::UNSPECIFIED,
            container_id: id.into(),
            ifname: "eth0".into(),
            port: format!("fv{id}"),
        }
    }

    fn lock(s: &Store) -> Locked {
        let file = open_lock_file(&s.dir.join("lock")).unwrap();
        Locked { _file: file }
    }

    #[test]
    fn allocations_go_round_the_range_and_skip_what_is_taken() {
        let s = store("round");
        let l = lock(&s);
        let a = |n| Ipv4Addr::new(250, 0, 1, n);
        let range = AddrRange::new(a(252), a(254));
        assert_eq!(
            s.allocate(&l, range, &wanted("c1"), &[a(252)]).unwrap(),
            Some(a(253))
        );
        assert_eq!(
            s.allocate(&l, range, &wanted("c2"), &[]).unwrap(),
            Some(a(254))
        );
        assert_eq!(
            s.allocate(&l, range, &wanted("c3"), &[]).unwrap(),
            Some(a(252))
        );
        assert_eq!(s.allocate(&l, range, &wanted("c4"), &[]).unwrap(), None);
        assert_eq!(s.find(&l, "c2", "eth0").unwrap().unwrap().address, a(254));
        s.release(&l, a(253)).unwrap();
        s.release(&l, a(253)).unwrap();
        // After .252 (the last), the search wraps to the freed .253.
        assert_eq!(
            s.allocate(&l, range, &wanted("c5"), &[]).unwrap(),
            Some(a(253))
        );
        let listed: Vec<_> = s
            .list(&l)
            .unwrap()
            .into_iter()
            .map(|x| x.container_id)
            .collect();
        assert_eq!(listed, ["c3", "c5", "c2"]);
        fs::remove_dir_all(&s.dir).unwrap();
    }
}
