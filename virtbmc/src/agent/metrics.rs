//! Agent-wide counters, summed over every BMC, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::engine::Stats;

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub dropped: AtomicU64,
    pub auth_failures: AtomicU64,
    pub replays: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub rakp_rate_limited: AtomicU64,
    pub actions_ok: AtomicU64,
    pub actions_failed: AtomicU64,
}

impl Metrics {
    /// Adds what a BMC's counters moved by between two snapshots.
    pub fn add(&self, before: &Stats, after: &Stats) {
        self.requests
            .fetch_add(after.requests - before.requests, Relaxed);
        self.dropped
            .fetch_add(after.dropped - before.dropped, Relaxed);
        self.auth_failures
            .fetch_add(after.auth_failures - before.auth_failures, Relaxed);
        self.replays
            .fetch_add(after.replays - before.replays, Relaxed);
        self.sessions_opened
            .fetch_add(after.sessions_opened - before.sessions_opened, Relaxed);
        self.sessions_refused
            .fetch_add(after.sessions_refused - before.sessions_refused, Relaxed);
        self.rakp_rate_limited
            .fetch_add(after.rakp_rate_limited - before.rakp_rate_limited, Relaxed);
    }

    pub fn render(&self, bmcs: usize) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP virtbmc_{name} {help}\n# TYPE virtbmc_{name} counter\nvirtbmc_{name} {}",
                v.load(Relaxed)
            );
        };
        counter(
            "requests_total",
            "Datagrams handled by the userspace engine.",
            &self.requests,
        );
        counter(
            "dropped_total",
            "Datagrams dropped (malformed, unauthenticated, replayed, refused).",
            &self.dropped,
        );
        counter(
            "auth_failures_total",
            "Packets or handshakes whose authentication failed.",
            &self.auth_failures,
        );
        counter(
            "replays_total",
            "Packets refused for a used or out-of-window sequence number.",
            &self.replays,
        );
        counter(
            "sessions_opened_total",
            "Sessions activated.",
            &self.sessions_opened,
        );
        counter(
            "sessions_refused_total",
            "Sessions refused because the table was full.",
            &self.sessions_refused,
        );
        counter(
            "rakp_rate_limited_total",
            "RAKP1 messages dropped by the per-source limit.",
            &self.rakp_rate_limited,
        );
        counter(
            "actions_ok_total",
            "Backend actions accepted.",
            &self.actions_ok,
        );
        counter(
            "actions_failed_total",
            "Backend actions refused or failed.",
            &self.actions_failed,
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_bmcs BMCs served.\n# TYPE virtbmc_bmcs gauge\nvirtbmc_bmcs {bmcs}"
        );
        out
    }
}
