//! Small helpers for TC programs.

use aya_ebpf::{helpers::generated::bpf_check_mtu, programs::TcContext};
use fan_common::ipv4::IPV4_HDR_LEN;

use crate::parse::{Ipv4Hdr, ptr_at};

/// Makes the first `want` bytes (or the whole packet, if shorter) directly
/// readable. Headers are almost always linear already; this only costs a
/// helper call for the rare packet whose headers straddle fragments. Ask
/// for no more than will be read: pulling payload out of a fragment copies
/// it, and on a clone (every TCP transmission is one) makes the kernel copy
/// the whole head first, where writing the headers alone would not.
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

/// The current MTU of device `ifindex`, or `None` if there is no such device.
#[inline(always)]
pub fn device_mtu(ctx: &TcContext, ifindex: u32) -> Option<u32> {
    let mut mtu: u32 = 0;
    // The helper reports the device's MTU whatever its own verdict (which
    // ignores gso_size), and fails only for a missing device.
    // SAFETY: `mtu` outlives the call; the context pointer is the program's.
    let ret = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ifindex, &mut mtu, 0, 0) };
    (ret >= 0).then_some(mtu)
}

/// The skb's GSO segment size: 0 for a packet that is not a GSO super-packet.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own context.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// Makes the IPv4 header at `offset` readable in full, options included, and
/// returns its length from IHL and its protocol (unchecked: the parser
/// validates the header; a frame too short for one gives 20 and 0).
#[inline(always)]
pub fn ensure_ipv4_header(ctx: &TcContext, offset: usize) -> (usize, u8) {
    ensure_linear(ctx, offset + IPV4_HDR_LEN);
    let (start, end) = frame(ctx);
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, offset) else {
        return (IPV4_HDR_LEN, 0);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (len, protocol) = unsafe { ((*ip).header_len(), (*ip).protocol) };
    if len > IPV4_HDR_LEN {
        ensure_linear(ctx, offset + len);
    }
    (len, protocol)
}
