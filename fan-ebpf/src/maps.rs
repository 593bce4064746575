//! The maps shared with user space. Names are the pin names user space uses.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use fan_common::{
    Counter, FanEntry, StatReason,
    maps::{Endpoint, FanMeta, FanMetaKey, MAX_ENDPOINTS, MAX_FANS},
};

/// Fan configuration keyed by overlay prefix (network byte order): one LPM
/// lookup of any destination finds its fan, whatever the fleet size.
#[map]
pub static FAN_CONFIG: LpmTrie<u32, FanEntry> = LpmTrie::with_max_entries(MAX_FANS, 0);

/// Per-CPU packet and byte counters, one slot per [`StatReason`].
#[map]
pub static FAN_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(StatReason::COUNT, 0);

/// Containers on this host by overlay address (network byte order), for
/// delivering decapsulated packets into their namespace without the host's
/// forwarding path. Empty unless `fan-xdp run` keeps it.
#[map]
pub static FAN_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// User space's record of each fan (bridge, interface, mode, original
/// sysctls). The programs never read it; it lives here so it is created and
/// pinned with the other maps.
#[map]
pub static FAN_META: HashMap<FanMetaKey, FanMeta> = HashMap::with_max_entries(MAX_FANS, 0);

/// The fan whose overlay contains `addr_raw` (an address in network byte order).
#[inline(always)]
pub fn fan_for(addr_raw: u32) -> Option<&'static FanEntry> {
    FAN_CONFIG.get(Key::new(32, addr_raw))
}
