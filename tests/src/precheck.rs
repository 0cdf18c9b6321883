//! Whether an end-to-end test can run here: it needs root (namespaces, veth) and the clients.

use std::io::Write;
use std::path::Path;

/// True when the effective uid is 0 (read from /proc so that no libc binding is needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|p| Path::new(p).to_path_buf()),
        )
        .any(|dir| dir.join(tool).is_file())
}

/// Returns true when the test must be skipped (and says why on stderr). With
/// `VIRTBMC_E2E_REQUIRED=1` a missing precondition is a failure instead of a skip, so CI
/// cannot go green by skipping everything.
pub fn skip_unless_ready(test: &str, tools: &[&str]) -> bool {
    let required = std::env::var("VIRTBMC_E2E_REQUIRED").is_ok_and(|v| v == "1");
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces)".to_string());
    }
    for tool in ["ip", "curl", "timeout"].iter().chain(tools) {
        if !on_path(tool) {
            missing.push(format!("`{tool}` on PATH"));
        }
    }
    if missing.is_empty() {
        return false;
    }
    let why = missing.join(", ");
    if required {
        panic!("{test}: VIRTBMC_E2E_REQUIRED=1 but this machine lacks {why}");
    }
    // Written to the real stderr, not through `eprintln!`, so the test harness does not swallow it.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: needs {why} (set VIRTBMC_E2E_REQUIRED=1 to make this a failure)"
    );
    true
}
