//! The route query both encapsulating hops make of `bpf_fib_lookup`.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::generated::bpf_fib_lookup as fib_lookup, programs::TcContext,
};

/// `AF_INET`, for the route lookup.
pub const AF_INET: u8 = 2;

/// `bpf_fib_lookup`'s 64 bytes, as the 4-byte words the zeroing writes.
const WORDS: usize = size_of::<bpf_fib_lookup>() / size_of::<u32>();

/// An IPv4 route query in `slot`: every field zero but the ones given
/// (addresses in network order). The zeroing is sixteen word stores: a
/// `mem::zeroed()` of the struct compiles to a call of the BPF build's
/// byte-at-a-time `memset`, sixty-four rounds of a loop per packet.
#[inline(always)]
pub fn ipv4_query(
    slot: &mut MaybeUninit<bpf_fib_lookup>,
    ifindex: u32,
    protocol: u8,
    tos: u8,
    src: u32,
    dst: u32,
) -> &mut bpf_fib_lookup {
    let words = slot.as_mut_ptr().cast::<u32>();
    for i in 0..WORDS {
        // SAFETY: `i` words into the slot's 64 bytes, which are aligned for
        // the struct's 4-byte fields. Volatile, so the compiler keeps the
        // stores instead of folding them back into a `memset` call.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was just written, and zero is a valid value of
    // every field.
    let params = unsafe { slot.assume_init_mut() };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    params.ifindex = ifindex;
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params
}

/// Asks the kernel's routing table `params` for the packet of `ctx`, with
/// no flags: the rules and the main table as the stack would route it (no
/// `BPF_FIB_LOOKUP_OUTPUT`, which would skip a host route through another
/// device for a wider one through the query's). The `BPF_FIB_LKUP_RET_*`
/// answer; `params` holds the result.
#[inline(always)]
pub fn lookup(ctx: &TcContext, params: &mut bpf_fib_lookup) -> u32 {
    // SAFETY: `params` is borrowed for the duration of the call and is the
    // size given; the context pointer is the program's.
    unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        ) as u32
    }
}
