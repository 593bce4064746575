//! The maps shared with user space. Names are the pin names user space uses.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use fan_common::{
    Counter, FanEntry, FanStatKey, StatReason, WireAddr,
    events::EVENT_RING_BYTES,
    maps::{
        AGENT_HEARTBEAT_TIMEOUT_NS, Endpoint, FanMeta, FanMetaKey, LocalHost, MAX_ENDPOINTS,
        MAX_FANS, MAX_PATH_MTUS, PathMtu, VxlanKey,
    },
    stats::MAX_FAN_STATS,
};

use crate::ratelimit::TokenBucket;

/// Fan configuration keyed by overlay prefix (network byte order): one LPM
/// lookup of any destination finds its fan, whatever the fleet size.
#[map]
pub static FAN_CONFIG: LpmTrie<WireAddr, FanEntry> = LpmTrie::with_max_entries(MAX_FANS, 0);

/// This host's underlay addresses (network byte order), one per attached
/// fan's local host: what makes an outer destination ours.
#[map]
pub static FAN_LOCAL_HOSTS: HashMap<WireAddr, LocalHost> = HashMap::with_max_entries(MAX_FANS, 0);

/// The underlays of the attached fans, keyed by prefix (network byte
/// order), each with how many fans use it: what a container's tunnel
/// packets may not be sent to.
#[map]
pub static FAN_UNDERLAYS: LpmTrie<WireAddr, u32> = LpmTrie::with_max_entries(MAX_FANS, 0);

/// The VXLAN fans by UDP port and VNI (host byte order), each naming its
/// overlay network (network byte order) for [`fan_for`]: what makes a
/// received VXLAN packet one of ours.
#[map]
pub static FAN_VXLAN: HashMap<VxlanKey, WireAddr> = HashMap::with_max_entries(MAX_FANS, 0);

/// Path MTUs learned towards remote underlay hosts (network byte order),
/// from ICMP fragmentation needed received on the underlay device only.
#[map]
pub static FAN_PATH_MTU: LruHashMap<WireAddr, PathMtu> =
    LruHashMap::with_max_entries(MAX_PATH_MTUS, 0);

/// Per-CPU packet and byte counters, one slot per [`StatReason`].
#[map]
pub static FAN_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(StatReason::COUNT, 0);

/// The same counters per fan, for the outcomes decided once a packet's fan
/// is known; an entry appears with a fan's first packet of that outcome.
#[map]
pub static FAN_STATS_BY_FAN: PerCpuHashMap<FanStatKey, Counter> =
    PerCpuHashMap::with_max_entries(MAX_FAN_STATS, 0);

/// Containers on this host by overlay address (network byte order), for
/// delivering decapsulated packets into their namespace without the host's
/// forwarding path. Empty unless `fan-xdp run` keeps it.
#[map]
pub static FAN_ENDPOINTS: HashMap<WireAddr, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// The agent's heartbeat (CLOCK_MONOTONIC ns, 0 when it stopped): the
/// endpoint map is followed only while it is fresh.
#[map]
pub static FAN_AGENT: Array<u64> = Array::with_max_entries(1, 0);

/// Whether the fast path may skip the host's netfilter (see
/// `fan_common::maps::bypass`); written by attach and the agent.
#[map]
pub static FAN_BYPASS: Array<u32> = Array::with_max_entries(1, 0);

/// Whether fan traffic must take the host's stack, for its netfilter.
#[inline(always)]
pub fn bypass_off() -> bool {
    FAN_BYPASS
        .get(0)
        .is_some_and(|value| fan_common::maps::bypass::is_off(*value))
}

/// Whether the agent that keeps the endpoint map has beaten recently.
#[inline(always)]
pub fn agent_alive() -> bool {
    let Some(beat) = FAN_AGENT.get(0) else {
        return false;
    };
    // The coarse clock: asked on every delivered packet, and a clock-source
    // read costs tens of ns on a VM while seconds are what matter here. It
    // lags CLOCK_MONOTONIC, which the agent beats by, by up to a tick: a
    // beat that seems to lie ahead is a beat just now.
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    *beat != 0 && now.saturating_sub(*beat) < AGENT_HEARTBEAT_TIMEOUT_NS
}

/// User space's record of each fan (bridge, interface, mode, original
/// sysctls). The programs never read it; it lives here so it is created and
/// pinned with the other maps.
#[map]
pub static FAN_META: HashMap<FanMetaKey, FanMeta> = HashMap::with_max_entries(MAX_FANS, 0);

/// Drop events and samples for `fan-xdp run`, which fans them out to
/// `fan-xdp monitor` (see `fan_common::events`).
#[map]
pub static FAN_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Slot 0: what the monitors ask for (`fan_common::events::SAMPLE_PASSES`);
/// written by the agent.
#[map]
pub static FAN_EVENT_SETTINGS: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU token buckets of the drop events, of the samples, and of the
/// ICMP answers to packets too big for a learned path. Not pinned: each
/// load starts full.
#[map]
pub static DROP_EVENT_BUDGET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SAMPLE_BUDGET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static ICMP_BUDGET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// This host's underlay address `addr`, if it is one.
#[inline(always)]
pub fn local_host(addr: WireAddr) -> Option<&'static LocalHost> {
    // SAFETY: a lookup with a key on our stack; the value stays valid for this run.
    unsafe { FAN_LOCAL_HOSTS.get(addr) }
}

/// Whether `addr` is one of this host's underlay addresses.
#[inline(always)]
pub fn is_local_host(addr: WireAddr) -> bool {
    local_host(addr).is_some()
}

/// The VXLAN fan of UDP destination port `port` and network `vni`.
#[inline(always)]
pub fn vxlan_fan(port: u16, vni: u32) -> Option<&'static FanEntry> {
    let key = VxlanKey { vni, port, _pad: 0 };
    // SAFETY: a lookup with a key on our stack; the value is copied out.
    let overlay = *unsafe { FAN_VXLAN.get(key) }?;
    fan_for(overlay).filter(|fan| fan.is_vxlan() && fan.vni == vni && fan.vxlan_port == port)
}

/// The fan whose overlay contains `addr`.
#[inline(always)]
pub fn fan_for(addr: WireAddr) -> Option<&'static FanEntry> {
    FAN_CONFIG.get(Key::new(32, addr))
}

/// The fan a packet's source `src` (host order) is from, given its
/// destination's fan: that fan if its overlay holds `src` (one lookup
/// saved), else the fan whose overlay does.
#[inline(always)]
pub fn source_fan(dst_fan: &'static FanEntry, src: u32) -> Option<&'static FanEntry> {
    if dst_fan.map.overlay_contains(src) {
        Some(dst_fan)
    } else {
        fan_for(WireAddr::from_host(src))
    }
}
