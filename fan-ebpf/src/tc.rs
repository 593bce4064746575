//! Small helpers for TC programs.

use aya_ebpf::programs::TcContext;

/// Makes the first `want` bytes (or the whole packet, if shorter) directly
/// readable. Headers are almost always linear already; this only costs a
/// helper call for the rare packet whose headers straddle fragments.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, want: usize) {
    let len = ctx.len() as usize;
    let want = if want < len { want } else { len };
    if ctx.data_end() - ctx.data() < want {
        let _ = ctx.pull_data(want as u32);
    }
}

/// The directly readable packet bytes as a `[start, end)` pair.
#[inline(always)]
pub fn frame(ctx: &TcContext) -> (usize, usize) {
    (ctx.data(), ctx.data_end())
}
