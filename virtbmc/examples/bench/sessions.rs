//! Load that any IPMI 2.0 BMC answers the same way, so that two servers can be compared with
//! the same console code: whole RMCP+ sessions from N parallel consoles, and session-less Get
//! Channel Authentication Capabilities. Each run also reads the server's CPU time from
//! /proc/PID/stat, to give its cost per answer.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use virtbmc::console::{self, ConsoleError, V20Session, suite};

/// What `clients` threads achieved in one or more timed runs.
pub struct Run {
    /// Whole sessions (or session-less answers) that completed and were checked.
    pub done: u64,
    pub failed: u64,
    /// The first failure, to tell a refusal from a timeout.
    pub first_failure: Option<String>,
    secs: f64,
    /// Server CPU (user + system) over the runs, in µs; None if unreadable.
    cpu_us: Option<f64>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.done as f64 / self.secs
    }

    /// Server CPU per completed item, in µs.
    pub fn cpu_us_each(&self) -> Option<f64> {
        self.cpu_us
            .filter(|_| self.done > 0)
            .map(|us| us / self.done as f64)
    }

    /// Two runs against the same server as one.
    pub fn and(self, other: Run) -> Run {
        Run {
            done: self.done + other.done,
            failed: self.failed + other.failed,
            first_failure: self.first_failure.or(other.first_failure),
            secs: self.secs + other.secs,
            cpu_us: self.cpu_us.zip(other.cpu_us).map(|(a, b)| a + b),
        }
    }
}

/// The process's user + system CPU time in µs, from /proc/PID/stat (fields 14 and 15, in
/// clock ticks; all threads included).
pub fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 * 1e6 / ticks as f64)
}

/// One whole session as a console makes it for one command: Open Session, RAKP 1 to 4
/// (IPMI 2.0 §13.17-13.23), Get Chassis Status, Close Session (§22.19), every answer checked.
fn whole_session(sock: &UdpSocket, suite_id: u8) -> Result<(), ConsoleError> {
    let mut ex = super::exchange(sock);
    // Role 0x14: name-only lookup, administrator, as ipmitool -I lanplus asks.
    let mut s = V20Session::open("admin", "password", suite(suite_id), 0x14, &mut ex)?;
    let (cc, data) = s.call(0x00, 0x01, &[], &mut ex)?;
    if cc != 0 {
        return Err(ConsoleError::Completion(cc));
    }
    if data.len() < 3 {
        return Err(ConsoleError::Malformed);
    }
    let id = s.bmc_id.to_le_bytes();
    let (cc, _) = s.call(0x06, 0x3C, &id, &mut ex)?;
    if cc != 0 {
        return Err(ConsoleError::Completion(cc));
    }
    Ok(())
}

/// One session-less Get Channel Authentication Capabilities (§22.13), answer checked.
fn auth_capabilities(sock: &UdpSocket) -> Result<(), ConsoleError> {
    let req = console::sessionless_v15(0x06, 0x38, 1, &[0x8e, 0x04]);
    let reply = super::exchange(sock)(&req).ok_or(ConsoleError::NoAnswer)?;
    match console::parse_v15(&reply)? {
        (0, data) if data.len() == 8 => Ok(()),
        (0, _) => Err(ConsoleError::Malformed),
        (cc, _) => Err(ConsoleError::Completion(cc)),
    }
}

/// `clients` threads, each with its own socket, repeat `one` back to back for `secs`.
/// After a failure a client takes a fresh socket, so that a late answer is not read as the
/// answer to its next request.
fn run(
    target: SocketAddr,
    clients: usize,
    secs: f64,
    pid: u32,
    one: &(dyn Fn(&UdpSocket) -> Result<(), ConsoleError> + Sync),
) -> Run {
    let cpu_before = cpu_us(pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let per_client: Vec<(u64, u64, Option<String>)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let (mut done, mut failed, mut first) = (0u64, 0u64, None);
                    let mut sock = super::socket(target);
                    while Instant::now() < deadline {
                        match one(&sock) {
                            Ok(()) => done += 1,
                            Err(e) => {
                                failed += 1;
                                first.get_or_insert_with(|| e.to_string());
                                sock = super::socket(target);
                            }
                        }
                    }
                    (done, failed, first)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = cpu_us(pid);
    Run {
        done: per_client.iter().map(|c| c.0).sum(),
        failed: per_client.iter().map(|c| c.1).sum(),
        first_failure: per_client.into_iter().find_map(|c| c.2),
        secs,
        cpu_us: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
    }
}

pub fn whole_sessions(
    target: SocketAddr,
    suite_id: u8,
    clients: usize,
    secs: f64,
    pid: u32,
) -> Run {
    run(target, clients, secs, pid, &|sock| {
        whole_session(sock, suite_id)
    })
}

pub fn sessionless(target: SocketAddr, clients: usize, secs: f64, pid: u32) -> Run {
    run(target, clients, secs, pid, &auth_capabilities)
}
