//! Stage 3 shared state, userspace side: the mmapped `SESSIONS` slots with the atomics the
//! protocol in `virtbmc_common::session` prescribes. The engine (through the agent) uses this
//! for every packet of a published IPMI 1.5 session instead of a private sequence window.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use virtbmc_common::session::{
    MAX_SESSIONS, SESSION_ACTIVE, SESSION_CLOSING, SESSION_FREE, V15Session, window_check,
    window_commit,
};

/// The `SESSIONS` array, mapped shared read/write.
pub struct SessionSlots {
    base: NonNull<V15Session>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; every mutable access goes through atomics, or
// writes fields that the protocol makes immutable while the program may read them.
unsafe impl Send for SessionSlots {}
unsafe impl Sync for SessionSlots {}

impl SessionSlots {
    /// Maps the array behind `fd` (a `BPF_F_MMAPABLE` array of `MAX_SESSIONS` slots).
    pub(super) fn map(fd: impl AsFd) -> std::io::Result<Self> {
        let fd = fd.as_fd().try_clone_to_owned()?;
        let len = MAX_SESSIONS as usize;
        let bytes = len * std::mem::size_of::<V15Session>();
        // SAFETY: a fresh shared mapping of the whole map; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
            _fd: fd,
        })
    }

    pub fn capacity(&self) -> u32 {
        self.len as u32
    }

    fn slot(&self, slot: u32) -> *mut V15Session {
        assert!(
            (slot as usize) < self.len,
            "session slot {slot} out of range"
        );
        // SAFETY: in bounds of the mapping.
        unsafe { self.base.as_ptr().add(slot as usize) }
    }

    /// A copy of the slot (fields read without ordering; for inspection and tests).
    pub fn get(&self, slot: u32) -> V15Session {
        // SAFETY: in bounds; a racy read of plain bytes is what inspection wants.
        unsafe { std::ptr::read_volatile(self.slot(slot)) }
    }

    fn state(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: aligned u32 inside the mapping, shared only atomically.
        unsafe { AtomicU32::from_ptr(&raw mut (*self.slot(slot)).state) }
    }

    fn window(&self, slot: u32) -> &AtomicU64 {
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(slot)).window) }
    }

    /// Step 1 of the protocol: fills a FREE slot and then marks it ACTIVE (Release).
    /// Returns false if the slot is not FREE.
    pub fn publish(&self, slot: u32, s: &V15Session) -> bool {
        if self.state(slot).load(Ordering::Acquire) != SESSION_FREE {
            return false;
        }
        let mut v = *s;
        v.state = SESSION_FREE;
        // SAFETY: the slot is FREE: the program does not use it (it checks the state first).
        unsafe { std::ptr::write_volatile(self.slot(slot), v) };
        self.state(slot).store(SESSION_ACTIVE, Ordering::Release);
        true
    }

    /// Step 2: check and commit an inbound sequence number (after the auth code verified).
    pub fn check_commit(&self, slot: u32, seq: u32) -> bool {
        let w = self.window(slot);
        let mut old = w.load(Ordering::Acquire);
        loop {
            if !window_check(old, seq) {
                return false;
            }
            match w.compare_exchange(
                old,
                window_commit(old, seq),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(cur) => old = cur,
            }
        }
    }

    /// Step 3: the outbound sequence number for the next reply.
    pub fn next_outbound(&self, slot: u32) -> u32 {
        unsafe { AtomicU32::from_ptr(&raw mut (*self.slot(slot)).outbound) }
            .fetch_add(1, Ordering::AcqRel)
    }

    /// Step 4: CLOCK_MONOTONIC ns of the program's last answer in this session.
    pub fn last_activity_ns(&self, slot: u32) -> u64 {
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(slot)).last_activity_ns) }
            .load(Ordering::Acquire)
    }

    /// Answers the program gave in this session.
    pub fn fast_answers(&self, slot: u32) -> u64 {
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(slot)).fast_answers) }
            .load(Ordering::Relaxed)
    }

    /// Step 5: the session's new privilege level.
    pub fn set_privilege(&self, slot: u32, privilege: u8) {
        unsafe { AtomicU8::from_ptr(&raw mut (*self.slot(slot)).privilege) }
            .store(privilege, Ordering::Release);
    }

    /// Step 6a: stop the program from answering for this slot.
    pub fn close(&self, slot: u32) {
        self.state(slot).store(SESSION_CLOSING, Ordering::Release);
    }

    /// Step 6b (a sweep at least a second after `close` and the id's removal).
    pub fn free(&self, slot: u32) {
        self.state(slot).store(SESSION_FREE, Ordering::Release);
    }
}

impl Drop for SessionSlots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.len * std::mem::size_of::<V15Session>(),
            );
        }
    }
}

/// CLOCK_MONOTONIC now, in the program's `bpf_ktime_get_ns` time base.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
