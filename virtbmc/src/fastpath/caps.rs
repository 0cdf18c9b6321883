//! Capability check before loading: a clear error beats an EPERM from deep inside aya.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities the fast path needs and this process lacks (empty when all is well).
/// Loading an XDP program needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; attaching it
/// needs CAP_NET_ADMIN. CAP_PERFMON (or CAP_SYS_ADMIN) too: without it the verifier applies
/// its Spectre v1 restrictions (`bypass_spec_v1` is `perfmon_capable()`), and our program's
/// indexed copies into stack buffers are refused ("pointer arithmetic with it prohibited
/// for !root", BPF_PROG_LOAD fails with EACCES).
pub fn missing_capabilities() -> Vec<&'static str> {
    let eff = effective_caps().unwrap_or(0);
    missing_from(eff)
}

fn missing_from(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// `CapEff` from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_what_is_missing() {
        assert_eq!(
            missing_from(0),
            vec!["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        assert_eq!(
            missing_from((1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON)),
            vec!["CAP_BPF"]
        );
        assert_eq!(
            missing_from((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)),
            vec!["CAP_PERFMON"]
        );
        assert!(
            missing_from((1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON)).is_empty()
        );
        assert!(missing_from((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
    }

    #[test]
    fn reads_own_caps() {
        assert!(effective_caps().is_some());
    }
}
