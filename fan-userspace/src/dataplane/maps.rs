//! The maps: writing them through a loaded object (attach) or through
//! their pins alone (`PinnedMaps`: show, stats, detach, the agent), and the
//! counters summed over CPUs.

use super::*;

impl Dataplane {
    pub(super) fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name} in the object"))
    }

    /// Writes fan-xdp's record of a fan.
    pub fn insert_meta(&mut self, key: FanMetaKey, meta: &FanMeta) -> Result<()> {
        let mut records: BpfHashMap<_, FanMetaKey, FanMeta> =
            BpfHashMap::try_from(self.map_mut(META_MAP)?)?;
        records
            .insert(key, meta, 0)
            .context("writing the fan record")?;
        Ok(())
    }

    /// Points direct delivery of `addr` at `endpoint`.
    pub fn insert_endpoint(&mut self, addr: WireAddr, endpoint: &Endpoint) -> Result<()> {
        let mut endpoints: BpfHashMap<_, WireAddr, Endpoint> =
            BpfHashMap::try_from(self.map_mut(ENDPOINTS_MAP)?)?;
        endpoints
            .insert(addr, endpoint, 0)
            .context("writing an endpoint")?;
        Ok(())
    }

    /// Adds or replaces the fan whose overlay is `entry.map.overlay`, and
    /// brings the local hosts map in line with the fans configured.
    pub fn insert_fan(&mut self, entry: &FanEntry) -> Result<()> {
        let mut trie: LpmTrie<_, WireAddr, FanEntry> =
            LpmTrie::try_from(self.map_mut(CONFIG_MAP)?)?;
        trie.insert(
            &overlay_key(entry.map.overlay, entry.map.overlay_len),
            entry,
            0,
        )
        .context("writing the fan map entry")?;
        let fans = fan_entries(&trie)?;
        let mut hosts: BpfHashMap<_, WireAddr, LocalHost> =
            BpfHashMap::try_from(self.map_mut(LOCAL_HOSTS_MAP)?)?;
        sync_local_hosts(&mut hosts, &fans)?;
        let mut underlays: LpmTrie<_, WireAddr, u32> =
            LpmTrie::try_from(self.map_mut(UNDERLAYS_MAP)?)?;
        sync_underlays(&mut underlays, &fans)?;
        let mut vxlan: BpfHashMap<_, VxlanKey, WireAddr> =
            BpfHashMap::try_from(self.map_mut(VXLAN_MAP)?)?;
        sync_vxlan(&mut vxlan, &fans)
    }

    /// Sets the bypass value the programs follow (`fan_common::maps::bypass`).
    pub fn set_bypass(&mut self, value: u32) -> Result<()> {
        let mut bypass: Array<_, u32> = Array::try_from(self.map_mut(BYPASS_MAP)?)?;
        bypass
            .set(0, value, 0)
            .context("writing the bypass setting")
    }

    /// Sets the agent's heartbeat to `ns` (CLOCK_MONOTONIC), as the agent
    /// does every second: for tests of the programs.
    pub fn set_heartbeat(&mut self, ns: u64) -> Result<()> {
        let mut agent: Array<_, u64> = Array::try_from(self.map_mut(AGENT_MAP)?)?;
        agent.set(0, ns, 0).context("writing the heartbeat")
    }

    /// The path MTU learned towards remote underlay host `host` (host order).
    pub fn path_mtu(&self, host: u32) -> Result<Option<PathMtu>> {
        let map = self
            .ebpf
            .map(PATH_MTU_MAP)
            .ok_or_else(|| anyhow!("no map {PATH_MTU_MAP}"))?;
        let mtus: BpfHashMap<_, WireAddr, PathMtu> = BpfHashMap::try_from(map)?;
        match mtus.get(&WireAddr::from_host(host), 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a path MTU"),
        }
    }

    /// Every path MTU in the table: (host in host order, entry).
    pub fn path_mtus(&self) -> Result<Vec<(u32, PathMtu)>> {
        let map = self
            .ebpf
            .map(PATH_MTU_MAP)
            .ok_or_else(|| anyhow!("no map {PATH_MTU_MAP}"))?;
        let mtus: BpfHashMap<_, WireAddr, PathMtu> = BpfHashMap::try_from(map)?;
        mtus.iter()
            .map(|entry| {
                let (host, mtu) = entry.context("reading the path MTUs")?;
                Ok((host.to_host(), mtu))
            })
            .collect()
    }

    /// Writes the path MTU towards `host` (host order), as the programs
    /// learn one: for tests of the programs.
    pub fn set_path_mtu(&mut self, host: u32, entry: PathMtu) -> Result<()> {
        let mut mtus: BpfHashMap<_, WireAddr, PathMtu> =
            BpfHashMap::try_from(self.map_mut(PATH_MTU_MAP)?)?;
        mtus.insert(WireAddr::from_host(host), entry, 0)
            .context("writing a path MTU")
    }

    pub fn remove_path_mtu(&mut self, host: u32) -> Result<()> {
        let mut mtus: BpfHashMap<_, WireAddr, PathMtu> =
            BpfHashMap::try_from(self.map_mut(PATH_MTU_MAP)?)?;
        mtus.remove(&WireAddr::from_host(host))
            .context("removing a path MTU")
    }

    /// The counters summed over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or_else(|| anyhow!("no map {STATS_MAP}"))?;
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
        sum_stats(&array)
    }
}

/// The LPM key of an overlay prefix.
pub fn overlay_key(overlay: u32, len: u8) -> Key<WireAddr> {
    Key::new(len.into(), WireAddr::from_host(overlay))
}

/// Every fan entry of a configuration map.
pub(super) fn fan_entries<T: std::borrow::Borrow<MapData>>(
    trie: &LpmTrie<T, WireAddr, FanEntry>,
) -> Result<Vec<FanEntry>> {
    trie.iter()
        .map(|item| Ok(item?.1))
        .collect::<Result<_>>()
        .context("reading the fan map")
}

/// Makes the local hosts map hold exactly the local underlay addresses of
/// `fans`, each with the widest underlay using it and how many fans do. The
/// programs accept fan traffic only for these addresses, refuse it from
/// them, and learn path MTUs only towards hosts of those underlays.
pub(super) fn sync_local_hosts<T: std::borrow::BorrowMut<MapData>>(
    hosts: &mut BpfHashMap<T, WireAddr, LocalHost>,
    fans: &[FanEntry],
) -> Result<()> {
    let mut want: BTreeMap<WireAddr, LocalHost> = BTreeMap::new();
    for fan in fans {
        let host = want
            .entry(WireAddr::from_host(fan.local_host))
            .or_insert(LocalHost {
                underlay: fan.map.underlay,
                underlay_len: fan.map.underlay_len,
                ..LocalHost::default()
            });
        if fan.map.underlay_len < host.underlay_len {
            host.underlay = fan.map.underlay;
            host.underlay_len = fan.map.underlay_len;
        }
        host.fans += 1;
    }
    make_hash_map_hold(hosts, want, "a local host")
}

/// Makes `map` hold exactly `want`: stale keys removed, changed or
/// missing values written (`what` names an entry in errors).
fn make_hash_map_hold<T, K, V>(
    map: &mut BpfHashMap<T, K, V>,
    want: BTreeMap<K, V>,
    what: &str,
) -> Result<()>
where
    T: std::borrow::BorrowMut<MapData>,
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !want.contains_key(key))
        .collect();
    for key in stale {
        map.remove(&key)
            .with_context(|| format!("removing {what}"))?;
    }
    for (key, value) in want {
        if map.get(&key, 0).ok() != Some(value) {
            map.insert(key, value, 0)
                .with_context(|| format!("writing {what}"))?;
        }
    }
    Ok(())
}

/// Makes the underlays map hold exactly the underlays of `fans`, each with
/// how many fans use it: the programs refuse a container's tunnel packets
/// (IP-in-IP, IPv6-in-IPv4, GRE) to any address in them.
pub(super) fn sync_underlays<T: std::borrow::BorrowMut<MapData>>(
    underlays: &mut LpmTrie<T, WireAddr, u32>,
    fans: &[FanEntry],
) -> Result<()> {
    let mut want: BTreeMap<(u32, u8), u32> = BTreeMap::new();
    for fan in fans {
        *want
            .entry((fan.map.underlay, fan.map.underlay_len))
            .or_default() += 1;
    }
    let stale: Vec<Key<WireAddr>> = underlays
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !want.contains_key(&(key.data().to_host(), key.prefix_len() as u8)))
        .collect();
    for key in stale {
        underlays.remove(&key).context("removing an underlay")?;
    }
    for ((underlay, len), fans) in want {
        let key = Key::new(len.into(), WireAddr::from_host(underlay));
        if underlays.get(&key, 0).ok() != Some(fans) {
            underlays
                .insert(&key, fans, 0)
                .context("writing an underlay")?;
        }
    }
    Ok(())
}

/// Makes the VXLAN map hold exactly the VXLAN fans of `fans`, by port and
/// VNI: what a received VXLAN packet must name to be one of ours.
pub(super) fn sync_vxlan<T: std::borrow::BorrowMut<MapData>>(
    vxlan: &mut BpfHashMap<T, VxlanKey, WireAddr>,
    fans: &[FanEntry],
) -> Result<()> {
    let want: BTreeMap<VxlanKey, WireAddr> = fans
        .iter()
        .filter(|fan| fan.is_vxlan())
        .map(|fan| {
            let key = VxlanKey {
                vni: fan.vni,
                port: fan.vxlan_port,
                _pad: 0,
            };
            (key, WireAddr::from_host(fan.map.overlay))
        })
        .collect();
    make_hash_map_hold(vxlan, want, "a VXLAN fan")
}

/// The pinned maps, opened without loading any program (show, stats, detach).
pub struct PinnedMaps {
    pub config: LpmTrie<MapData, WireAddr, FanEntry>,
    pub meta: BpfHashMap<MapData, FanMetaKey, FanMeta>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub endpoints: BpfHashMap<MapData, WireAddr, Endpoint>,
    pub local_hosts: BpfHashMap<MapData, WireAddr, LocalHost>,
    /// The attached fans' underlays; None in a state of map layout 3 or
    /// older (until an attach creates it).
    underlays: Option<LpmTrie<MapData, WireAddr, u32>>,
    /// Path MTUs learned towards remote hosts (an LRU hash map).
    pub path_mtus: BpfHashMap<MapData, WireAddr, PathMtu>,
    /// The VXLAN fans by port and VNI.
    vxlan: BpfHashMap<MapData, VxlanKey, WireAddr>,
    /// The agent's heartbeat.
    pub agent: Array<MapData, u64>,
    /// Whether the fast path may skip netfilter (`fan_common::maps::bypass`).
    pub bypass: Array<MapData, u32>,
    /// The counters per fan; None in a state of map layout 2 (until an
    /// attach migrates it).
    stats_by_fan: Option<PerCpuHashMap<MapData, FanStatKey, Counter>>,
}

impl PinnedMaps {
    pub fn open(dir: &StateDir) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let data = MapData::from_pin(dir.map(name))
                .with_context(|| format!("opening pinned map {}", dir.map(name).display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(Self {
            config: LpmTrie::try_from(open(CONFIG_MAP)?)?,
            meta: BpfHashMap::try_from(open(META_MAP)?)?,
            stats: PerCpuArray::try_from(open(STATS_MAP)?)?,
            endpoints: BpfHashMap::try_from(open(ENDPOINTS_MAP)?)?,
            local_hosts: BpfHashMap::try_from(open(LOCAL_HOSTS_MAP)?)?,
            underlays: match dir.map(UNDERLAYS_MAP).exists() {
                true => Some(LpmTrie::try_from(open(UNDERLAYS_MAP)?)?),
                false => None,
            },
            path_mtus: BpfHashMap::try_from(open(PATH_MTU_MAP)?)?,
            vxlan: BpfHashMap::try_from(open(VXLAN_MAP)?)?,
            agent: Array::try_from(open(AGENT_MAP)?)?,
            bypass: Array::try_from(open(BYPASS_MAP)?)?,
            stats_by_fan: match dir.map(STATS_BY_FAN_MAP).exists() {
                true => Some(PerCpuHashMap::try_from(open(STATS_BY_FAN_MAP)?)?),
                false => None,
            },
        })
    }

    /// Marks every fan's record as written by map layout `version` (after
    /// an attach took over an older layout in place); how many it changed.
    pub fn relabel_layout(&mut self, version: u32) -> Result<usize> {
        let records: Vec<(FanMetaKey, FanMeta)> = self.meta.iter().collect::<Result<_, _>>()?;
        let mut changed = 0;
        for (key, mut meta) in records {
            if meta.layout_version != version {
                meta.layout_version = version;
                self.meta
                    .insert(key, meta, 0)
                    .context("writing a fan record")?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The bypass value the programs follow.
    pub fn bypass(&self) -> Result<u32> {
        self.bypass.get(&0, 0).context("reading the bypass setting")
    }

    pub fn set_bypass(&mut self, value: u32) -> Result<()> {
        self.bypass
            .set(0, value, 0)
            .context("writing the bypass setting")
    }

    /// The agent's heartbeat: the programs follow the endpoint map for
    /// [`fan_common::maps::AGENT_HEARTBEAT_TIMEOUT_NS`] after it.
    pub fn beat(&mut self) -> Result<()> {
        self.agent
            .set(0, monotonic_ns(), 0)
            .context("writing the agent's heartbeat")
    }

    /// The agent stopped: no more direct delivery, whatever the map says.
    pub fn stop_beating(&mut self) -> Result<()> {
        self.agent
            .set(0, 0, 0)
            .context("clearing the agent's heartbeat")
    }

    /// Writes the fan entry `entry` back (an undone change), and its local host.
    pub fn insert_fan(&mut self, entry: &FanEntry) -> Result<()> {
        self.config
            .insert(
                &overlay_key(entry.map.overlay, entry.map.overlay_len),
                entry,
                0,
            )
            .context("writing the fan map entry")?;
        let fans = fan_entries(&self.config)?;
        self.sync_hosts_and_underlays(&fans)
    }

    /// Removes the fan of overlay `overlay/len` (host byte order) from the
    /// programs' configuration, and its local host where no other fan uses it.
    pub fn remove_fan(&mut self, overlay: u32, len: u8) -> Result<()> {
        match self.config.remove(&overlay_key(overlay, len)) {
            Ok(()) => {}
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("removing the fan map entry"),
        }
        // Its counters go with it: a fan attached again starts from zero.
        if let Some(by_fan) = &mut self.stats_by_fan {
            let keys: Vec<FanStatKey> = by_fan
                .keys()
                .filter_map(Result::ok)
                .filter(|key| key.overlay == overlay)
                .collect();
            for key in keys {
                let _ = by_fan.remove(&key);
            }
        }
        let fans = fan_entries(&self.config)?;
        self.sync_hosts_and_underlays(&fans)
    }

    /// Brings the underlays in line with the configured fans: for a state
    /// whose underlays map this version's load has just created.
    pub fn sync_underlays(&mut self) -> Result<()> {
        let fans = fan_entries(&self.config)?;
        match &mut self.underlays {
            Some(underlays) => sync_underlays(underlays, &fans),
            None => Ok(()),
        }
    }

    /// Brings the local hosts, the underlays and the VXLAN fans in line with `fans`.
    fn sync_hosts_and_underlays(&mut self, fans: &[FanEntry]) -> Result<()> {
        sync_local_hosts(&mut self.local_hosts, fans)?;
        sync_vxlan(&mut self.vxlan, fans)?;
        match &mut self.underlays {
            Some(underlays) => sync_underlays(underlays, fans),
            None => Ok(()),
        }
    }

    /// fan-xdp's record of every fan, ordered by overlay.
    pub fn fans(&self) -> Result<Vec<(FanMetaKey, FanMeta)>> {
        let mut fans = self.meta.iter().collect::<Result<Vec<_>, _>>()?;
        fans.sort_by_key(|(key, _)| (key[1], key[0]));
        Ok(fans)
    }

    /// Path MTU entries the LRU table pushed out: entries are only ever added
    /// (expired ones stay until evicted), so this is those added less those held.
    pub fn path_mtus_evicted(&self, stats: &Stats) -> Result<u64> {
        let held = self.path_mtus.keys().count() as u64;
        Ok(stats
            .get(StatReason::PmtuHostAdded)
            .packets
            .saturating_sub(held))
    }

    pub fn stats(&self) -> Result<Stats> {
        sum_stats(&self.stats)
    }

    /// Whether the pinned maps have per-fan counters (not in a state of map
    /// layout 2, until an attach migrates it).
    pub fn has_stats_by_fan(&self) -> bool {
        self.stats_by_fan.is_some()
    }

    /// The counters of each fan that has counted anything, by overlay
    /// network (host byte order); None in a state of map layout 2.
    pub fn stats_by_fan(&self) -> Result<Option<BTreeMap<u32, Stats>>> {
        let Some(by_fan) = &self.stats_by_fan else {
            return Ok(None);
        };
        let mut fans: BTreeMap<u32, Stats> = BTreeMap::new();
        for entry in by_fan.iter() {
            let (key, per_cpu) = entry.context("reading the per-fan counters")?;
            let Some(reason) = StatReason::from_index(key.reason) else {
                continue;
            };
            fans.entry(key.overlay)
                .or_default()
                .0
                .insert(reason.name(), super::stats::summed(&per_cpu));
        }
        Ok(Some(fans))
    }

    /// The counters of every attached fan, named by its overlay (CIDR),
    /// in overlay order; empty in a state of map layout 2.
    pub fn stats_of_fans(&self) -> Result<Vec<FanStats>> {
        let Some(mut by_fan) = self.stats_by_fan()? else {
            return Ok(Vec::new());
        };
        let mut fans = fan_entries(&self.config)?;
        fans.sort_by_key(|f| (f.map.overlay, f.map.overlay_len));
        Ok(fans
            .iter()
            .map(|f| FanStats {
                overlay: format!(
                    "{}/{}",
                    std::net::Ipv4Addr::from(f.map.overlay),
                    f.map.overlay_len
                ),
                encap: fan_common::Encap::try_from(f.encap).map_or("unknown", |e| e.name()),
                stats: by_fan.remove(&f.map.overlay).unwrap_or_default(),
            })
            .collect())
    }
}

/// One fan's counters, named by its overlay, with its wire format.
#[derive(Clone, Debug, Default)]
pub struct FanStats {
    pub overlay: String,
    /// "ipip" or "vxlan".
    pub encap: &'static str,
    pub stats: Stats,
}

/// CLOCK_MONOTONIC in ns: the clock of the programs' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
