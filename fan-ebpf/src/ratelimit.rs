//! Per-CPU token buckets: bounds on work a hostile sender can make the
//! programs do on its behalf (log records, ICMP answers).

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::PerCpuArray};

/// One CPU's bucket: tokens left, and when they were last refilled.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TokenBucket {
    tokens: u64,
    refilled_ns: u64,
}

/// Takes a token from this CPU's bucket in `buckets` (slot 0), which earns
/// `per_second` tokens a second up to `burst`. False when it is empty.
#[inline(always)]
pub fn take_token(buckets: &PerCpuArray<TokenBucket>, per_second: u64, burst: u64) -> bool {
    let Some(bucket) = buckets.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot only this CPU touches, and programs do not
    // preempt each other on one CPU.
    let bucket = unsafe { &mut *bucket };
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let earned = now.wrapping_sub(bucket.refilled_ns) / (1_000_000_000 / per_second);
    if earned > 0 {
        let tokens = bucket.tokens.saturating_add(earned);
        bucket.tokens = if tokens > burst { burst } else { tokens };
        bucket.refilled_ns = now;
    }
    if bucket.tokens == 0 {
        return false;
    }
    bucket.tokens -= 1;
    true
}
