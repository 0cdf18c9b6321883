//! When the agent is ready for traffic (`/readyz`): every cache it serves from holds its
//! first full list, and the BMCs known at that moment have their sockets bound. Until then a
//! Service endpoint on this pod would answer with no users, or not at all.
//!
//! A latch: once ready, a later watch error or a port that cannot be bound does not take the
//! pod out of every BMC's Service (the caches stay readable through a re-list, and one BMC's
//! failed bind is that BMC's condition, not the node's).

use std::sync::Mutex;

#[derive(Default)]
pub struct Readiness {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Caches still waiting for their first full list, in the order they were started.
    pending: Vec<&'static str>,
    bound: bool,
    /// Both held once: the latch.
    ready: bool,
}

impl Readiness {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cache that must sync before the agent is ready (called before its watch starts).
    pub fn expect_cache(&self, what: &'static str) {
        let mut s = self.state();
        if !s.ready && !s.pending.contains(&what) {
            s.pending.push(what);
        }
    }

    /// `what` received its first full list.
    pub fn cache_synced(&self, what: &'static str) {
        let mut s = self.state();
        s.pending.retain(|w| *w != what);
        s.settle();
    }

    /// Every BMC known when the caches synced has its socket.
    pub fn bmcs_bound(&self) {
        let mut s = self.state();
        s.bound = true;
        s.settle();
    }

    /// Ok when ready; otherwise the reason, for a person reading the probe's answer.
    pub fn check(&self) -> Result<(), String> {
        let s = self.state();
        if s.ready {
            Ok(())
        } else if !s.pending.is_empty() {
            Err(format!("caches not synced: {}", s.pending.join(", ")))
        } else {
            Err("BMC sockets not bound yet".into())
        }
    }
}

impl State {
    fn settle(&mut self) {
        self.ready |= self.pending.is_empty() && self.bound;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_then_sockets_then_ready_for_good() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err("BMC sockets not bound yet".into()));
        r.expect_cache("virtualmachines");
        r.expect_cache("secrets");
        r.expect_cache("virtualmachines");
        assert_eq!(
            r.check(),
            Err("caches not synced: virtualmachines, secrets".into())
        );
        r.cache_synced("virtualmachines");
        assert_eq!(r.check(), Err("caches not synced: secrets".into()));
        // Sockets bound from the caches that did sync are not enough.
        r.bmcs_bound();
        assert_eq!(r.check(), Err("caches not synced: secrets".into()));
        r.cache_synced("secrets");
        assert_eq!(r.check(), Ok(()));
        // A watch restarted later does not unready the pod.
        r.expect_cache("secrets");
        assert_eq!(r.check(), Ok(()));
    }
}
