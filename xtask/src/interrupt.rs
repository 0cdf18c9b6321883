//! Ctrl-C (SIGINT) and SIGTERM set a flag instead of killing the demo at once, so that it can
//! still delete its namespaces. std has no signal API; `signal(2)` comes from the libc std
//! already links. Children exec'd by us get the default disposition back, so a Ctrl-C still
//! stops the client that is running.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

extern "C" fn on_signal(_: i32) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install() {
    // SAFETY: the handler only performs an atomic store.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
}

/// Err when a signal arrived, so `?` unwinds to the cleanup.
pub fn check() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}
