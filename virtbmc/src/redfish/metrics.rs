//! Redfish counters: requests by resource, method and status, TLS handshakes, and virtual
//! media operations with their durations.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct RedfishMetrics {
    /// (resource, method, status) -> count. Resources are the fixed route names and methods
    /// the few a client may send (anything else counts as "OTHER"), so the map stays small.
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub sessions_created: AtomicU64,
    pub auth_failures: AtomicU64,
    /// (operation, succeeded) -> (count, seconds summed): a Prometheus summary without
    /// quantiles, enough for rates and mean durations.
    media: Mutex<BTreeMap<MediaKey, (u64, f64)>>,
}

/// A virtual media operation's name and whether it succeeded.
type MediaKey = (&'static str, bool);

impl RedfishMetrics {
    pub fn request(&self, resource: &'static str, method: &http::Method, status: u16) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::HEAD => "HEAD",
            http::Method::POST => "POST",
            http::Method::PATCH => "PATCH",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            _ => "OTHER",
        };
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((resource, method, status)).or_default() += 1;
    }

    /// A virtual media operation ended, after `took` (counted even when it outlasted the
    /// client's deadline).
    pub fn media(&self, op: &'static str, ok: bool, took: std::time::Duration) {
        let mut m = self.media.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry((op, ok)).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP virtbmc_redfish_requests_total Redfish requests by resource, method and status.\n# TYPE virtbmc_redfish_requests_total counter"
        );
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((resource, method, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "virtbmc_redfish_requests_total{{resource=\"{resource}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        drop(m);
        let _ = writeln!(
            out,
            "# HELP virtbmc_redfish_tls_handshakes_total TLS handshakes on Redfish ports, by result.\n# TYPE virtbmc_redfish_tls_handshakes_total counter\nvirtbmc_redfish_tls_handshakes_total{{result=\"ok\"}} {}\nvirtbmc_redfish_tls_handshakes_total{{result=\"failed\"}} {}",
            self.handshakes_ok.load(Relaxed),
            self.handshakes_failed.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_redfish_sessions_created_total Redfish sessions created.\n# TYPE virtbmc_redfish_sessions_created_total counter\nvirtbmc_redfish_sessions_created_total {}",
            self.sessions_created.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_redfish_auth_failures_total Redfish requests with wrong or unknown credentials or token.\n# TYPE virtbmc_redfish_auth_failures_total counter\nvirtbmc_redfish_auth_failures_total {}",
            self.auth_failures.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP virtbmc_redfish_media_seconds Virtual media operations (insert, eject) by result, and their durations.\n# TYPE virtbmc_redfish_media_seconds summary"
        );
        let m = self.media.lock().unwrap_or_else(|e| e.into_inner());
        for ((op, ok), (n, secs)) in m.iter() {
            let result = if *ok { "ok" } else { "failed" };
            let _ = writeln!(
                out,
                "virtbmc_redfish_media_seconds_count{{op=\"{op}\",result=\"{result}\"}} {n}\nvirtbmc_redfish_media_seconds_sum{{op=\"{op}\",result=\"{result}\"}} {secs:.6}"
            );
        }
    }
}
