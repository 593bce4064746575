//! The plugin's own address allocation, from the address plan's CNI range,
//! kept where it survives a reboot: `$FAN_XDP_STATE_DIR` (default
//! `/var/lib/fan-xdp`) `/cni/<network>/<slice>/`.
//!
//! - `lock`: flock, held while an allocation is chosen and written, so
//!   parallel ADDs never take the same address;
//! - one file per allocated address, named by it, holding the attachment
//!   (container id, interface name, host port) as JSON, written whole or not
//!   at all: into `.<address>.tmp`, synced, linked into place, the directory
//!   synced (a temporary left by a crash is removed under the lock);
//! - `<address>.corrupt`: an allocation file that could not be read (a torn
//!   write of an older version, a damaged disk), set aside so that it never
//!   blocks the slice again. Its attachment is unknown, so the address stays
//!   reserved: no ADD gets it, until a GC proves that no attachment can hold
//!   it (see [`Store::release_unowned_reservations`]);
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

use super::{config::Attachment, ids::port_name};
use crate::agent::bindings::Pod;
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
    /// The Kubernetes pod, when the runtime named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
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

    /// The host ports of the ADDs in flight (their markers are locked).
    pub fn ports_in_flight(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let key = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("inflight-")?
                    .to_string();
                self.is_in_flight(&key).then(|| port_name(&key))
            })
            .collect()
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

    /// Every allocation, by address. An allocation file that cannot be
    /// parsed is set aside as `<address>.corrupt` (its address stays
    /// reserved, see [`Store::reserved`]); temporaries left by a crash are removed.
    pub fn list(&self, _: &Locked) -> Result<Vec<Allocation>> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // Only a writer holding the lock writes one: this one's writer died.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(address) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let bytes = fs::read(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            match serde_json::from_slice::<Allocation>(&bytes) {
                Ok(mut allocation) => {
                    allocation.address = address;
                    out.push(allocation);
                }
                Err(e) => self.set_aside(address, &e)?,
            }
        }
        out.sort_by_key(|a| a.address);
        Ok(out)
    }

    /// Moves the unreadable allocation file of `address` to `<address>.corrupt`.
    fn set_aside(&self, address: Ipv4Addr, why: &serde_json::Error) -> Result<()> {
        let from = self.dir.join(address.to_string());
        let to = self.dir.join(format!("{address}{CORRUPT}"));
        fs::rename(&from, &to).with_context(|| format!("setting aside {}", from.display()))?;
        sync_dir(&self.dir)?;
        eprintln!(
            "fan: the allocation file {} is unreadable ({why}); moved to {}, {address} stays reserved until a GC shows no attachment holds it",
            from.display(),
            to.display()
        );
        Ok(())
    }

    /// The addresses whose allocation file was set aside as unreadable.
    pub fn reserved(&self, _: &Locked) -> Vec<Ipv4Addr> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Ipv4Addr> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(CORRUPT)?.parse().ok()
            })
            .collect();
        out.sort();
        out
    }

    /// Releases the set-aside addresses no attachment can hold: only when
    /// every attachment in `valid` (the runtime's every live attachment of
    /// this network) has a readable allocation here, so that none of them
    /// is the unreadable one's, and none of `bound` (addresses the agent
    /// delivers to a port) is it. Returns the addresses released.
    pub fn release_unowned_reservations(
        &self,
        lock: &Locked,
        valid: &[Attachment],
        bound: &[Ipv4Addr],
    ) -> Result<Vec<Ipv4Addr>> {
        let listed = self.list(lock)?;
        let every_valid_has_its_own = valid.iter().all(|v| {
            listed
                .iter()
                .any(|a| a.container_id == v.container_id && a.ifname == v.ifname)
        });
        if !every_valid_has_its_own {
            return Ok(Vec::new());
        }
        let mut released = Vec::new();
        for address in self.reserved(lock) {
            if bound.contains(&address) {
                continue;
            }
            fs::remove_file(self.dir.join(format!("{address}{CORRUPT}")))
                .with_context(|| format!("releasing the reservation of {address}"))?;
            released.push(address);
        }
        Ok(released)
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
        let mut used: Vec<Ipv4Addr> = self.list(lock)?.into_iter().map(|a| a.address).collect();
        used.extend(self.reserved(lock));
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
                &self.dir,
                &candidate.to_string(),
                &serde_json::to_vec(wanted)?,
            )?;
            replace(&self.dir, "last", candidate.to_string().as_bytes())?;
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

/// The suffix of an allocation file set aside as unreadable.
const CORRUPT: &str = ".corrupt";

/// Writes `bytes` to a private temporary file in `dir`, synced; the caller
/// puts it in place.
fn write_temporary(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    Ok(tmp)
}

/// Creates `dir/name` holding `bytes`, whole or not at all, and durably;
/// refuses to replace anything there.
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = write_temporary(dir, name, bytes)?;
    let path = dir.join(name);
    // link(2) fails if the name exists: never replaces.
    let linked = fs::hard_link(&tmp, &path).with_context(|| format!("creating {}", path.display()));
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_dir(dir)
}

/// Replaces `dir/name` with `bytes` atomically and durably.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = write_temporary(dir, name, bytes)?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
    sync_dir(dir)
}

/// fsync(2) of a directory: the names created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
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
            pod: None,
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

    #[test]
    fn a_torn_allocation_file_blocks_nothing_and_its_address_stays_reserved() {
        let s = store("torn");
        let l = lock(&s);
        let a = |n| Ipv4Addr::new(250, 0, 1, n);
        let range = AddrRange::new(a(252), a(254));
        assert_eq!(
            s.allocate(&l, range, &wanted("c1"), &[]).unwrap(),
            Some(a(252))
        );
        // What a crash between create and write left (the old way of writing).
        fs::write(
            s.dir.join(a(253).to_string()),
            br#"{"containerID":"c2","if"#,
        )
        .unwrap();
        // ADD (find, allocate), DEL (find) and GC (list) all still work,
        // and nobody else gets .253: its container may be using it.
        assert_eq!(s.find(&l, "c1", "eth0").unwrap().unwrap().address, a(252));
        assert_eq!(
            s.allocate(&l, range, &wanted("c3"), &[]).unwrap(),
            Some(a(254))
        );
        assert_eq!(s.allocate(&l, range, &wanted("c4"), &[]).unwrap(), None);
        let listed: Vec<_> = s.list(&l).unwrap().into_iter().map(|x| x.address).collect();
        assert_eq!(listed, [a(252), a(254)]);
        assert!(s.dir.join("250.0.1.253.corrupt").exists());
        fs::remove_dir_all(&s.dir).unwrap();
    }

    #[test]
    fn a_gc_releases_a_set_aside_address_only_once_no_attachment_can_hold_it() {
        let s = store("reserved");
        let l = lock(&s);
        let a = |n| Ipv4Addr::new(250, 0, 1, n);
        let range = AddrRange::new(a(252), a(254));
        s.allocate(&l, range, &wanted("c1"), &[]).unwrap();
        fs::write(s.dir.join(a(253).to_string()), b"").unwrap();
        s.list(&l).unwrap();
        assert_eq!(s.reserved(&l), [a(253)]);
        let valid = |ids: &[&str]| -> Vec<Attachment> {
            ids.iter()
                .map(|id| Attachment {
                    container_id: (*id).into(),
                    ifname: "eth0".into(),
                })
                .collect()
        };
        // c2 is live and has no readable allocation: .253 may be its.
        assert_eq!(
            s.release_unowned_reservations(&l, &valid(&["c1", "c2"]), &[])
                .unwrap(),
            Vec::<Ipv4Addr>::new()
        );
        // The agent still delivers .253 to a port.
        assert_eq!(
            s.release_unowned_reservations(&l, &valid(&["c1"]), &[a(253)])
                .unwrap(),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(
            s.release_unowned_reservations(&l, &valid(&["c1"]), &[])
                .unwrap(),
            [a(253)]
        );
        assert!(s.reserved(&l).is_empty());
        assert_eq!(
            s.allocate(&l, range, &wanted("c2"), &[]).unwrap(),
            Some(a(253))
        );
        fs::remove_dir_all(&s.dir).unwrap();
    }

    #[test]
    fn writes_leave_no_temporary_and_a_crashed_writers_is_removed() {
        let s = store("tmp");
        let l = lock(&s);
        let a = |n| Ipv4Addr::new(250, 0, 1, n);
        fs::write(s.dir.join(".250.0.1.253.tmp"), b"{").unwrap();
        let range = AddrRange::new(a(252), a(254));
        s.allocate(&l, range, &wanted("c1"), &[]).unwrap();
        let mut names: Vec<String> = fs::read_dir(&s.dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["250.0.1.252", "last", "lock"]);
        fs::remove_dir_all(&s.dir).unwrap();
    }
}
