//! Agent-wide counters, summed over every BMC, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::engine::Stats;
use crate::engine::commands::{COMMAND_SLOTS, command_name};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub dropped: AtomicU64,
    pub auth_failures: AtomicU64,
    pub replays: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub sessions_reclaimed: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_revoked: AtomicU64,
    pub rakp_rate_limited: AtomicU64,
    /// RMCP+ sessions whose console derived K1/K2 from 32-byte constants (python-ipmi).
    pub sessions_32byte_kdf: AtomicU64,
    pub actions_ok: AtomicU64,
    pub actions_failed: AtomicU64,
    /// Cluster mode: calls to KubeVirt's subresources and boot-order patches, their
    /// failures (any error answer, or none), their total latency, and watch errors (each
    /// one restarts a watch or a list).
    pub kube_calls: AtomicU64,
    pub kube_call_errors: AtomicU64,
    pub kube_call_micros: AtomicU64,
    pub watch_errors: AtomicU64,
    /// Cluster mode: refusals and failures as Events on the VM (`cluster/events.rs`). Each
    /// occurrence is one of: a new Event, a repeat aggregated into its Event's count, or a
    /// repeat over the VM's write limit (not written now; the next write counts it).
    pub events_created: AtomicU64,
    pub events_aggregated: AtomicU64,
    pub events_dropped: AtomicU64,
    /// Serial-over-LAN: activations, characters each way, packets resent, characters given
    /// up after the last retry, input the guest's console queue had no room for; and the
    /// instances active now (a gauge the BMC loops move).
    pub sol_activations: AtomicU64,
    pub sol_to_guest: AtomicU64,
    pub sol_to_console: AtomicU64,
    pub sol_retransmissions: AtomicU64,
    pub sol_abandoned: AtomicU64,
    pub sol_input_dropped: AtomicU64,
    pub sol_active: AtomicU64,
    /// IPMI requests the userspace engine parsed, by command (`engine::commands::COUNTED`).
    pub commands: [AtomicU64; COMMAND_SLOTS],
    pub redfish: std::sync::Arc<crate::redfish::RedfishMetrics>,
}

impl Metrics {
    /// Adds what a BMC's counters moved by between two snapshots; a counter that did not
    /// move is not written (most datagrams move two or three).
    pub fn add(&self, before: &Stats, after: &Stats) {
        let bump = |m: &AtomicU64, a: u64, b: u64| {
            if a != b {
                m.fetch_add(a - b, Relaxed);
            }
        };
        bump(&self.requests, after.requests, before.requests);
        bump(&self.dropped, after.dropped, before.dropped);
        bump(
            &self.auth_failures,
            after.auth_failures,
            before.auth_failures,
        );
        bump(&self.replays, after.replays, before.replays);
        bump(
            &self.sessions_opened,
            after.sessions_opened,
            before.sessions_opened,
        );
        bump(
            &self.sessions_refused,
            after.sessions_refused,
            before.sessions_refused,
        );
        bump(
            &self.sessions_reclaimed,
            after.sessions_reclaimed,
            before.sessions_reclaimed,
        );
        bump(
            &self.sessions_expired,
            after.sessions_expired,
            before.sessions_expired,
        );
        bump(
            &self.sessions_revoked,
            after.sessions_revoked,
            before.sessions_revoked,
        );
        bump(
            &self.rakp_rate_limited,
            after.rakp_rate_limited,
            before.rakp_rate_limited,
        );
        bump(
            &self.sessions_32byte_kdf,
            after.sessions_32byte_kdf,
            before.sessions_32byte_kdf,
        );
        bump(
            &self.sol_activations,
            after.sol_activations,
            before.sol_activations,
        );
        bump(&self.sol_to_guest, after.sol_to_guest, before.sol_to_guest);
        bump(
            &self.sol_to_console,
            after.sol_to_console,
            before.sol_to_console,
        );
        bump(
            &self.sol_retransmissions,
            after.sol_retransmissions,
            before.sol_retransmissions,
        );
        bump(
            &self.sol_abandoned,
            after.sol_abandoned,
            before.sol_abandoned,
        );
        for (m, (a, b)) in self
            .commands
            .iter()
            .zip(after.commands.iter().zip(&before.commands))
        {
            bump(m, *a, *b);
        }
    }

    /// `bmcs` and `sessions` are gauges the registry holds: BMCs served, and their active
    /// sessions summed.
    pub fn render(&self, bmcs: usize, sessions: usize) -> String {
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
            "Sessions refused: the table, or the source's half of it, held only recently active sessions.",
            &self.sessions_refused,
        );
        counter(
            "sessions_reclaimed_total",
            "Idle sessions taken to make room for new ones.",
            &self.sessions_reclaimed,
        );
        counter(
            "sessions_expired_total",
            "Sessions and handshakes that reached their idle limit.",
            &self.sessions_expired,
        );
        counter(
            "sessions_revoked_total",
            "Sessions ended because their user was removed, its password changed or its privilege lowered.",
            &self.sessions_revoked,
        );
        counter(
            "rakp_rate_limited_total",
            "RAKP1 messages dropped by the per-source or per-user-name limit.",
            &self.rakp_rate_limited,
        );
        counter(
            "sessions_32byte_kdf_total",
            "RMCP+ sessions whose console derived K1/K2 from 32-byte constants (HMAC-SHA256 suites).",
            &self.sessions_32byte_kdf,
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
        counter(
            "kube_calls_total",
            "KubeVirt calls (start/stop/restart, boot-order patches).",
            &self.kube_calls,
        );
        counter(
            "kube_call_errors_total",
            "KubeVirt calls answered with an error or not at all.",
            &self.kube_call_errors,
        );
        counter(
            "watch_errors_total",
            "Watch or list errors (each restarts that watch).",
            &self.watch_errors,
        );
        counter(
            "events_created_total",
            "Events created on VMs for refused or failed actions.",
            &self.events_created,
        );
        counter(
            "events_aggregated_total",
            "Repeated refusals or failures counted into an existing Event.",
            &self.events_aggregated,
        );
        counter(
            "events_dropped_total",
            "Repeated refusals or failures not written, over the VM's event rate.",
            &self.events_dropped,
        );
        counter(
            "sol_activations_total",
            "Serial-over-LAN payloads activated.",
            &self.sol_activations,
        );
        counter(
            "sol_bytes_to_guest_total",
            "Serial-over-LAN characters from consoles to guests.",
            &self.sol_to_guest,
        );
        counter(
            "sol_bytes_to_console_total",
            "Serial-over-LAN characters from guests to consoles (first transmissions).",
            &self.sol_to_console,
        );
        counter(
            "sol_retransmissions_total",
            "Serial-over-LAN packets resent to a console that had not acknowledged them.",
            &self.sol_retransmissions,
        );
        counter(
            "sol_bytes_abandoned_total",
            "Guest characters given up after a console left every retry unacknowledged.",
            &self.sol_abandoned,
        );
        counter(
            "sol_input_dropped_total",
            "Console input the guest's serial queue had no room for.",
            &self.sol_input_dropped,
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_sol_active Serial-over-LAN payloads active now.\n# TYPE virtbmc_sol_active gauge\nvirtbmc_sol_active {}",
            self.sol_active.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_kube_call_seconds_sum Time spent in KubeVirt calls.\n# TYPE virtbmc_kube_call_seconds_sum counter\nvirtbmc_kube_call_seconds_sum {:.6}",
            self.kube_call_micros.load(Relaxed) as f64 / 1e6
        );
        // The fast path's answers are virtbmc_fastpath_packets_total{action}: together the
        // two say which path served what.
        let _ = writeln!(
            out,
            "# HELP virtbmc_requests_by_command_total IPMI requests the userspace engine parsed, by command.\n# TYPE virtbmc_requests_by_command_total counter"
        );
        for (slot, v) in self.commands.iter().enumerate() {
            let _ = writeln!(
                out,
                "virtbmc_requests_by_command_total{{command=\"{}\"}} {}",
                command_name(slot),
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP virtbmc_bmcs BMCs served.\n# TYPE virtbmc_bmcs gauge\nvirtbmc_bmcs {bmcs}"
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_sessions_active Active sessions, summed over every BMC.\n# TYPE virtbmc_sessions_active gauge\nvirtbmc_sessions_active {sessions}"
        );
        self.redfish.render(&mut out);
        out
    }
}
