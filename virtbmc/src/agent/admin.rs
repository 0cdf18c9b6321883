//! A small HTTP endpoint for people and probes: /healthz, /readyz, /vms, /metrics.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::metrics::Metrics;
use super::ready::Readiness;
use super::registry::{Registry, SharedFastPath};
use crate::backend::embedded::Embedded;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// The embedded machines, listed by /vms for the BMCs the registry serves.
    pub embedded: Arc<Embedded>,
    pub registry: Arc<Registry>,
    pub fastpath: SharedFastPath,
    /// What `/readyz` answers: caches synced and sockets bound, or why not.
    pub ready: Arc<Readiness>,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let line = String::from_utf8_lossy(&buf[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = me.route(path);
                let resp = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    }

    fn route(&self, path: &str) -> (&'static str, String) {
        match path {
            "/healthz" => ("200 OK", "ok\n".into()),
            "/readyz" => match self.ready.check() {
                Ok(()) => ("200 OK", "ok\n".into()),
                Err(why) => ("503 Service Unavailable", format!("{why}\n")),
            },
            "/metrics" => ("200 OK", self.metrics_text()),
            "/vms" => ("200 OK", self.vm_lines()),
            _ => ("404 Not Found", "not found\n".into()),
        }
    }

    fn metrics_text(&self) -> String {
        let mut out = self
            .metrics
            .render(self.registry.len(), self.registry.active_sessions());
        let fp = self.fastpath.lock().unwrap_or_else(|e| e.into_inner());
        if fp.is_on() {
            match fp.counters() {
                Ok(c) => {
                    out.push_str("# HELP virtbmc_fastpath_packets_total Packets to a BMC port seen by the XDP program, by what it did.\n# TYPE virtbmc_fastpath_packets_total counter\n");
                    for (action, v) in [
                        ("answered_ping", c.ping_answered),
                        ("answered_auth_caps", c.auth_caps_answered),
                        ("answered_cipher_suites", c.cipher_suites_answered),
                        ("answered_chassis_status", c.chassis_status_answered),
                        ("passed", c.passed),
                        ("dropped_malformed", c.dropped_malformed),
                    ] {
                        out.push_str(&format!(
                            "virtbmc_fastpath_packets_total{{action=\"{action}\"}} {v}\n"
                        ));
                    }
                }
                Err(e) => log::warn!("fastpath: reading counters failed: {e}"),
            }
        }
        out
    }

    fn vm_lines(&self) -> String {
        let mut out = String::new();
        for (name, port) in self.registry.list() {
            let Some(vm) = self.embedded.get(&name) else {
                continue;
            };
            let (boot, persistent, efi) = match vm.boot {
                Some(b) => (b.device.to_string(), b.persistent, b.efi),
                None => ("none".to_string(), false, false),
            };
            // An image URL holds no whitespace (the backend refuses one that does).
            let media = vm.media.as_deref().unwrap_or("none");
            let booted = vm.booted.map_or("none".to_string(), |d| d.to_string());
            out.push_str(&format!(
                "name={name} port={port} power={} boot={boot} persistent={} efi={} starts={} stops={} resets={} media={media} booted={booted}\n",
                vm.power,
                u8::from(persistent),
                u8::from(efi),
                vm.starts,
                vm.stops,
                vm.resets
            ));
        }
        out
    }
}
