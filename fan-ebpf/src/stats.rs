//! Counting outcomes.

use fan_common::StatReason;

use crate::maps::FAN_STATS;

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
