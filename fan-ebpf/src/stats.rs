//! Counting outcomes: in the totals, and per fan once the fan is known.

use aya_ebpf::bindings::BPF_NOEXIST;
use fan_common::{Counter, FanEntry, FanStatKey, StatReason};

use crate::maps::{FAN_STATS, FAN_STATS_BY_FAN};

/// Counts `reason` in the totals.
#[inline(always)]
pub fn count(reason: StatReason, bytes: usize) {
    if let Some(counter) = FAN_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do
        // not preempt each other on one CPU.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
    }
}

/// Counts `reason` in the totals and, if the packet's fan is known, in that
/// fan's counters.
#[inline(always)]
pub fn count_in(fan: Option<&FanEntry>, reason: StatReason, bytes: usize) {
    count(reason, bytes);
    let Some(fan) = fan else {
        return;
    };
    let key = FanStatKey {
        overlay: fan.map.overlay,
        reason: reason as u32,
    };
    if let Some(counter) = FAN_STATS_BY_FAN.get_ptr_mut(key) {
        // SAFETY: as in `count`: this CPU's copy of the entry.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += bytes as u64;
        return;
    }
    let first = Counter {
        packets: 1,
        bytes: bytes as u64,
    };
    // Another CPU may have created the entry meanwhile: then this one
    // packet goes uncounted per fan (never in the totals).
    let _ = FAN_STATS_BY_FAN.insert(key, first, BPF_NOEXIST as u64);
}
