//! The virtbmc XDP object: one program, `virtbmc_xdp` (see `prog.rs`).
#![no_std]
#![no_main]

mod prog;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
