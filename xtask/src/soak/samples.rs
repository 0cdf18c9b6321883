//! What the soak watches in the agent, every few seconds: resident memory, open file
//! descriptors, active sessions (the engine's, from `/metrics`) and, with the fast path, the
//! entries of its session map; and the verdict: nothing may keep growing.

use std::fmt::Write;
use std::process::Command;
use std::time::Instant;

use virtbmc_e2e::Bmc;

use crate::json::Json;

/// One look at the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub secs: u64,
    pub rss_kb: u64,
    pub fds: u64,
    pub sessions: u64,
    /// Entries of the fast path's `session_ids` map (None: XDP off).
    pub map: Option<u64>,
    pub opened: u64,
    pub reclaimed: u64,
    pub expired: u64,
    pub refused: u64,
}

/// Takes one sample of agent `pid`; `pin_dir` is where its maps are pinned (XDP on).
pub fn take(bmc: &Bmc, since: Instant, pin_dir: Option<&str>) -> Result<Sample, String> {
    let pid = bmc.pid();
    if !bmc.alive() {
        return Err("the agent exited".into());
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .count() as u64;
    let metrics = bmc.http_get("/metrics")?;
    let metric = |name: &str| -> Result<u64, String> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| format!("{name} missing from /metrics"))
    };
    let map = match pin_dir {
        Some(dir) => Some(map_entries(pid, &format!("{dir}/session_ids"))?),
        None => None,
    };
    Ok(Sample {
        secs: since.elapsed().as_secs(),
        rss_kb,
        fds,
        sessions: metric("virtbmc_sessions_active")?,
        map,
        opened: metric("virtbmc_sessions_opened_total")?,
        reclaimed: metric("virtbmc_sessions_reclaimed_total")?,
        expired: metric("virtbmc_sessions_expired_total")?,
        refused: metric("virtbmc_sessions_refused_total")?,
    })
}

/// Entries of a pinned hash map, as `bpftool` lists them (its JSON output: one array element
/// per entry). The agent runs under `ip netns exec`, whose private /sys has its own bpffs:
/// look through its mount namespace.
fn map_entries(pid: u32, pin: &str) -> Result<u64, String> {
    let out = Command::new("nsenter")
        .args(["--mount", "--target", &pid.to_string()])
        .args(["bpftool", "-j", "map", "dump", "pinned", pin])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match Json::parse(&text) {
        Ok(Json::Arr(entries)) if out.status.success() => Ok(entries.len() as u64),
        _ => Err(format!(
            "bpftool -j map dump pinned {pin}: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// How much a quantity may move between the middle and the last third of the run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// RSS growth, in percent of the middle third's peak.
    pub rss_percent: u64,
    /// File descriptors more than the middle third's peak.
    pub fds: u64,
    /// Active sessions, at any time: the session tables' size (per BMC times BMCs).
    pub sessions: u64,
    /// Fast-path session map entries, at any time: the same bound.
    pub map: u64,
}

/// Everything wrong with a run: `load` are the samples under load (oldest first), `drained`
/// the one taken once the clients stopped and the idle timeout passed, when nothing may be
/// left. Empty when the run is sound.
pub fn verdict(load: &[Sample], drained: &Sample, limits: &Limits) -> Vec<String> {
    let mut problems = Vec::new();
    if load.len() < 6 {
        problems.push(format!(
            "{} samples under load: too few to compare thirds (run longer)",
            load.len()
        ));
        return problems;
    }
    let (middle, last) = (
        &load[load.len() / 3..2 * load.len() / 3],
        &load[2 * load.len() / 3..],
    );
    let peak = |s: &[Sample], f: fn(&Sample) -> u64| s.iter().map(f).max().unwrap_or(0);

    let (rss_mid, rss_last) = (peak(middle, |s| s.rss_kb), peak(last, |s| s.rss_kb));
    if rss_last * 100 > rss_mid * (100 + limits.rss_percent) {
        problems.push(format!(
            "RSS grew: {rss_last} kB in the last third, {rss_mid} kB in the middle one (+{}% allowed)",
            limits.rss_percent
        ));
    }
    let (fds_mid, fds_last) = (peak(middle, |s| s.fds), peak(last, |s| s.fds));
    if fds_last > fds_mid + limits.fds {
        problems.push(format!(
            "file descriptors grew: {fds_last} in the last third, {fds_mid} in the middle one (+{} allowed)",
            limits.fds
        ));
    }
    for s in load.iter().chain([drained]) {
        if s.sessions > limits.sessions {
            problems.push(format!(
                "{} active sessions at {} s, over the tables' {}",
                s.sessions, s.secs, limits.sessions
            ));
        }
        if let Some(m) = s.map.filter(|&m| m > limits.map) {
            problems.push(format!(
                "{m} fast-path session map entries at {} s, over {}",
                s.secs, limits.map
            ));
        }
    }
    if drained.sessions != 0 {
        problems.push(format!(
            "{} sessions still active after the clients stopped and the idle timeout passed",
            drained.sessions
        ));
    }
    if let Some(m) = drained.map.filter(|&m| m != 0) {
        problems.push(format!(
            "{m} fast-path session map entries left after the idle timeout"
        ));
    }
    let fds_start = load[0].fds;
    if drained.fds > fds_start + limits.fds {
        problems.push(format!(
            "{} file descriptors once idle, {fds_start} at the start",
            drained.fds
        ));
    }
    problems
}

/// The samples as a table, the drained one last.
pub fn table(load: &[Sample], drained: Option<&Sample>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6} {:>9} {:>5} {:>8} {:>6} {:>7} {:>9} {:>7} {:>7}",
        "t (s)", "RSS (kB)", "fds", "sessions", "map", "opened", "reclaimed", "expired", "refused"
    );
    let rows = load
        .iter()
        .map(|s| (s, ""))
        .chain(drained.map(|s| (s, "  idle")));
    for (s, note) in rows {
        let map = s.map.map_or("-".to_string(), |m| m.to_string());
        let _ = writeln!(
            out,
            "{:>6} {:>9} {:>5} {:>8} {:>6} {:>7} {:>9} {:>7} {:>7}{note}",
            s.secs, s.rss_kb, s.fds, s.sessions, map, s.opened, s.reclaimed, s.expired, s.refused
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        rss_percent: 20,
        fds: 10,
        sessions: 48,
        map: 48,
    };

    fn run(rss: &[u64], fds: &[u64]) -> Vec<Sample> {
        rss.iter()
            .zip(fds)
            .enumerate()
            .map(|(i, (&rss_kb, &fds))| Sample {
                secs: 5 * i as u64,
                rss_kb,
                fds,
                sessions: 3,
                map: Some(1),
                ..Sample::default()
            })
            .collect()
    }

    fn idle(fds: u64) -> Sample {
        Sample {
            secs: 70,
            rss_kb: 6000,
            fds,
            map: Some(0),
            ..Sample::default()
        }
    }

    #[test]
    fn a_plateau_passes() {
        let load = run(
            &[4000, 5500, 5800, 5900, 6000, 5950, 6000, 6100, 6050],
            &[20, 24, 25, 24, 26, 25, 24, 26, 25],
        );
        assert_eq!(verdict(&load, &idle(20), &LIMITS), Vec::<String>::new());
    }

    #[test]
    fn steady_growth_fails() {
        let load = run(
            &[4000, 5000, 6000, 7000, 8000, 9000, 10000, 11000, 12000],
            &[20, 25, 30, 35, 40, 45, 50, 55, 60],
        );
        let v = verdict(&load, &idle(60), &LIMITS);
        assert!(v.iter().any(|p| p.starts_with("RSS grew")), "{v:?}");
        assert!(
            v.iter().any(|p| p.starts_with("file descriptors grew")),
            "{v:?}"
        );
        assert!(v.iter().any(|p| p.contains("once idle")), "{v:?}");
    }

    #[test]
    fn sessions_left_after_the_timeout_fail() {
        let load = run(&[5000; 9], &[20; 9]);
        let left = Sample {
            sessions: 2,
            map: Some(1),
            ..idle(20)
        };
        let v = verdict(&load, &left, &LIMITS);
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn over_the_table_fails_and_short_runs_are_not_judged() {
        let mut load = run(&[5000; 9], &[20; 9]);
        load[4].sessions = 49;
        assert_eq!(verdict(&load, &idle(20), &LIMITS).len(), 1);
        assert_eq!(verdict(&load[..5], &idle(20), &LIMITS).len(), 1);
    }
}
