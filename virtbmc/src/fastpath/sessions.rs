//! The shared session state, userspace side: the mmapped `SESSIONS` slots with the atomics the
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

    fn activity(&self, slot: u32) -> &AtomicU64 {
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(slot)).last_activity_ns) }
    }

    /// Step 4: CLOCK_MONOTONIC ns of the last activity in this session.
    pub fn last_activity_ns(&self, slot: u32) -> u64 {
        self.activity(slot).load(Ordering::Acquire)
    }

    /// Step 4, the engine's half: activity at `ns`; never moves the time back.
    pub fn touch(&self, slot: u32, ns: u64) {
        self.activity(slot).fetch_max(ns, Ordering::AcqRel);
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

    /// Closing, first half: the program stops answering for this slot.
    pub fn close(&self, slot: u32) {
        self.state(slot).store(SESSION_CLOSING, Ordering::Release);
    }

    /// Closing, second half: the slot becomes reusable (a sweep at least a second after
    /// `close` and the id's removal, when no program run can still hold the old index).
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

/// The `SESSION_IDS` index, shared by the fast path and every published session.
pub(super) type SessionIds =
    std::sync::Arc<std::sync::Mutex<aya::maps::HashMap<aya::maps::MapData, u32, u32>>>;

/// Slot bookkeeping: free slots, and closed ones waiting out the grace period (step 6).
#[derive(Default)]
pub(super) struct SlotAlloc {
    next_unused: u32,
    free: Vec<u32>,
    closing: std::collections::VecDeque<(u32, std::time::Instant)>,
}

/// How long a closed slot stays unused: any program run that found its old index is over.
const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl SlotAlloc {
    fn take(&mut self, slots: &SessionSlots, now: std::time::Instant) -> Option<u32> {
        while let Some(&(slot, at)) = self.closing.front() {
            if now.duration_since(at) < GRACE {
                break;
            }
            self.closing.pop_front();
            slots.free(slot);
            self.free.push(slot);
        }
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.next_unused < slots.capacity() {
            self.next_unused += 1;
            return Some(self.next_unused - 1);
        }
        None
    }
}

/// Removes `id` from the index (absent is fine).
pub(super) fn remove_id(ids: &SessionIds, id: u32) -> Result<(), aya::maps::MapError> {
    let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
    match ids.remove(&id) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The [`SessionPublisher`](crate::engine::session::SessionPublisher) for one BMC port: the
/// driver publishes the IPMI 1.5 sessions its engine offers into the maps (step 1) and hands the engine a
/// [`SharedSession`](crate::engine::session::SharedSession) over the slot.
pub struct Publisher {
    pub(super) port: u16,
    pub(super) slots: std::sync::Arc<SessionSlots>,
    pub(super) ids: SessionIds,
    pub(super) alloc: std::sync::Arc<std::sync::Mutex<SlotAlloc>>,
}

impl crate::engine::session::SessionPublisher for Publisher {
    fn publish(
        &self,
        s: &crate::engine::session::PublishV15,
    ) -> Option<Box<dyn crate::engine::session::SharedSession>> {
        // Only what the program can answer: MD5 or straight password.
        if s.auth_type != 0x02 && s.auth_type != 0x04 {
            return None;
        }
        let (family, peer) = match s.peer.ip() {
            std::net::IpAddr::V4(a) => {
                let mut p = [0u8; 16];
                p[..4].copy_from_slice(&a.octets());
                (4, p)
            }
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => {
                    let mut p = [0u8; 16];
                    p[..4].copy_from_slice(&v4.octets());
                    (4, p)
                }
                None => (6, a.octets()),
            },
        };
        let slot = self
            .alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(&self.slots, std::time::Instant::now())?;
        let v = V15Session {
            state: SESSION_FREE,
            session_id: s.session_id,
            port: self.port,
            auth_type: s.auth_type,
            privilege: s.privilege.wire(),
            family,
            _pad0: 0,
            peer_port: s.peer.port(),
            peer,
            password: s.password,
            window: virtbmc_common::session::window_pack(s.inbound_start.wrapping_sub(1), 1),
            outbound: s.next_outbound,
            idle_timeout_ms: u32::try_from(s.idle_timeout.as_millis()).unwrap_or(u32::MAX),
            last_activity_ns: monotonic_ns(),
            fast_answers: 0,
        };
        let give_back = |alloc: &std::sync::Mutex<SlotAlloc>| {
            alloc
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .free
                .push(slot)
        };
        if !self.slots.publish(slot, &v) {
            give_back(&self.alloc);
            return None;
        }
        let inserted =
            self.ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(s.session_id, slot, 0);
        if let Err(e) = inserted {
            log::warn!("fastpath: publishing session on port {}: {e}", self.port);
            self.slots.close(slot);
            self.slots.free(slot);
            give_back(&self.alloc);
            return None;
        }
        Some(Box::new(Shared {
            slot,
            session_id: s.session_id,
            slots: self.slots.clone(),
            ids: self.ids.clone(),
            alloc: self.alloc.clone(),
        }))
    }
}

/// One published session, as the engine sees it. Dropping it unpublishes (step 6).
pub struct Shared {
    slot: u32,
    session_id: u32,
    slots: std::sync::Arc<SessionSlots>,
    ids: SessionIds,
    alloc: std::sync::Arc<std::sync::Mutex<SlotAlloc>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl crate::engine::session::SharedSession for Shared {
    fn accept(&self, seq: u32) -> bool {
        self.slots.check_commit(self.slot, seq)
    }

    fn next_outbound(&self) -> u32 {
        self.slots.next_outbound(self.slot)
    }

    fn set_privilege(&self, privilege: crate::engine::config::Privilege) {
        self.slots.set_privilege(self.slot, privilege.wire());
    }

    fn touch(&self, now: std::time::Instant) {
        // `now` is when the driver received the packet: a moment ago in CLOCK_MONOTONIC.
        let ago = std::time::Instant::now().saturating_duration_since(now);
        let ns = monotonic_ns().saturating_sub(ago.as_nanos() as u64);
        self.slots.touch(self.slot, ns);
    }

    fn last_fast_answer(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        let last = self.slots.last_activity_ns(self.slot);
        if last == 0 {
            return None;
        }
        // Instant is CLOCK_MONOTONIC on Linux, the program's time base too.
        let ago = monotonic_ns().saturating_sub(last);
        now.checked_sub(std::time::Duration::from_nanos(ago))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.slots.close(self.slot);
        if let Err(e) = remove_id(&self.ids, self.session_id) {
            log::warn!("fastpath: unpublishing session in slot {}: {e}", self.slot);
        }
        self.alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closing
            .push_back((self.slot, std::time::Instant::now()));
    }
}
