//! fan-xdp's data plane: one program per hook.
//!
//! - `fan_encap_forward`: TC ingress of a slice bridge (container traffic).
//! - `fan_encap_port`: TC ingress of a container's veth on that bridge (kept by `fan-xdp run`).
//! - `fan_encap_output`: TC egress of fan-xdp's NOARP host device (traffic the host originates).
//! - `fan_decap_tc`: TC ingress of the underlay device.
//! - `fan_decap_xdp`: native XDP on the underlay device.
//! - `fan_vxlan_out`: TC ingress of a VXLAN fan's overlay port (`B`).
//! - `fan_bench_xdp_pass`: only the bench's baseline.
// The programs are built for the BPF target only. A host build of the
// workspace (`cargo build --workspace --all-targets`) compiles this crate
// too: there it is an ordinary, empty program, so that std's panic handler
// and `main` do not clash with the BPF ones.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod decap;
mod encap;
mod events;
mod fib;
mod maps;
mod parse;
mod pmtu;
mod port;
mod ratelimit;
mod stats;
mod tc;
mod vxlan;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use fan_common::Program;

#[classifier]
pub fn fan_encap_forward(ctx: TcContext) -> i32 {
    encap::encapsulate(&ctx, Program::EncapForward)
}

#[classifier]
pub fn fan_encap_port(ctx: TcContext) -> i32 {
    encap::encapsulate(&ctx, Program::EncapPort)
}

#[classifier]
pub fn fan_encap_output(ctx: TcContext) -> i32 {
    encap::encapsulate(&ctx, Program::EncapOutput)
}

#[classifier]
pub fn fan_decap_tc(ctx: TcContext) -> i32 {
    decap::decapsulate_tc(&ctx)
}

#[classifier]
pub fn fan_vxlan_out(ctx: TcContext) -> i32 {
    vxlan::send(&ctx)
}

#[xdp(frags)]
pub fn fan_decap_xdp(ctx: XdpContext) -> u32 {
    decap::decapsulate_xdp(&ctx)
}

/// The bench's baseline: the cheapest XDP program there is. Never attached by fan-xdp.
#[xdp]
pub fn fan_bench_xdp_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
