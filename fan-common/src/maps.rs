//! Values carried in the BPF maps, laid out identically on both sides.

use crate::fan::FanMap;

/// Bumped whenever a map's key or value layout changes, so a loader never
/// reuses pinned maps written by an incompatible version.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Most fans one host can carry (entries in the LPM trie keyed by overlay).
pub const MAX_FANS: u32 = 256;

/// Value of the fan configuration map, keyed by the overlay prefix (network
/// byte order) so that an LPM lookup of any address finds its fan in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FanEntry {
    pub map: FanMap,
    /// This host's underlay address (host byte order): the outer source, and
    /// the owner of the local slice.
    pub local_host: u32,
    /// The underlay device encapsulated packets leave by.
    pub underlay_ifindex: u32,
}

impl FanEntry {
    /// The first address of this host's slice, in host byte order.
    #[inline(always)]
    pub const fn local_slice(&self) -> u32 {
        self.map.slice_of(self.local_host)
    }

    /// Whether `addr` lies in this host's own slice (delivered locally).
    #[inline(always)]
    pub const fn is_local(&self, addr: u32) -> bool {
        self.map.slice_contains(self.local_host, addr)
    }
}

#[cfg(feature = "user")]
// SAFETY: FanEntry is repr(C), Copy, and made only of integers with explicit padding.
unsafe impl aya::Pod for FanEntry {}
