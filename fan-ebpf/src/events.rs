//! Debug events (`fan-xdp -v`), rate-limited so that a flood of drops, which
//! a hostile peer can send at will, cannot become a flood of log records.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_log_ebpf::macro_support::{Level, level_enabled};
use fan_common::StatReason;

use crate::{maps::LOG_BUDGET, stats::count};

/// Events each CPU may emit per second once its burst is spent.
pub const EVENTS_PER_SECOND: u64 = 10;
/// Events a CPU may emit at once after a quiet spell.
pub const EVENT_BURST: u64 = 20;
const NS_PER_EVENT: u64 = 1_000_000_000 / EVENTS_PER_SECOND;

/// A CPU's token bucket: tokens left, and when they were last refilled.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LogBudget {
    tokens: u64,
    refilled_ns: u64,
}

/// Whether a debug event may be emitted now. With logging off (the verifier
/// sees the level as a constant) this is false and costs nothing; a refused
/// event is counted as `log_suppressed`.
#[inline(always)]
pub fn event_allowed() -> bool {
    if !level_enabled(Level::Debug) {
        return false;
    }
    let Some(budget) = LOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot only this CPU touches, and programs do not
    // preempt each other on one CPU.
    let budget = unsafe { &mut *budget };
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let earned = now.wrapping_sub(budget.refilled_ns) / NS_PER_EVENT;
    if earned > 0 {
        let tokens = budget.tokens.saturating_add(earned);
        budget.tokens = if tokens > EVENT_BURST {
            EVENT_BURST
        } else {
            tokens
        };
        budget.refilled_ns = now;
    }
    if budget.tokens == 0 {
        count(StatReason::LogSuppressed, 0);
        return false;
    }
    budget.tokens -= 1;
    true
}
