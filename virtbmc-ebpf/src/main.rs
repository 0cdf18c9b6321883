//! The virtbmc XDP object: one program, `virtbmc_xdp` (see `prog.rs`).
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod md5;
mod prog;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
