//! Debug events (`fan-xdp -v`), rate-limited so that a flood of drops, which
//! a hostile peer can send at will, cannot become a flood of log records.

use aya_log_ebpf::macro_support::{Level, level_enabled};
use fan_common::StatReason;

use crate::{maps::LOG_BUDGET, ratelimit::take_token, stats::count};

/// Events each CPU may emit per second once its burst is spent.
pub const EVENTS_PER_SECOND: u64 = 10;
/// Events a CPU may emit at once after a quiet spell.
pub const EVENT_BURST: u64 = 20;

/// Whether a debug event may be emitted now. With logging off (the verifier
/// sees the level as a constant) this is false and costs nothing; a refused
/// event is counted as `log_suppressed`.
#[inline(always)]
pub fn event_allowed() -> bool {
    if !level_enabled(Level::Debug) {
        return false;
    }
    if take_token(&LOG_BUDGET, EVENTS_PER_SECOND, EVENT_BURST) {
        return true;
    }
    count(StatReason::LogSuppressed, 0);
    false
}
