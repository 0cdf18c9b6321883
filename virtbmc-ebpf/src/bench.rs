//! Benchmark object (`virtbmc-ebpf-bench`): the real program plus two programs for timing it
//! with `BPF_PROG_TEST_RUN`. A repeated test run reuses the frame the previous run rewrote, so
//! `virtbmc_bench` first restores the request from the `BENCH` map and then runs the real
//! program; `virtbmc_bench_restore` only restores. Their difference is the cost of the real
//! program on that request. Never attached anywhere.
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod md5;
mod prog;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    btf_maps::Array,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_get_buff_len, bpf_xdp_store_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// The request to restore: `len` bytes of `frame`; when `reset_slot` is a session slot, its
/// inbound window is reset to `reset_window` too, so that the same in-session request is
/// accepted on every repetition.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BenchFrame {
    pub len: u32,
    pub reset_slot: u32,
    pub reset_window: u64,
    pub frame: [u8; 128],
}

#[btf_map]
static BENCH: Array<BenchFrame, 1> = Array::new();

#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let Some(f) = BENCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: array slot, valid for the whole run.
    let f = unsafe { &*f };
    if let Some(slot) = prog::session_slot(f.reset_slot) {
        // SAFETY: array slot; the benchmark is the only user.
        unsafe { core::ptr::write_volatile(&raw mut (*slot).window, f.reset_window) };
    }
    let want = f.len as usize;
    if want == 0 || want > 128 {
        return false;
    }
    // The helper gives a plain scalar (data_end - data would be pointer arithmetic to LLVM).
    let cur = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let delta = cur as i32 - want as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return false;
    }
    unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, f.frame.as_ptr() as *mut _, want as u32) == 0 }
}

#[xdp]
pub fn virtbmc_bench(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return XDP_ABORTED;
    }
    prog::handle(&ctx)
}

#[xdp]
pub fn virtbmc_bench_restore(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return XDP_ABORTED;
    }
    XDP_PASS
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
