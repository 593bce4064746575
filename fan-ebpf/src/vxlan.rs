//! The Fan's VXLAN mode: the overlay port's program, which sends what the
//! slice bridge switches towards other hosts.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};

/// TC ingress of the overlay port `B`.
#[inline(always)]
pub fn send(_ctx: &TcContext) -> i32 {
    // Not written yet: nothing leaves through a VXLAN fan.
    TC_ACT_SHOT
}
