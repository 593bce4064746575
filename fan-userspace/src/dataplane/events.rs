//! The programs' event ring (`FAN_EVENTS`, see `fan_common::events`) and
//! the setting that asks them for samples of passed packets. The agent is
//! the ring's one reader: a ring buffer has a single consumer position, so
//! a second reader would take events from the first.

use aya::maps::{MapInfo, RingBuf};
use fan_common::events::{Event, SAMPLE_PASSES};

use super::*;

pub struct EventRing {
    ring: RingBuf<MapData>,
    /// The map's id: another pinned id means a new attach created a new ring.
    id: u32,
}

impl EventRing {
    /// The ring pinned in `dir`.
    pub fn open(dir: &StateDir) -> Result<Self> {
        let path = dir.map(EVENTS_MAP);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let id = data.info()?.id();
        let ring = RingBuf::try_from(Map::from_map_data(data)?)?;
        Ok(Self { ring, id })
    }

    /// Whether the ring pinned in `dir` is still this one.
    pub fn is_current(&self, dir: &StateDir) -> bool {
        MapInfo::from_pin(dir.map(EVENTS_MAP)).is_ok_and(|info| info.id() == self.id)
    }

    /// The next event the programs sent, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<Event>() {
            return Some(Event::default());
        }
        // SAFETY: the programs write whole `Event`s (repr(C), integers
        // only), and the read copies it out of the ring whatever its alignment.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) })
    }
}

impl Dataplane {
    /// The next event in this load's ring, if any: for tests of the
    /// programs (the agent reads the pinned ring).
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        let mut ring = RingBuf::try_from(self.map_mut(EVENTS_MAP)?)?;
        let Some(item) = ring.next() else {
            return Ok(None);
        };
        anyhow::ensure!(item.len() >= std::mem::size_of::<Event>(), "a short event");
        // SAFETY: as in `EventRing::next_event`.
        Ok(Some(unsafe {
            std::ptr::read_unaligned(item.as_ptr().cast::<Event>())
        }))
    }
}

impl std::os::fd::AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Turns the programs' samples of passed packets on or off.
pub fn sample_passes(dir: &StateDir, on: bool) -> Result<()> {
    let path = dir.map(EVENT_SETTINGS_MAP);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let mut settings: Array<MapData, u32> = Array::try_from(Map::from_map_data(data)?)?;
    settings
        .set(0, if on { SAMPLE_PASSES } else { 0 }, 0)
        .context("writing the event settings")
}
