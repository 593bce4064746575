//! Counters pinned by an older version that knew fewer reasons: the totals
//! (a slot per reason) and the per-fan counters (sized by the reasons) are
//! maps whose size the kernel fixes at creation. A load over such a state
//! reads them, unpins them, creates them at this version's size and writes
//! every value back, slot for slot (new reasons are only ever appended).
//! The old programs count into the old maps until attach replaces them:
//! those few packets are the carry-over's only loss.

use super::*;

/// One counter's values, a value per CPU.
type PerCpu = Vec<Counter>;
/// The totals map as pinned, one counter per slot.
type Totals = PerCpuArray<MapData, Counter>;
/// The per-fan counters map as pinned.
type ByFan = PerCpuHashMap<MapData, FanStatKey, Counter>;

/// The counters read from maps too small for this version, and the maps
/// themselves, to pin back if the load fails.
pub(super) struct CarriedCounters {
    /// The totals map, and its slots' values in slot order.
    totals: Option<(Totals, Vec<PerCpu>)>,
    /// The per-fan map, and its entries.
    by_fan: Option<(ByFan, Vec<(FanStatKey, PerCpu)>)>,
    dir: StateDir,
}

impl CarriedCounters {
    /// Reads and unpins the counter maps in `dir` pinned at another size
    /// than this version's. A larger one was made by a newer fan-xdp, whose
    /// reasons this one cannot name: refused, with nothing changed.
    pub(super) fn take(dir: &StateDir) -> Result<Self> {
        let totals = match Self::resized(dir, STATS_MAP, StatReason::COUNT)? {
            Some(data) => {
                let array = PerCpuArray::try_from(Map::PerCpuArray(data))?;
                let values = (0..array.len())
                    .map(|slot| Ok(array.get(&slot, 0)?.iter().copied().collect()))
                    .collect::<Result<Vec<_>>>()
                    .context("reading the older counters")?;
                Some((array, values))
            }
            None => None,
        };
        let by_fan = match Self::resized(dir, STATS_BY_FAN_MAP, fan_common::stats::MAX_FAN_STATS)? {
            Some(data) => {
                let map = PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?;
                let entries = map
                    .iter()
                    .map(|entry| {
                        let (key, values) = entry?;
                        Ok((key, values.iter().copied().collect()))
                    })
                    .collect::<Result<Vec<_>>>()
                    .context("reading the older per-fan counters")?;
                Some((map, entries))
            }
            None => None,
        };
        // Unpinned once both are read: a failure before leaves the state as it was.
        for (name, taken) in [
            (STATS_MAP, totals.is_some()),
            (STATS_BY_FAN_MAP, by_fan.is_some()),
        ] {
            if taken {
                let path = dir.map(name);
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
            }
        }
        Ok(Self {
            totals,
            by_fan,
            dir: dir.clone(),
        })
    }

    /// The map `name` pinned in `dir` if its size is not `wanted`.
    fn resized(dir: &StateDir, name: &str, wanted: u32) -> Result<Option<MapData>> {
        let path = dir.map(name);
        if !path.exists() {
            return Ok(None);
        }
        let size = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .max_entries();
        if size == wanted {
            return Ok(None);
        }
        anyhow::ensure!(
            size < wanted,
            "{} has {size} slots, more than the {wanted} this fan-xdp knows: a newer fan-xdp \
             attached here; run that version, or detach with it first",
            path.display()
        );
        log::info!(
            "{} has {size} slots, this version {wanted}: carrying its counters over",
            path.display()
        );
        Ok(Some(MapData::from_pin(&path)?))
    }

    /// Pins the older maps back where they were (the load failed).
    pub(super) fn put_back(self) {
        let pin_back = |name: &str, pinned: Result<(), aya::pin::PinError>| {
            if let Err(e) = pinned {
                log::warn!("could not pin {} back: {e}", self.dir.map(name).display());
            }
        };
        if let Some((array, _)) = self.totals {
            pin_back(STATS_MAP, array.pin(self.dir.map(STATS_MAP)));
        }
        if let Some((map, _)) = self.by_fan {
            pin_back(STATS_BY_FAN_MAP, map.pin(self.dir.map(STATS_BY_FAN_MAP)));
        }
    }

    /// Writes the carried values, if any, into the maps this load created.
    pub(super) fn restore(self, ebpf: &mut Ebpf) -> Result<()> {
        if let Some((_, values)) = self.totals {
            let map = ebpf
                .map_mut(STATS_MAP)
                .ok_or_else(|| anyhow!("no map {STATS_MAP}"))?;
            let mut array: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)?;
            for (slot, per_cpu) in (0u32..).zip(values) {
                array.set(slot, aya::maps::PerCpuValues::try_from(per_cpu)?, 0)?;
            }
        }
        if let Some((_, entries)) = self.by_fan {
            let map = ebpf
                .map_mut(STATS_BY_FAN_MAP)
                .ok_or_else(|| anyhow!("no map {STATS_BY_FAN_MAP}"))?;
            let mut by_fan: PerCpuHashMap<_, FanStatKey, Counter> = PerCpuHashMap::try_from(map)?;
            for (key, per_cpu) in entries {
                by_fan.insert(key, aya::maps::PerCpuValues::try_from(per_cpu)?, 0)?;
            }
        }
        Ok(())
    }
}
